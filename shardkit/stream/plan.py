"""Which samples each rank and worker reads in an epoch, in which order: pure functions of numbers.

**The stream.** Pass ``p`` over the dataset visits the shards in an order drawn from
``(seed, p)``; the passes follow each other. Epoch ``e`` is the window ``[e·N, (e+1)·N)`` of that
stream (``N``, the epoch size, defaults to the dataset's size, so epoch ``e`` is pass ``e``). A
window no longer than a pass that straddles two passes would meet the shards at the end of the
first again at the start of the second: the second pass then visits those shards last (the
shard where the window began first among them), so such a window never repeats a sample (see
:func:`pass_orders`). A mix's sources change window sizes when their weights do: their windows
follow :class:`Regime` s.

**Segments.** A piece of the stream is a :class:`Segment`: entries ``lo..hi`` of shard ``shard``'s
samples ``start..stop`` taken in the order a seed draws (a *span*: shuffled within, at most the
shuffle buffer's size), or in stored order (``seed`` None). A sample occurrence is named
``(pass, shard, index)`` whatever the layout, so its transform seed, and what a checkpoint says
was consumed, do not depend on the layout.

**Layout.** As in ``DistributedSampler``, the epoch's sequence is padded by repeating from its
start until every rank gets the same count (or cut with ``drop_last``; or, with ``even=False``,
split without padding, counts differing by at most one); rank ``r`` takes the ``r``-th contiguous
part. A rank's part is cut into batches; worker ``w`` of ``K`` takes a contiguous run of them
(sizes differing by at most one), so only the rank's last batch is partial and each worker reads a
contiguous stretch of shards. Batches are handed out round robin over the workers (a worker
without batches left is passed over), which is also the order in which DataLoader asks its
workers; the partial batch comes last.

**Resuming.** What was consumed is a list of segments; the rest of the epoch is the epoch's
sequence minus them, in the same order, and is laid out on any new layout the same way.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .state import derive_seed


class Segment(NamedTuple):
    """Entries ``lo..hi`` of the samples ``start..stop`` of shard ``shard`` in pass ``pass_``,
    in the order drawn by ``seed`` (None: stored order). ``pad``: a repeat that only evens out
    the ranks' counts (never recorded as consumed)."""

    pass_: int
    shard: int
    start: int
    stop: int
    seed: int | None
    lo: int
    hi: int
    pad: bool = False

    @property
    def count(self) -> int:
        """How many entries it holds."""
        return self.hi - self.lo

    def indices(self) -> np.ndarray:
        """The shard sample indices of the entries, in order (int64)."""
        if self.seed is None:
            return np.arange(self.start + self.lo, self.start + self.hi, dtype=np.int64)
        return self.start + permutation(self.stop - self.start, self.seed)[self.lo:self.hi]

    def cut(self, lo: int, hi: int) -> "Segment":
        """Entries ``lo..hi`` of this segment (relative to it)."""
        return self._replace(lo=self.lo + lo, hi=self.lo + hi)

    def to_list(self) -> list:
        return [self.pass_, self.shard, self.start, self.stop, self.seed, self.lo, self.hi]

    @classmethod
    def from_list(cls, item: Sequence) -> "Segment":
        """Raises ``ValueError`` for a malformed item."""
        if len(item) != 7:
            raise ValueError(f"a segment has 7 entries, not {len(item)}")
        p, shard, start, stop, seed, lo, hi = item
        values = [int(v) for v in (p, shard, start, stop, lo, hi)]
        p, shard, start, stop, lo, hi = values
        if min(values) < 0 or start > stop or not 0 <= lo <= hi <= stop - start:
            raise ValueError(f"segment {list(item)!r:.80} is out of range")
        return cls(p, shard, start, stop, None if seed is None else int(seed), lo, hi)


_PERMUTATIONS: dict[tuple[int, int], np.ndarray] = {}


def permutation(n: int, seed: int) -> np.ndarray:
    """The permutation of ``range(n)`` drawn from ``seed`` (the last few are kept: consecutive
    batches of one span ask for the same one)."""
    key = (n, seed)
    found = _PERMUTATIONS.get(key)
    if found is None:
        if len(_PERMUTATIONS) >= 8:
            _PERMUTATIONS.pop(next(iter(_PERMUTATIONS)))
        found = _PERMUTATIONS[key] = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return found


# --- the stream and its epochs ----------------------------------------------------------------

