"""``StreamingDataset``: the shards of a converted dataset (or webdataset shards) as an
``IterableDataset`` that yields every sample exactly once per epoch across ranks and workers.

It resolves its source (manifest or webdataset shards), chooses how samples are decoded (the
kind's view), and says what an epoch holds (a window of the stream of shuffled passes); the
iteration and its state are the :class:`~.base.Stream`'s.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import Stream
from .packing import epoch_window
from .plan import Layout, Segment, epoch_segments
from .reader import ON_ERROR, ReadOptions
from .sources import Source, resolve, token_counts
from .state import EpochState, Identity, resolve_world
from .views import View, make_view


def epoch_count(size: int | float | None, total: int) -> int:
    """Samples in an epoch of ``size`` (a count, a float fraction of ``total``, or None: ``total``).

    Raises:
        ValueError: ``size`` is not a positive count or fraction.
    """
    if size is None:
        return total
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise ValueError(f"epoch_size must be a positive count or fraction, not {size!r}")
    return max(1, round(size * total)) if isinstance(size, float) else size


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
    epoch_size: samples per epoch across all ranks: a count (an int), or a fraction of the
        dataset (a float: 0.1, or 2.5 for two and a half passes); below the dataset's size an epoch
        subsamples without repetition (no sample twice in an epoch, even one that spans the end of
        a pass) and the next epochs go on through the rest; above it, passes repeat, each
        reshuffled. ``len()`` is still the per-rank count. Packed (``make_loader(...,
        block_size=L)``), an epoch is the same fraction of the tokens. Default: the dataset's size.
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
        epoch_count(self.epoch_size, 0)  # checks it
        if self.drop_last and not self.even:
            raise ValueError("drop_last=True evens the ranks out; even=False gives each sample to one rank: choose one")


class StreamingDataset(Stream):
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
    together yield each sample exactly once (plus the padding). Each iteration reads the current
    epoch and advances it (in the main process at its first ``next()``, in a DataLoader worker at
    ``iter()``), so the order changes every epoch even without :meth:`set_epoch`. With
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
        self._start()

    # -- what it holds ----------------------------------------------------------------------
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
        total = self.source.samples
        return epoch_count(self.options.epoch_size, total) if total else 0

    def __getitem__(self, index: int):
        raise TypeError("StreamingDataset streams; it has no random access: for dataset[i], use "
                        "shardkit.IndexedDataset(source) over the same shards")

    def sequence(self, state: EpochState) -> list[Segment]:
        """Epoch ``state.epoch``'s window of the stream of passes (see ``plan``)."""
        return epoch_segments(self.source.counts, seed=self.seed, epoch=state.epoch, shuffle=self.shuffle,
                              epoch_size=self.epoch_samples if self.options.epoch_size is not None else None)

    def entry_counts(self, eos: bool) -> list[int]:
        """Each shard's entries in token space: its tokens (from the manifest, or one cached scan of
        a version 1 dataset), plus one per document with ``eos``.

        Raises:
            ValueError: not a token dataset.
        """
        if self.kind != "sequences":
            raise ValueError(f"packing (block_size) needs a token dataset; this one holds {self.kind}")
        tokens = self.__dict__.get("_tokens")
        if tokens is None:
            tokens, source = token_counts(self.source, self.options.storage_options, self.options.cache_dir)
            if source != self.source:  # what a scan found (version 1): a reader made since must see it
                self.source, self._stream = source, None
            self._tokens = tokens
        return [t + n for t, n in zip(tokens, self.source.counts)] if eos else list(tokens)

    def token_sequence(self, state: EpochState, layout: Layout) -> list[Segment]:
        """Epoch ``state.epoch``'s window of the stream of passes in token space (see ``packing``)."""
        counts = self.entry_counts(layout.eos)
        size = epoch_window(sum(counts), self.source.samples,
                            self.epoch_samples if self.options.epoch_size is not None else None)
        return epoch_segments(counts, seed=self.seed, epoch=state.epoch, shuffle=self.shuffle, epoch_size=size)

def _options(options: StreamOptions | None, kwargs: dict[str, Any]) -> StreamOptions:
    names = {f.name for f in dataclasses.fields(StreamOptions)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"StreamingDataset got unknown option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(sorted(names))}")
    return dataclasses.replace(options or StreamOptions(), **kwargs)


