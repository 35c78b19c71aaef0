"""``make_loader``: a DataLoader over a ``StreamingDataset`` that batches in the workers, seeds
them reproducibly, advances the epoch, and saves and restores its position.

How the position is known: the collate function runs in the worker right after the batch's
samples were drawn, so it attaches the worker's progress (which worker, items yielded, whether
that was its last) to the batch; the loader strips it and keeps the latest per worker. DataLoader
takes batches from the workers in a fixed round robin (a worker that runs out is passed over),
so a state is the epoch, each worker's position and the next worker in the round; a restored
loader makes its DataLoader worker 0 play that next worker.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, get_worker_info

from .collate import BucketBatchSampler, image_collate, pad_collate
from .dataset import StreamingDataset, seed_globals
from .state import StreamState, derive_seed

log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """The CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 8)


def make_loader(dataset: StreamingDataset, batch_size: int | None = None, *, max_tokens: int | None = None,
                bucketing: bool | BucketBatchSampler = False, num_workers: int | None = None,
                collate_fn: Callable[[list], Any] | None = None, pin_memory: bool | None = None,
                persistent_workers: bool = True, prefetch_factor: int | None = None, drop_last: bool = False,
                worker_init_fn: Callable[[int], None] | None = None, **dataloader_kwargs: Any) -> StreamingLoader:
    """A :class:`StreamingLoader` (a ``torch.utils.data.DataLoader``) over ``dataset``.

    Args:
        batch_size: samples per batch.
        max_tokens: for sequences, batches of as many samples as fit this many padded tokens
            (with ``batch_size`` too: whichever limit comes first).
        bucketing: for sequences, batch similar lengths together (sorted within a window of
            samples, batches shuffled); True uses a default ``BucketBatchSampler``, or pass one.
        num_workers: DataLoader worker processes; default the usable CPUs, at most 8.
        collate_fn: default ``image_collate`` for images, ``pad_collate`` for sequences. Runs in
            the workers.
        pin_memory: default True when CUDA is available.
        persistent_workers: keep the workers between epochs (ignored without workers).
        prefetch_factor: batches each worker prepares ahead (DataLoader's default 2).
        drop_last: drop each worker's last incomplete batch.
        worker_init_fn: called in each worker after shardkit seeded ``random``, NumPy and torch
            from ``(seed, epoch, rank, worker)``. (They are seeded again at each epoch.)
        dataloader_kwargs: passed to DataLoader (``multiprocessing_context``, ``timeout``, ...).

    Raises:
        ValueError: neither ``batch_size`` nor ``max_tokens``; bucketing or ``max_tokens`` for
            images; an argument that would break the order (``in_order=False``, a sampler).
    """
    return StreamingLoader(dataset, batch_size, max_tokens=max_tokens, bucketing=bucketing,
                           num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory,
                           persistent_workers=persistent_workers, prefetch_factor=prefetch_factor,
                           drop_last=drop_last, worker_init_fn=worker_init_fn, **dataloader_kwargs)


