"""Pass 1 of tabular features (see :mod:`.kinds.tabular`): :class:`TabularScan`, a task per file
(per range of rows of a ``.npy``, per row groups of a Parquet file), reads the rows in chunks,
checks them (a non-numeric or empty cell, NaN or infinity unless ``allow_nan``, a value beyond
float32, a ragged CSV row, a label that is not an integer: the row is skipped with its file and
row), and appends the valid ones as float32 features and int64 labels to scratch files."""

from __future__ import annotations

import operator
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DestinationError, SourceError
from ..format.records import NO_LABEL
from .sources import skip_entry
from .tables import csv_header, csv_rows, is_numeric_type, parquet_batches, parquet_columns, scratch_path

#: Rows checked and written at once in pass 1.
CHUNK_ROWS = 65536


@dataclass(frozen=True)
class Part:
    """One pass-1 task's rows: a file (its listing index, where it is, its format), and for a
    ``.npy`` or Parquet file the range of rows or row groups."""

    path: str | bytes
    name: str
    fmt: str
    file: int
    start: int = 0
    stop: int = 0
    labels: str | bytes | None = None  # a .npy of labels beside a .npy of features
    nbytes: int = 0


@dataclass
class Scanned:
    """What a pass-1 task kept: ``count`` valid rows of ``width`` float32 features in
    ``features``, int64 labels in ``labels``; the rows it skipped; the feature names."""

    count: int
    width: int
    features: str
    labels: str
    has_labels: bool
    names: list[str] | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    label_range: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class TabularScan:
    """Pass 1 over one :class:`Part` (see the module docstring)."""

    part: Part
    scratch: str
    features_field: str
    label_field: str
    fields: tuple[str, ...] | None
    allow_nan: bool

    @property
    def nbytes(self) -> int:
        return self.part.nbytes

    def __call__(self) -> Scanned:
        p = self.part
        out = _Out(scratch_path(self.scratch, f"rows-{p.file}-{p.start}.f32"),
                   scratch_path(self.scratch, f"labels-{p.file}-{p.start}.i64"), p.name, self.allow_nan)
        try:
            reader = {"npy": self._npy, "npz": self._npz, "csv": self._csv, "parquet": self._parquet}[p.fmt]
            names, has_labels, ignored = reader(out)
        finally:
            out.close()
        return Scanned(out.count, out.width or 0, out.features_path, out.labels_path, has_labels, names,
                       out.skipped, ignored, (out.low, out.high))

    def _npy(self, out: "_Out"):
        features = _load_npy(self.part.path, self.part.name)
        labels = _load_npy(self.part.labels, "--labels") if self.part.labels is not None else None
        _check_shapes(features, labels, self.part.name)
        for a in range(self.part.start, self.part.stop, CHUNK_ROWS):
            b = min(a + CHUNK_ROWS, self.part.stop)
            out.add(np.asarray(features[a:b]), None if labels is None else np.asarray(labels[a:b]).reshape(-1),
                    rows=np.arange(a, b))
        return None, labels is not None, []

    def _npz(self, out: "_Out"):
        name = self.part.name
        try:
            archive = zipfile.ZipFile(os.fsdecode(self.part.path))
        except (OSError, zipfile.BadZipFile) as err:
            raise SourceError(f"cannot read the .npz file {name}: {err}") from None
        with archive:
            members = {m.removesuffix(".npy"): m for m in archive.namelist()}
            if self.features_field not in members:
                raise SourceError(f"{name} holds no array named {self.features_field!r} (it holds "
                                  f"{', '.join(sorted(members)) or 'none'}); name the features with --features-field")
            features = _NpzArray(archive, members[self.features_field], name)
            labels = _NpzArray(archive, members[self.label_field], name) if self.label_field in members else None
            _check_shapes(features, labels, name)
            a = 0
            while a < features.shape[0]:
                x = features.read(CHUNK_ROWS)
                y = labels.read(len(x)).reshape(-1) if labels is not None else None
                out.add(x, y, rows=np.arange(a, a + len(x)))
                a += len(x)
        return None, labels is not None, []

    def _csv(self, out: "_Out"):
        fast = self._csv_arrow(out)
        if fast is not None:
            return fast
        out.reset()
        part = self.part
        rows = csv_rows(part)
        header = None
        cols = label_col = None
        chunk: list[tuple[int, list[str]]] = []
        for line, cells, reason in rows:
            if header is None:
                if cells is None:
                    raise SourceError(f"{part.name}:{line}: cannot read the header row ({reason})")
                header = csv_header(cells, part.name)
                cols, label_col = _feature_columns(header, self.fields, self.label_field, part.name)
                continue
            if cells is None:
                out.skip(reason, line=line)
            elif len(cells) != len(header):
                out.skip(f"the row has {len(cells)} cells, the header {len(header)}", line=line)
            else:
                chunk.append((line, cells))
            if len(chunk) == CHUNK_ROWS:
                self._csv_chunk(out, chunk, header, cols, label_col)
                chunk = []
        if header is None:
            raise SourceError(f"{part.name}: empty CSV file (no header row)")
        self._csv_chunk(out, chunk, header, cols, label_col)
        return [header[c] for c in cols], label_col is not None, []

    def _csv_arrow(self, out: "_Out"):
        """A CSV file of numbers only, through pyarrow's parser when it is installed: 200k rows of
        20 cells in 0.7 s against 3.2 s for the standard library's ``csv`` (measured here, 2 cores).
        It cannot say which line a bad row is on, so any file it does not read whole and clean (an
        empty or non-numeric cell, a ragged row, a quoted newline, a blank line) is read again
        by the standard library, which reports each bad row with its line. None: not read so."""
        try:
            import pyarrow as pa
            import pyarrow.csv as pcsv
        except ImportError:
            return None
        for line, cells, _ in csv_rows(self.part):
            header = csv_header(cells, self.part.name) if cells is not None else None
            break
        else:
            return None
        if header is None:
            return None
        cols, label_col = _feature_columns(header, self.fields, self.label_field, self.part.name)
        names = [header[c] for c in cols]
        types = {n: pa.float64() for n in names} | ({header[label_col]: pa.int64()} if label_col is not None else {})
        try:
            reader = pcsv.open_csv(os.fsdecode(self.part.path),
                                   read_options=pcsv.ReadOptions(block_size=1 << 20),  # memory: a block
                                   parse_options=pcsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False),
                                   convert_options=pcsv.ConvertOptions(column_types=types, include_columns=list(types),
                                                                       strings_can_be_null=False))
            line = 2
            for batch in reader:
                if any(column.null_count for column in batch.columns):
                    return None
                x = np.column_stack([batch.column(n).to_numpy() for n in names]) if names else \
                    np.zeros((batch.num_rows, 0))
                y = batch.column(header[label_col]).to_numpy() if label_col is not None else None
                out.add(x.astype(np.float64, copy=False), y, lines=np.arange(line, line + batch.num_rows))
                line += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError):
            return None
        return names, label_col is not None, []

    def _csv_chunk(self, out: "_Out", chunk, header, cols, label_col) -> None:
        if not chunk:
            return
        lines = np.array([line for line, _ in chunk], np.int64)
        pick = operator.itemgetter(*cols) if cols else (lambda cells: ())
        cells = np.array([pick(c) if len(cols) != 1 else (pick(c),) for _, c in chunk], dtype=object)
        labels = np.array([c[label_col] for _, c in chunk], dtype=object) if label_col is not None else None
        try:
            # float() per cell in NumPy's C loop: 3x faster than a Python loop (measured: 200k rows
            # of 20 cells in 1.2 s against 3.7 s); a chunk holding a bad cell goes row by row below
            x = cells.reshape(len(chunk), len(cols)).astype(np.float64)
            y = labels.astype(np.int64) if labels is not None else None
            out.add(x, y, lines=lines)
            return
        except (ValueError, OverflowError):
            pass
        x = np.zeros((len(chunk), len(cols)), np.float64)
        y = np.zeros(len(chunk), object) if label_col is not None else None  # ints beyond 2**53 stay exact
        bad: dict[int, str] = {}
        for r, (line, row) in enumerate(chunk):
            try:
                x[r] = [float(row[c]) for c in cols]
            except ValueError:
                c = next(c for c in cols if not _is_float(row[c]))
                bad[r] = (f"column {header[c]!r} is empty" if not row[c].strip()
                          else f"column {header[c]!r} holds {row[c][:40]!r}, not a number")
                continue
            if y is not None:
                cell = row[label_col]
                if not _is_float(cell):
                    bad[r] = f"label {cell[:40]!r} (column {header[label_col]!r}) is not an integer"
                else:
                    y[r] = int(cell) if _is_int(cell) else float(cell)
        out.add(x, y, lines=lines, bad=bad)

    def _parquet(self, out: "_Out"):
        columns = parquet_columns(self.part)
        header = [n for n, _ in columns]
        numeric = {n for n, t in columns if is_numeric_type(t) or str(t) == "bool"}
        cols, label_col = _feature_columns(header, self.fields, self.label_field, self.part.name)
        ignored = [header[c] for c in cols if header[c] not in numeric]
        if self.fields is not None and ignored:
            raise SourceError(f"{self.part.name}: the feature columns {ignored} are not numeric "
                              f"({', '.join(str(t) for n, t in columns if n in ignored)})")
        cols = [c for c in cols if header[c] in numeric]
        names = [header[c] for c in cols] + ([header[label_col]] if label_col is not None else [])
        for row, batch in parquet_batches(self.part, names):
            n = batch.num_rows
            x = np.empty((n, len(cols)), np.float64)
            missing = np.zeros(n, bool)
            for j in range(len(cols)):
                column = batch.column(j)
                missing |= column.is_null().to_numpy(zero_copy_only=False)
                x[:, j] = column.to_numpy(zero_copy_only=False).astype(np.float64)
            y = None
            bad = {int(r): "a feature is empty (null)" for r in np.flatnonzero(missing)}
            if label_col is not None:
                label = batch.column(len(cols))
                nulls = label.is_null().to_numpy(zero_copy_only=False)
                y = label.fill_null(0).to_numpy(zero_copy_only=False)
                bad.update({int(r): "the label is empty (null)" for r in np.flatnonzero(nulls)})
            out.add(x, y, rows=np.arange(row, row + n), bad=bad)
        return [header[c] for c in cols], label_col is not None, ignored


