"""``Mix``: several datasets read as one stream, each contributing an exact share of every epoch,
spread evenly through it.

**Shares.** An epoch of ``N`` samples gives source ``s`` ``round(w_s × N)`` of them, ``w_s`` its
weight over the weights' sum, rounded by largest remainder (each share is ``floor(w_s × N)``, and
the sources with the largest fractional parts, the first listed among equal ones, get one more
until the shares sum to ``N``), so each share is within one of ``w_s × N`` and the epoch is
exactly ``N`` samples. Default weights: the sources' sizes (their ``len`` before ranks: each
dataset's own ``epoch_size``, else its sample count); default ``N``: the sum of those sizes.

**Where a source's samples come from.** Each source is read as its own stream of shuffled passes
(``plan.window``): its share of epoch ``e`` is the next window of that stream, so a large source
goes on, epoch after epoch, with what it has not given yet (no sample twice within a window no
longer than a pass), and a small one repeats, each pass shuffled anew. Where each source's
stream stands is kept in the state (``EpochState.extra["mix"]``: for each source the windows'
size and where they started, :class:`~.plan.Regime`), the same on every rank.

**Spread.** Each source's share is cut into runs of :data:`RUN` samples, and the runs are merged
in the order of their ideal times (run ``j`` of ``m`` at ``(j + ½) / m``), so in every stretch of
the epoch each source has within a couple of runs of its weight's part. The result is one
sequence of segments like a dataset's epoch, laid out over ranks and workers the same way:
equal per-rank counts, each sample of each share exactly once, elastic resume.

**Weights changed at a resume** (a curriculum) take effect from the first epoch that begins after
the state: an epoch under way keeps the shares it was planned with, so its rest still holds each
remaining sample exactly once; from the next epoch each source's stream goes on from where it
stands with its new share.

**Packing** (``make_loader(mix, B, block_size=L)``): the same in token space, the weights applying
to tokens (default: the sources' token counts) and each row of ``L`` tokens from one source.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .base import Stream
from .dataset import StreamingDataset, StreamOptions, epoch_count
from .packing import epoch_window
from .plan import Cursor, EpochPlan, Layout, Regime, Segment, lay_out, spans, subtract, window
from .reader import ReadOptions
from .sources import Source
from .state import EpochState, Identity, derive_seed
from .views import PairView, View

#: Samples per run of one source in a mixed epoch: short enough that every stretch of a few
#: hundred samples is close to the weights, long enough to keep the epoch's plan small.
RUN = 4


def shares(weights: Sequence[float], total: int) -> list[int]:
    """``total`` cut in proportion to ``weights`` by largest remainder (see the module)."""
    norm = sum(weights)
    exact = [w / norm * total for w in weights]
    out = [int(np.floor(x)) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:total - sum(out)]:
        out[i] += 1
    return out


def interleave(parts: Sequence[Sequence[Segment]], counts: Sequence[int], run: int) -> list[Segment]:
    """The parts' segments merged in runs of ``run`` entries, in the order of the runs' ideal times."""
    units = [-(-n // run) for n in counts]
    times = np.concatenate([(np.arange(m) + 0.5) / m for m in units if m] or [np.zeros(0)])
    which = np.concatenate([np.full(m, i) for i, m in enumerate(units) if m] or [np.zeros(0, int)])
    order = which[np.lexsort((which, times))].tolist()
    cursors = [Cursor(p) for p in parts]
    taken = [0] * len(parts)
    out: list[Segment] = []
    i = 0
    while i < len(order):
        s, j = order[i], i
        while j < len(order) and order[j] == s:
            j += 1
        n = min((j - i) * run, counts[s] - taken[s])
        out += cursors[s].take(taken[s], taken[s] + n)
        taken[s] += n
        i = j
    return out


def remaining_pieces(sequence: Sequence[Segment], consumed: Sequence[Segment]) -> list[Segment]:
    """What of a sequence of pieces (of spans, or of stored-order runs) ``consumed`` left, in order."""
    done: dict[tuple, list[tuple[int, int]]] = {}
    for c in consumed:
        if c.pad or c.lo == c.hi:
            continue
        if c.seed is None:
            done.setdefault((c.pass_, c.shard), []).append((c.start + c.lo, c.start + c.hi))
        else:
            done.setdefault(tuple(c[:5]), []).append((c.lo, c.hi))
    out = []
    for seg in sequence:
        if seg.seed is None:
            for a, b in subtract([(seg.start + seg.lo, seg.start + seg.hi)], done.get((seg.pass_, seg.shard), ())):
                out.append(seg._replace(lo=a - seg.start, hi=b - seg.start))
        else:
            for a, b in subtract([(seg.lo, seg.hi)], done.get(tuple(seg[:5]), ())):
                out.append(seg._replace(lo=a, hi=b))
    return out


class Mix(Stream):
    """Datasets read together, each an exact share of every epoch (see the module).

    Args:
        sources: ``{name: StreamingDataset}``; they must yield the same structure (two token
            datasets, two image datasets; the same ``fields`` and ``decode``), and have the same
            rank and world size, ``even``/``drop_last``, ``on_error`` and ``verify``.
        weights: ``{name: weight >= 0}`` for every source (normalised); default: their sizes.
        epoch_size: samples per epoch across all ranks: a count, or a fraction (a float) of the
            sources' sizes summed; default that sum.
        seed: the seed of the mix: each source's order is drawn from it, the source's name and
            its own seed; transforms are seeded per sample from it.
        with_source: add each sample's source name: a last tuple element (``(image, label,
            name)``; batches get a list of names after the kind's tensors) or a ``"source"`` field
            (dicts); packed batches get ``"source"``, each row's.

    Each source's shuffle, shuffle buffer, transform, decode and fields are its own.

    Raises:
        TypeError: a source that is not a StreamingDataset.
        ValueError: no sources, sources that cannot mix (the message says what differs), weights
            that do not name every source or are negative or all 0, a bad epoch size.
    """

    def __init__(self, sources: Mapping[str, Stream], *, weights: Mapping[str, float] | None = None,
                 epoch_size: int | float | None = None, seed: int = 0, with_source: bool = False) -> None:
        if not isinstance(sources, Mapping) or not sources:
            raise ValueError("Mix takes a non-empty {name: StreamingDataset} mapping")
        for name, ds in sources.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"source names are non-empty strings, not {name!r}")
            if not isinstance(ds, StreamingDataset):
                raise TypeError(f"source {name!r} is a {type(ds).__name__}; Mix takes StreamingDatasets")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, not {seed!r}")
        self.names = list(sources)
        self.sources = [sources[n] for n in self.names]
        self.seed, self.with_source = seed, bool(with_source)
        self.rank, self.world_size = _agree(self.names, self.sources, "rank and world_size",
                                            lambda d: (d.rank, d.world_size))
        _check_structure(self.names, self.sources)
        fields = _structure(self.sources[0])[1]
        if self.with_source and fields is not None and "source" in fields:
            raise ValueError("with_source=True adds a 'source' field, and these datasets have one already: "
                             "read them with fields=[...] without it, or leave with_source off")
        opts = [d.options for d in self.sources]
        even, drop_last, on_error, verify = _agree(self.names, self.sources, "even, drop_last, on_error and verify",
                                                   lambda d: (d.options.even, d.options.drop_last,
                                                              d.options.on_error, d.options.verify))
        storage = {k: _set_value(self.names, opts, k) for k in ("storage_options", "cache_dir", "cache_limit")}
        self.options = StreamOptions(drop_last=drop_last, even=even, on_error=on_error, verify=verify, **storage)
        cache = storage["cache_dir"]
        self.read_options = ReadOptions(on_error, verify, storage["storage_options"],
                                        str(cache) if cache is not None else None, storage["cache_limit"])
        self.shuffle = any(d.shuffle for d in self.sources)
        self._seeds = [derive_seed(seed, "mix", n, d.seed) for n, d in zip(self.names, self.sources)]
        self.weights = self._weights(weights)
        sizes = [d.epoch_samples for d in self.sources]
        self._epoch_size = epoch_count(epoch_size, sum(sizes))
        self.offsets = list(np.cumsum([0] + [len(d.source.shards) for d in self.sources[:-1]]).tolist())
        self.source = self._concatenated()
        #: each shard's source name (what packed batches say with ``with_source``), else None
        self.shard_sources = ([n for n, d in zip(self.names, self.sources) for _ in d.source.shards]
                              if self.with_source else None)
        self.view = MixView(self.names, self.sources, self.source, self.with_source)
        self.held_spans = min(len(self.sources), 8)
        self._start()

    # -- what it holds ----------------------------------------------------------------------
    def _weights(self, weights: Mapping[str, float] | None) -> list[float] | None:
        if weights is None:
            return None
        if not isinstance(weights, Mapping):
            raise ValueError(f"weights is a {{name: weight}} mapping, not {type(weights).__name__}")
        missing, unknown = [n for n in self.names if n not in weights], [n for n in weights if n not in self.names]
        if missing or unknown:
            what = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
            raise ValueError(f"weights must name every source ({self.names}): " + "; ".join(what))
        out = [weights[n] for n in self.names]
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 for w in out) or sum(out) <= 0:
            raise ValueError(f"weights are numbers >= 0, not all 0: {dict(weights)}")
        return [float(w) for w in out]

    def _concatenated(self) -> Source:
        first = self.sources[0].source.schema
        shards = tuple(dataclasses.replace(ref, name=f"{n}/{ref.name}",
                                           schema=None if d.source.schema == first else d.source.schema)
                       for n, d in zip(self.names, self.sources) for ref in d.source.shards)
        digest = hashlib.sha256("\n".join(f"{n}\0{d.identity.dataset}\0{d.seed}\0{d.shuffle}"
                                          for n, d in zip(self.names, self.sources)).encode()).hexdigest()
        # (the manifest only says "written by shardkit" to the reader: duplicate members are damage)
        manifests = [d.source.manifest for d in self.sources]
        return Source(first, shards, None, manifests[0] if all(m is not None for m in manifests) else None, digest)

    @property
    def classes(self) -> None:
        return None

    @property
    def identity(self) -> Identity:
        # the weights are not part of it: they may change at a resume
        return Identity(self.source.digest, self.seed, self.shuffle, self.epoch_samples)

    @property
    def epoch_samples(self) -> int:
        """Samples per epoch across all ranks (before padding)."""
        return self._epoch_size

    def __getitem__(self, index: int):
        raise TypeError("a Mix streams; it has no random access (use shardkit.IndexedDataset on one source)")

    # -- shares and positions ---------------------------------------------------------------
    def _space(self, layout: Layout) -> tuple[str, list[int], int, int]:
        """``(unit, each source's size, the epoch's entries, run)`` in samples or, packing, tokens."""
        if not layout.block:
            return "samples", [d.epoch_samples for d in self.sources], self._epoch_size, RUN
        sizes = []
        for d in self.sources:
            counts = d.entry_counts(layout.eos)
            sizes.append(epoch_window(sum(counts), d.source.samples, d.epoch_samples) or sum(counts))
        source = self._concatenated()
        if source != self.source:  # what a scan of a version 1 source found: the reader must see it
            self.source, self._stream = source, None
        samples = sum(d.epoch_samples for d in self.sources)
        entries = round(self._epoch_size * sum(sizes) / samples) if samples else 0
        rows = -(-entries // layout.block)
        return f"tokens/{layout.block}/{int(layout.eos)}", sizes, rows * layout.block, layout.block

    def _shares(self, layout: Layout) -> list[int]:
        unit, sizes, total, run = self._space(layout)
        weights = self.weights if self.weights is not None else [float(s) for s in sizes]
        if sum(weights) <= 0:
            return [0] * len(sizes)
        return [n * run for n in shares(weights, total // run)] if layout.block else shares(weights, total)

    def settle(self, state: EpochState, layout: Layout) -> EpochState:
        """``state`` with each source's windows (:class:`~.plan.Regime` s) in ``extra["mix"]``: the
        current weights' shares from this epoch on, unless the epoch is under way."""
        unit = self._space(layout)[0]
        mix = state.extra.get("mix")
        if isinstance(mix, dict) and mix.get("unit") == unit and set(mix.get("sources", ())) == set(self.names):
            regimes = {n: [list(r) for r in mix["sources"][n] if r[0] <= state.epoch] or [list(mix["sources"][n][0])]
                       for n in self.names}
            if state.started:  # the epoch under way keeps its shares
                return dataclasses.replace(state, extra={**state.extra, "mix": {"unit": unit, "sources": regimes}})
        else:
            regimes = None
        new = self._shares(layout)
        out = {}
        for n, share in zip(self.names, new):
            if regimes is None:
                out[n] = [[0, 0, share]]
                continue
            rs = regimes[n]
            since, start, size = rs[-1]
            if size != share:
                if since == state.epoch:
                    rs[-1] = [since, start, share]
                else:
                    rs.append([state.epoch, start + (state.epoch - since) * size, share])
            out[n] = rs
        return dataclasses.replace(state, extra={**state.extra, "mix": {"unit": unit, "sources": out}})

    def _windows(self, state: EpochState, layout: Layout) -> tuple[list[list[Segment]], list[int]]:
        """Each source's segments of the epoch (shards numbered in the mix) and their counts."""
        state = self.settle(state, layout)
        parts, counts = [], []
        for i, (n, d) in enumerate(zip(self.names, self.sources)):
            regimes = [Regime(*r) for r in state.extra["mix"]["sources"][n]]
            since, start, size = regimes[-1]
            begin = start + (state.epoch - since) * size
            entries = d.entry_counts(layout.eos) if layout.block else d.source.counts
            segs = window(entries, seed=self._seeds[i], shuffle=d.shuffle, begin=begin, end=begin + size,
                          regimes=regimes)
            if not layout.block:
                segs = spans(segs, d.options.shuffle_buffer, self._seeds[i], d.shuffle)
            offset = self.offsets[i]
            parts.append([s._replace(shard=s.shard + offset) for s in segs])
            counts.append(size)
        return parts, counts

    def sequence(self, state: EpochState) -> list[Segment]:
        """Epoch ``state.epoch``: each source's window, interleaved in runs (see the module)."""
        parts, counts = self._windows(state, self.layout())
        return interleave(parts, counts, RUN)

    def token_sequence(self, state: EpochState, layout: Layout) -> list[Segment]:
        """The same in token space: rows of ``layout.block`` tokens, each from one source."""
        if self.kind != "sequences":
            raise ValueError(f"packing (block_size) needs token datasets; these hold {self.kind}")
        parts, counts = self._windows(state, layout)
        return interleave(parts, counts, layout.block)

    def epoch_entries(self, layout: Layout) -> int:
        return self._space(layout)[2] if layout.block else self._epoch_size

    def remaining(self, sequence: list[Segment], consumed: list[Segment]) -> list[Segment]:
        return remaining_pieces(sequence, consumed)

    def lay_out(self, sequence: list[Segment], layout: Layout) -> EpochPlan:
        # each source's spans are already drawn (their own shuffle buffers)
        return lay_out(sequence, layout, span=1, seed=self.seed, shuffle=False)


