"""Reading table files in bounded memory, for the table and tabular kinds: which parts of a file a
pass-1 task reads, and the rows of each part.

- CSV (standard library ``csv``, a part per file): rows with the line each starts on, a row at a
  time; a line longer than :data:`LINE_LIMIT` is never held (the row is reported instead).
- JSONL (a part per file): one JSON object per line, the same line limit.
- Parquet (``pyarrow``, the ``shardkit[parquet]`` extra): a part per range of row groups, read
  batch by batch (:data:`BATCH_ROWS`), so memory follows a batch, never the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import MissingExtraError, SourceError
from .. import storage
from .names import source_path
from .sources import DataSource

#: The longest line (or cell) read from a CSV or JSONL table: a longer one is reported, never held.
LINE_LIMIT = 16 << 20
#: Rows per batch read from a Parquet file.
BATCH_ROWS = 8192
#: Row groups per pass-1 task over a Parquet file.
GROUPS_PER_PART = 4


def parquet_module():
    """``pyarrow.parquet``.

    Raises:
        MissingExtraError: pyarrow is not installed (the message names the extra).
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError("reading Parquet files needs pyarrow: pip install 'shardkit[parquet]'") from None
    return pq


def is_numeric_type(arrow_type: Any) -> bool:
    """Whether a Parquet column holds numbers (integers or floats) that a feature can be."""
    import pyarrow as pa

    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


@dataclass(frozen=True)
class TablePart:
    """Rows ``start:stop`` of one file (Parquet: row groups; whole CSV/JSONL files: 0, 0)."""

    path: str | bytes   # where to open it (names.source_path)
    name: str           # the recorded path, for messages and the skipped entries
    fmt: str
    file: int           # index in the listing
    start: int = 0
    stop: int = 0
    nbytes: int = 0


def table_parts(source: DataSource, storage_options: dict[str, Any] | None = None) -> list[TablePart]:
    """The pass-1 parts of the listed files, in file and row order.

    Raises:
        SourceError: a Parquet file whose metadata cannot be read.
    """
    parts = []
    for i, f in enumerate(source.files):
        where = source_path(source.root, f.path)
        if f.fmt != "parquet":
            parts.append(TablePart(where, f.path, f.fmt, i, nbytes=f.size))
            continue
        groups = parquet_file(where, f.path, storage_options).metadata.num_row_groups
        for start in range(0, max(groups, 1), GROUPS_PER_PART):
            stop = min(start + GROUPS_PER_PART, groups)
            parts.append(TablePart(where, f.path, f.fmt, i, start, stop, f.size * (stop - start) // max(groups, 1)))
    return parts


def scratch_path(scratch: str, name: str) -> str:
    """A file for pass 1 to keep rows in, in the local directory ``scratch`` (the destination's
    partial directory, or a private temporary one), named as shardkit's temporary files are: the
    partial directory accepts it, the run removes it when it ends, and the next run removes what
    a killed one left."""
    from ..storage.files import temporary_path

    return temporary_path(name, scratch)


def open_table(path: str | bytes, storage_options: dict[str, Any] | None = None):
    """A binary stream over a local file or URL (the caller closes it)."""
    if isinstance(path, bytes) or not storage.is_url(path):
        return storage.open_input(os.fsdecode(path) if isinstance(path, bytes) else path)
    return storage.open_input(path, storage_options)


def parquet_file(path: str | bytes, name: str, storage_options: dict[str, Any] | None = None):
    """A ``pyarrow.parquet.ParquetFile`` (a URL through fsspec).

    Raises:
        SourceError: not a Parquet file, or it cannot be read.
        MissingExtraError: pyarrow is not installed.
    """
    pq = parquet_module()
    try:
        if isinstance(path, str) and storage.is_url(path):
            fs, fspath = storage.filesystem(path, storage_options)
            return pq.ParquetFile(fs.open(fspath, "rb"))
        return pq.ParquetFile(os.fsdecode(path))
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"cannot read the Parquet file {name}: {err}") from None


def parquet_batches(part: TablePart, columns: list[str] | None,
                    storage_options: dict[str, Any] | None = None) -> Iterator[tuple[int, Any]]:
    """``(row of the file where the batch starts, pyarrow.RecordBatch)`` of a Parquet part.

    Raises:
        SourceError: the file cannot be read (damaged pages, a column missing).
    """
    pf = parquet_file(part.path, part.name, storage_options)
    row = sum(pf.metadata.row_group(g).num_rows for g in range(part.start))
    groups = list(range(part.start, part.stop))
    if not groups:
        return
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=columns):
            yield row, batch
            row += batch.num_rows
    except (OSError, ValueError, KeyError) as err:
        raise SourceError(f"cannot read the Parquet file {part.name} at row {row}: {err}") from None