def _feature_columns(header: list[str], fields, label_field: str, name: str) -> tuple[list[int], int | None]:
    """Indices of the feature columns (``fields``, or every column but the label) and of the label's."""
    label_col = header.index(label_field) if label_field in header else None
    if fields is None:
        return [i for i in range(len(header)) if i != label_col], label_col
    missing = [f for f in fields if f not in header]
    if missing:
        raise SourceError(f"{name} has no column {missing[0]!r} (its columns: {', '.join(header[:30])})")
    return [header.index(f) for f in fields if f != label_field], label_col


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class _Out:
    """Checks chunks of rows and appends the valid ones to the scratch files."""

    def __init__(self, features_path: str, labels_path: str, name: str, allow_nan: bool) -> None:
        self.features_path, self.labels_path, self.name, self.allow_nan = features_path, labels_path, name, allow_nan
        self.count, self.width, self.skipped = 0, None, []
        self.low, self.high = 2**63 - 1, -(2**63)  # the labels' range
        try:
            self._f, self._l = open(features_path, "wb"), open(labels_path, "wb")
        except OSError as err:
            raise DestinationError(f"cannot write the scratch files of {name}: {err.strerror or err}") from None

    def skip(self, reason: str, *, line: int | None = None, row: int | None = None) -> None:
        self.skipped.append(skip_entry(self.name, reason, line, row=row))

    def add(self, x: np.ndarray, y: np.ndarray | None, *, rows: np.ndarray | None = None,
            lines: np.ndarray | None = None, bad: dict[int, str] | None = None) -> None:
        """Check the rows ``x`` (features) and ``y`` (labels, or None), numbered by ``rows``
        (0-based) or ``lines`` (1-based); ``bad``: rows already known bad, with the reason."""
        if x.dtype.kind not in "biuf":
            raise SourceError(f"{self.name}: the features are {x.dtype}, not numbers")
        if self.width is None:
            self.width = x.shape[1]
        reasons = dict(bad or {})
        with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 are found just below
            x32 = x.astype(np.float32)
        finite = np.isfinite(x32).all(axis=1)
        if not finite.all():
            overflow = ~finite & np.isfinite(x).all(axis=1) if x.dtype.kind == "f" else ~finite
            for r in np.flatnonzero(~finite):
                if overflow[r]:
                    reasons.setdefault(int(r), "a feature does not fit in float32 (beyond ±3.4e38)")
                elif not self.allow_nan:
                    reasons.setdefault(int(r), "a feature is NaN or infinite (pass --allow-nan to keep such rows)")
        labels = np.full(len(x), NO_LABEL, np.int64)
        if y is not None:
            labels, bad_labels = _integer_labels(y)
            for r in np.flatnonzero(bad_labels):
                reasons.setdefault(int(r), f"label {y[r]!r:.40} is not an integer of 64 bits")
        keep = np.ones(len(x), bool)
        for r, reason in sorted(reasons.items()):
            keep[r] = False
            if lines is not None:
                self.skip(reason, line=int(lines[r]))
            else:
                self.skip(reason, row=int(rows[r]))
        try:
            self._f.write(np.ascontiguousarray(x32[keep]).tobytes())
            self._l.write(labels[keep].tobytes())
        except OSError as err:
            raise DestinationError(f"cannot write the scratch files of {self.name}: {err.strerror or err}") from None
        self.count += int(keep.sum())
        if keep.any():
            self.low, self.high = min(self.low, int(labels[keep].min())), max(self.high, int(labels[keep].max()))

    def reset(self) -> None:
        """Forget every row added (the file is read again another way)."""
        self._f.seek(0)
        self._f.truncate()
        self._l.seek(0)
        self._l.truncate()
        self.count, self.width, self.skipped = 0, None, []
        self.low, self.high = 2**63 - 1, -(2**63)

    def close(self) -> None:
        self._f.close()
        self._l.close()


