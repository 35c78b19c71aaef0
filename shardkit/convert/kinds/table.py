"""Tables of samples: the rows of ``.csv``, ``.jsonl`` and ``.parquet`` files (a file, a directory
or glob of them, or fsspec URLs), each row one sample of named fields (``kind: "samples"``).

Every column becomes a field by its values' type: the ``image_field`` column's paths or URLs an
image (validated and stored as the images of an ImageFolder tree are, under ``COLUMN.jpg`` /
``.png`` / ``.webp``), the ``label_field`` column's integers ``COLUMN.cls``, strings
``COLUMN.txt``, binary ``COLUMN.bin``, numbers, booleans, lists and dicts ``COLUMN.json`` (a
column whose name already ends in that extension keeps its name). Pass 1 is
:mod:`..table_scan`; pass 2 (:class:`TableChunk`) reads the kept rows back and the images.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import storage
from ...errors import SourceError
from ...format.fields import IMAGE_FORMATS, extension
from ...format.manifest import Manifest
from ...format.records import sample_key, sample_members
from ...format.schema import FieldSpec, Schema
from ..images import SkipImage, encode_image, read_source
from ..names import relative, source_path
from ..output import ChunkResult
from ..plan import Plan, cut, sample_order
from ..sources import TABLE_FORMATS, DataFile, DataSource, list_data_files, skip_entry
from ..table_scan import SkipRow, TableScan, read_scratch_row, resolve_image
from ..tables import table_parts
from .base import InputKind, Listed, Request, all_skipped, shard_infos

#: A chunk holds at most this many rows, or this many bytes of images.
CHUNK_ROWS = 32
CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class Column:
    """How a table column is stored: its field name and the conversion of its values
    (``int``/``float``: a CSV cell's text to a number; ``value``: as read)."""

    name: str
    field: str
    convert: str = "value"


@dataclass(frozen=True)
class TableRows:
    """Pass 1's result: per kept row its file, scratch offset and length, locator; the files'
    scratch paths, names and whether rows are located by line; the stored columns."""

    file: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray
    where: np.ndarray
    files: tuple[tuple[str, str, bool], ...]  # (scratch path, table name, by line)
    columns: tuple[Column, ...]
    image_field: str | None
    bases: tuple[str, ...]
    storage_options: dict[str, Any] | None = None
    #: the columns every kept row holds a value of (the others are optional fields)
    required: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.file)


