"""``StreamingDataset``: the shards of a converted dataset (or webdataset shards) as an
``IterableDataset`` that yields every sample exactly once per epoch across ranks and workers.

Each iteration is one chain, built in the process that iterates (a DataLoader worker, or the
main process without workers)::

    partition (which pieces of which shards) → read_pieces (raw samples) → shuffle buffer
    → [length bucketing] → skip what a restored state already yielded → decode → transform

Shuffling and skipping work on raw bytes, so resuming costs reading, not decoding. What a
checkpoint needs is not in the generators but in a :class:`~shardkit.stream.state.StreamState`
(the epoch and the items each worker has yielded), which ``__iter__`` reads and advances.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .decode import decode_image, decode_tokens
from .partition import partition, samples_per_rank, worker_counts
from .reader import ON_ERROR, ErrorLog, RawImage, ReadOptions, read_pieces
from .sources import Source, resolve
from .state import StreamState, current_worker, derive_seed, in_worker, resolve_world
from ..errors import ShardError

_END = object()
_SEED_MASK = (1 << 63) - 1


class Progress:
    """What one iteration in this process has done: the worker it plays, items yielded, whether
    the last one was among them, and the damage met (under ``on_error="skip"``)."""

    __slots__ = ("epoch", "worker", "position", "finished", "errors")

    def __init__(self, epoch: int, worker: int, position: int, finished: bool, errors: ErrorLog) -> None:
        self.epoch, self.worker, self.position, self.finished, self.errors = epoch, worker, position, finished, errors


class StreamingDataset(IterableDataset):
    """Samples of a shardkit dataset (or of webdataset shards), streamed exactly once per epoch.

    Args:
        source: a directory or fsspec URL holding ``manifest.json`` (written by ``shardkit
            convert``); or a list of tar paths, or a brace pattern such as
            ``"shards/train-{000000..000099}.tar"``, of image shards written by webdataset
            (``.jpg``/``.jpeg``/``.png``/``.webp`` plus ``.cls``): those are counted by one scan,
            and the counts cached in ``.wds-counts`` under ``cache_dir`` (default
            ``$XDG_CACHE_HOME/shardkit`` or ``~/.cache/shardkit``), keyed by path, size and
            modification time.
        shuffle: shuffle the shard order and, through a buffer, the samples; the order is drawn
            from ``(seed, epoch)`` and changes every epoch.
        seed: a non-negative int; runs with the same seed see the same order.
        shuffle_buffer: samples held (undecoded) by each worker to shuffle; memory grows with it.
            A worker's first sample goes out once a tenth of it is filled.
        rank, world_size: this process's place among the distributed ranks; by default
            ``torch.distributed``'s when it is initialised, else 0 and 1.
        drop_last: cut the epoch to a multiple of ``world_size`` instead of padding it by
            repeating samples from its start (the rule of ``DistributedSampler``).
        transform: called on each decoded sample (the uint8 image tensor, or the token tensor).
            It runs with torch's default generator seeded per sample from
            ``(seed, epoch, rank, worker, position)``, and the caller's generator state is put
            back after it: random transforms (torchvision v2) give the same result after a resume.
        decode: False yields images as their encoded bytes and tokens as the stored NumPy array,
            without ``transform``.
        on_error: ``"raise"`` (default) raises a ``ShardError`` naming the shard, member and byte
            offset of damaged data; ``"skip"`` drops the damaged samples, records them in
            :attr:`errors` and logs a warning at the end of the epoch. Ranks then may yield
            different counts: avoid it with DDP unless the data is known to be sound.
        verify: hash each shard while it streams and compare with the manifest's sha256 (the
            whole shard is read, also by workers that need only part of it).
        storage_options: fsspec options (credentials, endpoint) for URLs.
        cache_dir, cache_limit: a local cache of remote shards, at most ``cache_limit`` bytes.

    Yields:
        ``(image, label)`` for images: a uint8 RGB tensor 3×H×W (then ``transform(image)``) and
        an int; ``(tokens, label)`` for sequences: an int64 1-D tensor and an int, -1 without labels.

    Every rank yields ``len(dataset)`` samples per epoch, and all ranks and DataLoader workers
    together yield each sample exactly once (plus the padding). Each ``iter()`` reads the current
    epoch and advances it, so the order changes every epoch even without :meth:`set_epoch`. With
    a plain ``DataLoader`` and ``persistent_workers=False`` the workers get a copy of the epoch and
    the main process's copy does not advance: call ``set_epoch`` then, or use ``make_loader``.

    Raises:
        ManifestError: (construction) no valid manifest; (before the first sample) shards missing.
        ShardError: (before the first sample) shards of another size than the manifest says;
            (iteration) damaged data. Both under ``on_error="raise"`` only: ``"skip"`` reads what
            is there, drops the rest and reports it.
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], *, shuffle: bool = True,
                 seed: int = 0, shuffle_buffer: int = 1000, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False,
                 transform: Callable[[Any], Any] | None = None, decode: bool = True, on_error: str = "raise",
                 verify: bool = False, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None, cache_limit: int | None = None) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, not {seed!r}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, not {shuffle_buffer}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        self.rank, self.world_size = resolve_world(rank, world_size)
        self.source: Source = resolve(source, storage_options=storage_options, cache_dir=cache_dir)
        self.shuffle, self.seed, self.shuffle_buffer, self.drop_last = shuffle, seed, shuffle_buffer, drop_last
        self.transform, self.decode = transform, decode
        self.options = ReadOptions(on_error, verify, storage_options,
                                   os.fspath(cache_dir) if cache_dir is not None else None, cache_limit)
        self._state = StreamState()
        self._progress: Progress | None = None
        #: Damage skipped by the iteration in progress (or the last one) in this process; with
        #: ``make_loader`` also what its workers reported with their batches.
        self.errors: list[dict[str, Any]] = []

    # -- what it holds ----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"images"`` or ``"sequences"``."""
        return self.source.kind

    @property
    def classes(self) -> list[str] | None:
        """Class names (images from a manifest), the label being the index; else None."""
        return list(self.source.classes) if self.source.classes is not None else None

    @property
    def manifest(self):
        """The dataset's :class:`~shardkit.Manifest`, None for webdataset shards."""
        return self.source.manifest

    def __len__(self) -> int:
        """Samples this rank yields per epoch (padding included), whatever the DataLoader."""
        return samples_per_rank(self.source.samples, self.world_size, self.drop_last)

    def worker_counts(self, num_workers: int) -> list[int]:
        """Samples each of ``num_workers`` DataLoader workers (0: the main process) yields per epoch."""
        return worker_counts(len(self), num_workers)

    # -- epoch and state ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads."""
        return self._state.epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration read ``epoch``. A state restored for that same epoch is kept,
        so the usual ``load_state_dict`` then ``set_epoch(epoch)`` resumes mid-epoch."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, not {epoch}")
        if epoch != self._state.epoch:
            self._state = StreamState(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where iteration in this process stands, as plain ints and lists: the epoch, and the
        items yielded. Meant for iterating the dataset directly; with DataLoader workers use the
        loader's ``state_dict`` (the workers' progress is not visible here)."""
        progress = self._progress
        if progress is None or progress.finished:  # the next iteration starts a new epoch
            return self._state.to_dict()
        return StreamState(progress.epoch, (progress.position,), (False,)).to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue from ``state`` (from :meth:`state_dict`)."""
        self._state = StreamState.from_dict(state)
        self._progress = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_progress"], state["errors"] = None, []
        return state

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return self._iterate(None)

    def batched(self, batcher: Callable[[Iterator[Any], random.Random], Iterator[list]]) -> BatchedStream:
        """This dataset grouped into lists by ``batcher`` (e.g. a ``BucketBatchSampler``) inside
        each worker, before decoding; it shares this dataset's epoch and state."""
        return BatchedStream(self, batcher)

    def _iterate(self, batcher) -> Iterator[Any]:
        # Read and advance the state now, not at the first next(): a DataLoader worker calls
        # iter() once per epoch, and the main process counts on that.
        plan, self._state = self._state, StreamState(self._state.epoch + 1)
        physical, workers = current_worker()
        if plan.resuming and len(plan.positions) != workers:
            return _fail(ValueError(f"the state to resume was saved with {len(plan.positions)} workers, "
                                    f"this iteration has {workers}: resume with the same num_workers"))
        worker = (physical + plan.first_worker) % workers
        errors = ErrorLog(self.options.on_error)
        self.errors = errors.records
        self._progress = Progress(plan.epoch, worker, plan.positions[worker] if plan.resuming else 0,
                                  bool(plan.resuming and plan.finished[worker]), errors)
        return self._run(self._progress, workers, batcher)

    def _run(self, progress: Progress, workers: int, batcher) -> Iterator[Any]:
        epoch, worker, start, errors = progress.epoch, progress.worker, progress.position, progress.errors
        pieces = partition([s.samples for s in self.source.shards], seed=self.seed, epoch=epoch,
                           rank=self.rank, world_size=self.world_size, worker=worker, num_workers=workers,
                           drop_last=self.drop_last, shuffle=self.shuffle)
        if progress.finished or not pieces:
            progress.finished = True
            return
        base = derive_seed(self.seed, epoch, self.rank, worker)
        if in_worker():
            seed_globals(base)
        items = read_pieces(pieces, self.source, self.options, errors)
        if self.shuffle and self.shuffle_buffer > 1:
            items = shuffle_buffer(items, self.shuffle_buffer, random.Random(base))
        if batcher is not None:
            items = batcher(items, random.Random(base + 1))
        decode = self._decoder(batcher is not None)
        for position, item in _numbered(items, start, progress):
            out = decode(item, (base + (position << 20)) & _SEED_MASK, errors)
            if out is not _END:
                yield out
        errors.report(f"epoch {epoch}, rank {self.rank}, worker {worker}")

    def _decoder(self, batched: bool):
        one = self._decode_image if self.kind == "images" else self._decode_sequence
        if not batched:
            return one

        def many(items, seed, errors):
            out = [o for o in (one(item, seed + j, errors) for j, item in enumerate(items)) if o is not _END]
            return out if out else _END  # every sample of the batch was damaged
        return many

    def _decode_image(self, raw: RawImage, seed: int, errors: ErrorLog):
        if not self.decode:
            return raw.data, raw.label
        try:
            image = decode_image(raw.data, shard=raw.shard, member=raw.member)
        except ShardError as err:
            errors.damaged(err, 1)
            return _END
        if self.transform is not None:
            image = self._transform(image, seed, f"{raw.member} of shard {raw.shard}")
        return image, raw.label

    def _decode_sequence(self, raw: tuple[np.ndarray, int], seed: int, errors: ErrorLog):
        tokens, label = raw
        if not self.decode:
            return tokens, label
        tokens = decode_tokens(tokens)
        if self.transform is not None:
            tokens = self._transform(tokens, seed, "a sequence")
        return tokens, label

    def _transform(self, value, seed: int, what: str):
        # torch.random.fork_rng(devices=[]) + torch.manual_seed would say the same, but cost 90 µs
        # per sample against 2 µs for the default generator's own state calls (measured here).
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.transform(value)
        except Exception as err:
            if hasattr(err, "add_note"):
                err.add_note(f"(in the transform of {what}, shardkit.StreamingDataset)")
            raise
        finally:
            generator.set_state(saved)

    def _take_progress(self) -> tuple[int, int, bool, list[dict[str, Any]], int]:
        """``(worker, position, finished, new errors, pid)`` of this process's iteration: the tag a
        loader's collate attaches to each batch."""
        p = self._progress
        return p.worker, p.position, p.finished, p.errors.take_new(), os.getpid()