def shard_order(num_shards: int, *, seed: int, pass_: int, shuffle: bool) -> list[int]:
    """The order in which pass ``pass_`` visits the shards: a permutation drawn from ``(seed, pass)``."""
    if not shuffle:
        return list(range(num_shards))
    return np.random.default_rng([seed, pass_]).permutation(num_shards).tolist()


class Regime(NamedTuple):
    """From epoch ``since`` on, epoch ``e``'s window is ``[start + (e - since)·size, … + size)``
    of the stream (until the next regime, which starts where one of these windows ends)."""

    since: int
    start: int
    size: int


def _straddle(boundary: int, regimes: Sequence[Regime]) -> tuple[int, int] | None:
    """The window ``(begin, end)`` that holds stream position ``boundary`` strictly inside, if any."""
    for i, r in enumerate(regimes):
        nxt = regimes[i + 1].start if i + 1 < len(regimes) else None
        if r.start <= boundary and (nxt is None or boundary < nxt):
            if r.size <= 0:
                return None
            into = (boundary - r.start) % r.size
            return None if into == 0 else (boundary - into, boundary - into + r.size)
    return None


_ORDERS: dict[tuple, list[list[int]]] = {}


def pass_orders(counts: Sequence[int], *, seed: int, shuffle: bool, regimes: Sequence[Regime],
                last: int) -> list[list[int]]:
    """The shard order of passes ``0..last`` (shards with samples only).

    Pass ``q`` visits the shards in the order drawn from ``(seed, q)``, except where a window of
    at most one pass's length straddles passes ``q - 1`` and ``q``: the shards of ``q - 1`` that
    the window holds (its tail) go last in pass ``q``, the first of them (the one the window
    starts in, perhaps partly) leading, so the window's head, which is shorter than the rest of
    the pass, ends before any of them. Without shuffling every order is the stored one."""
    key = (tuple(counts), seed, shuffle, tuple(regimes))
    orders = _ORDERS.get(key)
    if orders is None:
        if len(_ORDERS) >= 16:
            _ORDERS.pop(next(iter(_ORDERS)))
        orders = _ORDERS[key] = []
    total = sum(counts)
    while len(orders) <= last:
        q = len(orders)
        drawn = [s for s in shard_order(len(counts), seed=seed, pass_=q, shuffle=shuffle) if counts[s] > 0]
        window = _straddle(q * total, regimes) if q and shuffle else None
        if window is not None and window[1] - window[0] <= total:
            tail, held, at = q * total - window[0], [], 0
            for s in reversed(orders[-1]):  # the shards of the previous pass's last `tail` samples
                held.append(s)
                at += counts[s]
                if at >= tail:
                    break
            first, rest = held[-1], set(held[:-1])
            drawn = ([s for s in drawn if s != first and s not in rest] + [first] +
                     [s for s in drawn if s in rest])
        orders.append(drawn)
    return orders[:last + 1]


def window(counts: Sequence[int], *, seed: int, shuffle: bool, begin: int, end: int,
           regimes: Sequence[Regime] | None = None) -> list[Segment]:
    """Positions ``begin..end`` of the stream of passes, as stored-order segments (whole shards, or
    parts where the window starts or ends inside one). ``regimes``: how the stream is cut into
    epochs (default: windows of one pass), which decides the passes' orders (:func:`pass_orders`)."""
    total = sum(counts)
    if total == 0 or begin >= end:
        return []
    regimes = tuple(regimes) if regimes else (Regime(0, 0, total),)
    out: list[Segment] = []
    first, last = begin // total, -(-end // total) - 1
    orders = pass_orders(counts, seed=seed, shuffle=shuffle, regimes=regimes, last=last)
    for p in range(first, last + 1):
        at = p * total
        for s in orders[p]:
            lo, hi = max(begin - at, 0), min(end - at, counts[s])
            if lo < hi:
                out.append(Segment(p, s, 0, counts[s], None, lo, hi))
            at += counts[s]
    return out


def epoch_segments(counts: Sequence[int], *, seed: int, epoch: int, shuffle: bool,
                   epoch_size: int | None = None) -> list[Segment]:
    """Epoch ``epoch``'s window of the stream, as stored-order segments (whole shards, or parts
    where the window starts or ends inside one). Below the dataset's size no epoch repeats a
    sample, and the epochs go on through the passes; above it, passes repeat, each reshuffled."""
    total = sum(counts)
    size = total if epoch_size is None else epoch_size
    if total == 0 or size == 0:
        return []
    return window(counts, seed=seed, shuffle=shuffle, begin=epoch * size, end=(epoch + 1) * size,
                  regimes=(Regime(0, 0, size),))


