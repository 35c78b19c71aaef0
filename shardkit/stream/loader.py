"""``make_loader``: a DataLoader over a ``StreamingDataset`` that batches like a map-style
DataLoader, reads in its workers, and saves one state that is the same on every rank.

How: the main process plans the epoch (``dataset.begin``: which segments each worker of each rank
reads, cut into batches, only the rank's last batch partial) and its sampler hands DataLoader one
*unit* per request: the segments of a batch (or of a few batches, for tiny samples) of one
planned worker, in the round robin DataLoader itself follows, so every DataLoader worker keeps
reading its own stretch of shards sequentially. A worker reads the unit's samples
(``SampleStream``), decodes, transforms and collates them; the main process only counts the
batches it hands out. So the state is a pure function of the epoch, its plan and that count: the
same on every rank at the same step, with no message from the workers and nothing read from
DataLoader's internals. With ``block_size`` the plan is in token space and the workers pack rows
of tokens (``packing``); the rest is the same.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from .bundle import bundle, unbundle
from .collate import BucketBatchSampler
from .base import Stream, seed_globals
from .dataset import StreamingDataset
from .nested import map_leaves
from .packing import Packer, batches_per_rank
from .plan import Cursor, Layout, Segment, batch_order, samples_per_rank, worker_ranges
from .shared import SharedBatches
from .state import derive_seed

log = logging.getLogger(__name__)

#: Samples per request for datasets of tiny samples (blocks): one request's batches travel as one
#: bundle, since each tensor crossing from a worker costs a shared-memory file and a connection
#: to pass its descriptor (about 1.3 ms, measured; 3 of them per padded batch of sequences).
UNIT_SAMPLES = 4096
#: For samples of a fixed size (rows), as many as make this many bytes: 1M rows of 20 floats
#: streamed at 640k rows/s in units of 4096 rows, 736k in units of 16,384 (2 workers, measured).
UNIT_BYTES = 1 << 20


def default_num_workers() -> int:
    """The CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 8)


