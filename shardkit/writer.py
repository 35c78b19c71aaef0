"""``ShardWriter``: your own samples (dicts of named fields) into shards plus a manifest.

The public counterpart of ``shardkit convert``: the same shard files (``convert.output``: temp
file, fsync, index sidecar, atomic publish), the same destination rules (a lock, another dataset
refused unless ``overwrite``, the manifest written last), the same field codecs
(``format.fields``) that the reader and ``verify`` use. Samples are written in the order given,
each under its position as key; the same samples give the same bytes on any machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .convert.kinds.base import shard_infos
from .convert.options import parse_size
from .convert.output import ChunkResult, Destination, ShardWriter as ShardFile
from .errors import DestinationError
from .format.fields import as_array, codec_of
from .format.manifest import MANIFEST_NAME, Manifest, shard_stamp
from .format.records import members_bytes, sample_key, sample_members
from .format.schema import FieldSpec, Schema
from .format.tar import END_OF_ARCHIVE

log = logging.getLogger(__name__)


class ShardWriter:
    """Writes samples into WebDataset-compatible tar shards and a ``manifest.json`` in ``dst``.

    Use it as a context manager::

        with shardkit.ShardWriter("shards/pairs", max_shard_samples=10_000) as w:
            for path, caption in rows:
                w.write({"jpg": open(path, "rb").read(), "txt": caption, "json": {"source": path}})

    A sample is a mapping ``{field: value}``; the field's last extension says how it is stored
    (``jpg``/``png``/``webp``: encoded image bytes, or a PIL image, encoded as PNG, JPEG at
    ``quality``, or lossless WebP; ``cls``: an int; ``txt``: a str; ``json``: a JSON value;
    ``npy``: a NumPy array or torch tensor; anything else: bytes). Every sample has the fields of
    the first, plus any of ``optional``.

    Args:
        dst: a directory or fsspec URL (``s3://bucket/prefix``).
        max_shard_size: the largest shard (bytes, or ``"256MB"``); a sample larger than it gets a
            shard of its own.
        max_shard_samples: the most samples per shard.
        optional: fields that some samples lack.
        quality: JPEG quality for PIL images written to a ``jpg`` field.
        overwrite: replace another dataset (shardkit's files only) in ``dst``.
        storage_options: fsspec options for a URL.

    Raises:
        DestinationError: (on entry) ``dst`` holds another dataset or an unfinished write (unless
            ``overwrite``), is locked by another writer, not writable, or full.
        ValueError: (``write``) a value its field cannot store, or a field the first sample did
            not have (nor ``optional``), named with the sample's position; nothing of that sample
            is written.
    """

    def __init__(self, dst: str | os.PathLike, *, max_shard_size: int | str = "256MB",
                 max_shard_samples: int | None = None, optional: Iterable[str] = (), quality: int = 90,
                 overwrite: bool = False, storage_options: dict[str, Any] | None = None) -> None:
        self.path = os.fspath(dst)
        self.max_shard_size = parse_size(max_shard_size)
        if max_shard_samples is not None and (not isinstance(max_shard_samples, int) or max_shard_samples < 1):
            raise ValueError(f"max_shard_samples must be a positive int, not {max_shard_samples!r}")
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in 1..100, not {quality}")
        self.max_shard_samples, self.quality, self.overwrite = max_shard_samples, quality, overwrite
        self.optional = tuple(optional)
        self._dst = Destination(self.path, storage_options)
        self._fields: dict[str, _FieldStats] | None = None
        self._file: ShardFile | None = None
        self._records: list = []
        self._open = False
        self.samples = 0  #: samples written so far

    # -- the destination ------------------------------------------------------------------------
    def __enter__(self) -> "ShardWriter":
        self._dst.__enter__()
        try:
            self._claim()
        except BaseException:
            self._dst.__exit__(None, None, None)
            raise
        self._open = True
        return self

    def _claim(self) -> None:
        out = self._dst
        if self.overwrite:
            out.clear()
            return
        if out.manifest_text() is not None:
            raise DestinationError(f"{self.path} holds another dataset ({MANIFEST_NAME}); pass overwrite=True "
                                   f"to replace it")
        found = out.shard_files() + ([".shardkit-partial (an unfinished write)"] if out.partial_digest() else [])
        if found:
            raise DestinationError(f"{self.path} holds shards of an unfinished write ({', '.join(found[:3])}); "
                                   f"pass overwrite=True to replace them")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        self._abort(exc)

    def _abort(self, exc: BaseException | None) -> None:
        if self._file is not None:
            self._file.__exit__(None, None, None)
            self._file = None
        if self._open:
            self._open = False
            self._dst.__exit__(None, None, None)
            log.warning("ShardWriter: no manifest written in %s: %s stopped the write after %d samples in %d "
                        "finished shards; those shards are not a dataset: write again with overwrite=True",
                        self.path, type(exc).__name__ if exc else "an error", self.samples, len(self._records))

    # -- writing --------------------------------------------------------------------------------
    def write(self, sample: Mapping[str, Any]) -> None:
        """Write one sample (see the class docstring).

        Raises:
            ValueError: a value its field cannot store, a field not in the first sample (nor
                ``optional``), or a required field missing; the sample's position is named and
                nothing of the sample is written.
            RuntimeError: the writer is not open (use it in a ``with`` block).
            DestinationError: the disk is full, or an upload failed.
        """
        if not self._open:
            raise RuntimeError("ShardWriter is not open: use it as `with ShardWriter(dst) as w:`")
        position = self.samples
        if not isinstance(sample, Mapping):
            raise ValueError(f"sample {position}: expected a mapping of fields, got {type(sample).__name__}")
        if "__key__" in sample:
            raise ValueError(f"sample {position}: shardkit keys samples by their position; keep your own key as a "
                             f"field, e.g. 'key.txt'")
        try:
            # each array field made an array once (a tensor leaves its device once), then checked and encoded
            arrays = {name: _array(name, value) for name, value in sample.items() if codec_of(name).name == "npy"}
            self._check_fields(sample, arrays)
            members = sample_members(sample_key(position), {**sample, **arrays}, quality=self.quality)
        except ValueError as err:
            raise ValueError(f"sample {position}: {err}") from None
        size = members_bytes(len(data) for _, data in members)
        file = self._file
        if file is not None and (file.samples and file.bytes_written + size + len(END_OF_ARCHIVE) > self.max_shard_size
                                 or self.max_shard_samples is not None and file.samples >= self.max_shard_samples):
            self._finish_shard()
        if self._file is None:
            previous = self._records[-1].sha256 if self._records else ""
            self._file = ShardFile(self._dst, len(self._records), shard_stamp(previous, *(d for _, d in members)))
        self._file.add(ChunkResult(members, 1))
        self._record_fields(sample, arrays)
        self.samples += 1

    def write_all(self, samples: Iterable[Mapping[str, Any]]) -> None:
        """:meth:`write` each sample."""
        for sample in samples:
            self.write(sample)

    def close(self) -> Manifest:
        """Finish the last shard and write the manifest; returns it. (Called by the ``with`` block.)

        Raises:
            ValueError: no sample was written (an empty dataset is not written).
        """
        if not self._open:
            raise RuntimeError("ShardWriter is not open")
        if not self.samples:
            self._abort(None)
            raise ValueError(f"no sample was written: {self.path} gets no manifest")
        self._finish_shard()
        schema = Schema.samples(stats.spec(name, name in self.optional or stats.count < self.samples)
                                for name, stats in self._fields.items())
        manifest = Manifest(kind="samples", schema=schema,
                            shards=shard_infos(self._records),
                            params={"max_shard_size": self.max_shard_size, "max_shard_samples": self.max_shard_samples,
                                    "quality": self.quality})
        try:
            self._dst.write_manifest(manifest.to_json())
        finally:
            self._open = False
            self._dst.__exit__(None, None, None)
        return manifest

    def _finish_shard(self) -> None:
        if self._file is not None:
            try:
                self._records.append(self._file.finish())
            finally:
                self._file.__exit__(None, None, None)
                self._file = None

    # -- fields ---------------------------------------------------------------------------------
    def _check_fields(self, sample: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """``ValueError`` (the caller names the sample) for fields that differ from the first sample's."""
        if self._fields is None:
            return
        known = self._fields.keys() | set(self.optional)
        extra = [f for f in sample if f not in known]
        if extra:
            raise ValueError(f"field {extra[0]!r} is not in the first sample's fields "
                             f"({', '.join(self._fields)}); declare fields some samples lack in optional=")
        missing = [f for f in self._fields if f not in sample and f not in self.optional]
        if missing:
            raise ValueError(f"field {missing[0]!r} is missing (every sample has the first "
                             f"sample's fields, except those in optional=)")
        for name, array in arrays.items():
            stats = self._fields.get(name)
            if stats is not None and stats.dtype is not None and str(array.dtype) != stats.dtype:
                raise ValueError(f"field {name!r} is a {array.dtype} array, earlier samples' are {stats.dtype}")

    def _record_fields(self, sample: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        if self._fields is None:
            self._fields = {name: _FieldStats() for name in sample}
        for name in sample:
            stats = self._fields.setdefault(name, _FieldStats())
            stats.count += 1
        for name, array in arrays.items():
            stats = self._fields[name]
            stats.dtype = str(array.dtype)
            stats.shapes.add(tuple(array.shape))


def _array(name: str, value: Any) -> np.ndarray:
    try:
        return as_array(value)
    except ValueError as err:
        raise ValueError(f"field {name!r}: {err}") from None


class _FieldStats:
    """What the manifest's schema says of a field: how many samples had it, the arrays' dtype and shapes."""

    def __init__(self) -> None:
        self.count = 0
        self.dtype: str | None = None
        self.shapes: set[tuple[int, ...]] = set()

    def spec(self, name: str, optional: bool) -> FieldSpec:
        shape = next(iter(self.shapes)) if len(self.shapes) == 1 else None
        return FieldSpec(name, optional, self.dtype, shape)
