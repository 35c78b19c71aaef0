"""The plan is a pure function of numbers: exactly-once, equal counts, map-style batches, spans,
epoch windows, and what is left of an epoch after any layout consumed part of it."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardkit.stream.plan import (Layout, Segment, batch_order, compact, consumed_counts, epoch_segments, lay_out,
                                  rank_range, remaining, shard_order, split, worker_ranges)

CASES = [
    [10],                 # one shard
    [5, 3, 0, 4],         # an empty shard, N = 12
    [7, 7, 7, 7, 2],      # N = 30
    [1, 1],               # fewer samples than ranks × workers
    [3, 0, 0, 8, 1, 13],  # N = 25, prime-ish
    [1],                  # a single sample: every rank repeats it
    [400],                # the batch-count cases
]


def entries(segments) -> list[tuple[int, int, int]]:
    """``(pass, shard, index)`` of every entry, in order."""
    return [(s.pass_, s.shard, int(i)) for s in segments for i in s.indices()]


def real(segments) -> list[tuple[int, int, int]]:
    return entries(s for s in segments if not s.pad)


def plan_of(counts, layout, *, seed=0, epoch=0, shuffle=True, span=4, consumed=()):
    epoch_segs = epoch_segments(counts, seed=seed, epoch=epoch, shuffle=shuffle)
    seq = remaining(epoch_segs, consumed) if consumed else epoch_segs
    return lay_out(seq, layout, span=span, seed=seed, shuffle=shuffle), epoch_segs


@pytest.mark.parametrize("counts", CASES, ids=str)
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 3])
@pytest.mark.parametrize("ranks", ["pad", "drop", "split"])
def test_exactly_once_and_equal_counts(counts, world_size, num_workers, ranks):
    layout = Layout(world_size, num_workers, 1, ranks)
    plan, epoch = plan_of(counts, layout)
    total, order = sum(counts), entries(epoch)
    seen, per_rank = Counter(), []
    for r in range(world_size):
        got = [e for segs in plan.workers[r] for e in real(segs)]
        pads = [e for segs in plan.workers[r] for s in segs if s.pad for e in entries([s])]
        per_rank.append(len(got) + len(pads))
        seen.update(got + pads)
        assert len(got) + len(pads) == plan.per_rank(r)
        sizes = plan.counts(r)
        assert max(sizes) - min(sizes) <= 1, "workers share a rank's part evenly"
    if ranks == "pad":
        assert len(set(per_rank)) == 1 and per_rank[0] == -(-total // world_size)
        padding = per_rank[0] * world_size - total
        wrapped = order * (padding // max(total, 1) + 1)  # DistributedSampler: repeat the order from its start
        assert seen == Counter(order) + Counter(wrapped[:padding])
    elif ranks == "drop":
        assert len(set(per_rank)) == 1 and per_rank[0] == total // world_size
        assert set(seen) == set(order[:per_rank[0] * world_size]) and max(seen.values(), default=1) == 1
    else:  # evaluation: each sample on exactly one rank, no padding
        assert seen == Counter(order) and max(per_rank) - min(per_rank) <= 1


@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=8), world_size=st.integers(1, 5),
       num_workers=st.integers(0, 4), ranks=st.sampled_from(["pad", "drop", "split"]),
       seed=st.integers(0, 2**32), epoch=st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_exactly_once_property(counts, world_size, num_workers, ranks, seed, epoch):
    plan, epoch_segs = plan_of(counts, Layout(world_size, num_workers, 1, ranks), seed=seed, epoch=epoch)
    got = Counter(e for rank in plan.workers for segs in rank for e in real(segs))
    assert max(got.values(), default=1) == 1, "no real sample twice"
    if ranks != "drop":
        assert set(got) == set(entries(epoch_segs))


@pytest.mark.parametrize("n", [400, 401, 399])
@pytest.mark.parametrize("batch", [16, 199])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_like_a_map_style_loader(n, batch, workers, drop_last):
    layout = Layout(1, workers, batch, "pad", drop_last)
    plan, _ = plan_of([n], layout)
    counts = plan.counts(0)
    sizes = [min(batch, counts[w] - b * batch) for w, b in batch_order(counts, batch)]
    expected = n // batch if drop_last else -(-n // batch)
    assert len(sizes) == expected == plan.batches(0)
    assert all(s == batch for s in sizes[:-1]), "only the last batch is partial"
    assert sizes[-1] == (batch if drop_last else n - (expected - 1) * batch)
    assert n - sum(sizes) < batch


def test_workers_take_contiguous_runs_and_the_partial_batch_is_handed_out_last():
    assert worker_ranges(10, Layout(1, 3, 3)) == [(0, 3), (3, 6), (6, 10)]  # 4 batches: the extra one to the last
    assert list(batch_order([3, 3, 4], 3)) == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert list(batch_order([6, 6, 7], 3, unit=2)) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert consumed_counts([3, 3, 4], 3, 3) == [3, 3, 3] and consumed_counts([3, 3, 4], 3, 4) == [3, 3, 4]


def test_ranks_read_contiguous_parts_and_split_sizes():
    assert [rank_range(10, Layout(3), r) for r in range(3)] == [(0, 4), (4, 8), (8, 12)]
    assert [rank_range(10, Layout(3, ranks="drop"), r) for r in range(3)] == [(0, 3), (3, 6), (6, 9)]
    assert [rank_range(10, Layout(3, ranks="split"), r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [split(10, 4, i) for i in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    with pytest.raises(ValueError):
        rank_range(10, Layout(2), 2)


def test_shard_order_depends_on_seed_and_pass_only():
    a = shard_order(50, seed=1, pass_=0, shuffle=True)
    assert a == shard_order(50, seed=1, pass_=0, shuffle=True) and sorted(a) == list(range(50))
    assert a != shard_order(50, seed=1, pass_=1, shuffle=True) != shard_order(50, seed=2, pass_=0, shuffle=True)
    assert shard_order(5, seed=1, pass_=3, shuffle=False) == list(range(5))


@pytest.mark.parametrize("span", [1, 3, 8, 1000])
def test_spans_shuffle_within_at_most_span_samples_of_one_shard(span):
    plan, epoch = plan_of([20, 13, 7], Layout(1, 2, 1), span=span)
    for segs in plan.workers[0]:
        for s in segs:
            assert s.stop - s.start <= max(span, 1) or s.seed is None
            expected = range(s.start + s.lo, s.start + s.hi) if s.seed is None else range(s.start, s.stop)
            assert sorted(s.indices().tolist()) == list(expected)
    got = [e for segs in plan.workers[0] for e in entries(segs)]
    assert sorted(got) == sorted(entries(epoch))
    if span >= 8:
        assert got != [e for segs in plan.workers[0] for s in segs for e in real([s._replace(seed=None, lo=0,
                       hi=s.stop - s.start)])], "shuffled within spans"


@pytest.mark.parametrize("size", [7, 20, 50, 130])
def test_epoch_windows_subsample_without_repeats_and_continue(size):
    counts, total = [10, 0, 15, 5], 30
    seen = Counter()
    epochs = [entries(epoch_segments(counts, seed=3, epoch=e, shuffle=True, epoch_size=size)) for e in range(6)]
    for e, got in enumerate(epochs):
        assert len(got) == size
        seen.update(got)
    stream = [x for got in epochs for x in got]
    passes = Counter(p for p, _, _ in stream)
    for p, n in passes.items():  # every pass covers the dataset once, in its own order
        in_pass = [(s, i) for q, s, i in stream if q == p]
        assert len(in_pass) == len(set(in_pass)) and (n == total or p == max(passes))
    if size < total:
        assert len(set(x[1:] for x in epochs[0])) == size, "below the dataset's size: no repeats"


@pytest.mark.parametrize("counts", [[7, 7, 7, 7, 2], [40], [3, 0, 8, 1, 13]], ids=str)
@pytest.mark.parametrize("saved", [(1, 0, 1), (2, 2, 3), (3, 1, 2), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("restored", [(1, 0, 1), (2, 2, 3), (3, 1, 2), (4, 2, 5)], ids=str)
@pytest.mark.parametrize("shuffle", [True, False])
def test_what_is_left_is_laid_out_on_any_layout_exactly_once(counts, saved, restored, shuffle):
    w, k, b = saved
    plan, epoch = plan_of(counts, Layout(w, k, b), shuffle=shuffle)
    steps = plan.batches(0) // 2
    consumed = plan.consumed(steps)
    first = Counter(real(consumed))
    w2, k2, b2 = restored
    rest_plan, _ = plan_of(counts, Layout(w2, k2, b2), shuffle=shuffle, consumed=consumed)
    rest = Counter(e for rank in rest_plan.workers for segs in rank for e in real(segs))
    assert max(first.values(), default=1) == 1 and max(rest.values(), default=1) == 1
    assert not set(first) & set(rest), "nothing consumed comes again"
    assert set(first) | set(rest) == set(entries(epoch)), "every sample exactly once, before or after"
    sizes = [rest_plan.per_rank(r) for r in range(w2)]
    assert len(set(sizes)) == 1, "equal per-rank counts after the restore too"


@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=6), saved=st.tuples(st.integers(1, 4),
       st.integers(0, 3), st.integers(1, 7)), restored=st.tuples(st.integers(1, 4), st.integers(0, 3), st.integers(1, 7)),
       again=st.tuples(st.integers(1, 3), st.integers(0, 3), st.integers(1, 5)), frac=st.floats(0, 1),
       frac2=st.floats(0, 1), seed=st.integers(0, 1000), span=st.integers(1, 9))
@settings(max_examples=200, deadline=None)
def test_restoring_twice_on_other_layouts_still_gives_each_sample_once(counts, saved, restored, again, frac, frac2,
                                                                        seed, span):
    plan, epoch = plan_of(counts, Layout(*saved), seed=seed, span=span)
    consumed = plan.consumed(int(plan.batches(0) * frac))
    plan2, _ = plan_of(counts, Layout(*restored), seed=seed, span=span, consumed=consumed)
    consumed2 = compact(list(consumed) + plan2.consumed(int(plan2.batches(0) * frac2)))
    plan3, _ = plan_of(counts, Layout(*again), seed=seed, span=span, consumed=consumed2)
    rest = [e for rank in plan3.workers for segs in rank for e in real(segs)]
    done = real(consumed2)
    assert len(done) == len(set(done)) and len(rest) == len(set(rest)) and not set(done) & set(rest)
    assert sorted(done + rest) == sorted(entries(epoch))


def test_segments_round_trip_as_plain_lists():
    seg = Segment(1, 2, 10, 20, 12345, 3, 7)
    assert Segment.from_list(seg.to_list()) == seg
    for bad in ([1, 2, 3], [0, 0, 5, 4, None, 0, 1], [0, 0, 0, 4, None, 0, 9], [0, -1, 0, 4, None, 0, 1]):
        with pytest.raises(ValueError):
            Segment.from_list(bad)
