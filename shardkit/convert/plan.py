"""The plan: which sample goes where, decided once, before anything is written.

Pure functions of what was listed (and, for sequences, scanned): the seeded global shuffle, the
cut into shards and token blocks, and a digest that says whether two runs would write the same
bytes. Because the plan fixes every key and boundary, the output is the same for any number of
workers, processes or machines that execute it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..format.blocks import BLOCK_TOKEN_BYTES, NPY_HEADER, smallest_signed, smallest_unsigned, token_layout
from ..format.fields import codec_of
from ..format.records import image_meta, members_bytes
from ..format.schema import LABEL_FIELD, META_FIELD
from ..format.tar import BLOCK, END_OF_ARCHIVE
from .options import ConvertOptions
from .sources import ImageSource, SequenceSource

_BLOCK_OVERHEAD = 3 * (BLOCK + NPY_HEADER + BLOCK - 1)  # three members, worst-case padding


@dataclass
class SequenceTable:
    """Pass 1's result: one row per valid record (never the tokens themselves)."""

    source: SequenceSource
    file: np.ndarray      # index into source.files, int32
    offset: np.ndarray    # byte offset of the line, int64
    nbytes: np.ndarray    # byte length of the line, int64
    ntokens: np.ndarray   # int64
    labels: np.ndarray    # int64, NO_LABEL where the record has none
    max_id: int
    has_labels: bool

    def __len__(self) -> int:
        return len(self.file)

    @property
    def dtype(self) -> np.dtype:
        return smallest_unsigned(self.max_id)


@dataclass
class Plan:
    """What to write: ``order[p]`` is the source record at position ``p``; shard ``i`` holds
    positions ``shard_starts[i]:shard_starts[i+1]``; for kinds stored in blocks, ``block_starts``
    are the positions where blocks begin (every shard start is one)."""

    kind: str
    options: ConvertOptions
    digest: str
    order: np.ndarray
    shard_starts: np.ndarray
    skipped: list[dict[str, Any]]
    #: what the kind's shard tasks read: its listed (and scanned) source
    source: Any = None
    block_starts: np.ndarray | None = None
    #: what the shards' stamps derive from: :func:`content_digest`, which ``convert`` sets for every kind
    stamps: str = ""

    @property
    def num_shards(self) -> int:
        return len(self.shard_starts) - 1

    def shard_positions(self, index: int) -> range:
        return range(int(self.shard_starts[index]), int(self.shard_starts[index + 1]))

    def shard_blocks(self, index: int) -> list[tuple[int, int]]:
        """``(start, end)`` positions of the token blocks of shard ``index``."""
        lo, hi = self.shard_starts[index], self.shard_starts[index + 1]
        starts = self.block_starts[np.searchsorted(self.block_starts, lo):np.searchsorted(self.block_starts, hi)]
        ends = list(starts[1:]) + [hi]
        return [(int(s), int(e)) for s, e in zip(starts, ends)]


def digest(kind: str, options: ConvertOptions, listing: list[tuple]) -> str:
    """sha256 over the kind, the options and every source file's ``(relative path, size, stamp)``
    (the stamp, :func:`.sources.file_stamp`, is its modification time in nanoseconds, plus its
    sha256 for small files or with ``checksum_sources``): equal digests mean the same conversion of
    the same bytes. Paths outside SRC and worker counts play no part; a copy of the tree that keeps
    the modification times (``cp -a``, ``shutil.copytree``) has the same digest."""
    h = hashlib.sha256(json.dumps({"kind": kind, "params": options.as_params()}, sort_keys=True).encode())
    for entry in listing:
        h.update(json.dumps(list(entry)).encode())
    return h.hexdigest()


def content_digest(kind: str, options: ConvertOptions, listing: list[tuple]) -> str:
    """:func:`digest` over names and sizes only (no times, hashes or store tags): what the shards'
    stamps derive from. The same files give the same shards wherever they are and however they
    were copied (a local tree and its upload to S3 included), while another dataset converted into
    the same place gives other stamps, which readers of the old manifest notice."""
    return digest(kind, options, [(path, size) for path, size, *_ in listing])


def sample_order(n: int, options: ConvertOptions) -> np.ndarray:
    """Source index at each output position: a seeded permutation, or source order."""
    if options.shuffle:
        return np.random.default_rng(options.seed).permutation(n).astype(np.int64)
    return np.arange(n, dtype=np.int64)