def make_loader(dataset: StreamingDataset, batch_size: int | None = None, *, block_size: int | None = None,
                eos_id: int | None = None, pad_id: int = 0, max_tokens: int | None = None,
                bucketing: bool | BucketBatchSampler = False, num_workers: int | None = None,
                collate_fn: Callable[[list], Any] | None = None, pin_memory: bool | None = None,
                persistent_workers: bool = True, prefetch_factor: int | None = None, drop_last: bool = False,
                worker_init_fn: Callable[[int], None] | None = None, **dataloader_kwargs: Any) -> StreamingLoader:
    """A :class:`StreamingLoader` (a ``torch.utils.data.DataLoader``) over ``dataset``.

    An epoch of N samples per rank gives ``ceil(N / batch_size)`` batches, all full but the last
    (``floor`` with ``drop_last``, which drops fewer than ``batch_size`` samples per rank),
    whatever ``num_workers``.

    With ``block_size=L`` (a token dataset, or a ``Mix`` of them) the batches are packed for
    language-model pretraining: each a dict of ``input_ids`` (``batch_size``×L int64: documents
    concatenated in their stored order within each shard, ``eos_id`` after each document when
    given), ``position_ids`` (B×L, 0 at each document's start, going on when a document continues
    from the row before), ``document_ids`` (B×L, the segment of ``cu_seqlens`` each token is in,
    -1 on padding), ``cu_seqlens`` (int32: ``0, ..., B·L``, where each segment of the flattened
    batch starts, as FlashAttention's ``flash_attn_varlen_func`` takes them) and ``max_seqlen``
    (an int); a mix with ``with_source`` adds ``source``, the source of each row. Every token of the epoch comes exactly
    once; every rank yields the same number of batches, the epoch's tail padded with ``pad_id``
    (``document_ids`` -1), only each rank's last batch having fewer rows (dropped with
    ``drop_last``, and the tokens with it). See ``shardkit.stream.packing``.

    Args:
        batch_size: samples per batch (rows of ``block_size`` tokens when packing).
        block_size: pack tokens into rows of this many (see above).
        eos_id: with ``block_size``, the token put after each document (None: none).
        pad_id: with ``block_size``, the token that pads the epoch's tail.
        max_tokens: for sequences, batches of as many samples as fit this many padded tokens
            (with ``batch_size`` too: whichever limit comes first).
        bucketing: for sequences, batch similar lengths together (sorted within a window of
            samples, batches shuffled); True uses a default ``BucketBatchSampler``, or pass one.
        num_workers: DataLoader worker processes; default the usable CPUs, at most 8.
        collate_fn: default the kind's (``image_collate``, ``pad_collate``, ``row_collate``,
            ``dict_collate``). Runs in the workers.
        pin_memory: default True when CUDA is available.
        persistent_workers: keep the workers between epochs (ignored without workers).
        prefetch_factor: requests each worker has in hand (DataLoader's default 2).
        drop_last: drop the rank's last, incomplete batch.
        worker_init_fn: called in each worker after shardkit seeded ``random``, NumPy and torch
            from ``(seed, epoch, rank, worker)``. (They are seeded again at each epoch.)
        dataloader_kwargs: passed to DataLoader (``multiprocessing_context``, ``timeout``, ...).
            ``shuffle`` and ``sampler=None`` / ``batch_sampler=None`` are accepted (a script's
            harmless defaults); the order is the dataset's.

    Raises:
        ValueError: neither ``batch_size`` nor ``max_tokens``; bucketing or ``max_tokens`` for
            other than sequences; an argument that would break the order (``in_order=False``, a
            sampler, a ``shuffle`` that contradicts the dataset's); ``block_size`` for other than a
            token dataset, or with bucketing, ``max_tokens`` or ``collate_fn``.
        TypeError: ``dataset`` is not a StreamingDataset (or ``Mix``).
    """
    return StreamingLoader(dataset, batch_size, block_size=block_size, eos_id=eos_id, pad_id=pad_id,
                           max_tokens=max_tokens, bucketing=bucketing,
                           num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory,
                           persistent_workers=persistent_workers, prefetch_factor=prefetch_factor,
                           drop_last=drop_last, worker_init_fn=worker_init_fn, **dataloader_kwargs)


class Unit(NamedTuple):
    """One request to a worker: the segments of each batch to make, from one planned worker.

    ``epoch``: for seeding the worker's globals; ``check``: shards to check before the first read
    (sent with a planned worker's first unit); ``ahead``: the next unit's first shard and sample,
    opened early; ``seed``: the bucketing's shuffle seed."""

    epoch: int
    batches: tuple[tuple[Segment, ...], ...]
    check: tuple[int, ...] = ()
    ahead: tuple[int, int] | None = None
    seed: int = 0


class Fetched(NamedTuple):
    """What a worker sends back for a unit: its batches (bundled when small), new damage records,
    and the shared-memory segments its large tensors were written into (``shared.Lease``);
    ``pinned``: copied into pinned memory (by DataLoader's pin thread), the segments no longer read."""

    batches: Any
    errors: list
    bundled: bool
    leases: tuple = ()
    pinned: bool = False

    def pin_memory(self) -> Fetched:
        """DataLoader's ``pin_memory=True`` calls this (its protocol for custom batch types)."""
        return self._replace(batches=_pinned(self.batches), pinned=True)


def _pinned(value: Any) -> Any:
    """``value`` with every tensor in tuples, named tuples, lists and dicts copied to pinned memory."""
    return map_leaves(value, torch.Tensor.pin_memory)


