"""What a conversion reads: ImageFolder trees and sequence files, listed, and one sequence line parsed.

The ImageFolder walk reproduces ``torchvision.datasets.ImageFolder`` (same files, classes, labels
and order) without importing torch, so the CLI and the conversion workers stay light.
"""

from __future__ import annotations

import glob
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import SourceError
from ..format.tar import DEFAULT_MAX_MEMBER_SIZE
from ..storage import is_url, walk_files

#: ``torchvision.datasets.folder.IMG_EXTENSIONS`` (a test checks they stay equal).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Sequence file formats by extension.
SEQUENCE_FORMATS = {".jsonl": "jsonl", ".txt": "txt"}
_GLOB_CHARS = frozenset("*?[")
_UINT64_MAX = 2**64 - 1
_INT64 = (-(2**63), 2**63 - 1)

Kind = Literal["images", "sequences"]


def skip_entry(path: str, reason: str, line: int | None = None) -> dict[str, Any]:
    """One entry of the manifest's ``skipped``: ``{path, line (sequences), reason}``."""
    return {"path": path, "line": line, "reason": reason} if line is not None else {"path": path, "reason": reason}


def skip_sort_key(entry: dict[str, Any]) -> tuple:
    return entry["path"], entry.get("line") or 0, entry["reason"]


def relative(path: str, root: str) -> str:
    """``path`` relative to ``root``, with ``/`` separators, always printable as UTF-8."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


# --- images -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageItem:
    """One listed image: path relative to SRC, class index, file size."""

    path: str
    label: int
    size: int


@dataclass
class ImageSource:
    root: str  # a local directory or an fsspec URL
    classes: list[str]
    items: list[ImageItem]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    storage_options: dict[str, Any] | None = field(default=None, repr=False)

    def listing(self) -> list[tuple[str, int]]:
        """``(path, size)`` of every listed file: what the plan's digest covers."""
        return [(item.path, item.size) for item in self.items] + [(e["path"], -1) for e in self.skipped]


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _walk(top: str, errors: list[OSError]):
    """``os.walk(top, followlinks=True)`` as torchvision does it, minus symlink loops (a directory
    that is its own ancestor is not entered again) and with listing errors collected, not ignored."""
    def key(path):
        st = os.stat(path)
        return st.st_dev, st.st_ino

    ancestors = {top: frozenset([key(top)])}
    for root, dirs, files in os.walk(top, followlinks=True, onerror=errors.append):
        above = ancestors.pop(root, frozenset())
        kept = []
        for name in dirs:
            path = os.path.join(root, name)
            try:
                k = key(path)
            except OSError as err:
                errors.append(err)
                continue
            if k not in above:
                kept.append(name)
                ancestors[path] = above | {k}
        dirs[:] = kept
        yield root, dirs, files