class StreamingLoader(DataLoader):
    """A DataLoader over a :class:`StreamingDataset`; build it with :func:`make_loader`.

    Besides what a DataLoader does: ``len()`` is the batches per epoch of this rank;
    ``state_dict()`` / ``load_state_dict()`` save and restore the position (a loader restored
    from the state taken after batch k, in a fresh process with the same world size, rank, seed
    and ``num_workers``, yields exactly the batches the saved one yields after k); the dataset's
    epoch advances at every iteration, and ``dataset.set_epoch(e)`` is honoured even with
    persistent workers (they are restarted when they would read another epoch).
    ``loader.stream`` is the StreamingDataset.
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int | None = None, *, max_tokens: int | None = None,
                 bucketing: bool | BucketBatchSampler = False, num_workers: int | None = None,
                 collate_fn: Callable[[list], Any] | None = None, pin_memory: bool | None = None,
                 persistent_workers: bool = True, prefetch_factor: int | None = None, drop_last: bool = False,
                 worker_init_fn: Callable[[int], None] | None = None, **dataloader_kwargs: Any) -> None:
        if not isinstance(dataset, StreamingDataset):
            raise TypeError(f"make_loader needs a shardkit StreamingDataset, not {type(dataset).__name__}")
        for name in ("shuffle", "sampler", "batch_sampler"):
            if name in dataloader_kwargs:
                raise ValueError(f"{name} does not apply: StreamingDataset shuffles and partitions by itself")
        if dataloader_kwargs.get("in_order", True) is not True:
            raise ValueError("in_order=False would make the batch order, and so resuming, depend on timing")
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
        if collate_fn is None:
            collate_fn = image_collate if dataset.kind == "images" else pad_collate
        kwargs: dict[str, Any] = dict(
            num_workers=workers, collate_fn=_Tagged(collate_fn, dataset if workers == 0 else None),
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            worker_init_fn=_WorkerInit(worker_init_fn), persistent_workers=persistent_workers and workers > 0)
        if workers > 0 and prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        if batcher is None:
            super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, **kwargs, **dataloader_kwargs)
        else:
            super().__init__(dataset.batched(batcher), batch_size=None, **kwargs, **dataloader_kwargs)
        self.stream = dataset
        self._batcher = batcher
        self._items_per_batch = None if batcher is not None or not drop_last else batch_size
        self._live: _Live | None = None
        self._workers_epoch: int | None = None  # the epoch persistent workers read next

    # -- size --------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch for this rank.

        Raises:
            TypeError: with ``max_tokens`` (the count depends on the lengths drawn).
        """
        counts = self.stream.worker_counts(self.num_workers)
        if self._batcher is not None:
            batches = [self._batcher.num_batches(c) for c in counts]
            if None in batches:
                raise TypeError("the number of batches per epoch is unknown with max_tokens")
            return sum(batches)
        b = self.batch_size
        return sum(c // b if self.drop_last else -(-c // b) for c in counts)

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        stream, plan = self.stream, self.stream._state
        if self.num_workers > 0:
            if self._iterator is not None and (plan.resuming or self._workers_epoch != plan.epoch):
                self._drop_workers()  # they would read another epoch, or not resume
            inner = super().__iter__()
            stream._state = StreamState(plan.epoch + 1)  # the workers took their copy
            self._workers_epoch = plan.epoch + 1 if self.persistent_workers else None
            stream.errors = []
        else:
            inner = super().__iter__()  # iter(stream) advanced its state
        totals = stream.worker_counts(self.num_workers)
        live = self._live = _Live(plan, max(self.num_workers, 1), totals, self._items_per_batch)
        return self._batches(inner, live)

    def _batches(self, inner: Iterator[Any], live: _Live) -> Iterator[Any]:
        errors = self.stream.errors if self.num_workers > 0 else None
        try:
            for tag, batch in inner:
                live.update(tag)
                if errors is not None and tag[3]:
                    errors.extend(tag[3])
                yield batch
        except RuntimeError as err:
            live.name_workers(err)
            raise
        if self._live is live:
            self._live = None

    def _drop_workers(self) -> None:
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:  # else they go when the iterator is collected
            shutdown()

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch yielded: plain ints and lists (``torch.save`` it and
        ``torch.load(..., weights_only=True)`` it back)."""
        live = self._live
        if live is None or all(live.finished):  # the next iteration starts a new epoch
            state = self.stream._state
        else:
            state = StreamState(live.epoch, tuple(live.positions), tuple(live.finished), live.next_worker)
        return {**state.to_dict(), **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next iteration.

        Raises:
            ValueError: a state saved with another num_workers, world size, rank or seed.
        """
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ValueError(f"the state was saved with {key}={state.get(key)!r}, this loader has {value!r}: "
                                 f"resume with the same settings")
        self.stream.load_state_dict(state)
        self._live = None
        if self._iterator is not None:
            self._drop_workers()

    def _identity(self) -> dict[str, int]:
        s = self.stream
        return {"num_workers": self.num_workers, "world_size": s.world_size, "rank": s.rank, "seed": s.seed}


class _Live:
    """The iteration in progress as the main process sees it, from the batches' tags."""

    def __init__(self, plan: StreamState, workers: int, totals: list[int], items_per_batch: int | None) -> None:
        self.epoch = plan.epoch
        self.positions = list(plan.positions) if plan.resuming else [0] * workers
        self.finished = list(plan.finished) if plan.resuming else [False] * workers
        self.finished = [f or n == 0 for f, n in zip(self.finished, totals)]
        self.next_worker = plan.first_worker
        self.totals, self.items_per_batch = totals, items_per_batch
        self.pids: dict[int, int] = {}

    def update(self, tag: tuple) -> None:
        worker, position, finished, _, pid = tag
        self.positions[worker] = position
        # with drop_last the worker's last, incomplete batch never comes: it is done already
        self.finished[worker] = finished or (self.items_per_batch is not None and
                                             self.totals[worker] - position < self.items_per_batch)
        self.next_worker = (worker + 1) % len(self.positions)
        self.pids[pid] = worker

    def name_workers(self, err: RuntimeError) -> None:
        """Add the shardkit worker (and its epoch) to DataLoader's "worker (pid N) ..." errors."""
        found = [int(p) for p in re.findall(r"\d+", " ".join(re.findall(r"pid\(?s?\)? ([\d, ]+)", str(err))))]
        named = [f"pid {p} is worker {self.pids[p]}" for p in found if p in self.pids]
        if named and hasattr(err, "add_note"):
            err.add_note(f"shardkit: {', '.join(named)} of {len(self.positions)}, epoch {self.epoch}")


class _Tagged:
    """The collate function, returning ``(progress tag, batch)``; see the module docstring."""

    def __init__(self, collate_fn: Callable[[list], Any], local: StreamingDataset | None) -> None:
        self.collate_fn, self.local = collate_fn, local

    def __call__(self, items: list) -> tuple[tuple, Any]:
        batch = self.collate_fn(items)
        info = get_worker_info()
        stream = self.local if info is None else info.dataset
        return stream._take_progress(), batch


class _WorkerInit:
    """Seeds ``random``, NumPy and torch in a new worker, then runs the user's ``worker_init_fn``."""

    def __init__(self, user_fn: Callable[[int], None] | None) -> None:
        self.user_fn = user_fn

    def __call__(self, worker_id: int) -> None:
        info = get_worker_info()
        stream = getattr(info.dataset, "dataset", info.dataset)
        state = stream._state
        worker = (worker_id + state.first_worker) % info.num_workers
        seed_globals(derive_seed(stream.seed, state.epoch, stream.rank, worker))
        if self.user_fn is not None:
            self.user_fn(worker_id)
