"""How a source file's name is recorded, and the walk that finds the files.

A file name on Linux is bytes, not text; the manifest and each sample's ``KEY.json`` are UTF-8
JSON. :func:`record_name` writes a name as its UTF-8 text with each byte that is not part of valid
UTF-8 as ``\\xNN`` (lower-case hex) and each backslash doubled, so every name can be stored and
printed, and :func:`source_bytes` gives back the exact bytes. Files are always opened through
:func:`source_path`, never through the recorded text.

:class:`Walker` lists directories as ``os.walk(followlinks=True)`` does for torchvision's
``ImageFolder``, except that no directory is listed twice: real directories first, then the
directories that links point to and that were not listed yet, so a link loop or a second link
to a folder adds nothing (and is reported), and a link never takes a real folder's files.
"""

from __future__ import annotations

import os
import re
from collections import deque

_UNDECODABLE = re.compile("[\udc80-\udcff]")
_ESCAPE = re.compile(r"(\\\\|\\x[0-9a-f]{2})")


def record_name(raw: bytes | str) -> str:
    """The recorded form of a file name (``bytes``, or a ``str`` as ``os.fsdecode`` gives it):
    valid UTF-8 as it is, a backslash as ``\\\\``, any other byte as ``\\xNN``."""
    text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    text = text.replace("\\", "\\\\")
    return _UNDECODABLE.sub(lambda m: f"\\x{ord(m[0]) - 0xDC00:02x}", text)


def source_bytes(name: str) -> bytes:
    """The file name (bytes) that :func:`record_name` recorded as ``name``."""
    out = []
    for part in _ESCAPE.split(name):
        if part == "\\\\":
            out.append(b"\\")
        elif len(part) == 4 and part.startswith("\\x"):
            out.append(bytes([int(part[2:], 16)]))
        else:
            out.append(part.encode("utf-8", "surrogateescape"))
    return b"".join(out)


def source_path(root: str, name: str) -> bytes | str:
    """Where the file recorded as ``name`` under ``root`` is: bytes for a local root (the exact
    name, whatever its encoding), a URL for a remote one."""
    if "://" in root:
        return f"{root.rstrip('/')}/{source_bytes(name).decode('utf-8', 'surrogateescape')}"
    return os.path.join(os.fsencode(root), source_bytes(name))


def relative(path: str | bytes, root: str | bytes) -> str:
    """The recorded name of ``path`` relative to ``root``, with ``/`` separators."""
    return record_name(os.fsencode(os.path.relpath(path, root)).replace(os.fsencode(os.sep), b"/"))


def dir_key(path: str) -> tuple[int, int]:
    """What identifies a directory whatever the path to it: ``(device, inode)`` (links followed)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


class Walker:
    """Lists directories, each at most once across every :meth:`walk` of this walker.

    ``claimed`` holds the ``(device, inode)`` of the directories already listed (or reserved:
    the root of an ImageFolder tree and its class folders). After the walks, ``errors`` holds
    the directories that could not be listed (as ``OSError``), ``repeated`` the paths of the
    directories not entered because they were listed already.
    """

    def __init__(self, claimed: set[tuple[int, int]]) -> None:
        self.claimed = claimed
        self.errors: list[OSError] = []
        self.repeated: list[str] = []

    def walk(self, top: str) -> list[tuple[str, list[str]]]:
        """``(folder, file names)`` of ``top`` and of every directory below it, links included;
        the caller has claimed ``top`` itself."""
        folders, links = self.real(top)
        return folders + self.follow(links)

    def follow(self, links: list[str]) -> list[tuple[str, list[str]]]:
        """The folders under the directory ``links`` (from :meth:`real`) not listed yet. Call it
        after :meth:`real` has listed every real directory, so a link never takes their files."""
        folders = []
        queue = deque(links)
        while queue:
            link = queue.popleft()
            try:
                key = dir_key(link)
            except OSError as err:
                self.errors.append(err)
                continue
            if key in self.claimed:
                self.repeated.append(link)
                continue
            self.claimed.add(key)
            more, more_links = self.real(link)
            folders += more
            queue.extend(more_links)
        return folders

    def real(self, top: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
        """The real directories under ``top`` (its links to directories are returned, not entered)."""
        folders, links = [], []
        for folder, dirs, files in os.walk(top, onerror=self.errors.append):
            folders.append((folder, files))
            kept = []
            for name in sorted(dirs):  # sorted: which of two links is followed must not depend on the disk
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    links.append(path)
                    continue
                try:
                    key = dir_key(path)
                except OSError as err:
                    self.errors.append(err)
                    continue
                if key in self.claimed:
                    self.repeated.append(path)
                else:
                    self.claimed.add(key)
                    kept.append(name)
            dirs[:] = kept
        return folders, links
