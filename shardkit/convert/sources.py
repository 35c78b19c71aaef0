"""What a conversion reads: ImageFolder trees and sequence files, listed, and which kind a source is
(one sequence line is parsed by :mod:`.lines`).

The ImageFolder walk reproduces ``torchvision.datasets.ImageFolder`` (same files, classes, labels
and order) without importing torch, so the CLI and the conversion workers stay light; it differs
only where torchvision would list a directory twice (see :mod:`.names`). Names are recorded as
:func:`.names.record_name` writes them, and files opened by :func:`.names.source_path`.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from ..errors import SourceError
from ..format.tar import DEFAULT_MAX_MEMBER_SIZE
from ..storage import FileEntry, is_url, list_files
from ..storage.files import sha256_of_file
from .lines import RecordError, is_blank, parse_line
from .names import Walker, dir_key, record_name, relative

__all__ = ["IMG_EXTENSIONS", "DataFile", "DataSource", "ImageItem", "ImageSource", "RecordError", "SequenceFile",
           "SequenceSource", "detect_kind", "file_format", "file_stamp", "has_file_extension", "is_blank",
           "list_data_files", "list_images", "list_sequences", "parse_line", "skip_entry", "skip_sort_key"]

#: ``torchvision.datasets.folder.IMG_EXTENSIONS`` (a test checks they stay equal).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Sequence file formats by extension.
SEQUENCE_FORMATS = {".jsonl": "jsonl", ".txt": "txt"}
#: Table formats by extension (rows of named columns: the table and tabular kinds).
TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
#: Array formats (tabular features: a ``.npz`` of named arrays, or a ``.npy`` with its labels beside).
ARRAY_FORMATS = {".npy": "npy", ".npz": "npz"}
#: webdataset shards.
TAR_FORMATS = {".tar": "tar"}
#: Files up to this size are hashed into the plan's digest, whatever their modification time says
#: (hashing one costs about what listing it does); ``checksum_sources`` hashes every file.
HASHED_SIZE = 4096
_GLOB_CHARS = frozenset("*?[")
#: How many names a message shows.
_SHOWN = 3

def skip_entry(path: str, reason: str, line: int | None = None, *, row: int | None = None,
               member: str | None = None) -> dict[str, Any]:
    """One entry of the manifest's ``skipped``: ``{path, line (text files: 1-based, as an editor
    shows it), row (arrays and Parquet: 0-based, as NumPy and pandas index it), member (tars),
    reason}``; only the keys that apply."""
    entry: dict[str, Any] = {"path": path}
    if line is not None:
        entry["line"] = line
    if row is not None:
        entry["row"] = row
    if member is not None:
        entry["member"] = member
    entry["reason"] = reason
    return entry


def skip_sort_key(entry: dict[str, Any]) -> tuple:
    return (entry["path"], entry.get("line") or 0, entry.get("row") if entry.get("row") is not None else -1,
            entry.get("member") or "", entry["reason"])


def _examples(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def file_stamp(path: str | bytes, st: os.stat_result, checksum: bool) -> str:
    """What changes when a local file's content does: its modification time in nanoseconds, and
    its sha256 when it is small or ``checksum`` is set (an edit that keeps size and time shows)."""
    stamp = str(st.st_mtime_ns)
    if checksum or st.st_size <= HASHED_SIZE:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return stamp + ":unreadable"  # the file itself is skipped, with the reason, when converted
        try:
            stamp += ":" + sha256_of_file(fd)[1]
        except OSError:
            stamp += ":unreadable"
        finally:
            os.close(fd)
    return stamp


def _walk_reasons(walker: Walker, root: str) -> list[dict[str, Any]]:
    """The skipped entries for the directories a walk did not enter."""
    return [skip_entry(relative(path, root), "a link to a directory already listed (a symbolic link loop, "
                                             "or a second link to it); not followed again")
            for path in walker.repeated]


# --- images -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageItem:
    """One listed image: recorded path relative to SRC, class index, file size, and the stamp
    (:func:`file_stamp`) that tells whether the file changed."""

    path: str
    label: int
    size: int
    stamp: str = ""


@dataclass
class ImageSource:
    """An ImageFolder tree as listed. ``ignored``: the recorded names of the files that are no
    image by their extension (torchvision leaves them out too), reported, never converted."""

    root: str  # a local directory or an fsspec URL
    classes: list[str]
    items: list[ImageItem]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    storage_options: dict[str, Any] | None = field(default=None, repr=False)
    ignored: list[str] = field(default_factory=list)

    def listing(self) -> list[tuple[str, int, str]]:
        """``(path, size, stamp)`` of every listed file: what the plan's digest covers."""
        return [(item.path, item.size, item.stamp) for item in self.items] + [(e["path"], -1, "") for e in self.skipped]


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _scandir(root: str) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as err:
        raise SourceError(f"cannot list {root}: {err.strerror or err}") from None