class MixView(View):
    """Decodes each sample with its source's view (found by its shard's name), and adds the
    source's name with ``with_source``."""

    def __init__(self, names: Sequence[str], sources: Sequence[Stream], source: Source, with_source: bool) -> None:
        first = sources[0].view
        self.schema, self.fields, self.decode, self.transform = first.schema, first.fields, first.decode, None
        self.views = [d.view for d in sources]
        self.names, self.with_source = list(names), with_source
        self._of = {}
        for i, d in enumerate(sources):
            for ref in d.source.shards:
                self._of[f"{names[i]}/{ref.name}"] = i
        self.random = any(v.random for v in self.views)
        self._tuples = isinstance(first, PairView)  # (value, label) samples; else dicts
        base = first.collate
        self.collate = _SourceCollate(base) if with_source and self._tuples else base

    @property
    def image_keys(self) -> tuple:
        return self.views[0].image_keys

    def _tag(self, i: int, sample: Any) -> Any:
        if not self.with_source:
            return sample
        if self._tuples:
            return (*sample, self.names[i])
        return {**sample, "source": self.names[i]}

    def __call__(self, raw, shard: str) -> Any:
        i = self._of[shard]
        out = self.views[i](raw, shard)
        return (i, out) if self.random else self._tag(i, out)

    def many(self, raws, shard: str) -> list:
        i = self._of[shard]
        outs = self.views[i].many(raws, shard)
        return [self._tag(i, o) for o in outs] if self.with_source else outs

    def finish(self, sample: Any) -> Any:
        i, out = sample
        return self._tag(i, self.views[i].finish(out))

    def fast_collate(self, collate: Callable) -> Callable | None:
        if self.with_source or self.random or len({type(v) for v in self.views}) > 1:
            return None
        return self.views[0].fast_collate(collate)


