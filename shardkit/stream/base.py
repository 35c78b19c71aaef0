"""What every stream of samples shares (a ``StreamingDataset``, a ``Mix`` of them): the epoch
and its state, the plan of an epoch on a layout, and iterating it in a process.

An iteration is: the epoch's sequence (:meth:`Stream.sequence`, what a subclass defines) → its
plan on this layout (``plan.lay_out``: which segments of which shards each rank's workers read,
in which order) → this worker's segments → ``SampleStream`` (read, decode, transform). A packing
loader (``make_loader(..., block_size=L)``) plans the same way in token space
(:meth:`Stream.token_sequence`, ``packing.lay_out_rows``).
``make_loader`` uses the same plan with batches and hands the segments of each batch to its
workers (``loader``). Where an epoch stands lives in one :class:`~.state.EpochState`, advanced
through a :class:`Run` while the epoch is read.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .packing import lay_out_rows
from .plan import EpochPlan, Layout, Segment, lay_out, remaining, samples_per_rank, take, worker_ranges
from .reader import ErrorLog
from .samples import SampleStream
from .state import EpochState, Identity, current_worker, derive_seed, in_worker


class Stream(IterableDataset):
    """The iteration and state of a stream of samples; subclasses say what an epoch holds.

    A subclass sets ``source`` (the shards, their schema and digest), ``view`` (how samples are
    decoded), ``seed``, ``shuffle``, ``options`` (a ``StreamOptions``), ``read_options``,
    ``rank`` and ``world_size``, and defines :meth:`sequence`, :attr:`identity` and
    :attr:`epoch_samples`; it calls :meth:`_start` at the end of its constructor. Token
    datasets define :meth:`token_sequence` too (packing).
    """

    #: spans a reader keeps at once (a mix takes turns between its sources' spans)
    held_spans = 1

    def _start(self) -> None:
        self._state = EpochState()
        self._run: Run | None = None
        self._stream: SampleStream | None = None
        self._stream_pid: int | None = None
        #: Damage replaced by the iteration in progress (or the last one) in this process; with
        #: ``make_loader``, also what its workers reported with their batches.
        self.errors: list[dict[str, Any]] = []

    # -- what a subclass defines ------------------------------------------------------------
    def sequence(self, state: EpochState) -> list[Segment]:
        """The segments of the epoch ``state`` is in, in order (before any layout)."""
        raise NotImplementedError

    @property
    def identity(self) -> Identity:
        """What a saved state must agree with."""
        raise NotImplementedError

    @property
    def epoch_samples(self) -> int:
        """Samples per epoch across all ranks (before padding)."""
        raise NotImplementedError

    def token_sequence(self, state: EpochState, layout: Layout) -> list[Segment]:
        """The epoch in token space, for packing into rows of ``layout.block`` tokens: stored-order
        segments whose entries are a shard's tokens (each document followed by its end-of-document
        token when ``layout.eos``).

        Raises:
            ValueError: not a token dataset.
        """
        raise ValueError(f"packing (block_size) needs a token dataset; this one holds {self.kind}")

    def epoch_entries(self, layout: Layout) -> int:
        """What an epoch holds across all ranks on ``layout``: samples, or for packing the tokens."""
        if layout.block:
            return sum(s.count for s in self.token_sequence(self._state, layout))
        return self.epoch_samples

    @property
    def kind(self) -> str:
        """``"images"``, ``"sequences"``, ``"tabular"`` or ``"samples"`` (named fields)."""
        return self.source.kind

    @property
    def schema(self):
        return self.source.schema

    def layout(self, num_workers: int = 0, batch_size: int = 1, *, drop_last: bool = False, unit: int = 1) -> Layout:
        """The :class:`~.plan.Layout` of this dataset read by ``num_workers`` workers in batches."""
        o = self.options
        ranks = "split" if not o.even else "drop" if o.drop_last else "pad"
        return Layout(self.world_size, max(num_workers, 1), batch_size, ranks, drop_last, unit)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (padding included), whatever the DataLoader."""
        return samples_per_rank(self.epoch_samples, self.layout(), self.rank)

    def worker_counts(self, num_workers: int) -> list[int]:
        """Samples each of ``num_workers`` DataLoader workers (0: the main process) yields per epoch."""
        return [hi - lo for lo, hi in worker_ranges(len(self), self.layout(num_workers))]

    # -- epoch and state ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads."""
        return self._state.epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration read ``epoch``. A state restored for that same epoch is kept,
        so the usual ``load_state_dict`` then ``set_epoch(epoch)`` resumes mid-epoch."""
        self._state = self._state.at_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where iteration in this process stands (plain values; ``torch.save``/JSON both work):
        the epoch, what of it was consumed, the layout and the position. Saved while the dataset
        is iterated directly (or by torchdata's ``StatefulDataLoader``, in each worker). With
        ``make_loader``, save the loader's ``state_dict``: it is the same on every rank."""
        run = self._run
        # Past its last sample, a dataset iterated by itself says "the next epoch", but a DataLoader
        # worker's state stays at the end of its part: StatefulDataLoader restores every worker to
        # finish the epoch under way (so a finished one must yield nothing), and the next epoch is
        # its next iter().
        finished = run is not None and run.finished and run.worker is None
        state = run.state() if run is not None and not finished else self._state
        return state.to_dict(self.identity)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue from ``state`` (from :meth:`state_dict` or a loader's),
        on any layout.

        Raises:
            ValueError: a state of another dataset, seed, shuffle setting or epoch size, a newer
                state format, or loading while an iteration is under way.
        """
        if self._run is not None and self._run.active:
            raise ValueError("load_state_dict while an iteration is under way: load it before iterating")
        self._state = EpochState.from_dict(state, self.identity)
        self._run = None

    def begin(self, layout: Layout, worker: int | None = None) -> "Run":
        """Start reading the current epoch on ``layout`` (the next iteration's epoch moves on by
        one): its plan, and the position to resume at. ``worker``: the DataLoader worker this is,
        when each worker iterates by itself (their states are their own).

        Raises:
            ValueError: a state saved by one DataLoader worker restored on another layout.
        """
        state = self.settle(self._state, layout)
        self._state = state.next_epoch()
        mine = layout.to_dict()
        saved = state.layout or {}
        if state.layout is not None and (saved.get("block", 0), saved.get("eos", False)) != (layout.block, layout.eos):
            def what(block, eos):
                return f"packed into rows of {block} tokens{' with eos_id' if eos else ''}" if block else "not packed"
            was = what(saved.get("block", 0), saved.get("eos"))
            raise ValueError(f"the state was saved mid-epoch by a loader {was}; "
                             f"this one is {what(layout.block, layout.eos)}: restore it into a loader with the "
                             f"same block_size and eos_id (or restore a state saved at an epoch's end)")
        if state.layout is not None and state.layout != mine:
            if state.worker is not None:
                raise ValueError(f"the state was saved by DataLoader worker {state.worker} of layout {state.layout}; "
                                 f"a worker's own state restores only on that layout ({mine} here): save the "
                                 f"state of make_loader's loader instead, which restores on any layout")
            # elastic: what the saved layout consumed becomes part of what this epoch leaves out
            old = self.epoch_plan(state, Layout(**state.layout))
            state = EpochState(state.epoch, tuple(c.to_list() for c in old.consumed(state.position)) +
                               tuple(state.consumed), extra=state.extra)
        position = state.position if state.layout is not None else 0
        if state.worker is not None and state.worker != worker:
            raise ValueError(f"the state was saved by DataLoader worker {state.worker}, this is worker {worker}")
        run = Run(self, state, layout, self.epoch_plan(state, layout), position, worker)
        self._run = run
        return run

    def settle(self, state: EpochState, layout: Layout) -> EpochState:
        """``state`` with what the epoch about to begin needs in ``extra`` (a mix's positions in
        its sources); a plain dataset needs nothing."""
        return state

    def epoch_plan(self, state: EpochState, layout: Layout | None = None) -> EpochPlan:
        """The plan of the epoch ``state`` is in, on ``layout`` (default: iterated alone), without
        what ``state`` records as consumed before its layout began."""
        layout = layout or self.layout()
        segs = self.token_sequence(state, layout) if layout.block else self.sequence(state)
        if state.consumed:
            try:
                segs = self.remaining(segs, [Segment.from_list(c) for c in state.consumed])
            except (TypeError, ValueError) as err:
                raise ValueError(f"not a shardkit stream state: its consumed segments are malformed ({err})") from None
        if layout.block:
            return lay_out_rows(segs, layout)
        return self.lay_out(segs, layout)

    def remaining(self, sequence: list[Segment], consumed: list[Segment]) -> list[Segment]:
        """What of the epoch's ``sequence`` is left once ``consumed`` was read (see ``plan.remaining``)."""
        return remaining(sequence, consumed)

    def lay_out(self, sequence: list[Segment], layout: Layout) -> EpochPlan:
        """The plan of ``sequence`` on ``layout``: ranks, workers, and spans shuffled within."""
        return lay_out(sequence, layout, span=self.options.shuffle_buffer, seed=self.seed, shuffle=self.shuffle)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_run"], state["_stream"], state["errors"] = None, None, []
        return state

    # -- iteration ---------------------------------------------------------------------------
    def sample_stream(self) -> SampleStream:
        """This process's reader of samples (made once per process: it keeps shards open)."""
        if self._stream is None or self._stream_pid != os.getpid():
            self._stream = SampleStream(self.source, self.read_options, self.view, self.seed,
                                        ErrorLog(self.read_options.on_error), spans=self.held_spans)
            self._stream_pid = os.getpid()
        return self._stream

    def __iter__(self) -> Iterator[Any]:
        if not in_worker():
            return self._begin_and_iterate()
        # In a worker, read and advance the state now, not at the first next(): a DataLoader
        # worker calls iter() once per epoch, and the main process counts on that.
        worker, workers = current_worker()
        try:
            run = self.begin(self.layout(workers), worker)
        except ValueError as err:
            return _fail(err)
        return self._iterate(run, worker)

    def _begin_and_iterate(self) -> Iterator[Any]:
        # In the main process the epoch begins at the first next(): StatefulDataLoader
        # (num_workers=0) restores a state saved after an epoch by making an iterator it drops
        # unread, which must not use up the next epoch.
        yield from self._iterate(self.begin(self.layout()), 0)

    def _iterate(self, run: "Run", worker: int) -> Iterator[Any]:
        segments = run.plan.workers[self.rank][worker]
        total = sum(s.count for s in segments)
        stream = self.sample_stream()
        stream.errors.records.clear()
        self.errors = stream.errors.records
        if in_worker():
            seed_globals(derive_seed(self.seed, run.epoch, self.rank, worker))
        rest = take(segments, run.position, total) if run.position < total else []
        stream.check(s.shard for s in rest)
        run.active = True
        try:
            for sample in stream.samples(rest):
                run.position += 1  # (not run.advance(): a call per sample shows at 500k samples/s)
                yield sample
        finally:
            run.active = False
            stream.close()
        stream.errors.report(f"epoch {run.epoch}, rank {self.rank}, worker {worker}")


class Run:
    """An epoch being read on one layout: its plan, how far it got (batches per rank for a loader,
    samples for a dataset iterated by itself), and the state to save meanwhile."""

    def __init__(self, dataset: Stream, start: EpochState, layout: Layout, plan: EpochPlan,
                 position: int, worker: int | None) -> None:
        self.epoch, self.layout, self.plan = start.epoch, layout, plan
        self.start, self.position, self.worker = start, position, worker
        #: batches handed out of the unit at ``position`` (a bucketing window), when it is under way
        self.into = int(start.extra.get("into", 0)) if start.layout is not None else 0
        self.active = False
        if worker is None:
            self.total = plan.batches(dataset.rank)
        else:
            self.total = sum(s.count for s in plan.workers[dataset.rank][worker])

    @property
    def finished(self) -> bool:
        return self.position >= self.total

    def advance(self, n: int = 1) -> None:
        self.position += n

    def state(self) -> EpochState:
        extra = {k: v for k, v in self.start.extra.items() if k != "into"}
        if self.into:
            extra["into"] = self.into
        return dataclasses.replace(self.start, layout=self.layout.to_dict(), position=self.position,
                                   worker=self.worker, extra=extra)


def _fail(err: Exception) -> Iterator[Any]:
    """A generator that raises ``err`` at its first ``next()`` (in a worker, where DataLoader
    reports it), never in ``iter()`` (which DataLoader does not guard when it resumes workers)."""
    raise err
    yield


def seed_globals(seed: int) -> None:
    """Seed ``random``, NumPy's and torch's global generators in a DataLoader worker."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)
    torch.manual_seed(seed)