class BatchedStream(IterableDataset):
    """A :class:`StreamingDataset` whose items are lists made by ``batcher`` in each worker."""

    def __init__(self, dataset: StreamingDataset, batcher) -> None:
        self.dataset, self.batcher = dataset, batcher

    def __iter__(self) -> Iterator[list]:
        return self.dataset._iterate(self.batcher)

    def _take_progress(self):
        return self.dataset._take_progress()


def shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Items in a random order, each drawn from a buffer of at most ``size`` of the next items.

    The first item goes out once a tenth of ``size`` is held, and the buffer then takes in two items
    for each one out until it is full (webdataset's rule): the first batch waits for a tenth of
    the buffer, not for all of it, which over a remote store is most of a worker's first shards.
    ``webdataset.filters.shuffle`` follows the same rule, but costs 483 ns per item against 270 here
    (``rng.randint`` per pick; a million items, buffer 1000), which shows at 500k sequences/s.
    """
    initial = max(1, size // 10)
    buffer: list[Any] = []
    rand = rng.random
    items = iter(items)
    for item in items:
        buffer.append(item)
        if len(buffer) < size:
            item = next(items, _END)
            if item is not _END:
                buffer.append(item)
        if len(buffer) >= initial:
            i = int(rand() * len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def _numbered(items: Iterator[Any], start: int, progress: Progress) -> Iterator[tuple[int, Any]]:
    """``(position, item)`` after passing over the first ``start`` items (already yielded before a
    resume). ``progress`` is updated before each item goes out, and says whether it is the last."""
    items = iter(items)
    if start and sum(1 for _ in itertools.islice(items, start)) < start:
        progress.finished = True
        return
    position, following = start, next(items, _END)
    while following is not _END:
        item, following = following, next(items, _END)
        position += 1
        progress.position, progress.finished = position, following is _END
        yield position, item


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
