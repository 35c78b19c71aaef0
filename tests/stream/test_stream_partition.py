"""The partition is a pure function of numbers: check exactly-once and equal counts on many cases."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardkit.stream.partition import partition, samples_per_rank, shard_order, split, worker_counts

CASES = [
    [10],                 # one shard
    [5, 3, 0, 4],         # an empty shard, N = 12
    [7, 7, 7, 7, 2],      # N = 30
    [1, 1],               # fewer samples than ranks × workers
    [3, 0, 0, 8, 1, 13],  # N = 25, prime-ish
    [1],                  # a single sample: every rank repeats it
]


def everything(counts, *, world_size, num_workers, drop_last, seed=0, epoch=0, shuffle=True):
    """{rank: {worker: [(shard, index), ...]}} over all ranks and workers."""
    out = {}
    for rank in range(world_size):
        out[rank] = {}
        for worker in range(max(num_workers, 1)):
            pieces = partition(counts, seed=seed, epoch=epoch, rank=rank, world_size=world_size, worker=worker,
                               num_workers=num_workers, drop_last=drop_last, shuffle=shuffle)
            for p in pieces:
                assert 0 <= p.start < p.stop <= counts[p.shard]
            out[rank][worker] = [(p.shard, i) for p in pieces for i in range(p.start, p.stop)]
    return out


def global_order(counts, seed, epoch, shuffle=True):
    return [(s, i) for s in shard_order(len(counts), seed=seed, epoch=epoch, shuffle=shuffle) for i in range(counts[s])]


def check(counts, world_size, num_workers, drop_last, seed=0, epoch=0):
    total = sum(counts)
    per_rank = samples_per_rank(total, world_size, drop_last)
    got = everything(counts, world_size=world_size, num_workers=num_workers, drop_last=drop_last, seed=seed, epoch=epoch)
    seen = Counter()
    for rank, workers in got.items():
        sizes = [len(v) for v in workers.values()]
        assert sum(sizes) == per_rank, "every rank yields the same count"
        assert max(sizes) - min(sizes) <= 1, "workers share a rank's part evenly"
        assert sizes == worker_counts(per_rank, num_workers)
        for samples in workers.values():
            seen.update(samples)
    order = global_order(counts, seed, epoch)
    if drop_last:
        assert set(seen) == set(order[:per_rank * world_size]) and max(seen.values(), default=1) == 1
    else:
        assert set(seen) == set(order), "every sample at least once"
        padding = per_rank * world_size - total
        # DistributedSampler's rule: the padding repeats the epoch's order from its start
        wrapped = order * (padding // max(total, 1) + 1)
        assert seen == Counter(order) + Counter(wrapped[:padding])


@pytest.mark.parametrize("counts", CASES, ids=str)
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_exactly_once_and_equal_counts(counts, world_size, num_workers, drop_last):
    for epoch in range(3):
        check(counts, world_size, num_workers, drop_last, seed=5, epoch=epoch)


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(st.integers(0, 20), min_size=1, max_size=12), world_size=st.integers(1, 5),
       num_workers=st.integers(0, 6), drop_last=st.booleans(), seed=st.integers(0, 2**32), epoch=st.integers(0, 50))
def test_exactly_once_property(counts, world_size, num_workers, drop_last, seed, epoch):
    check(counts, world_size, num_workers, drop_last, seed, epoch)


def test_more_workers_than_shards_all_get_samples():
    got = everything([6, 6], world_size=1, num_workers=4, drop_last=False)
    assert [len(v) for v in got[0].values()] == [3, 3, 3, 3]


def test_ranks_read_contiguous_parts():
    """A rank opens few shards: with 4 equal shards and 2 ranks, each rank reads 2 whole shards."""
    for epoch in range(4):
        got = everything([10] * 4, world_size=2, num_workers=0, drop_last=False, epoch=epoch)
        for rank in got.values():
            assert len({s for s, _ in rank[0]}) == 2


def test_shard_order_depends_on_seed_and_epoch_only():
    orders = {(seed, epoch): tuple(shard_order(20, seed=seed, epoch=epoch, shuffle=True))
              for seed in (0, 1) for epoch in (0, 1, 2)}
    assert len(set(orders.values())) == 6, "every (seed, epoch) gives another order"
    assert orders[(0, 1)] == tuple(shard_order(20, seed=0, epoch=1, shuffle=True))
    assert shard_order(5, seed=3, epoch=9, shuffle=False) == [0, 1, 2, 3, 4]


def test_split_sizes():
    assert [split(10, 3, i) for i in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [split(2, 4, i) for i in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]


@pytest.mark.parametrize("kwargs", [dict(rank=2, world_size=2, worker=0, num_workers=1),
                                    dict(rank=0, world_size=1, worker=3, num_workers=3)])
def test_out_of_range(kwargs):
    with pytest.raises(ValueError, match="outside"):
        partition([3], seed=0, epoch=0, **kwargs)