class TableKind(InputKind):
    name = "table"
    reads = "no .csv, .jsonl or .parquet file"
    whole_shards = True

    def list(self, src, request: Request) -> Listed:
        if storage.is_url(src):
            source = _list_remote(src, request)
        else:
            source = list_data_files(src, TABLE_FORMATS, "table", checksum=request.checksum)
        entries = source.listing()
        if request.root is not None:  # where the images are read from decides the bytes
            entries.append((f"root={request.root if storage.is_url(request.root) else relative(request.root, source.root)}",
                            -1, ""))
        return Listed(source.root, entries, data=(source, request.root, request.storage_options),
                      skipped=source.skipped, ignored=source.ignored)

    def scan_tasks(self, listed, opts, workers, scratch):
        source, root, storage_options = listed.data
        return [TableScan(part, scratch, _base(source, part.file, root), opts.image_field, opts.label_field,
                          opts.fields, storage_options) for part in table_parts(source, storage_options)]

    def plan(self, listed, scans, opts, digest):
        source, root, storage_options = listed.data
        kept = [s for s in scans if len(s.offsets)]
        columns = _columns(kept, opts)
        if opts.fields is not None:
            seen = {name for s in scans for name in s.columns} | ({opts.image_field} if opts.image_field else set())
            missing = [f for f in opts.fields if f not in seen]
            if missing and kept:
                raise SourceError(f"the table {listed.root} has no column {missing[0]!r} (--fields)")
        files = tuple((s.scratch, source.files[s.file].path, s.by_line) for s in scans)
        total = sum(len(s.offsets) for s in kept)
        held = {c.name: sum(s.columns.get(c.name, {}).get("count", 0) for s in kept) for c in columns}
        index = {id(s): i for i, s in enumerate(scans)}
        cat = lambda name: np.concatenate([getattr(s, name) for s in kept]) if kept else np.zeros(0, np.int64)
        rows = TableRows(np.concatenate([np.full(len(s.offsets), index[id(s)], np.int32) for s in kept])
                         if kept else np.zeros(0, np.int32), cat("offsets"), cat("nbytes"), cat("where"), files,
                         columns, opts.image_field, tuple(_base(source, s.file, root) for s in scans), storage_options,
                         frozenset(name for name, n in held.items() if n == total))
        order = sample_order(len(rows), opts)
        # the estimate of a row's bytes: its image as stored, its other values, a header per field
        estimate = (cat("image_bytes") + cat("nbytes") + (len(columns) + 1) * 1024).astype(np.int64)
        starts = cut(estimate[order] if len(order) else estimate, opts.max_shard_size, opts.max_shard_samples)
        skipped = list(listed.skipped) + [e for s in scans for e in s.skipped]
        return Plan("table", opts, digest, order, starts, skipped, source=rows)

    def shard_tasks(self, plan, index):
        rows, opts = plan.source, plan.options
        tasks, items = [], []
        for position in plan.shard_positions(index):
            r = int(plan.order[position])
            items.append((position, int(rows.file[r]), int(rows.offset[r]), int(rows.nbytes[r]), int(rows.where[r])))
            if len(items) == CHUNK_ROWS:
                tasks.append(TableChunk(rows, tuple(items), opts.validate, opts.resize, opts.quality))
                items = []
        if items or not tasks:
            tasks.append(TableChunk(rows, tuple(items), opts.validate, opts.resize, opts.quality))
        return tasks

    def manifest(self, plan, records):
        rows = plan.source
        fields = []
        if rows.image_field is not None:
            base = _image_base(rows.image_field)
            fields += [FieldSpec(f"{base}.{ext}" if base else ext, optional=True) for ext in IMAGE_FORMATS]
        fields += [FieldSpec(c.field, optional=c.name not in rows.required) for c in rows.columns]
        schema = Schema("samples", tuple(fields), one_of=tuple(f.name for f in fields[:len(IMAGE_FORMATS)])
                        if rows.image_field is not None else ())
        stats = {"rows": len(rows), "image_field": rows.image_field, "label_field": plan.options.label_field,
                 "columns": {c.name: c.field for c in rows.columns}}
        return Manifest(kind="samples", schema=schema, shards=shard_infos(records), params=plan.options.as_params(),
                        skipped=all_skipped(plan, records), stats=stats)


def _base(source: DataSource, file: int, root: str | None) -> str:
    """Where the images of a table file are looked up: ``root``, or the table's own directory."""
    if root is not None:
        return root
    where = os.fsdecode(source_path(source.root, source.files[file].path))  # the real name, not its escape
    if storage.is_url(source.root):
        return where.rsplit("/", 1)[0]
    return os.path.dirname(where) or "."


def _list_remote(src: str, request: Request) -> DataSource:
    """The tables at a URL: the file it names, or those under its prefix."""
    if os.path.splitext(src)[1].lower() in TABLE_FORMATS:
        info = storage.info(src, request.storage_options)
        root, name = src.rsplit("/", 1)
        stamp = next((str(info[k]) for k in ("ETag", "etag", "LastModified", "mtime") if info.get(k) is not None), "")
        return DataSource(root, [DataFile(name, TABLE_FORMATS[os.path.splitext(name)[1].lower()],
                                          int(info["size"]), stamp)])
    files = request.remote_files if request.remote_files is not None else storage.list_files(src, request.storage_options)
    tables = [DataFile(f.path, TABLE_FORMATS[os.path.splitext(f.path)[1].lower()], f.size, f.stamp)
              for f in files if os.path.splitext(f.path)[1].lower() in TABLE_FORMATS]
    if not tables:
        raise SourceError(f"{src}: found no table file ({', '.join(TABLE_FORMATS)})")
    return DataSource(src, tables, ignored=sorted(f.path for f in files if f not in tables))


def _image_base(image_field: str) -> str:
    """The image fields' name before the format: the column's, without an image extension it has."""
    return "" if image_field.lower() in IMAGE_FORMATS else image_field


def _field_name(column: str, ext: str) -> str:
    return column if extension(column) == ext and "." in column or column == ext else f"{column}.{ext}"