class _SourceCollate:
    """The kind's collate over ``(..., name)`` samples, with the list of names after its output."""

    def __init__(self, base: Callable) -> None:
        self.base = base

    def __call__(self, batch: Sequence[tuple]) -> tuple:
        out = self.base([s[:-1] for s in batch])
        return (*out, [s[-1] for s in batch])


# -- checks ---------------------------------------------------------------------------------------

def _agree(names, sources, what: str, get: Callable[[Any], Any]) -> Any:
    values = [get(d) for d in sources]
    if any(v != values[0] for v in values):
        found = ", ".join(f"{n!r}: {v}" for n, v in zip(names, values))
        raise ValueError(f"the sources of a Mix must agree on {what} ({found})")
    return values[0]


def _set_value(names, options, key: str) -> Any:
    """The value of a storage option the sources set (None where they do not); they must agree."""
    given = {n: getattr(o, key) for n, o in zip(names, options) if getattr(o, key) is not None}
    values = list(given.values())
    if any(v != values[0] for v in values):
        raise ValueError(f"the sources of a Mix must agree on {key} (or leave it unset): "
                         + ", ".join(f"{n!r}: {v!r}" for n, v in given.items()))
    return values[0] if values else None


def _structure(d: Stream) -> tuple:
    """What a source yields: kind, the fields of its samples, whether it decodes, the row width."""
    schema = d.source.schema
    fields = tuple(d.fields) if d.fields is not None else (tuple(schema.names) if schema.kind == "samples" else None)
    width = None
    if schema.kind == "tabular" and schema.blocks is not None:
        width = schema.blocks.columns[0].width
    return schema.kind, fields, d.decode is False, width


def _check_structure(names, sources) -> None:
    """Raise ``ValueError`` naming what differs if the sources do not yield the same structure."""
    first = _structure(sources[0])
    for n, d in zip(names[1:], sources[1:]):
        mine = _structure(d)
        if mine == first:
            continue
        what = next(label for label, a, b in zip(("kind", "fields", "decode=False", "feature width"), first, mine)
                    if a != b)
        raise ValueError(f"sources {names[0]!r} and {n!r} of a Mix yield different samples: their {what} differ "
                         f"({first[('kind', 'fields', 'decode=False', 'feature width').index(what)]!r} and "
                         f"{mine[('kind', 'fields', 'decode=False', 'feature width').index(what)]!r}); a Mix "
                         f"reads datasets of one structure (two token datasets, two image datasets)")