def take(segments: Sequence[Segment], begin: int, end: int) -> list[Segment]:
    """Entries ``begin..end`` of the concatenated segments; positions past their total wrap to
    the start (padding: marked ``pad``)."""
    total = sum(s.count for s in segments)
    starts = list(itertools.accumulate((s.count for s in segments), initial=0))
    out: list[Segment] = []
    while begin < end:
        at = begin % total
        i = bisect.bisect_right(starts, at) - 1
        n = min(starts[i + 1] - at, end - begin)
        piece = segments[i].cut(at - starts[i], at - starts[i] + n)
        out.append(piece._replace(pad=piece.pad or begin >= total))
        begin += n
    return out


def spans(segments: Iterable[Segment], span: int, seed: int, shuffle: bool) -> list[Segment]:
    """Stored-order segments cut into spans of at most ``span`` samples, each shuffled within by
    a seed drawn from ``(seed, pass, shard, start)``; other segments (already shuffled) pass."""
    out = []
    for seg in segments:
        if seg.seed is not None or not shuffle or span <= 1:
            out.append(seg)
            continue
        first, last = seg.start + seg.lo, seg.start + seg.hi
        for a in range(first, last, span):
            b = min(a + span, last)
            out.append(Segment(seg.pass_, seg.shard, a, b, derive_seed(seed, seg.pass_, seg.shard, a, b), 0, b - a, seg.pad))
    return out