def _columns(scans: list, opts) -> tuple[Column, ...]:
    """How each column is stored, from the value types pass 1 saw in every file."""
    types: dict[str, set[str]] = {}
    for s in scans:
        for name, seen in s.columns.items():
            types.setdefault(name, set()).update(seen["types"])
    csv_only = all(s.fmt == "csv" for s in scans)  # a CSV cell that is no number makes its column text
    columns, fields = [], {}
    for name, found in types.items():
        if name == opts.image_field or not found:
            continue
        if name == opts.label_field:
            column = Column(name, _field_name(name, "cls"))
        elif found <= {"int"}:
            column = Column(name, _field_name(name, "json"), "int")
        elif found <= {"int", "float"}:
            column = Column(name, _field_name(name, "json"), "float")
        elif found == {"str"} or ("str" in found and found <= {"str", "int", "float"} and csv_only):
            column = Column(name, _field_name(name, "txt"))
        elif found == {"bytes"}:
            column = Column(name, _field_name(name, "bin"))
        else:
            column = Column(name, _field_name(name, "json"))
        if not column.field or "/" in column.field or column.field.startswith(".") or column.field.endswith("."):
            raise SourceError(f"the column {name!r} cannot be a field name (no '/', no dot at either end); "
                              f"leave it out with --fields")
        if column.field in fields:
            raise SourceError(f"the columns {fields[column.field]!r} and {name!r} would both be the field "
                              f"{column.field!r}; leave one out with --fields")
        fields[column.field] = name
        columns.append(column)
    return tuple(columns)


@dataclass(frozen=True)
class TableChunk:
    """A pass-2 task: the samples at some consecutive positions of a shard; ``items`` are
    ``(position, file, scratch offset, bytes, locator)``."""

    rows: TableRows
    items: tuple[tuple[int, int, int, int, int], ...]
    validate: str
    resize: int | None
    quality: int

    def __call__(self) -> ChunkResult:
        members, skipped, read = [], [], 0
        handles: dict[int, Any] = {}
        real_bases: dict[int, str] = {}  # a table's image directory, links resolved: once per file, not per row
        try:
            for position, file, offset, nbytes, where in self.items:
                scratch, name, by_line = self.rows.files[file]
                if file not in handles:
                    handles[file] = open(scratch, "rb")
                f = handles[file]
                f.seek(offset)
                row = read_scratch_row(f.read(nbytes))
                try:
                    base = self.rows.bases[file]
                    if file not in real_bases and not storage.is_url(base):
                        real_bases[file] = os.path.realpath(base)
                    sample, size = self._sample(row, base, real_bases.get(file))
                    members += sample_members(sample_key(position), sample, quality=self.quality)
                    read += size
                except (SkipImage, ValueError) as err:
                    skipped.append(skip_entry(name, str(err), where if by_line else None,
                                              row=None if by_line else where))
        finally:
            for f in handles.values():
                f.close()
        return ChunkResult(members, len(self.items) - len(skipped), skipped, read)

    def _sample(self, row: dict[str, Any], base: str, base_real: str | None) -> tuple[dict[str, Any], int]:
        sample: dict[str, Any] = {}
        size = 0
        if self.rows.image_field is not None:
            value = row[self.rows.image_field]
            try:
                where = resolve_image(value, base, base_real)
            except SkipRow as err:
                raise SkipImage(str(err)) from None
            try:
                data = storage.read_bytes(where, self.rows.storage_options) if storage.is_url(where) else read_source(where)
                size = len(data)
                ext, stored = encode_image(data, validate=self.validate, resize=self.resize, quality=self.quality)
            except SkipImage as err:
                raise SkipImage(f"image {value}: {err}") from None
            base_name = _image_base(self.rows.image_field)
            sample[f"{base_name}.{ext}" if base_name else ext] = stored
        for column in self.rows.columns:
            value = row.get(column.name)
            if value is None:
                continue
            if column.convert == "int" and isinstance(value, str):
                value = int(value)
            elif column.convert == "float" and isinstance(value, str):
                value = float(value)
            sample[column.field] = value
        return sample, size

    # What the worker pool needs to pin a dead worker on one row (see pool.WorkerPool).

    def split(self) -> list["TableChunk"]:
        return [dataclasses.replace(self, items=(item,)) for item in self.items]

    def crashed(self) -> ChunkResult:
        return ChunkResult([], 0, [skip_entry(self.rows.files[file][1], "the decoder crashed (its worker process died)",
                                              where if self.rows.files[file][2] else None,
                                              row=None if self.rows.files[file][2] else where)
                                   for _, file, _, _, where in self.items])

    def merge(self, results: list[ChunkResult]) -> ChunkResult:
        return ChunkResult.join(results)

    def __repr__(self) -> str:
        return f"TableChunk({len(self.items)} rows)"
