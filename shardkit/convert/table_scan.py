"""Pass 1 of tables (see :mod:`.kinds.table`): :class:`TableScan`, a task per CSV or JSONL file and
per range of row groups of a Parquet file, reads the rows, refuses those it cannot convert (a
ragged CSV row, a line that is not a JSON object, a cell over the size limit, text that is not
UTF-8, a label that is not an integer, an image path that is missing, unsafe or leads out of the
root: each skipped with its file and row), notes each column's value types, and keeps the rows it
kept as JSON lines in a scratch file that pass 2 reads back by offset."""

from __future__ import annotations

import base64
import json
import math
import os
import posixpath
import stat
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import storage
from ..errors import DestinationError, StorageError
from ..format.tar import DEFAULT_MAX_MEMBER_SIZE
from .names import record_name
from .sources import skip_entry
from .tables import LINE_LIMIT, TablePart, csv_header, csv_rows, jsonl_rows, parquet_batches, scratch_path

_BYTES = "\u0000bytes"  # the scratch file's marker of a binary value (no JSON key starts with NUL)


class SkipRow(Exception):
    """This row is skipped; the message is the reason."""


@dataclass
class TableScanned:
    """What a pass-1 task kept: for each kept row, where its JSON line is in ``scratch``, its
    locator in the table (a line, or a 0-based row), the bytes its image has (0 without one); the
    columns in the order first seen with their value types and how many rows hold a value."""

    file: int
    scratch: str
    offsets: np.ndarray
    nbytes: np.ndarray
    where: np.ndarray
    image_bytes: np.ndarray
    by_line: bool
    fmt: str
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → {"types": [...], "count": n}
    skipped: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TableScan:
    """Pass 1 over one :class:`~.tables.TablePart`; images resolved against ``base`` (a directory
    or URL prefix; every local image must lie inside it)."""

    part: TablePart
    scratch: str
    base: str
    image_field: str | None
    label_field: str
    fields: tuple[str, ...] | None
    storage_options: dict[str, Any] | None = None

    @property
    def nbytes(self) -> int:
        return self.part.nbytes

    def __call__(self) -> TableScanned:
        path = scratch_path(self.scratch, f"table-{self.part.file}-{self.part.start}.jsonl")
        offsets, nbytes, where, images, skipped = [], [], [], [], []
        columns: dict[str, dict[str, Any]] = {}
        by_line = self.part.fmt != "parquet"
        base_real = os.path.realpath(self.base) if not storage.is_url(self.base) else None
        try:
            out = open(path, "wb")
        except OSError as err:
            raise DestinationError(f"cannot write the scratch file of {self.part.name}: {err.strerror or err}") from None
        with out:
            for locator, row, reason in self._rows():
                try:
                    if row is None:
                        raise SkipRow(reason)
                    row, image_size = self._check(row, base_real)
                except SkipRow as err:
                    skipped.append(skip_entry(self.part.name, str(err), locator if by_line else None,
                                              row=None if by_line else locator))
                    continue
                line = json.dumps(row, ensure_ascii=False, default=_scratch_value).encode("utf-8") + b"\n"
                offsets.append(out.tell())
                nbytes.append(len(line))
                where.append(locator)
                images.append(image_size)
                for name, value in row.items():
                    seen = columns.setdefault(name, {"types": set(), "count": 0})
                    if value is not None:
                        seen["types"].add(_type_of(value, self.part.fmt == "csv"))
                        seen["count"] += 1
                try:
                    out.write(line)
                except OSError as err:
                    raise DestinationError(f"cannot write the scratch file of {self.part.name}: "
                                           f"{err.strerror or err}") from None
        for seen in columns.values():
            seen["types"] = sorted(seen["types"])
        return TableScanned(self.part.file, path, np.array(offsets, np.int64), np.array(nbytes, np.int64),
                            np.array(where, np.int64), np.array(images, np.int64), by_line, self.part.fmt, columns,
                            skipped)

    def _rows(self):
        """``(locator, row dict or None, reason)`` of the part's rows."""
        part = self.part
        if part.fmt == "jsonl":
            yield from jsonl_rows(part, self.storage_options)
        elif part.fmt == "csv":
            header = None
            for line, cells, reason in csv_rows(part, self.storage_options):
                if header is None:
                    if cells is None:
                        from ..errors import SourceError

                        raise SourceError(f"{part.name}:{line}: cannot read the header row ({reason})")
                    header = csv_header(cells, part.name)
                    continue
                if cells is not None and len(cells) != len(header):
                    yield line, None, f"the row has {len(cells)} cells, the header {len(header)}"
                    continue
                # an empty cell is a missing value, as pandas reads it
                yield line, None if cells is None else {h: (c if c != "" else None) for h, c in zip(header, cells)}, reason
        else:
            for first, batch in parquet_batches(part, None, self.storage_options):
                for i, row in enumerate(batch.to_pylist()):
                    yield first + i, row, None

    def _check(self, row: dict[str, Any], base_real: str | None) -> tuple[dict[str, Any], int]:
        """The row with only the kept columns (NaN as missing), and its image's size.

        Raises:
            SkipRow: the row cannot be converted (the reason names the column or the image).
        """
        keep = self.fields
        if keep is not None:
            row = {k: v for k, v in row.items() if k in keep or k == self.image_field}
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for name, value in row.items():
            if isinstance(value, (str, bytes)) and len(value) > LINE_LIMIT:
                raise SkipRow(f"column {name!r} holds {len(value)} characters, more than the {LINE_LIMIT} a cell may")
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise SkipRow(f"column {name!r} is not UTF-8 text") from None
        if self.label_field in row and row[self.label_field] is not None:
            label = row[self.label_field]
            if isinstance(label, str) and self.part.fmt == "csv":
                label = _csv_int(label)
            if type(label) is not int or not -(2**63) <= label < 2**63:
                raise SkipRow(f"label {row[self.label_field]!r:.40} (column {self.label_field!r}) is not an integer")
            row[self.label_field] = label
        size = 0
        if self.image_field is not None:
            value = row.get(self.image_field)
            if not isinstance(value, str) or not value.strip():
                raise SkipRow(f"no image path in column {self.image_field!r}")
            if "\0" in value:  # no file name holds one (os.stat would raise ValueError)
                raise SkipRow(f"image {record_name(value)!r}: a path with a NUL character")
            size = self._image_size(value, base_real)
        return row, size

    def _image_size(self, value: str, base_real: str | None) -> int:
        """The size of the image ``value`` names (see :func:`resolve_image`)."""
        where = resolve_image(value, self.base, base_real)
        shown = record_name(value)
        if storage.is_url(where):
            try:
                size = storage.size(where, self.storage_options)
            except (OSError, StorageError, ValueError) as err:
                raise SkipRow(f"image {shown}: cannot read: {err}") from None
        else:
            try:
                st = os.stat(where)
            except OSError as err:
                raise SkipRow(f"image {shown}: cannot read: {err.strerror or err}") from None
            if not stat.S_ISREG(st.st_mode):
                raise SkipRow(f"image {shown}: not a regular file")
            size = st.st_size
        if size > DEFAULT_MAX_MEMBER_SIZE:
            raise SkipRow(f"image {shown}: {size} bytes exceeds the limit of {DEFAULT_MAX_MEMBER_SIZE} bytes per image")
        return size


