"""Which kind a source is, from its files' types (``--kind`` overrides): ImageFolder trees, sequence
files, tables, tabular arrays, webdataset tars. A source that holds several kinds is an error that
names what was found and asks for ``--kind``, never a guess that drops a dataset."""

from __future__ import annotations

import csv
import glob
import heapq
import io
import os
import stat
from typing import Any

from braceexpand import braceexpand

from ..errors import SourceError
from ..storage import FileEntry, is_url, list_files
from .lines import RecordError, is_blank, parse_txt
from .names import Walker, dir_key, record_name, relative
from .sources import (_GLOB_CHARS, _SHOWN, ARRAY_FORMATS, IMG_EXTENSIONS, SEQUENCE_FORMATS, TABLE_FORMATS,
                      TAR_FORMATS, _examples, file_format, has_image_extension, sequence_format)

_DATA_FORMATS = {**SEQUENCE_FORMATS, **TABLE_FORMATS, **ARRAY_FORMATS, **TAR_FORMATS}
#: What each kind reads, for the message of a source that holds none.
_WHAT = {"table": "tables (.csv, .parquet)", "tabular": "arrays (.npy, .npz)", "webdataset": "webdataset tars (.tar)"}


def has_file_extension(src: str) -> bool:
    """Whether ``src`` names files (a data extension, or a brace pattern) rather than a directory or prefix."""
    return "{" in src or file_format(src.rstrip("/"), _DATA_FORMATS) is not None


def _holds_token_ids(path: str) -> bool:
    """Whether the first non-blank line of a ``.txt`` file is whitespace-separated token ids (a
    README or a list of class names beside an ImageFolder tree is not)."""
    head = _head(path)
    if head is None:
        return True  # unreadable: listing it as sequences will say so, rather than pass it over
    for line in head.splitlines():
        if not is_blank(line):
            try:
                parse_txt(line)
            except RecordError:
                return False
            return True
    return False


