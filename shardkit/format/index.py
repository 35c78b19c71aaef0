"""The index of a shard: where each sample group (one tar key) starts, and how many samples come
before it, so a reader can seek to any sample instead of reading what precedes it.

Stored beside its shard as ``shard-NNNNNN.idx``: a ``.npy`` (int64, never pickled) of shape
``(groups + 1, 2)``: row ``g`` is ``(byte offset of group g's first header, samples in groups
before g)``; the last row is ``(offset of the end-of-archive marker, samples in the shard)``. A
group holds one sample, or a block of many. The converter and ``ShardWriter`` write it with the
shard; datasets without one (older versions, webdataset shards) get it from one scan, cached.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import ShardError
from .fields import load_npy, npy_bytes
from .tar import BLOCK

INDEX_SUFFIX = ".idx"


def index_name(shard: str) -> str:
    """``shard-000012.tar`` → ``shard-000012.idx``."""
    return shard.removesuffix(".tar") + INDEX_SUFFIX


@dataclass(frozen=True)
class ShardIndex:
    """``offsets[g]``: the byte where group ``g`` starts; ``starts[g]``: samples before it. One
    entry more than there are groups (the end)."""

    offsets: tuple[int, ...]
    starts: tuple[int, ...]

    @property
    def samples(self) -> int:
        return self.starts[-1]

    @property
    def groups(self) -> int:
        return len(self.offsets) - 1

    def locate(self, sample: int) -> tuple[int, int, int]:
        """``(group, its byte offset, samples before it)`` of the group holding ``sample``
        (for ``sample == samples``: the end)."""
        if not 0 <= sample <= self.samples:
            raise IndexError(f"sample {sample} is outside 0..{self.samples}")
        g = bisect.bisect_right(self.starts, sample) - 1
        g = min(g, self.groups)
        return g, self.offsets[g], self.starts[g]

    def to_bytes(self) -> bytes:
        return npy_bytes(np.array([self.offsets, self.starts], dtype=np.int64).T.copy())

    @classmethod
    def from_bytes(cls, data: bytes, shard: str, size: int | None = None,
                   samples: int | None = None, sha256: str | None = None) -> "ShardIndex":
        """Parse and check an index against its shard's ``size`` and ``samples`` and the
        manifest's ``sha256`` of it (each when known).

        Raises:
            ShardError: bytes other than the manifest's, not an int64 array of 2 columns, offsets
                or counts not increasing, or disagreeing with the shard.
        """
        name = index_name(shard)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ShardError(f"its index {name} differs from the manifest's sha256", shard=shard)
        array = load_npy(data, shard, name, kinds="i", ndim=2)
        if array.shape[1] != 2 or len(array) < 1:
            raise ShardError(f"index has shape {array.shape}, expected (groups + 1, 2)", shard=shard, member=name)
        offsets, starts = array[:, 0], array[:, 1]
        if (np.diff(offsets) <= 0).any() or (np.diff(starts) < 0).any() or offsets[0] < 0 or starts[0] != 0 \
                or (offsets % BLOCK).any():
            raise ShardError("index offsets or counts are not increasing block offsets", shard=shard, member=name)
        if (size is not None and offsets[-1] > size) or (samples is not None and starts[-1] != samples):
            raise ShardError(f"index ends at byte {offsets[-1]} after {starts[-1]} samples; the shard has "
                             f"{size} bytes and {samples} samples", shard=shard, member=name)
        return cls(tuple(offsets.tolist()), tuple(starts.tolist()))


class IndexBuilder:
    """Collects a shard's index while it is written: :meth:`group` before each group's first
    member, :meth:`finish` before the end-of-archive marker."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.starts: list[int] = []
        self._samples = 0

    def group(self, offset: int, samples: int) -> None:
        self.offsets.append(offset)
        self.starts.append(self._samples)
        self._samples += samples

    def finish(self, end: int) -> ShardIndex:
        return ShardIndex(tuple(self.offsets) + (end,), tuple(self.starts) + (self._samples,))
