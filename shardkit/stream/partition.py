"""Which samples one (rank, worker) reads in an epoch: a pure function of numbers, no I/O.

The epoch's global sequence is the shards in an order drawn from ``(seed, epoch)``, concatenated.
As in ``torch.utils.data.DistributedSampler``, it is padded by repeating from its start until
every rank gets the same count, or cut to a multiple of the world size with ``drop_last``. Rank
``r`` takes the ``r``-th contiguous slice of it (contiguous, so a rank opens few shards), and
DataLoader worker ``w`` the ``w``-th contiguous slice of its rank's part. A slice is a list of
:class:`Piece` s, each a range of samples inside one shard.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Piece(NamedTuple):
    """Samples ``start`` (included) to ``stop`` (excluded) of shard number ``shard``."""

    shard: int
    start: int
    stop: int


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which the epoch visits the shards: a permutation drawn from ``(seed, epoch)``."""
    if not shuffle:
        return list(range(num_shards))
    return np.random.default_rng([seed, epoch]).permutation(num_shards).tolist()


def samples_per_rank(total: int, world_size: int, drop_last: bool) -> int:
    """Samples each rank yields per epoch: ``ceil(total / world_size)``, or the floor with ``drop_last``."""
    return total // world_size if drop_last else -(-total // world_size)


def split(count: int, parts: int, index: int) -> tuple[int, int]:
    """``[lo, hi)`` of part ``index`` when ``count`` items are cut into ``parts`` contiguous parts
    whose sizes differ by at most one (the first ``count % parts`` parts get one more)."""
    base, extra = divmod(count, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (index < extra)


def worker_counts(per_rank: int, num_workers: int) -> list[int]:
    """Samples each of ``num_workers`` workers (at least one) yields from its rank's ``per_rank``."""
    workers = max(num_workers, 1)
    return [hi - lo for lo, hi in (split(per_rank, workers, w) for w in range(workers))]


def partition(counts: Sequence[int], *, seed: int, epoch: int, rank: int, world_size: int,
              worker: int, num_workers: int, drop_last: bool = False, shuffle: bool = True) -> list[Piece]:
    """The pieces of the shards (with ``counts`` samples each) that this rank's worker reads.

    ``num_workers`` 0 (no DataLoader workers) is one worker. Pieces come in reading order; a shard
    may appear twice when padding wraps around to it.

    Raises:
        ValueError: rank or worker outside its range.
    """
    workers = max(num_workers, 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is outside 0..{workers - 1}")
    order = [s for s in shard_order(len(counts), seed=seed, epoch=epoch, shuffle=shuffle) if counts[s] > 0]
    total = sum(counts[s] for s in order)
    per_rank = samples_per_rank(total, world_size, drop_last)
    lo, hi = split(per_rank, workers, worker)
    begin, end = rank * per_rank + lo, rank * per_rank + hi
    starts = list(itertools.accumulate((counts[s] for s in order), initial=0))
    pieces: list[Piece] = []
    while begin < end:  # positions past ``total`` are padding: they wrap to the start
        at = begin % total
        i = bisect.bisect_right(starts, at) - 1
        take = min(starts[i + 1] - at, end - begin)
        pieces.append(Piece(order[i], at - starts[i], at - starts[i] + take))
        begin += take
    return pieces
