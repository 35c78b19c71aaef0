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
import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..errors import ShardError

#: The PIL formats stored byte for byte, by the member extension they get (MPO is a JPEG with extra
#: frames, as phone cameras write them: every JPEG decoder reads its first frame). Any other format
#: is stored as a lossless PNG of its RGB pixels, and a resized image as a JPEG.
STORED_FORMATS = {"jpg": ("JPEG", "MPO"), "png": ("PNG",), "webp": ("WEBP",)}
#: PIL format → member extension, for the formats above.
PASSTHROUGH_FORMATS = {fmt: ext for ext, formats in STORED_FORMATS.items() for fmt in formats}
#: Member extensions the reader decodes as images (safe decoders only).
IMAGE_EXTENSIONS = tuple(STORED_FORMATS)
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


def group_samples(members: Iterable[Any], shard: str | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Runs of consecutive tar members with the same key, as ``(key, {extension: bytes})``: one
    sample each, as webdataset groups them.

    Raises:
        ShardError: (only when ``shard`` is given) a sample holding the same extension twice; without
            ``shard`` the last one wins, as in webdataset.
    """
    named = ((split_name(m.name), m) for m in members)
    for key, run in itertools.groupby(named, key=lambda item: item[0][0]):
        group: dict[str, bytes] = {}
        for (_, ext), member in run:
            if shard is not None and ext in group:
                raise ShardError(f"duplicate member {member.name!r}", shard=shard, offset=member.offset)
            group[ext] = member.data
        yield key, group


def image_meta(path: str, label: int, class_name: str) -> dict[str, Any]:
    """The ``KEY.json`` record of an image sample."""
    return {"path": path, "label": label, "class": class_name}


def label_member(label: int) -> bytes:
    """The bytes of a ``KEY.cls`` member."""
    return str(label).encode()


def meta_member(meta: dict[str, Any]) -> bytes:
    """The bytes of a ``KEY.json`` member."""
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()


def image_members(key: str, ext: str, image: bytes, label: int, meta: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The ``(name, bytes)`` members of one image sample: the image, its label, its metadata."""
    return [(f"{key}.{ext}", image), (f"{key}.{LABEL_EXT}", label_member(label)),
            (f"{key}.{META_EXT}", meta_member(meta))]


def smallest_unsigned(largest: int) -> np.dtype:
    """The smallest unsigned dtype holding ``0..largest``; ``ValueError`` if negative or over 64 bits."""
    if largest < 0:
        raise ValueError(f"value {largest} is negative")
    for name in ("uint8", "uint16", "uint32", "uint64"):
        if largest <= np.iinfo(name).max:
            return np.dtype(name)
    raise ValueError(f"value {largest} does not fit in 64 bits")


def smallest_signed(smallest: int, largest: int) -> np.dtype:
    """The smallest signed dtype holding ``smallest..largest``; ``ValueError`` beyond 64 bits."""
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
    """Decode a ``.npy`` member holding a 1-D integer array, in native byte order and writable.

    Never unpickles, and checks the header's shape against the bytes present before anything is
    allocated, so a header claiming a huge array costs nothing.

    Raises:
        ShardError: not a version 1 or 2 ``.npy``, not a 1-D integer array (object, float,
            structured, multi-dimensional), or a header that disagrees with the data length.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    except Exception as err:  # noqa: BLE001 - numpy's header parser raises a zoo of types on
        # garbage (ValueError, SyntaxError, tokenize.TokenError, ...), varying by version
        raise ShardError(f"not a valid .npy array ({err})", shard=shard, member=member) from None
    if dtype.kind not in "iu" or len(shape) != 1:
        raise ShardError(f"expected a 1-D integer array, found {dtype} with shape {shape}",
                         shard=shard, member=member)
    start = stream.tell()
    if shape[0] * dtype.itemsize != len(data) - start:
        raise ShardError(f"header says {shape[0]} values of {dtype.itemsize} bytes, the member holds "
                         f"{len(data) - start} bytes after it", shard=shard, member=member)
    array = np.frombuffer(data, dtype=dtype, count=shape[0], offset=start)
    return array.astype(dtype.newbyteorder("="))  # a writable copy, as np.load gives


def decode_block(members: dict[str, bytes], shard: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(tokens, offsets, labels)`` of one block: offsets (int64) has one more entry than there are
    sequences; sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.

    Raises:
        ShardError: a member is missing or malformed, tokens or lengths are not unsigned, or
            lengths disagree with the tokens or the labels.
    """
    try:
        tokens = load_npy(members[TOKENS_EXT], shard, f"{key}.{TOKENS_EXT}")
        lengths = load_npy(members[LENGTHS_EXT], shard, f"{key}.{LENGTHS_EXT}")
    except KeyError as err:
        raise ShardError(f"token block lacks member {key}.{err.args[0]}", shard=shard) from None
    labels = load_npy(members[LABELS_EXT], shard, f"{key}.{LABELS_EXT}") if LABELS_EXT in members else None
    for name, array in ((TOKENS_EXT, tokens), (LENGTHS_EXT, lengths)):
        if array.dtype.kind != "u":
            raise ShardError(f"expected unsigned integers, found {array.dtype}", shard=shard, member=f"{key}.{name}")
    # each length is checked before summing, so the int64 sum cannot overflow
    if len(lengths) and int(lengths.max()) > len(tokens):
        raise ShardError(f"a length of {int(lengths.max())} exceeds the block's {len(tokens)} tokens",
                         shard=shard, member=f"{key}.{LENGTHS_EXT}")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths.astype(np.int64), out=offsets[1:])
    if offsets[-1] != len(tokens):
        raise ShardError(f"block lengths sum to {offsets[-1]} but it holds {len(tokens)} tokens",
                         shard=shard, member=f"{key}.{LENGTHS_EXT}")
    if labels is not None and len(labels) != len(lengths):
        raise ShardError(f"{len(labels)} labels for {len(lengths)} sequences", shard=shard,
                         member=f"{key}.{LABELS_EXT}")
    return tokens, offsets, labels