class StreamingLoader(DataLoader):
    """A DataLoader over a :class:`StreamingDataset`; build it with :func:`make_loader`.

    Besides what a DataLoader does: ``len()`` is the batches per epoch of this rank;
    ``state_dict()`` is the position after the last batch yielded, the same value on every rank
    at the same step (save rank 0's); ``load_state_dict()`` restores it on any world size,
    ``num_workers`` and batch size (the rest of the epoch is laid out anew: every sample not yet
    consumed comes exactly once), and on the same layout gives exactly the batches the saved run
    would have given. The dataset's epoch advances at every iteration, and ``dataset.set_epoch``
    is honoured, persistent workers or not. ``loader.stream`` is the StreamingDataset.
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int | None = None, *, block_size: int | None = None,
                 eos_id: int | None = None, pad_id: int = 0, max_tokens: int | None = None,
                 bucketing: bool | BucketBatchSampler = False, num_workers: int | None = None,
                 collate_fn: Callable[[list], Any] | None = None, pin_memory: bool | None = None,
                 persistent_workers: bool = True, prefetch_factor: int | None = None, drop_last: bool = False,
                 worker_init_fn: Callable[[int], None] | None = None, **dataloader_kwargs: Any) -> None:
        if not isinstance(dataset, Stream):
            raise TypeError(f"make_loader needs a shardkit StreamingDataset (or shardkit.Mix), not "
                            f"{type(dataset).__name__}")
        _check_harmless(dataset, dataloader_kwargs)
        if batch_size is None and max_tokens is None and not isinstance(bucketing, BucketBatchSampler):
            raise ValueError("give batch_size, max_tokens, or a BucketBatchSampler as bucketing")
        batcher = None
        if isinstance(bucketing, BucketBatchSampler):
            batcher = bucketing
        elif bucketing or max_tokens is not None:
            batcher = BucketBatchSampler(batch_size, max_tokens=max_tokens, window=None if bucketing else 1,
                                         shuffle=bool(bucketing), drop_last=drop_last)
        if batcher is not None and dataset.kind != "sequences":
            raise ValueError("bucketing and max_tokens apply to sequences, not images")
        workers = default_num_workers() if num_workers is None else num_workers
        self.stream, self._batcher = dataset, batcher
        pack = None
        if block_size is not None:
            pack = _packing(dataset, batch_size, block_size, eos_id, pad_id, batcher, collate_fn)
            layout = dataset.layout(workers, batch_size * block_size, drop_last=drop_last)
            # drop_last drops the epoch's tail rather than padding it: whole rows only, cut evenly
            ranks = "drop" if drop_last and layout.ranks == "pad" else layout.ranks
            self.plan_layout = dataclasses.replace(layout, ranks=ranks, block=block_size, eos=eos_id is not None)
        elif batcher is not None:
            # one planned "batch" is one bucketing window, made into batches by the worker
            self.plan_layout = dataset.layout(workers, batcher.window)
        else:
            unit = max(1, _unit_samples(dataset) // batch_size) if dataset.schema.blocks is not None else 1
            self.plan_layout = dataset.layout(workers, batch_size, drop_last=drop_last, unit=unit)
        self._init = _WorkerInit(dataset, worker_init_fn)
        self._shared = SharedBatches(workers) if workers > 0 else None
        fetcher = _Fetcher(dataset, collate_fn or dataset.view.collate, batcher,
                           bundle_small=pack is not None or (batcher is None and self.plan_layout.unit > 1), pack=pack,
                           shared=self._shared)
        self._units = _Units(dataset, self.plan_layout)
        kwargs: dict[str, Any] = dict(
            num_workers=workers, batch_size=None, sampler=self._units, collate_fn=_identity,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            worker_init_fn=self._init, persistent_workers=persistent_workers and workers > 0)
        if workers > 0 and prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        super().__init__(fetcher, **kwargs, **dataloader_kwargs)

    @property
    def image_keys(self) -> tuple:
        """Where the image batches sit in a batch (positions or field names): what ``DeviceLoader``
        normalises (masks, tokens and other uint8 tensors are only moved)."""
        return self.stream.view.image_keys

    # -- size --------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch for this rank.

        Raises:
            TypeError: with ``max_tokens`` (the count depends on the lengths drawn).
        """
        stream = self.stream
        if self.plan_layout.block:
            return batches_per_rank(stream.epoch_entries(self.plan_layout), self.plan_layout, stream.rank)
        per_rank = samples_per_rank(stream.epoch_samples, self.plan_layout, stream.rank)
        counts = [hi - lo for lo, hi in worker_ranges(per_rank, self.plan_layout)]
        batcher = self._batcher
        if batcher is None:
            return sum(-(-c // self.plan_layout.batch_size) for c in counts)
        windows = [n for c in counts for n in _window_sizes(c, batcher.window)]
        batches = [batcher.num_batches(n) for n in windows]
        if None in batches:
            raise TypeError("the number of batches per epoch is unknown with max_tokens")
        return sum(batches)

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        # The epoch begins at the first next(), not at iter(): Lightning calls the sampler's
        # set_epoch between the two (as DataLoader reads a DistributedSampler's order lazily)
        self._units.run = run = self.stream.begin(self.plan_layout)
        if self._batcher is not None and run.start.consumed:
            raise ValueError("a bucketing loader resumes on the layout it was saved on (same world size, "
                             "num_workers and batch size)")
        self._init.epoch = run.epoch  # for workers started by this iteration
        errors = self.stream.errors
        errors.clear()
        if self._shared is not None:
            self._shared.sweep()
        yield from self._batches(super().__iter__(), run, errors)

    def _batches(self, inner: Iterator[Fetched], run, errors: list) -> Iterator[Any]:
        # batches of the first unit that a restored state had handed out already
        skip = run.into if self._batcher is not None else run.position - _unit_start(run, self.plan_layout, self.stream.rank)
        run.active = True
        try:
            for fetched in inner:
                errors.extend(fetched.errors)
                batches = unbundle(fetched.batches) if fetched.bundled else fetched.batches
                if fetched.leases:
                    self._hold(fetched)
                fetched = None  # (the batches alone keep their segments in use)
                for batch in batches:
                    if skip:
                        skip -= 1
                        continue
                    if self._batcher is None:
                        run.advance()
                    else:
                        run.into += 1
                    yield batch
                if self._batcher is not None:  # a window is done
                    run.advance()
                    run.into = 0
        finally:
            run.active = False

    def _hold(self, fetched: Fetched) -> None:
        if fetched.pinned:
            for lease in fetched.leases:
                self._shared.release(lease.slot, lease.stamp)
        else:
            self._shared.hold(fetched.leases)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch yielded: plain values (``torch.save`` it and
        ``torch.load(..., weights_only=True)`` it back, or JSON), the same on every rank."""
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next iteration, on this loader's layout.

        Raises:
            ValueError: a state of another dataset, seed, shuffle setting or epoch size, a newer
                state format, or loading while an iteration is under way.
        """
        self.stream.load_state_dict(state)


def _unit_samples(dataset: Stream) -> int:
    fixed = dataset.schema.blocks.fixed_sample_bytes()
    return max(UNIT_SAMPLES, UNIT_BYTES // fixed) if fixed else UNIT_SAMPLES


def _unit_start(run, layout: Layout, rank: int) -> int:
    """The batch position where the unit holding batch ``run.position`` begins."""
    counts = run.plan.counts(rank)
    if layout.unit == 1:
        return run.position
    j = 0
    for j0, group in _unit_groups(counts, layout):
        if j0 + len(group) > run.position:
            return j0
        j = j0 + len(group)
    return j


def _unit_groups(counts: list[int], layout: Layout):
    """``(first batch position, [(worker, batch), ...])`` of each unit of a rank, in order."""
    order = list(batch_order(counts, layout.batch_size, layout.unit))
    j = 0
    while j < len(order):
        w = order[j][0]
        k = j
        while k < len(order) and order[k][0] == w and k - j < layout.unit:
            k += 1
        yield j, order[j:k]
        j = k


class _Units(DistributedSampler):
    """The sampler: the units of ``run`` (the loader's current one, set at each iteration), from
    its position on. (It keeps no reference to the loader: DataLoader holds it.)

    It is a ``DistributedSampler`` because it is one (it gives each rank its part), and because
    trainers test for that class: Lightning then injects no sampler of its own, and calls
    :meth:`set_epoch` at each epoch, which sets the dataset's epoch."""

    def __init__(self, stream: Stream, layout: Layout) -> None:
        super().__init__(stream, num_replicas=stream.world_size, rank=stream.rank, shuffle=stream.shuffle,
                         seed=stream.seed)
        self.stream, self.layout = stream, layout
        self.run = None

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __len__(self) -> int:
        if self.layout.block:
            return batches_per_rank(self.stream.epoch_entries(self.layout), self.layout, self.stream.rank)
        per_rank = samples_per_rank(self.stream.epoch_samples, self.layout, self.stream.rank)
        counts = [hi - lo for lo, hi in worker_ranges(per_rank, self.layout)]
        return sum(1 for _ in _unit_groups(counts, self.layout))

    def __iter__(self) -> Iterator[Unit]:
        run, layout, stream = self.run, self.layout, self.stream
        segments = run.plan.workers[stream.rank]
        counts = run.plan.counts(stream.rank)
        b = layout.batch_size
        start = _unit_start(run, layout, stream.rank)
        checked: set[int] = set()
        units = [(j0, group) for j0, group in _unit_groups(counts, layout) if j0 + len(group) > start]
        # each worker's batches are cut in order: a cursor per worker, not a search from its first
        # segment for every batch (a mix's epoch holds a segment per few samples)
        cursors = [Cursor(segs) for segs in segments]
        for i, (j0, group) in enumerate(units):
            w = group[0][0]
            batches = tuple(tuple(cursors[w].take(n * b, min((n + 1) * b, counts[w]))) for _, n in group)
            check = ()
            if w not in checked:
                checked.add(w)
                check = tuple(sorted({s.shard for s in segments[w]}))
            ahead = None
            if i + 1 < len(units) and not layout.block:
                nxt = units[i + 1][1]
                first = cursors[nxt[0][0]].peek(nxt[0][1] * b)
                if first is not None:
                    ahead = (first.shard, first.start + (first.lo if first.seed is None else 0))
            yield Unit(run.epoch, batches, check, ahead, derive_seed(stream.seed, run.epoch, stream.rank, j0))


def _window_sizes(count: int, window: int) -> list[int]:
    """The sizes of the bucketing windows a worker's ``count`` samples are cut into."""
    return [min(window, count - a) for a in range(0, count, window)]


class _Fetcher(Dataset):
    """The map-style dataset DataLoader's workers index with units: each unit's batches, made here."""

    def __init__(self, dataset: StreamingDataset, collate_fn: Callable[[list], Any],
                 batcher: BucketBatchSampler | None, bundle_small: bool, pack: tuple | None = None,
                 shared: SharedBatches | None = None) -> None:
        self.dataset, self.collate_fn, self.batcher, self.bundle_small = dataset, collate_fn, batcher, bundle_small
        self.pack = pack  # (block_size, eos_id, pad_id, each shard's source name or None)
        self._packer: tuple[Any, Packer] | None = None
        self.shared = shared
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def seeded(self, epoch: int) -> None:
        """The worker's globals were seeded for ``epoch`` (by ``_WorkerInit``)."""
        self._epoch = epoch

    def __getitem__(self, unit: Unit) -> Fetched:
        stream = self.dataset.sample_stream()
        info = get_worker_info()
        if info is not None and unit.epoch != self._epoch:  # a new epoch in a persistent worker
            self._epoch = unit.epoch
            seed_globals(derive_seed(self.dataset.seed, unit.epoch, self.dataset.rank, info.id))
        if unit.check:
            stream.check(unit.check)
        shared = self.shared if info is not None else None
        if shared is not None:
            shared.collect(info.id)
        try:
            batches, bundled = self._make(stream, unit), False
            # (nothing to send without workers)
            if self.bundle_small and (len(batches) > 1 or self.pack) and info is not None:
                batches, bundled = bundle(batches), True
        finally:
            leases = shared.take_leases() if shared is not None else ()
        if unit.ahead is not None:
            stream.reader.open_ahead(*unit.ahead)
        return Fetched(batches, stream.errors.take_new(), bundled, leases)

    def _make(self, stream, unit: Unit) -> list:
        if self.pack is not None:
            if self._packer is None or self._packer[0] is not stream:
                self._packer = (stream, Packer(stream, *self.pack))
            return [self._packer[1].batch(segs) for segs in unit.batches]
        if self.batcher is None:
            return [stream.batch(segs, self.collate_fn) for segs in unit.batches]
        samples = list(stream.samples(s for segs in unit.batches for s in segs))
        return [self.collate_fn(batch) for batch in self.batcher(samples, random.Random(unit.seed))]


def _packing(dataset: Stream, batch_size: int | None, block_size: int, eos_id: int | None, pad_id: int,
             batcher: BucketBatchSampler | None, collate_fn: Callable | None) -> tuple:
    """What the workers need to pack: ``(block_size, eos_id, pad_id, each shard's source name or None)``.

    Raises:
        ValueError: bad values, a dataset that is not of tokens, or options that do not apply.
    """
    for name, value, low in (("block_size", block_size, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"packing needs {name} as an int >= {low}, not {value!r}")
    for name, value, optional in (("eos_id", eos_id, True), ("pad_id", pad_id, False)):
        if (value is not None or not optional) and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name} must be a token id (an int >= 0), not {value!r}")
    if batcher is not None or collate_fn is not None:
        raise ValueError("block_size packs the batches itself: it takes no bucketing, max_tokens or collate_fn")
    if dataset.kind != "sequences":
        raise ValueError(f"block_size packs token datasets (kind 'sequences'); this one holds {dataset.kind}")
    return block_size, eos_id, pad_id, getattr(dataset, "shard_sources", None)


def _check_harmless(dataset: StreamingDataset, kwargs: dict[str, Any]) -> None:
    """Accept what a training script passes by habit; refuse what would change the order."""
    for name in ("sampler", "batch_sampler"):
        if kwargs.pop(name, None) is not None:
            raise ValueError(f"{name} does not apply: StreamingDataset partitions and orders the samples across "
                             f"ranks and workers itself (that is what makes its epochs exact and resumable); "
                             f"pass rank/world_size to the dataset instead of a DistributedSampler")
    shuffle = kwargs.pop("shuffle", None)
    if shuffle is not None and bool(shuffle) != dataset.shuffle:
        raise ValueError(f"shuffle={shuffle} does not apply to make_loader: the order is the dataset's, which "
                         f"{'shuffles' if dataset.shuffle else 'does not shuffle'}; set "
                         f"StreamingDataset(..., shuffle={bool(shuffle)}) instead")
    if kwargs.get("in_order", True) is not True:
        raise ValueError("in_order=False would make the batch order, and so resuming, depend on timing")


def _identity(value: Any) -> Any:
    return value


class _WorkerInit:
    """Seeds ``random``, NumPy and torch in a new worker for the epoch it starts in (``epoch``, set
    by the loader before it starts workers), then runs the user's ``worker_init_fn``."""

    def __init__(self, dataset: StreamingDataset, user_fn: Callable[[int], None] | None) -> None:
        self.dataset, self.user_fn, self.epoch = dataset, user_fn, 0

    def __call__(self, worker_id: int) -> None:
        d = self.dataset
        seed_globals(derive_seed(d.seed, self.epoch, d.rank, worker_id))
        get_worker_info().dataset.seeded(self.epoch)
        if self.user_fn is not None:
            self.user_fn(worker_id)
