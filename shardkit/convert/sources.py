"""What a conversion reads: ImageFolder trees and sequence files, listed, and which kind a source is
(one sequence line is parsed by :mod:`.lines`).

The ImageFolder walk reproduces ``torchvision.datasets.ImageFolder`` (same files, classes, labels
and order) without importing torch, so the CLI and the conversion workers stay light; it differs
only where torchvision would list a directory twice (see :mod:`.names`). Names are recorded as
:func:`.names.record_name` writes them, and files opened by :func:`.names.source_path`.
"""

from __future__ import annotations

import glob
import hashlib
import heapq
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import SourceError
from ..format.tar import DEFAULT_MAX_MEMBER_SIZE
from ..storage import FileEntry, is_url, list_files
from .lines import RecordError, is_blank, parse_line, parse_txt
from .names import Walker, dir_key, record_name, relative

__all__ = ["IMG_EXTENSIONS", "ImageItem", "ImageSource", "RecordError", "SequenceFile", "SequenceSource",
           "detect_kind", "file_stamp", "is_blank", "list_images", "list_sequences", "parse_line", "skip_entry",
           "skip_sort_key"]

#: ``torchvision.datasets.folder.IMG_EXTENSIONS`` (a test checks they stay equal).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Sequence file formats by extension.
SEQUENCE_FORMATS = {".jsonl": "jsonl", ".txt": "txt"}
#: Files up to this size are hashed into the plan's digest, whatever their modification time says
#: (hashing one costs about what listing it does); ``checksum_sources`` hashes every file.
HASHED_SIZE = 4096
_GLOB_CHARS = frozenset("*?[")
#: How many names a message shows.
_SHOWN = 3

Kind = Literal["images", "sequences"]


def skip_entry(path: str, reason: str, line: int | None = None) -> dict[str, Any]:
    """One entry of the manifest's ``skipped``: ``{path, line (sequences), reason}``."""
    return {"path": path, "line": line, "reason": reason} if line is not None else {"path": path, "reason": reason}


def skip_sort_key(entry: dict[str, Any]) -> tuple:
    return entry["path"], entry.get("line") or 0, entry["reason"]