def _integer_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels as int64, which are not integers of 64 bits)`` (bools count as 0 and 1)."""
    if y.dtype.kind == "b":
        return y.astype(np.int64), np.zeros(len(y), bool)
    if y.dtype.kind in "iu":
        bad = y > np.iinfo(np.int64).max if y.dtype.kind == "u" else np.zeros(len(y), bool)
        return np.where(bad, 0, y).astype(np.int64), bad
    if y.dtype.kind == "f":
        ok = np.isfinite(y) & (np.floor(y) == y) & (np.abs(y) < 2.0**63)
        return np.where(ok, y, 0).astype(np.int64), ~ok
    if y.dtype == object:  # CSV labels, parsed as Python ints (or floats)
        values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in y]
        ok = np.array([isinstance(v, int) and -(2**63) <= v < 2**63 for v in values], bool)
        return np.array([v if good else 0 for v, good in zip(values, ok)], np.int64), ~ok
    return np.zeros(len(y), np.int64), np.ones(len(y), bool)


def _load_npy(path: str | bytes, name: str) -> np.ndarray:
    try:
        return np.load(os.fsdecode(path), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SourceError(f"cannot read the array {name}: {err}") from None


def _check_shapes(features, labels, name: str) -> None:
    if len(features.shape) != 2 or features.dtype.kind not in "biuf":
        raise SourceError(f"{name}: the features are a {features.dtype} array of shape {tuple(features.shape)}; "
                          f"expected numbers, rows × features (2-D)")
    if labels is not None and (labels.shape not in ((features.shape[0],), (features.shape[0], 1))
                               or labels.dtype.kind not in "biuf"):
        raise SourceError(f"{name}: the labels are a {labels.dtype} array of shape {tuple(labels.shape)}; expected "
                          f"{features.shape[0]} integers, one per row of the features")


class _NpzArray:
    """One array of a ``.npz``, read a chunk of rows at a time from its (possibly compressed)
    member: memory follows the chunk, never the array."""

    def __init__(self, archive: zipfile.ZipFile, member: str, name: str) -> None:
        self.name = f"{name}/{member}"
        try:
            self._stream = archive.open(member)
            version = np.lib.format.read_magic(self._stream)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, fortran, self.dtype = read(self._stream)
        except Exception as err:  # noqa: BLE001 - numpy's header parser raises many types on garbage
            raise SourceError(f"cannot read the array {self.name}: {err}") from None
        if fortran and len(self.shape) > 1:
            raise SourceError(f"{self.name} is stored in Fortran order, which cannot be read row by row; "
                              f"save it with numpy.savez(..., numpy.ascontiguousarray(array))")
        if self.dtype.hasobject:
            raise SourceError(f"{self.name} holds Python objects (it would need pickle); store numbers")
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read(self, rows: int) -> np.ndarray:
        try:
            data = self._stream.read(rows * self._row)
        except (OSError, zipfile.BadZipFile) as err:
            raise SourceError(f"cannot read the array {self.name}: {err}") from None
        n = len(data) // self._row if self._row else 0
        if n == 0 and rows:
            raise SourceError(f"{self.name} ends before its {self.shape[0]} rows")
        return np.frombuffer(data[:n * self._row], self.dtype).reshape((n,) + tuple(self.shape[1:]))