def list_images(root: str, storage_options: dict[str, Any] | None = None, *,
                remote_files: list[tuple[str, int]] | None = None) -> ImageSource:
    """The files, classes and labels ``torchvision.datasets.ImageFolder(root, allow_empty=True)``
    would use, in its order, with each file's size.

    Files that cannot be stat'ed (broken symlinks), are not regular files, or exceed the member size
    limit are listed in ``skipped``, as are directories that cannot be read.

    ``root`` may be an fsspec URL: its class folders are the prefixes holding files (an object
    store has no empty folders). ``remote_files``: its ``walk_files`` listing, when already made.

    Raises:
        SourceError: ``root`` has no class folder, or no file with an image extension.
    """
    if is_url(root):
        return _list_remote_images(root, remote_files if remote_files is not None else walk_files(root, storage_options),
                                   storage_options)
    try:
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as err:
        raise SourceError(f"cannot list {root}: {err.strerror or err}") from None
    if not classes:
        raise SourceError(f"found no class folder in {root}: an ImageFolder tree is SRC/<class>/<image>")
    items, skipped, errors = [], [], []
    for label, name in enumerate(classes):
        for folder, _, files in sorted(_walk(os.path.join(root, name), errors)):
            for fname in sorted(files):
                if not has_image_extension(fname):
                    continue
                path = os.path.join(folder, fname)
                rel = relative(path, root)
                try:
                    st = os.stat(path)
                except OSError as err:
                    skipped.append(skip_entry(rel, f"cannot read: {err.strerror or err}"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skipped.append(skip_entry(rel, "not a regular file"))
                elif st.st_size > DEFAULT_MAX_MEMBER_SIZE:
                    skipped.append(skip_entry(rel, f"{st.st_size} bytes exceeds the limit of "
                                                   f"{DEFAULT_MAX_MEMBER_SIZE} bytes per image"))
                else:
                    items.append(ImageItem(rel, label, st.st_size))
    for err in errors:
        skipped.append(skip_entry(relative(err.filename or root, root),
                                  f"cannot list directory: {err.strerror or err}"))
    if not items and not skipped:
        raise SourceError(f"found no image file in the classes of {root}; "
                          f"supported extensions are: {', '.join(IMG_EXTENSIONS)}")
    return ImageSource(root, classes, items, skipped)


def _list_remote_images(root: str, files: list[tuple[str, int]], storage_options: dict[str, Any] | None) -> ImageSource:
    classes = sorted({path.split("/", 1)[0] for path, _ in files if "/" in path})
    if not classes:
        raise SourceError(f"found no class folder in {root}: an ImageFolder tree is SRC/<class>/<image>")
    label_of = {name: i for i, name in enumerate(classes)}
    items, skipped = [], []
    # torchvision's order: class by class, folders in sorted path order, files sorted in each.
    for path, size in sorted(files, key=lambda f: (label_of.get(f[0].split("/", 1)[0], -1),
                                                    f[0].rpartition("/")[0], f[0].rpartition("/")[2])):
        if "/" not in path or not has_image_extension(path):
            continue
        if size > DEFAULT_MAX_MEMBER_SIZE:
            skipped.append(skip_entry(path, f"{size} bytes exceeds the limit of {DEFAULT_MAX_MEMBER_SIZE} "
                                            f"bytes per image"))
        else:
            items.append(ImageItem(path, label_of[path.split("/", 1)[0]], size))
    if not items and not skipped:
        raise SourceError(f"found no image file in the classes of {root}; "
                          f"supported extensions are: {', '.join(IMG_EXTENSIONS)}")
    return ImageSource(root, classes, items, skipped, storage_options)


# --- sequence files ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SequenceFile:
    path: str  # relative to the source root
    fmt: str   # "jsonl" or "txt"
    size: int


@dataclass
class SequenceSource:
    root: str
    files: list[SequenceFile]

    def listing(self) -> list[tuple[str, int]]:
        return [(f.path, f.size) for f in self.files]


def sequence_format(name: str) -> str | None:
    return SEQUENCE_FORMATS.get(os.path.splitext(name)[1].lower())


def list_sequences(src: str) -> SequenceSource:
    """The sequence files of ``src``: one file, every ``.jsonl``/``.txt`` under a directory
    (recursively), or the matches of a glob; sorted by path.

    Raises:
        SourceError: nothing matches, or a named file is not ``.jsonl``/``.txt``.
    """
    if _GLOB_CHARS & set(src) and not os.path.exists(src):
        base = src
        while _GLOB_CHARS & set(base):
            base = os.path.dirname(base)
        root = base or "."
        paths = [p for p in glob.glob(src, recursive=True) if os.path.isfile(p) and sequence_format(p)]
    elif os.path.isdir(src):
        root = src
        paths = [os.path.join(folder, name) for folder, _, names in os.walk(src, followlinks=True)
                 for name in names if sequence_format(name)]
    elif os.path.isfile(src):
        if not sequence_format(src):
            raise SourceError(f"{src}: sequence files must end in {' or '.join(SEQUENCE_FORMATS)}")
        root, paths = os.path.dirname(src) or ".", [src]
    else:
        raise SourceError(f"{src}: no such file or directory")
    files = []
    for path in sorted(paths, key=lambda p: relative(p, root)):
        files.append(SequenceFile(relative(path, root), sequence_format(path), os.stat(path).st_size))
    if not files:
        raise SourceError(f"{src}: found no sequence file ({', '.join(SEQUENCE_FORMATS)})")
    return SequenceSource(root, files)


def detect_kind(src: str, storage_options: dict[str, Any] | None = None, *,
                remote_files: list[tuple[str, int]] | None = None) -> Kind:
    """``"images"`` for an ImageFolder tree (class folders holding image files), ``"sequences"``
    for a ``.jsonl``/``.txt`` file, a glob, or a directory of such files. ``remote_files``: the
    ``walk_files`` listing of a URL, when already made.

    Raises:
        SourceError: ``src`` does not exist or holds neither.
    """
    if is_url(src):
        if sequence_format(src):
            return "sequences"
        files = remote_files if remote_files is not None else walk_files(src, storage_options)
        names = [path for path, _ in files]
        if any("/" in n and has_image_extension(n) for n in names):
            return "images"
        if any(sequence_format(n) for n in names):
            return "sequences"
        raise SourceError(f"{src} holds neither an ImageFolder tree nor sequence files (or does not exist)")
    if _GLOB_CHARS & set(src) and not os.path.exists(src):
        return "sequences"
    if os.path.isfile(src):
        return "sequences"
    if not os.path.isdir(src):
        raise SourceError(f"{src}: no such file or directory")
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if entry.is_dir():
            for _, _, names in os.walk(entry.path, followlinks=True):
                if any(has_image_extension(n) for n in names):
                    return "images"
    for _, _, names in os.walk(src, followlinks=True):
        if any(sequence_format(n) for n in names):
            return "sequences"
    raise SourceError(f"{src} holds neither an ImageFolder tree (class folders of {', '.join(IMG_EXTENSIONS)} "
                      f"files) nor sequence files ({', '.join(SEQUENCE_FORMATS)}); pass --kind to say which")


# --- one sequence line ------------------------------------------------------------------------

class RecordError(ValueError):
    """A sequence line that is not a valid record; ``reason`` says why (it goes into ``skipped``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_blank(line: bytes) -> bool:
    return not line.strip()


def parse_line(line: bytes, fmt: str, tokens_field: str = "tokens",
               label_field: str = "label") -> tuple[np.ndarray, int | None]:
    """Parse one non-blank line of a sequence file into ``(tokens as uint64, label or None)``.

    ``fmt`` is ``"jsonl"`` (an object with a list of non-negative ints under ``tokens_field`` and an
    optional int under ``label_field``; ``null`` means no label) or ``"txt"`` (whitespace-separated
    non-negative ints, no label).

    Raises:
        RecordError: (a ``ValueError``) not JSON, not an object, tokens missing, empty, of the wrong
            type, not integers, negative or beyond 64 bits, or a label that is not a 64-bit int.
    """
    if fmt == "txt":
        return _parse_txt(line), None
    if fmt != "jsonl":
        raise ValueError(f"unknown sequence format {fmt!r}")
    try:
        record = json.loads(line)
    except RecursionError:
        raise RecordError("not valid JSON (nested too deeply)") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int digit limits
        raise RecordError(f"not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object (found {type(record).__name__})")
    if tokens_field not in record:
        raise RecordError(f"missing field {tokens_field!r}")
    tokens = record[tokens_field]
    if not isinstance(tokens, list):
        raise RecordError(f"field {tokens_field!r} is a {_json_type(tokens)}, not a list of ints")
    if not tokens:
        raise RecordError(f"field {tokens_field!r} is empty")
    for t in tokens:
        if type(t) is not int:  # bools and floats are not token ids
            raise RecordError(f"field {tokens_field!r} holds a non-integer ({_json_type(t)} {t!r:.40})")
    array = _uint64(tokens)
    label = record.get(label_field)
    if label is not None:
        if type(label) is not int:
            raise RecordError(f"field {label_field!r} is a {_json_type(label)}, not an int")
        if not _INT64[0] <= label <= _INT64[1]:
            raise RecordError(f"field {label_field!r} value {label} does not fit in 64 bits")
    return array, label


def _parse_txt(line: bytes) -> np.ndarray:
    parts = line.split()
    if not parts:
        raise RecordError("empty line")
    ids = []
    for p in parts:
        if not p.isdigit():
            if p[:1] == b"-" and p[1:].isdigit():
                raise RecordError(f"negative token id {p[:40].decode()}")
            raise RecordError(f"not a non-negative integer: {p[:40].decode('utf-8', 'backslashreplace')!r}")
        digits = p.lstrip(b"0") or b"0"  # zero-padded ids are ids; int() refuses very long strings
        if len(digits) > 20:
            raise RecordError(f"token id {digits[:40].decode()}... exceeds 2**64-1")
        ids.append(int(digits))
    return _uint64(ids)


def _uint64(tokens: list[int]) -> np.ndarray:
    try:
        return np.array(tokens, dtype=np.uint64)
    except OverflowError:
        low = min(tokens)
        if low < 0:
            raise RecordError(f"negative token id {low}") from None
        raise RecordError(f"token id {max(tokens)} exceeds 2**64-1") from None


def _json_type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
