"""One process's samples: segments of the plan → raw samples (``ShardReader``) → decoded,
transformed samples, with damaged ones replaced so that every rank still yields its count.

A span (a shuffled segment) is read whole once and kept while its entries are handed out, so the
consecutive batches drawn from it read it once (a mix, whose reader takes turns between its
sources, keeps one span per source); stored-order segments are read in chunks. Under
``on_error="skip"`` a sample that cannot be read or decoded is replaced by a repeat of the last
intact one (or, before any, of the next), and counted in the error log: DDP never waits on a rank
that came up short.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..errors import ShardError
from .plan import Segment
from .reader import ErrorLog, Raw, ReadOptions, ShardReader
from .sources import Source
from .state import derive_seed
from .views import BlockGroup, View

#: Stored-order samples read at once (bounded memory without a span to hold).
CHUNK = 256
_MASK = (1 << 63) - 1
_GOLDEN = 0x9E3779B97F4A7C15


class SampleStream:
    """Decoded samples of segments of ``source``, read by this process."""

    def __init__(self, source: Source, opts: ReadOptions, view: View, seed: int, errors: ErrorLog,
                 spans: int = 1) -> None:
        self.source, self.view, self.seed, self.errors = source, view, seed, errors
        self._names = [s.name for s in source.shards]  # made once: samples() runs per batch
        self._fast_for: Any = None  # the collate function last asked for, and the view's block-level version of it
        self._fast: Callable | None = None
        self.reader = ShardReader(source, opts, errors)
        self._spans: OrderedDict[tuple, Any] = OrderedDict()  # span identity → what was read of it
        self._held = max(spans, 1)
        self._checked: set[int] = set()
        self._last_good: tuple[Raw, int, int] | None = None  # (raw, shard, index) of the last intact sample
        self._owed = 0
        self._bases: dict[tuple[int, int], int] = {}

    def check(self, shards: Iterable[int]) -> None:
        """Check the shards' presence and sizes (once per process each) before reading them."""
        new = set(shards) - self._checked
        if new:
            self._checked |= new
            self.reader.check(new)

    def close(self) -> None:
        self.reader.close()
        self._spans.clear()

    # -- reading ------------------------------------------------------------------------------
    def raws(self, segments: Iterable[Segment]) -> Iterator[tuple[int, int, list[int], list[Raw | None]]]:
        """``(pass, shard, indices, raw samples or None)`` runs covering the segments' entries, in order."""
        segments = list(segments)
        for i, seg in enumerate(segments):
            self._open_next(segments, i)
            if seg.seed is None:
                for a in range(seg.start + seg.lo, seg.start + seg.hi, CHUNK):
                    b = min(a + CHUNK, seg.start + seg.hi)
                    yield seg.pass_, seg.shard, range(a, b), self.reader.read(seg.shard, a, b)
                continue
            held = self._span_of(seg, self.reader.read)
            start = seg.start
            indices = seg.indices().tolist()
            yield seg.pass_, seg.shard, indices, [held[j - start] for j in indices]

    def _open_next(self, segments: list[Segment], i: int) -> None:
        if i + 1 < len(segments):
            nxt = segments[i + 1]
            self.reader.open_ahead(nxt.shard, nxt.start + (nxt.lo if nxt.seed is None else 0))

    def _span_of(self, seg: Segment, read: Callable[[int, int, int], Any]) -> Any:
        """What ``read`` gives for the span of shuffled segment ``seg``, read once for all its
        segments (the last few spans are kept: a mix's worker takes turns between sources)."""
        key = (*seg[:5], read.__name__)
        held = self._spans.get(key)
        if held is None:
            while len(self._spans) >= self._held:  # let the oldest go before the next is read
                self._spans.popitem(last=False)
            held = self._spans[key] = read(seg.shard, seg.start, seg.stop)
        else:
            self._spans.move_to_end(key)
        return held

    def block_groups(self, segments: Iterable[Segment]) -> list[BlockGroup] | None:
        """``(block, rows, indices in the block)`` covering the segments' samples (rows numbered in
        order across the segments), read without a Python object per sample; None when a block
        is damaged or missing (read them sample by sample then)."""
        segments, groups, row = list(segments), [], 0
        for i, seg in enumerate(segments):
            self._open_next(segments, i)
            if seg.seed is None:  # in order: each block's part is a range, no search needed
                a, b = seg.start + seg.lo, seg.start + seg.hi
                blocks = self.reader.read_blocks(seg.shard, a, b) if b > a else []
                if blocks is None:
                    return None
                for first, held in blocks:
                    lo, hi = max(a, first), min(b, first + len(held))
                    if lo < hi:
                        groups.append(BlockGroup(held.block, np.arange(row + lo - a, row + hi - a),
                                                 np.arange(lo - first, hi - first), True))
                if b > a:
                    first, held = blocks[-1]
                    self._last_good = held[b - 1 - first], seg.shard, b - 1
                row += b - a
                continue
            blocks, wanted = self._span_of(seg, self.reader.read_blocks), seg.indices()
            if blocks is None:
                return None
            firsts = np.array([first for first, _ in blocks], dtype=np.int64)
            which = np.searchsorted(firsts, wanted, side="right") - 1
            for g in np.unique(which).tolist():
                rows = np.flatnonzero(which == g)
                first, held = blocks[g]
                groups.append(BlockGroup(held.block, row + rows, wanted[rows] - first))
            if len(wanted):
                first, held = blocks[int(which[-1])]
                self._last_good = held[int(wanted[-1]) - first], seg.shard, int(wanted[-1])
            row += len(wanted)
        return groups

    def samples(self, segments: Iterable[Segment]) -> Iterator[Any]:
        """The decoded, transformed samples of the segments, damaged ones replaced (see the module)."""
        view, errors, names = self.view, self.errors, self._names
        decode = self._seeded if view.random else None
        lost: dict[int, int] = {}  # samples that could not be read, per shard: one record each
        p = shard = index = 0
        for p, shard, indices, items in self.raws(segments):
            name = names[shard]
            if decode is None and items and None not in items:
                try:  # a whole run at once: per-sample calls are most of the cost at 500k samples/s
                    outs = view.many(items, name)
                except ShardError:
                    outs = None  # one of them is damaged: go sample by sample below
                if outs is not None:
                    self._last_good = items[-1], shard, indices[-1]
                    yield from outs
                    continue
            for index, raw in zip(indices, items):
                # the common case inline (per-sample calls are most of the cost at 500k samples/s)
                if raw is None:
                    lost[shard] = lost.get(shard, 0) + 1
                    out = _FAILED
                else:
                    try:
                        out = view(raw, name) if decode is None else decode(raw, p, shard, index, name)
                    except ShardError as err:
                        errors.damaged(err, 1)
                        out = _FAILED
                if out is _FAILED:
                    if self._last_good is None:
                        self._owed += 1
                        continue
                    out = self._stand_in(p)
                else:
                    self._last_good = raw, shard, index
                yield out
                while self._owed:
                    self._owed -= 1
                    yield self._stand_in(p)
        for s, count in lost.items():  # the damage itself was recorded where the reader met it
            errors.damaged(ShardError(f"{count} samples could not be read (see the damage recorded before)",
                                      shard=names[s]), count)
        if self._owed:  # nothing intact came through here yet: look for one after the damage
            owed, self._owed = self._owed, 0
            if not self._find_intact(p, shard, index):
                raise ShardError(f"{owed} damaged samples and no intact sample in the whole dataset to stand in "
                                 f"for them (on_error='skip' replaces damaged samples by repeats of intact ones)")
            for _ in range(owed):
                yield self._stand_in(p)

    def _find_intact(self, p: int, shard: int, index: int) -> bool:
        """Make the first sample after ``index`` of ``shard`` (then of the following shards, all round)
        that decodes the stand-in; False if there is none."""
        counts = self.source.counts
        for s in [shard] + list(range(shard + 1, len(counts))) + list(range(shard)):
            first = index + 1 if s == shard else 0
            for a in range(first, counts[s], CHUNK):
                for j, raw in enumerate(self.reader.read(s, a, min(a + CHUNK, counts[s]))):
                    if raw is not None and self._try(raw, p, s, a + j) is not _FAILED:
                        self._last_good = raw, s, a + j
                        return True
        return False

    def _try(self, raw: Raw, p: int, shard: int, index: int) -> Any:
        """The sample, or ``_FAILED`` (recorded) if it is damaged."""
        name = self.source.shards[shard].name
        try:
            return self.view(raw, name) if not self.view.random else self._seeded(raw, p, shard, index, name)
        except ShardError as err:
            self.errors.damaged(err, 1)
            return _FAILED

    def _seeded(self, raw: Raw, p: int, shard: int, index: int, name: str) -> Any:
        """Decode and transform under the sample's seed (the caller's generator state is kept)."""
        generator = torch.default_generator
        saved = generator.get_state()
        # torch.random.fork_rng(devices=[]) + manual_seed would say the same, but cost 90 µs per
        # sample against 2 µs for the default generator's own state calls (measured here).
        generator.manual_seed(self.sample_seed(p, shard, index))
        try:
            out = self.view(raw, name)  # a ShardError here is damage: the caller records it
            try:
                return self.view.finish(out)
            except Exception as err:
                if hasattr(err, "add_note"):
                    err.add_note(f"(in the transform of sample {raw.key if hasattr(raw, 'key') else index} of "
                                 f"shard {name}, shardkit.StreamingDataset)")
                raise
        finally:
            generator.set_state(saved)

    def _stand_in(self, p: int) -> Any:
        raw, shard, index = self._last_good
        out = self._try(raw, p, shard, index)
        if out is _FAILED:  # cannot happen for a sample that decoded once; keep counts equal anyway
            raise ShardError("a sample that decoded before failed to decode again", shard=self.source.shards[shard].name)
        return out

    def sample_seed(self, p: int, shard: int, index: int) -> int:
        """The seed of sample ``index`` of shard ``shard`` in pass ``p``: the same on any layout."""
        base = self._bases.get((p, shard))
        if base is None:
            base = self._bases[(p, shard)] = derive_seed(self.seed, p, shard)
        return (base + index * _GOLDEN) & _MASK

    def batch(self, segments: Iterable[Segment], collate: Callable[[list], Any]) -> Any:
        """One batch: the segments' samples, collated (straight from the blocks when the view can)."""
        segments = list(segments)
        if self._fast_for is not collate:  # asked once per collate function, not per batch
            self._fast_for, self._fast = collate, self.view.fast_collate(collate)
        fast = self._fast
        if fast is not None and self.source.schema.blocks is not None:
            groups = self.block_groups(segments)
            if groups:
                return fast(groups)
        return collate(list(self.samples(segments)))  # sample by sample (damage is handled there)


_FAILED = object()
