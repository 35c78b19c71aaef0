"""``IndexedDataset``: random access to the samples of a converted dataset (a map-style
``torch.utils.data.Dataset``), for evaluation, inspection and samplers.

Sample ``i`` is the ``i``-th in stored order, shard after shard. Each shard's index (the sidecar
written with it; for version 1 datasets and webdataset shards, one scan of the shard, cached)
says at which byte the group holding the sample starts and where the next one does, so
``dataset[i]`` reads exactly that group: one ``pread`` locally, one range request remotely. A
group of a token or tabular dataset is a block of many samples: the last few blocks read stay in
memory, so neighbouring samples cost no second read. Samples are decoded by the same views as
``StreamingDataset`` (same output, ``fields``, ``decode`` and errors).
"""

from __future__ import annotations

import bisect
import io
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from .. import storage
from ..errors import ManifestError, ShardError, StorageError
from ..format.index import ShardIndex
from ..format.records import group_samples
from ..format.tar import BLOCK, iter_members, plain_members
from .reader import BlockRows
from .sources import Source, resolve, shard_index
from .views import View, make_view

#: Blocks (groups of many samples) kept per process after they were read.
HELD_BLOCKS = 4


class IndexedDataset(Dataset):
    """The samples of a converted dataset (or of webdataset shards), by index.

    Args:
        source: a directory or URL with ``manifest.json``, a list of tar shards or a brace pattern
            (as ``StreamingDataset`` takes).
        transform: called on each decoded sample (as ``StreamingDataset``'s, but unseeded: a random
            transform draws from torch's generator, as in any map-style dataset).
        fields: yield only these fields, as a dict.
        decode: True decodes images to uint8 tensors; False keeps their bytes (and NumPy arrays);
            a callable decodes image fields with it.
        storage_options: fsspec options for URLs.
        cache_dir: where the scans of shards without an index are cached (default
            ``~/.cache/shardkit``).

    ``dataset[i]`` accepts negative indices; ``len(dataset)`` is the sample count. It works under
    ``torch.utils.data.Subset``, any sampler and ``DistributedSampler`` (each rank its indices).

    Raises:
        ManifestError: (construction) no valid manifest; (``dataset[i]``) a shard missing.
        ShardError: (``dataset[i]``) damaged data, or an index that disagrees with its shard.
        IndexError: an index outside ``-len..len - 1``.
        TypeError: an index that is not an int.
        ValueError: fields not in the dataset.
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], *,
                 transform: Callable[[Any], Any] | None = None, fields: Sequence[str] | None = None,
                 decode: bool | Callable = True, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.storage_options, self.cache_dir = storage_options, cache_dir
        self.source: Source = resolve(source, storage_options=storage_options, cache_dir=cache_dir)
        if fields is not None:
            fields = tuple(fields)
            unknown = [f for f in fields if f not in self.source.schema.names]
            if unknown:
                raise ValueError(f"fields {unknown} are not in this dataset (it has {list(self.source.schema.names)})")
        self.view: View = make_view(self.source.schema, self.source.classes, fields, decode, transform)
        self._starts = list(itertools.accumulate(self.source.counts, initial=0))
        self._indexes: dict[int, ShardIndex] = {}
        self._blocks: OrderedDict[tuple[int, int], Any] = OrderedDict()

    @property
    def classes(self) -> list[str] | None:
        """Class names (images from a manifest), the label being the index; else None."""
        return list(self.source.classes) if self.source.classes is not None else None

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_blocks"] = OrderedDict()  # each process reads its own
        return state

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, sample in the shard)`` of sample ``index`` (negative counts from the end).

        Raises:
            IndexError: out of range. TypeError: not an int.
        """
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(f"an IndexedDataset is indexed by ints, not {type(index).__name__}")
        index = index.__index__()
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} samples")
        if index < 0:
            index += n
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def __getitem__(self, index: int) -> Any:
        shard, i = self.locate(index)
        ref = self.source.shards[shard]
        raw = self._raw(shard, i)
        out = self.view(raw, ref.name)
        return self.view.finish(out) if self.view.transform is not None else out

    # -- reading ------------------------------------------------------------------------------
    def _index(self, shard: int) -> ShardIndex:
        found = self._indexes.get(shard)
        if found is None:
            found = self._indexes[shard] = shard_index(self.source.shards[shard], self.source.schema,
                                                       self.storage_options, self.cache_dir)
        return found

    def _raw(self, shard: int, i: int):
        index = self._index(shard)
        group, offset, first = index.locate(i)
        held = self._blocks.get((shard, group))
        if held is None:
            held = self._read_group(shard, offset, index.offsets[group + 1])
            if self.source.schema.blocks is not None:
                self._blocks[(shard, group)] = held
                while len(self._blocks) > HELD_BLOCKS:
                    self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end((shard, group))
        if isinstance(held, BlockRows):  # a block's samples
            if not 0 <= i - first < len(held):
                raise ShardError(f"the index puts sample {i} in a group of {len(held)} samples at byte {offset}",
                                 shard=self.source.shards[shard].name, offset=offset)
            return held[i - first]
        return held

    def _read_group(self, shard: int, start: int, end: int):
        """The group of members at bytes ``start..end`` of the shard: one read."""
        ref = self.source.shards[shard]
        try:
            data = storage.read_range(ref.path, start, end, self.storage_options)
        except FileNotFoundError:
            raise ManifestError(f"shard {ref.name} is missing") from None
        except (OSError, StorageError) as err:
            if isinstance(err, StorageError) and "not found" in str(err).lower():
                raise ManifestError(f"shard {ref.name} is missing ({err})") from None
            raise
        if len(data) != end - start:
            raise ShardError(f"holds {start + len(data)} bytes, its index says a group ends at byte {end}",
                             shard=ref.name, offset=start + len(data))
        members = plain_members(data, start, ref.stamp)
        if members is None:  # anything but plain USTAR files (PAX headers, damage): the full reader
            # an end-of-archive marker after the group's bytes ends the member stream where they end
            stream = io.BytesIO(data + bytes(2 * BLOCK))
            members = iter_members(stream, ref.name, size=end + 2 * BLOCK, stamp=ref.stamp, start=start)
        groups = list(group_samples(members))
        if len(groups) != 1 or groups[0].offset != start:
            raise ShardError(f"the index says one group starts at byte {start}; {len(groups)} were found there",
                             shard=ref.name, offset=start)
        group = groups[0]
        schema = self.source.schema
        if group.duplicate is not None and self.source.manifest is not None:
            raise ShardError(f"duplicate member {group.duplicate!r}", shard=ref.name, offset=start)
        if schema.blocks is None:
            return group
        block = schema.blocks.decode(group.fields, ref.name, group.key)
        return BlockRows(block, group.key)
