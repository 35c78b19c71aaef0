"""Records inside a shard: member names and the encoding of image samples and token blocks.

Images: one sample per key, ``KEY.<ext>`` (the image bytes), ``KEY.cls`` (label, ASCII int) and
``KEY.json`` (source path, label, class name), as webdataset expects.

Sequences: per-member tar overhead (a 512-byte header plus padding) would double the size of a
typical 50-token sequence, so sequences travel in blocks: ``KEY.tokens.npy`` (all tokens of the
block, concatenated, in the dataset's token dtype), ``KEY.lengths.npy`` (one length per
sequence, smallest unsigned dtype) and, when the source had labels, ``KEY.labels.npy``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from ..errors import ShardError

#: Image formats stored byte for byte; everything else is stored as lossless PNG of its RGB pixels.
PASSTHROUGH_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
#: Member extensions the reader decodes as images (safe decoders only).
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
LABEL_EXT, META_EXT = "cls", "json"
TOKENS_EXT, LENGTHS_EXT, LABELS_EXT = "tokens.npy", "lengths.npy", "labels.npy"
#: Target bytes of tokens per block: large enough to amortise headers, small enough to stream.
BLOCK_TOKEN_BYTES = 1 << 20
NO_LABEL = -1


def sample_key(index: int) -> str:
    """Key of the sample (or block) at ``index``: digits only, so no dots, slashes or source names."""
    return f"{index:09d}"


def split_name(name: str) -> tuple[str, str]:
    """``"000000012.tokens.npy"`` → ``("000000012", "tokens.npy")``, as webdataset groups members."""
    key, _, ext = name.partition(".")
    return key, ext


def image_members(key: str, ext: str, image: bytes, label: int, meta: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(f"{key}.{ext}", image), (f"{key}.{LABEL_EXT}", str(label).encode()),
            (f"{key}.{META_EXT}", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())]


def smallest_unsigned(largest: int) -> np.dtype:
    for name in ("uint8", "uint16", "uint32", "uint64"):
        if largest <= np.iinfo(name).max:
            return np.dtype(name)
    raise ValueError(f"value {largest} does not fit in 64 bits")


def smallest_signed(smallest: int, largest: int) -> np.dtype:
    for name in ("int8", "int16", "int32", "int64"):
        info = np.iinfo(name)
        if info.min <= smallest and largest <= info.max:
            return np.dtype(name)
    raise ValueError(f"labels {smallest}..{largest} do not fit in 64 bits")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def block_members(key: str, tokens: np.ndarray, lengths: np.ndarray,
                  labels: np.ndarray | None) -> list[tuple[str, bytes]]:
    """The members of one token block. ``tokens`` already has the dataset's dtype."""
    members = [(f"{key}.{TOKENS_EXT}", _npy(tokens)),
               (f"{key}.{LENGTHS_EXT}", _npy(lengths.astype(smallest_unsigned(int(lengths.max(initial=0))))))]
    if labels is not None:
        members.append((f"{key}.{LABELS_EXT}",
                        _npy(labels.astype(smallest_signed(int(labels.min(initial=0)), int(labels.max(initial=0)))))))
    return members


def load_npy(data: bytes, shard: str, member: str) -> np.ndarray:
    """Decode a ``.npy`` member without ever unpickling (object arrays are refused)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ShardError(f"not a valid .npy array ({err})", shard=shard, member=member) from None
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise ShardError(f"expected a 1-D integer array, found {array.dtype} with shape {array.shape}",
                         shard=shard, member=member)
    return array


def decode_block(members: dict[str, bytes], shard: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(tokens, offsets, labels)`` of one block: offsets has one more entry than there are sequences.

    Raises:
        ShardError: a member is missing or malformed, or lengths disagree with the tokens.
    """
    try:
        tokens = load_npy(members[TOKENS_EXT], shard, f"{key}.{TOKENS_EXT}")
        lengths = load_npy(members[LENGTHS_EXT], shard, f"{key}.{LENGTHS_EXT}")
    except KeyError as err:
        raise ShardError(f"token block lacks member {key}.{err.args[0]}", shard=shard) from None
    labels = load_npy(members[LABELS_EXT], shard, f"{key}.{LABELS_EXT}") if LABELS_EXT in members else None
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] != len(tokens) or (labels is not None and len(labels) != len(lengths)):
        raise ShardError(f"block lengths sum to {offsets[-1]} but it holds {len(tokens)} tokens "
                         f"(or labels and lengths disagree)", shard=shard, member=f"{key}.{LENGTHS_EXT}")
    return tokens, offsets, labels