def _head(path: str, size: int = 64 << 10) -> bytes | None:
    """The first bytes of a regular file (b"" for anything else); None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _numeric_table(path: str) -> bool:
    """Whether a local ``.csv``/``.parquet`` holds only numbers (tabular features) rather than
    captions, paths and the like (a table): a CSV's first data row, a Parquet file's schema."""
    if path.lower().endswith(".parquet"):
        from .tables import parquet_module

        try:
            schema = parquet_module().read_schema(path)
        except Exception:  # noqa: BLE001 - unreadable or not Parquet: listing it as a table will say so
            return False
        from .tables import is_numeric_type

        return len(schema) > 0 and all(is_numeric_type(f.type) for f in schema)
    head = _head(path)
    if not head:
        return False
    rows = list(csv.reader(io.StringIO(head.decode("utf-8", "replace")).readlines()[:2]))
    if len(rows) < 2 or not rows[1]:
        return False
    try:
        [float(cell) for cell in rows[1]]
    except ValueError:
        return False
    return True


def _file_kind(path: str, options: Any, labels: str | None, local: bool) -> str | None:
    """The kind a single data file is, by its extension (and, for a local CSV or Parquet file
    named by no option, by whether it holds only numbers)."""
    ext = os.path.splitext(path)[1].lower()
    image_field = getattr(options, "image_field", None)
    if ext == ".tar":
        return "webdataset"
    if ext in ARRAY_FORMATS:
        return "tabular"
    if ext == ".txt":
        return "sequences"
    if ext == ".jsonl":
        return "table" if image_field else "sequences"
    if ext in (".csv", ".parquet"):
        if image_field:
            return "table"
        if labels is not None:
            return "tabular"
        return "tabular" if local and _numeric_table(path) else "table"
    return None


def _decide(src: str, images: list[str], sequences: list[str], classes: int, others: list[str],
            name=lambda path: path, more: dict[str, list[str]] | None = None) -> str:
    """The kind, from the files of each kind found (``name`` turns one into what a message shows;
    ``more``: the files of the other kinds, by kind)."""
    def shown(paths: list[str]) -> str:  # the first few in sorted order, named only those
        return _examples([name(p) for p in heapq.nsmallest(_SHOWN + 1, paths)])

    if images and sequences:
        raise SourceError(
            f"{src} holds both an ImageFolder tree ({len(images)} image files in {classes} class folders: "
            f"{shown(images)}) and {len(sequences)} sequence files ({shown(sequences)}); pass --kind "
            f"images or --kind sequences (kind=...) to say which to convert: the other files are left out")
    if images:
        return "images"
    if sequences:
        return "sequences"
    found = {kind: paths for kind, paths in (more or {}).items() if paths}
    if len(found) > 1:
        what = "; ".join(f"{len(paths)} files read as {kind} ({shown(paths)})" for kind, paths in sorted(found.items()))
        raise SourceError(f"{src} holds files of several kinds: {what}; pass --kind {' or --kind '.join(sorted(found))} "
                          f"(kind=...) to say which to convert: the other files are left out")
    if found:
        return next(iter(found))
    seen = (f"found {len(others)} other files ({shown(others)}; a .txt file counts only when its first line "
            f"is token ids)" if others else "found no file")
    raise SourceError(f"{src} holds neither an ImageFolder tree (class folders of {', '.join(IMG_EXTENSIONS)} "
                      f"files) nor sequence files (.jsonl, or .txt of token ids), {', '.join(_WHAT.values())}: "
                      f"{seen}; pass --kind to say which")


def _by_kind(paths: list[str], options: Any, labels: str | None, local: bool) -> dict[str, list[str]]:
    """Table, tabular and webdataset files among ``paths``, by kind (a CSV or Parquet file: by the
    first one's content, so a directory of tables is one kind)."""
    found: dict[str, list[str]] = {}
    tables = sorted(p for p in paths if os.path.splitext(p)[1].lower() in (".csv", ".parquet"))
    table_kind = _file_kind(tables[0], options, labels, local) if tables else None
    for path in paths:
        ext = os.path.splitext(path)[1].lower()
        kind = table_kind if ext in (".csv", ".parquet") else _file_kind(path, options, labels, local)
        if kind in _WHAT:
            found.setdefault(kind, []).append(path)
    return found


def detect_kind(src: str | list[str], storage_options: dict[str, Any] | None = None, *,
                remote_files: list[FileEntry] | None = None, options: Any = None, labels: str | None = None) -> str:
    """``"images"`` for an ImageFolder tree (class folders holding image files), ``"sequences"``
    for ``.jsonl``/``.txt`` files (``.txt`` whose first line is token ids), ``"table"`` for
    ``.csv``/``.parquet`` files of other values (and ``.jsonl`` when ``options.image_field`` is
    set), ``"tabular"`` for ``.npy``/``.npz`` files and ``.csv``/``.parquet`` files holding only
    numbers (or with ``labels``), ``"webdataset"`` for ``.tar`` files, a brace pattern of them or
    a list; a single file, a glob or a directory. ``remote_files``: the
    :func:`~shardkit.storage.list_files` listing of a URL, when already made.

    Raises:
        SourceError: ``src`` does not exist, holds no kind, or holds several (the message names
            what it found and asks for ``--kind``).
    """
    if isinstance(src, list):
        return "webdataset"
    if "{" in src and not os.path.exists(src):
        return "webdataset" if all(p.endswith(".tar") for p in braceexpand(src)) else "sequences"
    if is_url(src):
        if has_file_extension(src):
            return _file_kind(src, options, labels, local=False) or "sequences"
        files = remote_files if remote_files is not None else list_files(src, storage_options)
        names = [record_name(entry.path) for entry in files]
        images = [n for n in names if "/" in n and has_image_extension(n)]
        # a .txt beside remote images is taken for a README: reading it would cost a request
        if getattr(options, "image_field", None):
            tables = [n for n in names if file_format(n, TABLE_FORMATS)]
            if tables:
                return "table"
        sequences = [n for n in names if sequence_format(n) == "jsonl" or (not images and sequence_format(n))]
        classes = len({n.split("/", 1)[0] for n in images})
        more = _by_kind([n for n in names if not sequence_format(n)], options, labels, local=False)
        if not images and not sequences and not more:
            raise SourceError(f"{src} holds neither an ImageFolder tree, sequence files, tables nor tars "
                              f"(or does not exist)")
        return _decide(src, images, sequences, classes, [], more=more)
    if _GLOB_CHARS & set(src) and not os.path.exists(src):
        matches = [p for p in glob.glob(src, recursive=True) if not os.path.isdir(p)]
        kinds = {_file_kind(p, options, labels, local=True) for p in matches} - {None}
        if len(kinds) > 1:
            raise SourceError(f"{src} matches files of several kinds ({', '.join(sorted(kinds))}); pass --kind "
                              f"to say which to convert")
        return kinds.pop() if kinds else "sequences"
    if os.path.isfile(src):
        return _file_kind(src, options, labels, local=True) or "sequences"
    if not os.path.isdir(src):
        raise SourceError(f"{src}: no such file or directory")
    # Every file is looked at (a single .jsonl deep down makes the source ambiguous), so this loop
    # stays cheap: names are made relative only for the few a message shows.
    images, sequences, others, data, classes = [], [], [], [], set()
    table_rows = bool(getattr(options, "image_field", None))
    for folder, names in Walker({dir_key(src)}).walk(src):
        in_class, before = folder != src, len(images)
        for name in names:
            path = os.path.join(folder, name)
            ext = os.path.splitext(name)[1].lower()
            if in_class and has_image_extension(name):
                images.append(path)
                continue
            fmt = sequence_format(name)
            if table_rows and ext in TABLE_FORMATS:
                data.append(path)
            elif fmt == "jsonl" or (fmt == "txt" and _holds_token_ids(path)):
                sequences.append(path)
            elif ext in (".csv", ".parquet") or ext in ARRAY_FORMATS or ext in TAR_FORMATS:
                data.append(path)
            else:
                others.append(path)
        if len(images) > before:  # this folder holds images: its class is one of the tree's
            classes.add(os.path.relpath(folder, src).split(os.sep, 1)[0])
    if table_rows and data:  # the images are those the table names
        return "table"
    more = _by_kind(data, options, labels, local=True)
    return _decide(src, images, sequences, len(classes), others + ([] if more else data),
                   name=lambda path: relative(path, src), more=more)