def list_images(root: str, storage_options: dict[str, Any] | None = None, *,
                remote_files: list[FileEntry] | None = None, checksum: bool = False) -> ImageSource:
    """The files, classes and labels ``torchvision.datasets.ImageFolder(root, allow_empty=True)``
    would use, in its order, with each file's size and stamp (``checksum``: hash every file).

    Files that cannot be stat'ed (broken symlinks), are not regular files, or exceed the member size
    limit are listed in ``skipped``, as are directories that cannot be read and links to
    directories already listed (torchvision would list their files a second time, or forever).

    ``root`` may be an fsspec URL: its class folders are the prefixes holding files (an object
    store has no empty folders). ``remote_files``: its :func:`~shardkit.storage.list_files`
    listing, when already made.

    Raises:
        SourceError: ``root`` has no class folder, or no file with an image extension.
    """
    if is_url(root):
        files = remote_files if remote_files is not None else list_files(root, storage_options)
        return _list_remote_images(root, files, storage_options)
    entries = _scandir(root)
    # torchvision sorts the names as os.fsdecode gives them; they are recorded escaped afterwards
    class_dirs = [e.name for e in entries if e.is_dir()]
    ignored = [record_name(e.name) for e in entries if not e.is_dir()]
    if not class_dirs:
        raise SourceError(f"found no class folder in {root}: an ImageFolder tree is SRC/<class>/<image>")
    walker = Walker({dir_key(root)})
    walks, skipped = [], []
    for name in class_dirs:  # every class folder is reserved first, so no link elsewhere takes its files
        path = os.path.join(root, name)
        key = dir_key(path)
        if key in walker.claimed:
            walker.repeated.append(path)
            walks.append(None)
        else:
            walker.claimed.add(key)
            walks.append(path)
    real = [walker.real(path) if path is not None else ([], []) for path in walks]
    folders_of = [folders + walker.follow(links) for folders, links in real]
    items = []
    for label, folders in enumerate(folders_of):
        for folder, files in sorted(folders):
            for fname in sorted(files):
                path = os.path.join(folder, fname)
                rel = relative(path, root)
                if not has_image_extension(fname):
                    ignored.append(rel)
                    continue
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
                    items.append(ImageItem(rel, label, st.st_size, file_stamp(path, st, checksum)))
    for err in walker.errors:
        skipped.append(skip_entry(relative(err.filename or root, root),
                                  f"cannot list directory: {err.strerror or err}"))
    skipped += _walk_reasons(walker, root)
    if not items and not skipped:
        raise SourceError(f"found no image file in the classes of {root}; "
                          f"supported extensions are: {', '.join(IMG_EXTENSIONS)}")
    return ImageSource(root, [record_name(c) for c in class_dirs], items, skipped, ignored=sorted(ignored))


def _list_remote_images(root: str, files: list[FileEntry], storage_options: dict[str, Any] | None) -> ImageSource:
    classes = sorted({entry.path.split("/", 1)[0] for entry in files if "/" in entry.path})
    if not classes:
        raise SourceError(f"found no class folder in {root}: an ImageFolder tree is SRC/<class>/<image>")
    label_of = {name: i for i, name in enumerate(classes)}
    items, skipped, ignored = [], [], []
    # torchvision's order: class by class, folders in sorted path order, files sorted in each.
    for path, size, stamp in sorted(files, key=lambda f: (label_of.get(f.path.split("/", 1)[0], -1),
                                                           f.path.rpartition("/")[0], f.path.rpartition("/")[2])):
        name = record_name(path)
        if "/" not in path or not has_image_extension(path):
            ignored.append(name)
        elif size > DEFAULT_MAX_MEMBER_SIZE:
            skipped.append(skip_entry(name, f"{size} bytes exceeds the limit of {DEFAULT_MAX_MEMBER_SIZE} "
                                            f"bytes per image"))
        else:
            items.append(ImageItem(name, label_of[path.split("/", 1)[0]], size, stamp))
    if not items and not skipped:
        raise SourceError(f"found no image file in the classes of {root}; "
                          f"supported extensions are: {', '.join(IMG_EXTENSIONS)}")
    return ImageSource(root, [record_name(c) for c in classes], items, skipped, storage_options, sorted(ignored))


# --- data files: sequences, tables, arrays, tars --------------------------------------------------