def resolve_image(value: str, base: str, base_real: str | None = None) -> str:
    """Where the image a table names is: a URL as it is; a path relative to ``base`` (a local
    directory or a URL prefix); an absolute local path only inside ``base``. A local path must
    lead (links followed) to a file inside ``base``: a table never makes shardkit read
    ``/etc/shadow`` or ``../../secrets``.

    Raises:
        SkipRow: an absolute path, a ``..`` or a link that leads out of ``base``.
    """
    shown = record_name(value)
    if "://" in value and not value.startswith("file://"):
        return value
    value = value.removeprefix("file://")
    if storage.is_url(base):
        joined = posixpath.normpath(value)
        if posixpath.isabs(joined) or joined == ".." or joined.startswith("../"):
            raise SkipRow(f"image {shown}: leads out of {base}")
        return f"{base.rstrip('/')}/{joined}"
    path = value if os.path.isabs(value) else os.path.join(base, value)
    real = os.path.realpath(path)
    base_real = base_real or os.path.realpath(base)
    if real != base_real and not real.startswith(base_real.rstrip(os.sep) + os.sep):
        how = ("an absolute path" if os.path.isabs(value) else "a path with '..'" if ".." in value.split("/")
               else "a link")
        raise SkipRow(f"image {shown}: {how} that leads out of the root {base} (pass --root with a directory "
                      f"that holds the images)")
    return path


def _csv_int(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() else number


def _type_of(value: Any, csv_cell: bool) -> str:
    """The type a column's value counts as: a CSV cell is an int, a float or a str by its text."""
    if csv_cell and isinstance(value, str):
        try:
            int(value)
            return "int"
        except ValueError:
            pass
        try:
            float(value)
            return "float"
        except ValueError:
            return "str"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "str"  # dates, times, decimals from Parquet: their text


def _scratch_value(value: Any) -> Any:
    """How the scratch file's JSON holds what JSON has no type for: bytes marked, the rest as text."""
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    return str(value)


def read_scratch_row(line: bytes) -> dict[str, Any]:
    """A row kept by :class:`TableScan`, as it was (binary values back to bytes)."""
    def hook(obj: dict) -> Any:
        return base64.b64decode(obj[_BYTES]) if len(obj) == 1 and _BYTES in obj else obj

    return json.loads(line, object_hook=hook)