def parquet_columns(part: TablePart, storage_options: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """``(name, arrow type)`` of each column of a Parquet part's file."""
    schema = parquet_file(part.path, part.name, storage_options).schema_arrow
    return [(f.name, f.type) for f in schema]


def _lines(f: io.BufferedIOBase, long_lines: set[int]) -> Iterator[bytes]:
    """The lines of a binary stream, each at most :data:`LINE_LIMIT` bytes: a longer one yields
    its first part and its number joins ``long_lines``; its rest is read past."""
    number = 0
    while True:
        line = f.readline(LINE_LIMIT + 1)
        if not line:
            return
        number += 1
        if len(line) > LINE_LIMIT and not line.endswith(b"\n"):
            long_lines.add(number)
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            line = line[:LINE_LIMIT] + b"\n"
        yield line


def jsonl_rows(part: TablePart, storage_options: dict[str, Any] | None = None
               ) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line, record, None)`` for each JSON object of a JSONL part, ``(line, None, reason)`` for
    each non-blank line that is not one."""
    long_lines: set[int] = set()
    with open_table(part.path, storage_options) as f:
        for number, line in enumerate(_lines(f, long_lines), 1):
            if not line.strip():
                continue
            if number in long_lines:
                yield number, None, f"the line is longer than {LINE_LIMIT} bytes"
                continue
            try:
                record = json.loads(line)
            except RecursionError:
                yield number, None, "not valid JSON (nested too deeply)"
                continue
            except ValueError as err:
                yield number, None, f"not valid JSON ({err})"
                continue
            if not isinstance(record, dict):
                yield number, None, f"not a JSON object (found {type(record).__name__})"
                continue
            yield number, record, None


def csv_rows(part: TablePart, storage_options: dict[str, Any] | None = None
             ) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """``(line, cells, None)`` for each row of a CSV part (the header first, as line 1), ``(line,
    None, reason)`` for a row that cannot be read (a cell over the limit, a broken quote); blank
    lines are passed over. UTF-8 (with or without a byte order mark); bytes that are not UTF-8
    are kept as surrogate escapes, and refused where they would be stored."""
    long_lines: set[int] = set()
    csv.field_size_limit(LINE_LIMIT)
    with open_table(part.path, storage_options) as raw:
        lines = _strip_bom(line.decode("utf-8", "surrogateescape") for line in _lines(raw, long_lines))
        reader = csv.reader(lines, strict=True)  # strict: a quote left open at the end is reported, not swallowed
        previous = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                if "field limit" in str(err):
                    # a quoted cell over many lines: where it ends is unknown once the limit cut it,
                    # so what follows cannot be read as rows reliably
                    raise SourceError(f"{part.name}:{previous + 1}: a cell of more than {LINE_LIMIT} bytes (over "
                                      f"several lines); shardkit reads CSV cells up to that size") from None
                yield previous + 1, None, f"not a CSV row ({err})"
                previous = reader.line_num
                continue
            first = previous + 1
            previous = reader.line_num
            if any(first <= n <= previous for n in long_lines):
                yield first, None, f"a line of the row is longer than {LINE_LIMIT} bytes"
            elif cells:
                yield first, cells, None


def _strip_bom(lines: Iterator[str]) -> Iterator[str]:
    """The lines, the first without a UTF-8 byte order mark (as Excel writes CSV files)."""
    first = True
    for line in lines:
        if first:
            line, first = line.removeprefix("\ufeff"), False
        yield line


def csv_header(cells: list[str], name: str) -> list[str]:
    """The column names of a CSV file from its first row.

    Raises:
        SourceError: empty or repeated names.
    """
    names = [c.strip() for c in cells]
    if not all(names) or len(set(names)) != len(names):
        raise SourceError(f"{name}: the first row must name every column once (found {cells[:20]!r:.200}); "
                          f"shardkit reads CSV files with a header row")
    return names