@dataclass(frozen=True)
class DataFile:
    """One listed data file: recorded path relative to the source root, format (by its extension),
    size, stamp (:func:`file_stamp`)."""

    path: str
    fmt: str
    size: int
    stamp: str = ""


#: A sequence file is a data file of format "jsonl" or "txt".
SequenceFile = DataFile


@dataclass
class DataSource:
    """Data files as listed; ``skipped``: directory links not followed again; ``ignored``: the
    files that are not of the formats read, by their extension."""

    root: str
    files: list[DataFile]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def listing(self) -> list[tuple[str, int, str]]:
        return [(f.path, f.size, f.stamp) for f in self.files]


SequenceSource = DataSource


def file_format(name: str | bytes, formats: dict[str, str]) -> str | None:
    """The format of a file by its extension among ``formats`` (``{".jsonl": "jsonl", ...}``), or None."""
    return formats.get(os.path.splitext(os.fsdecode(name))[1].lower())


def sequence_format(name: str | bytes) -> str | None:
    return file_format(name, SEQUENCE_FORMATS)


def _data_file(path: str, root: str, checksum: bool, formats: dict[str, str], what: str) -> DataFile:
    """Check that ``path`` can be read (never blocking on a FIFO) and stamp it.

    Raises:
        SourceError: it cannot be opened or is not a regular file: its records would be lost.
    """
    rel = relative(path, root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise SourceError(f"cannot read the {what} file {rel} in {root}: {err.strerror or err}; fix its "
                          f"permissions, or choose a SRC without it") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"the {what} file {rel} in {root} is not a regular file")
        stamp = str(st.st_mtime_ns)
        if checksum or st.st_size <= HASHED_SIZE:
            stamp += ":" + sha256_of_file(fd)[1]
    except OSError as err:
        raise SourceError(f"cannot read the {what} file {rel} in {root}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    return DataFile(rel, file_format(path, formats), st.st_size, stamp)


def list_data_files(src: str, formats: dict[str, str], what: str, *, checksum: bool = False) -> DataSource:
    """The ``what`` files of ``src`` (those whose extension is in ``formats``): one file, every
    such file under a directory (recursively, each directory once), or the matches of a glob;
    sorted by path, each checked to be readable and stamped (``checksum``: hashed).

    Raises:
        SourceError: nothing matches, a named file is not of ``formats``, or a file or directory
            under ``src`` cannot be read (its records would be lost).
    """
    ignored: list[str] = []
    skipped: list[dict[str, Any]] = []
    if _GLOB_CHARS & set(src) and not os.path.exists(src):
        base = src
        while _GLOB_CHARS & set(base):
            base = os.path.dirname(base)
        root = base or "."
        paths = []
        for p in glob.glob(src, recursive=True):
            if file_format(p, formats) and not os.path.isdir(p):
                paths.append(p)
            elif not os.path.isdir(p):
                ignored.append(relative(p, root))
    elif os.path.isdir(src):
        root = src
        walker = Walker({dir_key(src)})
        paths = []
        for folder, names in walker.walk(src):
            for name in names:
                (paths if file_format(name, formats) else ignored).append(os.path.join(folder, name))
        ignored = [relative(p, root) for p in ignored]
        if walker.errors:
            err = walker.errors[0]
            more = f" (and {len(walker.errors) - 1} more)" if len(walker.errors) > 1 else ""
            raise SourceError(f"cannot list the directory {relative(err.filename or src, src)} in {src}: "
                              f"{err.strerror or err}{more}; the {what} files in it would be lost: fix its "
                              f"permissions, or choose a SRC without it")
        skipped = _walk_reasons(walker, root)
    elif os.path.isfile(src):
        if not file_format(src, formats):
            raise SourceError(f"{src}: {what} files must end in {' or '.join(formats)}")
        root, paths = os.path.dirname(src) or ".", [src]
    else:
        raise SourceError(f"{src}: no such file or directory")
    files = [_data_file(path, root, checksum, formats, what) for path in sorted(paths, key=lambda p: relative(p, root))]
    if not files:
        found = f"; found only {len(ignored)} other files ({_examples(sorted(ignored))})" if ignored else ""
        raise SourceError(f"{src}: found no {what} file ({', '.join(formats)}){found}")
    return DataSource(root, files, skipped, sorted(ignored))


def list_sequences(src: str, *, checksum: bool = False) -> DataSource:
    """The sequence files of ``src`` (:func:`list_data_files` of ``.jsonl``/``.txt``).

    Raises:
        SourceError: as :func:`list_data_files`.
    """
    return list_data_files(src, SEQUENCE_FORMATS, "sequence", checksum=checksum)


from .detect import detect_kind, has_file_extension  # noqa: E402 (after what it imports from here)