# --- ranks, workers, batches ------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How an epoch is spread: ``world_size`` ranks, ``num_workers`` readers per rank (0 and 1
    both mean one), batches of ``batch_size`` samples (1: sample by sample), handed out
    ``unit`` batches at a time per worker. ``ranks``: ``"pad"`` evens the ranks out by repeating
    samples (DistributedSampler), ``"drop"`` cuts them to the smallest (its ``drop_last``),
    ``"split"`` gives each sample to one rank (counts differing by at most one). ``drop_last``:
    each rank yields whole batches only (DataLoader's ``drop_last``)."""

    world_size: int = 1
    num_workers: int = 1
    batch_size: int = 1
    ranks: str = "pad"
    drop_last: bool = False
    unit: int = 1
    #: packing (``stream.packing``): the entries are tokens, each rank's part is whole rows of
    #: ``block`` tokens (``batch_size`` is then tokens per batch); ``eos``: an end-of-document
    #: token follows each document (it is an entry too). 0: the entries are samples.
    block: int = 0
    eos: bool = False

    @property
    def workers(self) -> int:
        return max(self.num_workers, 1)

    def to_dict(self) -> dict[str, int | bool | str]:
        doc = {"world_size": self.world_size, "num_workers": self.workers, "batch_size": self.batch_size,
               "ranks": self.ranks, "drop_last": self.drop_last, "unit": self.unit}
        if self.block:  # (only then: the states of sample loaders keep their form)
            doc.update(block=self.block, eos=self.eos)
        return doc


def split(count: int, parts: int, index: int) -> tuple[int, int]:
    """``[lo, hi)`` of part ``index`` when ``count`` items are cut into ``parts`` contiguous parts
    whose sizes differ by at most one (the first ``count % parts`` parts get one more)."""
    base, extra = divmod(count, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (index < extra)


def rank_range(total: int, layout: Layout, rank: int) -> tuple[int, int]:
    """``[begin, end)`` of rank ``rank``'s samples in the (padded) sequence of ``total`` samples:
    ``ceil(total / W)`` each (``"pad"``: DistributedSampler's padding), ``floor`` (``"drop"``), or
    parts differing by one (``"split"``); then cut to whole batches with ``drop_last``."""
    if not 0 <= rank < layout.world_size:
        raise ValueError(f"rank {rank} is outside 0..{layout.world_size - 1}")
    w = layout.world_size
    if layout.ranks == "split":
        lo, hi = split(total, w, rank)
    else:
        per = total // w if layout.ranks == "drop" else -(-total // w)
        lo, hi = rank * per, (rank + 1) * per
    if layout.drop_last:
        hi = lo + (hi - lo) // layout.batch_size * layout.batch_size
    return lo, hi


def samples_per_rank(total: int, layout: Layout, rank: int = 0) -> int:
    lo, hi = rank_range(total, layout, rank)
    return hi - lo


def worker_ranges(count: int, layout: Layout) -> list[tuple[int, int]]:
    """Each worker's ``[lo, hi)`` of its rank's ``count`` samples: contiguous runs of whole
    batches, as even as batches allow, the extra ones to the last workers, so that the rank's
    only partial batch (its last) is also the last one handed out (see :func:`batch_order`)."""
    b, workers = layout.batch_size, layout.workers
    base, extra = divmod(-(-count // b), workers)
    out, lo = [], 0
    for w in range(workers):
        n = base + (w >= workers - extra)
        out.append((min(lo * b, count), min((lo + n) * b, count)))
        lo += n
    return out


def batch_order(counts: Sequence[int], batch_size: int, unit: int = 1) -> Iterator[tuple[int, int]]:
    """``(worker, its batch number)`` of a rank's batches in the order they are handed out: round
    robin over the workers, ``unit`` batches of one worker at a time, passing over those without
    batches left (DataLoader asks its workers round robin too, one request each)."""
    left = [-(-c // batch_size) for c in counts]
    done = [0] * len(counts)
    while any(d < n for d, n in zip(done, left)):
        for w in range(len(counts)):
            for _ in range(unit):
                if done[w] < left[w]:
                    yield w, done[w]
                    done[w] += 1


def consumed_counts(counts: Sequence[int], batch_size: int, batches: int, unit: int = 1) -> list[int]:
    """Samples each worker had yielded once the rank handed out ``batches`` batches."""
    taken = [0] * len(counts)
    for w, _ in itertools.islice(batch_order(counts, batch_size, unit), batches):
        taken[w] = min(taken[w] + batch_size, counts[w])
    return taken


# --- consumed and remaining -------------------------------------------------------------------

def prefix(segments: Sequence[Segment], n: int) -> list[Segment]:
    """The first ``n`` entries of the segments."""
    return take(segments, 0, n) if n > 0 else []


def remaining(epoch: Sequence[Segment], consumed: Iterable[Segment]) -> list[Segment]:
    """The epoch's entries not in ``consumed`` (padding there is ignored), in the epoch's order.

    A span some of whose entries were consumed stays a span (its seed), with its remaining entries
    as segments of it; stored-order parts that were consumed are cut out of the shards' ranges.
    """
    spans_done: dict[tuple, list[tuple[int, int]]] = {}
    plain_done: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for c in consumed:
        if c.pad or c.lo == c.hi:
            continue
        if c.seed is None:
            plain_done.setdefault((c.pass_, c.shard), []).append((c.start + c.lo, c.start + c.hi))
        else:
            spans_done.setdefault((c.pass_, c.shard, c.start, c.stop, c.seed), []).append((c.lo, c.hi))
    touched: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for (p, shard, start, stop, seed) in spans_done:
        touched.setdefault((p, shard), []).append((start, stop, seed))
    out: list[Segment] = []
    for seg in epoch:
        key = (seg.pass_, seg.shard)
        first, last = seg.start + seg.lo, seg.start + seg.hi
        # what of [first, last) is gone: consumed stored-order ranges and every touched span
        cuts = [(max(a, first), min(b, last)) for a, b in plain_done.get(key, ())]
        spans_here = sorted(t for t in touched.get(key, ()) if t[0] < last and t[1] > first)
        cuts += [(a, b) for a, b, _ in spans_here]
        pieces = [(a, b, None) for a, b in subtract([(first, last)], cuts)]
        for a, b, seed in spans_here:
            left = subtract([(0, b - a)], spans_done[(seg.pass_, seg.shard, a, b, seed)])
            pieces += [(a, b, (seed, lo, hi)) for lo, hi in left]
        for a, b, spanned in sorted(pieces, key=lambda p: (p[0], p[2] is not None and p[2][1])):
            if spanned is None:
                out.append(Segment(seg.pass_, seg.shard, 0, seg.stop, None, a, b))
            else:
                seed, lo, hi = spanned
                out.append(Segment(seg.pass_, seg.shard, a, b, seed, lo, hi))
    return out


def subtract(ranges: list[tuple[int, int]], cuts: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` minus the ``cuts``, as sorted disjoint ranges."""
    out = ranges
    for a, b in sorted(c for c in cuts if c[0] < c[1]):
        nxt = []
        for lo, hi in out:
            if b <= lo or a >= hi:
                nxt.append((lo, hi))
                continue
            if lo < a:
                nxt.append((lo, a))
            if b < hi:
                nxt.append((b, hi))
        out = nxt
    return out


def compact(segments: Iterable[Segment]) -> list[Segment]:
    """Real (not padding) segments with adjacent stored-order pieces of one shard merged: how a
    state records what was consumed."""
    out: list[Segment] = []
    for seg in sorted((s for s in segments if not s.pad and s.lo < s.hi),
                      key=lambda s: (s.pass_, s.shard, s.seed is not None, s.start, s.stop, s.seed or 0, s.lo)):
        last = out[-1] if out else None
        if (last is not None and last.seed is None and seg.seed is None and (last.pass_, last.shard) == (seg.pass_, seg.shard)
                and last.start + last.hi == seg.start + seg.lo):
            out[-1] = last._replace(hi=last.hi + seg.start + seg.hi - (last.start + last.hi))
        elif (last is not None and seg.seed is not None and last[:5] == seg[:5] and last.hi == seg.lo):
            out[-1] = last._replace(hi=seg.hi)
        else:
            out.append(seg._replace(pad=False))
    return out


# --- one epoch's plan -------------------------------------------------------------------------

@dataclass(frozen=True)
class EpochPlan:
    """Every rank's workers' segments for one epoch (or the rest of one), on one layout.

    ``workers[r][w]``: the segments rank ``r``'s worker ``w`` reads, in order.
    """

    layout: Layout
    workers: tuple[tuple[tuple[Segment, ...], ...], ...]

    def counts(self, rank: int) -> list[int]:
        """Samples each of the rank's workers yields."""
        return [sum(s.count for s in segs) for segs in self.workers[rank]]

    def per_rank(self, rank: int = 0) -> int:
        return sum(self.counts(rank))

    def batches(self, rank: int = 0) -> int:
        return sum(-(-c // self.layout.batch_size) for c in self.counts(rank))

    def consumed(self, batches: int) -> list[Segment]:
        """What every rank had consumed once each handed out ``batches`` batches (the ranks go in
        lockstep, as DDP steps do), compacted."""
        out = []
        for rank_workers in self.workers:
            counts = [sum(s.count for s in segs) for segs in rank_workers]
            for segs, n in zip(rank_workers, consumed_counts(counts, self.layout.batch_size, batches, self.layout.unit)):
                out += prefix(segs, n)
        return compact(out)


def lay_out(sequence: Sequence[Segment], layout: Layout, *, span: int, seed: int, shuffle: bool) -> EpochPlan:
    """Spread a sequence of segments (an epoch, or what is left of one) over ``layout``: ranks,
    then workers, then spans within each worker's part."""
    total = sum(s.count for s in sequence)
    ranks = []
    for r in range(layout.world_size):
        begin, end = rank_range(total, layout, r)
        part = take(sequence, begin, end) if total else []
        workers = []
        for lo, hi in worker_ranges(end - begin, layout):
            workers.append(tuple(spans(take(part, lo, hi) if hi > lo else [], span, seed, shuffle)))
        ranks.append(tuple(workers))
    return EpochPlan(layout, tuple(ranks))


class Cursor:
    """Cuts entries out of a list of segments (a worker's, a mix source's), mostly going forward:
    :func:`take` without wrapping, and without walking from the start each time."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments, self.i, self.at = tuple(segments), 0, 0  # segment i starts at entry `at`

    def _locate(self, begin: int) -> tuple[int, int]:
        """``(i, at)``: the segment holding entry ``begin`` and its first entry (from here on)."""
        i, at = (self.i, self.at) if begin >= self.at else (0, 0)
        while i < len(self.segments) and at + self.segments[i].count <= begin:
            at += self.segments[i].count
            i += 1
        return i, at

    def take(self, begin: int, end: int) -> list[Segment]:
        """Entries ``begin..end`` (within the segments' total)."""
        self.i, self.at = i, at = self._locate(begin)
        out = []
        while begin < end and i < len(self.segments):
            seg = self.segments[i]
            lo, hi = begin - at, min(end - at, seg.count)
            if hi > lo:
                out.append(seg.cut(lo, hi) if (lo, hi) != (0, seg.count) else seg)
                begin = at + hi
            if hi >= seg.count:
                at += seg.count
                i += 1
        return out

    def peek(self, begin: int) -> Segment | None:
        """The segment piece holding entry ``begin``, if any (the cursor does not move)."""
        i, at = self._locate(begin)
        return self.segments[i].cut(begin - at, begin - at + 1) if i < len(self.segments) else None