def cut(sample_bytes: np.ndarray, max_bytes: int, max_samples: int | None) -> np.ndarray:
    """Shard starts (plus the end) for samples of ``sample_bytes`` in order: a shard closes before
    the sample that would take it over ``max_bytes`` or ``max_samples``; a sample larger than
    ``max_bytes`` gets a shard of its own."""
    n = len(sample_bytes)
    cum = np.concatenate([[0], np.cumsum(sample_bytes, dtype=np.int64)])
    budget = max_bytes - len(END_OF_ARCHIVE)
    starts, s = [0], 0
    while s < n:
        end = int(np.searchsorted(cum, cum[s] + budget, side="right")) - 1
        if max_samples is not None:
            end = min(end, s + max_samples)
        s = max(end, s + 1)
        starts.append(min(s, n))
    return np.array(starts if n else [0], dtype=np.int64)


def plan_images(source: ImageSource, options: ConvertOptions, digest_: str) -> Plan:
    """Shuffle the listed images and cut them into shards by count and estimated bytes (the
    source file as stored, plus the label and metadata members; exact for pass-through formats)."""
    order = sample_order(len(source.items), options)
    label, meta = codec_of(LABEL_FIELD), codec_of(META_FIELD)
    per_sample = np.array([members_bytes((item.size, len(label.encode(item.label, LABEL_FIELD)), len(meta.encode(
        image_meta(item.path, item.label, source.classes[item.label]), META_FIELD)))) for item in source.items],
        dtype=np.int64)
    starts = cut(per_sample[order] if len(order) else per_sample, options.max_shard_size, options.max_shard_samples)
    return Plan("images", options, digest_, order, starts, list(source.skipped), source=source)


def block_bytes(ntokens: np.ndarray, labels: np.ndarray | None, dtype: np.dtype) -> int:
    """Exact tar bytes of one token block (``blocks.token_layout``) holding these sequences."""
    sizes = {"tokens": int(ntokens.sum()) * dtype.itemsize}
    if labels is not None:
        sizes["label"] = len(labels) * smallest_signed(int(labels.min()), int(labels.max())).itemsize
    return token_layout(dtype.name).block_bytes(sizes, len(ntokens), int(ntokens.max()))


def plan_sequences(table: SequenceTable, options: ConvertOptions, digest_: str,
                   skipped: list[dict[str, Any]]) -> Plan:
    """Shuffle the scanned records, then cut them into token blocks (at most ``BLOCK_TOKEN_BYTES``
    of tokens, or one longer sequence) and shards (by sequence count and exact bytes)."""
    n, dtype = len(table), table.dtype
    order = sample_order(n, options)
    ntokens = table.ntokens[order]
    labels = table.labels[order] if table.has_labels else None
    token_cum = np.concatenate([[0], np.cumsum(ntokens * dtype.itemsize, dtype=np.int64)])
    # Upper bound of a sequence's bytes in a block, to find how many fit in what is left of a shard.
    per_seq = ntokens * dtype.itemsize + smallest_unsigned(int(ntokens.max(initial=0))).itemsize
    if labels is not None:
        per_seq += smallest_signed(int(labels.min(initial=0)), int(labels.max(initial=0))).itemsize
    seq_cum = np.concatenate([[0], np.cumsum(per_seq, dtype=np.int64)])
    max_bytes, max_samples = options.max_shard_size, options.max_shard_samples
    shard_starts, block_starts = [0], []
    s, shard_start, shard_bytes = 0, 0, len(END_OF_ARCHIVE)
    while s < n:
        room = max_bytes - shard_bytes - _BLOCK_OVERHEAD
        end = min(int(np.searchsorted(token_cum, token_cum[s] + BLOCK_TOKEN_BYTES, side="right")) - 1,
                  int(np.searchsorted(seq_cum, seq_cum[s] + room, side="right")) - 1)
        if max_samples is not None:
            end = min(end, shard_start + max_samples)
        if end <= s and s > shard_start:  # not even one more sequence fits: next shard
            shard_starts.append(s)
            shard_start, shard_bytes = s, len(END_OF_ARCHIVE)
            continue
        end = max(end, s + 1)
        block_starts.append(s)
        shard_bytes += block_bytes(ntokens[s:end], None if labels is None else labels[s:end], dtype)
        s = end
    if n:
        shard_starts.append(n)
    return Plan("sequences", options, digest_, order, np.array(shard_starts, dtype=np.int64), skipped,
                source=table, block_starts=np.array(block_starts, dtype=np.int64))