def _examples(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def _sha256_of(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


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
            stamp += ":" + _sha256_of(fd)
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


# --- sequence files ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SequenceFile:
    """One listed sequence file: recorded path relative to the source root, format, size, stamp."""

    path: str
    fmt: str   # "jsonl" or "txt"
    size: int
    stamp: str = ""


@dataclass
class SequenceSource:
    """Sequence files as listed; ``skipped``: directory links not followed again; ``ignored``:
    the files that are no sequence file by their extension."""

    root: str
    files: list[SequenceFile]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def listing(self) -> list[tuple[str, int, str]]:
        return [(f.path, f.size, f.stamp) for f in self.files]


def sequence_format(name: str | bytes) -> str | None:
    return SEQUENCE_FORMATS.get(os.path.splitext(os.fsdecode(name))[1].lower())


def _sequence_file(path: str, root: str, checksum: bool) -> SequenceFile:
    """Check that ``path`` can be read (never blocking on a FIFO) and stamp it.

    Raises:
        SourceError: it cannot be opened or is not a regular file: its records would be lost.
    """
    rel = relative(path, root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise SourceError(f"cannot read the sequence file {rel} in {root}: {err.strerror or err}; fix its "
                          f"permissions, or choose a SRC without it") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"the sequence file {rel} in {root} is not a regular file")
        stamp = str(st.st_mtime_ns)
        if checksum or st.st_size <= HASHED_SIZE:
            stamp += ":" + _sha256_of(fd)
    except OSError as err:
        raise SourceError(f"cannot read the sequence file {rel} in {root}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    return SequenceFile(rel, sequence_format(path), st.st_size, stamp)


def list_sequences(src: str, *, checksum: bool = False) -> SequenceSource:
    """The sequence files of ``src``: one file, every ``.jsonl``/``.txt`` under a directory
    (recursively, each directory once), or the matches of a glob; sorted by path, each checked to
    be readable and stamped (``checksum``: hashed).

    Raises:
        SourceError: nothing matches, a named file is not ``.jsonl``/``.txt``, or a file or
            directory under ``src`` cannot be read (its records would be lost).
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
            if sequence_format(p) and not os.path.isdir(p):
                paths.append(p)
            elif not os.path.isdir(p):
                ignored.append(relative(p, root))
    elif os.path.isdir(src):
        root = src
        walker = Walker({dir_key(src)})
        paths = []
        for folder, names in walker.walk(src):
            for name in names:
                (paths if sequence_format(name) else ignored).append(os.path.join(folder, name))
        ignored = [relative(p, root) for p in ignored]
        if walker.errors:
            err = walker.errors[0]
            more = f" (and {len(walker.errors) - 1} more)" if len(walker.errors) > 1 else ""
            raise SourceError(f"cannot list the directory {relative(err.filename or src, src)} in {src}: "
                              f"{err.strerror or err}{more}; the sequence files in it would be lost: fix its "
                              f"permissions, or choose a SRC without it")
        skipped = _walk_reasons(walker, root)
    elif os.path.isfile(src):
        if not sequence_format(src):
            raise SourceError(f"{src}: sequence files must end in {' or '.join(SEQUENCE_FORMATS)}")
        root, paths = os.path.dirname(src) or ".", [src]
    else:
        raise SourceError(f"{src}: no such file or directory")
    files = [_sequence_file(path, root, checksum) for path in sorted(paths, key=lambda p: relative(p, root))]
    if not files:
        found = f"; found only {len(ignored)} other files ({_examples(sorted(ignored))})" if ignored else ""
        raise SourceError(f"{src}: found no sequence file ({', '.join(SEQUENCE_FORMATS)}){found}")
    return SequenceSource(root, files, skipped, sorted(ignored))


# --- which kind ---------------------------------------------------------------------------------

def _holds_token_ids(path: str) -> bool:
    """Whether the first non-blank line of a ``.txt`` file is whitespace-separated token ids (a
    README or a list of class names beside an ImageFolder tree is not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return True  # unreadable: listing it as sequences will say so, rather than pass it over
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, 64 << 10)
    except OSError:
        return True
    finally:
        os.close(fd)
    for line in head.splitlines():
        if not is_blank(line):
            try:
                parse_txt(line)
            except RecordError:
                return False
            return True
    return False


def _decide(src: str, images: list[str], sequences: list[str], classes: int, others: list[str],
            name=lambda path: path) -> Kind:
    """The kind, from the files of each kind found (``name`` turns one into what a message shows)."""
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
    found = (f"found {len(others)} other files ({shown(others)}; a .txt file counts only when its first line "
             f"is token ids)" if others else "found no file")
    raise SourceError(f"{src} holds neither an ImageFolder tree (class folders of {', '.join(IMG_EXTENSIONS)} "
                      f"files) nor sequence files (.jsonl, or .txt of token ids): {found}; pass --kind to say which")


def detect_kind(src: str, storage_options: dict[str, Any] | None = None, *,
                remote_files: list[FileEntry] | None = None) -> Kind:
    """``"images"`` for an ImageFolder tree (class folders holding image files), ``"sequences"``
    for a ``.jsonl``/``.txt`` file, a glob, or a directory of sequence files (``.jsonl``, and
    ``.txt`` files whose first line is token ids). ``remote_files``: the
    :func:`~shardkit.storage.list_files` listing of a URL, when already made.

    Raises:
        SourceError: ``src`` does not exist, holds neither, or holds both (the message names what
            it found and asks for ``--kind``).
    """
    if is_url(src):
        if sequence_format(src):
            return "sequences"
        files = remote_files if remote_files is not None else list_files(src, storage_options)
        names = [record_name(entry.path) for entry in files]
        images = [n for n in names if "/" in n and has_image_extension(n)]
        # a .txt beside remote images is taken for a README: reading it would cost a request
        sequences = [n for n in names if sequence_format(n) == "jsonl" or (not images and sequence_format(n))]
        classes = len({n.split("/", 1)[0] for n in images})
        if not images and not sequences:
            raise SourceError(f"{src} holds neither an ImageFolder tree nor sequence files (or does not exist)")
        return _decide(src, images, sequences, classes, [])
    if _GLOB_CHARS & set(src) and not os.path.exists(src):
        return "sequences"
    if os.path.isfile(src):
        return "sequences"
    if not os.path.isdir(src):
        raise SourceError(f"{src}: no such file or directory")
    # Every file is looked at (a single .jsonl deep down makes the source ambiguous), so this loop
    # stays cheap: names are made relative only for the few a message shows.
    images, sequences, others, classes = [], [], [], set()
    for folder, names in Walker({dir_key(src)}).walk(src):
        in_class, before = folder != src, len(images)
        for name in names:
            path = os.path.join(folder, name)
            if in_class and has_image_extension(name):
                images.append(path)
                continue
            fmt = sequence_format(name)
            if fmt == "jsonl" or (fmt == "txt" and _holds_token_ids(path)):
                sequences.append(path)
            else:
                others.append(path)
        if len(images) > before:  # this folder holds images: its class is one of the tree's
            classes.add(os.path.relpath(folder, src).split(os.sep, 1)[0])
    return _decide(src, images, sequences, len(classes), others, name=lambda path: relative(path, src))
