"""``StreamingDataset``: the shards of a converted dataset (or webdataset shards) as an
``IterableDataset`` that yields every sample exactly once per epoch across ranks and workers.

An iteration is: the epoch's plan for this layout (``plan.lay_out``: which segments of which
shards each rank's workers read, in which order) → this worker's segments → ``SampleStream``
(read, decode, transform). ``make_loader`` uses the same plan with batches and hands the
segments of each batch to its workers (``loader``). Where an epoch stands lives in one
:class:`~.state.EpochState`, advanced through a :class:`Run` while the epoch is read.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .plan import EpochPlan, Layout, Segment, epoch_segments, lay_out, remaining, samples_per_rank, take, worker_ranges
from .reader import ON_ERROR, ErrorLog, ReadOptions
from .samples import SampleStream
from .sources import Source, resolve
from .state import EpochState, Identity, current_worker, derive_seed, in_worker, resolve_world
from .views import View, make_view


@dataclass(frozen=True)
class StreamOptions:
    """The rarer settings of a :class:`StreamingDataset` (each may also be passed by name to it).

    shuffle_buffer: samples shuffled together: each worker reads spans of this many consecutive
        samples of a shard and hands them out in a random order (memory follows it).
    drop_last: cut each rank's epoch to whole batches (``make_loader``) after evening the ranks,
        instead of padding them by repeating samples from the epoch's start.
    even: True (default) gives every rank the same count, padding as ``DistributedSampler``
        does; False gives each sample to exactly one rank, no padding, counts differing by at
        most one: for evaluation (all-reduce the metric sums).
    epoch_size: samples per epoch across all ranks: a count, or a fraction of the dataset (0.1);
        below the dataset's size an epoch subsamples without repetition and the next epochs go
        on through the rest; above it, passes repeat, each reshuffled. Default: the dataset's size.
    on_error: ``"raise"`` (default) raises a ``ShardError`` naming the shard, member and byte
        offset of damaged data; ``"skip"`` replaces each damaged sample by a repeat of an intact
        one (so every rank keeps its count), records it in ``dataset.errors`` and logs a warning.
    verify: hash each shard while it streams and compare with the manifest's sha256 (the whole
        shard is read, once per process, also by workers that need only part of it).
    storage_options: fsspec options (credentials, endpoint) for URLs.
    cache_dir, cache_limit: a local cache of remote shards, at most ``cache_limit`` bytes.
    """

    shuffle_buffer: int = 1000
    drop_last: bool = False
    even: bool = True
    epoch_size: int | float | None = None
    on_error: str = "raise"
    verify: bool = False
    storage_options: dict[str, Any] | None = None
    cache_dir: str | os.PathLike | None = None
    cache_limit: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be an int >= 0, not {self.shuffle_buffer!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {self.on_error!r}")
        size = self.epoch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0):
            raise ValueError(f"epoch_size must be a positive count or fraction, not {size!r}")
        if self.drop_last and not self.even:
            raise ValueError("drop_last=True evens the ranks out; even=False gives each sample to one rank: choose one")


class StreamingDataset(IterableDataset):
    """Samples of a shardkit dataset (or of webdataset shards), streamed exactly once per epoch.

    Args:
        source: a directory or fsspec URL holding ``manifest.json`` (written by ``shardkit
            convert`` or ``ShardWriter``); or a list of tar paths, or a brace pattern such as
            ``"shards/train-{000000..000099}.tar"``, of shards written by webdataset (no
            manifest: they are counted by one scan, cached; their samples are read with all
            their fields).
        shuffle: shuffle every epoch: the shard order and, within spans of ``shuffle_buffer``
            samples, the sample order, drawn from ``(seed, pass)``.
        seed: the seed of every random choice (order, transforms).
        transform: called on each decoded sample (the image tensor, the token tensor, the
            features, or the dict of a named-field dataset). It runs with torch's default
            generator seeded per sample from ``(seed, pass, shard, sample)`` and the caller's
            generator state put back after it, so random transforms (torchvision v2) give the same
            result after a resume, on any layout.
        decode: True decodes images to uint8 CHW tensors and arrays to tensors; False keeps image
            bytes and NumPy arrays (no transform for images then); a callable decodes image fields
            with it (e.g. ``shardkit.RandomResizedCropDecode(224)``), under the sample's seed.
        fields: read and yield only these fields, as a dict (members of other fields are not
            decoded); default: the kind's output (see ``shardkit.stream.views``).
        rank, world_size: this process's place among the distributed ranks; by default
            ``torch.distributed``'s when it is initialised, else 0 and 1.
        options: a :class:`StreamOptions`; its fields may also be given by name
            (``on_error="skip"``, ``cache_dir=...``, ``even=False``...).

    Yields:
        ``(image, label)`` for images (uint8 RGB 3×H×W, int); ``(tokens, label)`` for sequences
        (int64 1-D, int, -1 without labels); ``(features, label)`` for tabular rows (float32 [F],
        int); a dict ``{field: value}`` for other datasets (images as uint8 tensors, ``cls`` int,
        ``txt`` str, ``json`` its value, ``npy`` a tensor, other extensions bytes).

    Every rank yields ``len(dataset)`` samples per epoch, and all ranks and DataLoader workers
    together yield each sample exactly once (plus the padding). Each ``iter()`` reads the current
    epoch and advances it, so the order changes every epoch even without :meth:`set_epoch`. With
    a plain ``DataLoader`` and ``persistent_workers=False`` the workers get a copy of the epoch and
    the main process's copy does not advance: call ``set_epoch`` then, or use ``make_loader``.

    Raises:
        ManifestError: (construction) no valid manifest; (before the first sample) shards missing.
        ShardError: (before the first sample) shards of another size than the manifest says;
            (iteration) damaged data. Both under ``on_error="raise"`` only.
        TypeError: an unknown option, or a list of datasets (mix them with ``shardkit.Mix``).
        ValueError: a bad option value.
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], *, shuffle: bool = True,
                 seed: int = 0, transform: Callable[[Any], Any] | None = None, decode: bool | Callable = True,
                 fields: Sequence[str] | None = None, rank: int | None = None, world_size: int | None = None,
                 options: StreamOptions | None = None, **option_kwargs: Any) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, not {seed!r}")
        self.options = _options(options, option_kwargs)
        self.rank, self.world_size = resolve_world(rank, world_size)
        opts = self.options
        self.source: Source = resolve(source, storage_options=opts.storage_options, cache_dir=opts.cache_dir)
        if fields is not None:
            fields = tuple(fields)
            unknown = [f for f in fields if f not in self.source.schema.names]
            if unknown:
                raise ValueError(f"fields {unknown} are not in this dataset (it has {list(self.source.schema.names)})")
        self.shuffle, self.seed, self.transform, self.decode, self.fields = bool(shuffle), seed, transform, decode, fields
        self.read_options = ReadOptions(opts.on_error, opts.verify, opts.storage_options,
                                        os.fspath(opts.cache_dir) if opts.cache_dir is not None else None,
                                        opts.cache_limit)
        self.view: View = make_view(self.source.schema, self.source.classes, fields, decode, transform)
        self._state = EpochState()
        self._run: Run | None = None
        self._stream: SampleStream | None = None
        self._stream_pid: int | None = None
        #: Damage replaced by the iteration in progress (or the last one) in this process; with
        #: ``make_loader``, also what its workers reported with their batches.
        self.errors: list[dict[str, Any]] = []

    # -- what it holds ----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"images"``, ``"sequences"``, ``"tabular"`` or ``"samples"`` (named fields)."""
        return self.source.kind

    @property
    def schema(self):
        return self.source.schema

    @property
    def classes(self) -> list[str] | None:
        """Class names (images from a manifest), the label being the index; else None."""
        return list(self.source.classes) if self.source.classes is not None else None

    @property
    def manifest(self):
        """The dataset's :class:`~shardkit.Manifest`, None for webdataset shards."""
        return self.source.manifest

    @property
    def identity(self) -> Identity:
        return Identity(self.source.digest, self.seed, self.shuffle, self.epoch_samples)

    @property
    def epoch_samples(self) -> int:
        """Samples per epoch across all ranks (before padding)."""
        size, total = self.options.epoch_size, self.source.samples
        if size is None:
            return total
        return max(1, round(size * total)) if isinstance(size, float) else size

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

    def __getitem__(self, index: int):
        raise TypeError("StreamingDataset streams; it has no random access: for dataset[i], use "
                        "shardkit.IndexedDataset(source) over the same shards")

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
        state = run.state() if run is not None and not run.finished else self._state
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
        state, self._state = self._state, self._state.next_epoch()
        mine = layout.to_dict()
        if state.layout is not None and state.layout != mine:
            if state.worker is not None:
                raise ValueError(f"the state was saved by DataLoader worker {state.worker} of layout {state.layout}; "
                                 f"a worker's own state restores only on that layout ({mine} here): save the "
                                 f"state of make_loader's loader instead, which restores on any layout")
            # elastic: what the saved layout consumed becomes part of what this epoch leaves out
            old = self.epoch_plan(state.epoch, state.consumed, Layout(**state.layout))
            state = EpochState(state.epoch, tuple(c.to_list() for c in old.consumed(state.position)) +
                               tuple(state.consumed), extra=state.extra)
        position = state.position if state.layout is not None else 0
        if state.worker is not None and state.worker != worker:
            raise ValueError(f"the state was saved by DataLoader worker {state.worker}, this is worker {worker}")
        run = Run(self, state, layout, self.epoch_plan(state.epoch, state.consumed, layout), position, worker)
        self._run = run
        return run

    def epoch_plan(self, epoch: int, consumed: Sequence = (), layout: Layout | None = None) -> EpochPlan:
        """Epoch ``epoch``'s plan on ``layout`` (default: this dataset iterated alone), without
        the ``consumed`` segments (lists, as a state records them)."""
        segs = epoch_segments(self.source.counts, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                              epoch_size=self.epoch_samples if self.options.epoch_size is not None else None)
        if consumed:
            try:
                segs = remaining(segs, [Segment.from_list(c) for c in consumed])
            except (TypeError, ValueError) as err:
                raise ValueError(f"not a shardkit stream state: its consumed segments are malformed ({err})") from None
        return lay_out(segs, layout or self.layout(), span=self.options.shuffle_buffer, seed=self.seed,
                       shuffle=self.shuffle)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_run"], state["_stream"], state["errors"] = None, None, []
        return state

    # -- iteration ---------------------------------------------------------------------------
    def sample_stream(self) -> SampleStream:
        """This process's reader of samples (made once per process: it keeps shards open)."""
        if self._stream is None or self._stream_pid != os.getpid():
            self._stream = SampleStream(self.source, self.read_options, self.view, self.seed,
                                        ErrorLog(self.options.on_error))
            self._stream_pid = os.getpid()
        return self._stream

    def __iter__(self) -> Iterator[Any]:
        # Read and advance the state now, not at the first next(): a DataLoader worker calls
        # iter() once per epoch, and the main process counts on that.
        worker, workers = current_worker()
        try:
            run = self.begin(self.layout(workers), worker if in_worker() else None)
        except ValueError as err:
            return _fail(err)
        return self._iterate(run, worker)

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

    def __init__(self, dataset: StreamingDataset, start: EpochState, layout: Layout, plan: EpochPlan,
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


def _options(options: StreamOptions | None, kwargs: dict[str, Any]) -> StreamOptions:
    names = {f.name for f in dataclasses.fields(StreamOptions)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"StreamingDataset got unknown option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(sorted(names))}")
    return dataclasses.replace(options or StreamOptions(), **kwargs)


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
