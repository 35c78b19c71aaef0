"""Local file primitives, defined once: hashing while reading or writing, atomic replacement, and
``flock`` locks that a forked child never keeps.

Conversion (shards, resume records, the manifest), the shard cache, the webdataset count cache and
``verify`` all go through these, so "written whole or not at all", "hashed as it passes" and
"held by one process" mean the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import weakref
from typing import BinaryIO

_POLL = 0.02
_held: "weakref.WeakSet[FileLock]" = weakref.WeakSet()


class HashingReader:
    """A read-through stream that hashes (sha256) and counts every byte read from ``stream``."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) the rest of the stream."""
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class HashingWriter:
    """A write-through stream that hashes (sha256) and counts every byte written to ``stream``."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += memoryview(data).nbytes
        return self.stream.write(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def sha256_of_file(path: str | os.PathLike | int) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a local file: a path, or an open fd (read from its start, and
    left at its start)."""
    reader = HashingReader(open(path, "rb", buffering=0, closefd=not isinstance(path, int)))
    try:
        if isinstance(path, int):
            reader.stream.seek(0)
        reader.drain()
        if isinstance(path, int):
            reader.stream.seek(0)
    finally:
        reader.stream.close()
    return reader.size, reader.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(final: str | os.PathLike, folder: str | os.PathLike | None = None) -> str:
    """A unique temporary name for ``final`` in ``folder`` (default: beside it): hidden, with the
    pid, so two writers of the same file never collide and a killed writer's leftovers are known
    by the ``.tmp-`` in their name."""
    final = os.fspath(final)
    folder = os.fspath(folder) if folder is not None else (os.path.dirname(final) or ".")
    return os.path.join(folder, f".{os.path.basename(final)}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def atomic_write(path: str | os.PathLike, data: bytes | str, *, durable: bool = True) -> None:
    """Replace ``path`` by ``data`` whole: written to a temporary file beside it, fsync'd (with
    ``durable``), renamed over it. On any error the temporary file is removed and ``path`` is as
    it was.

    Raises:
        OSError: the file cannot be written (ENOSPC included); nothing is left behind.
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(os.fspath(path)) or ".")


def best_effort_write(path: str | os.PathLike, data: bytes | str) -> bool:
    """:func:`atomic_write` for caches (not durable, parents created): False instead of raising
    ``OSError``, since a cache that cannot be written only means working again next time."""
    try:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        atomic_write(path, data, durable=False)
        return True
    except OSError:
        return False


class FileLock:
    """An ``flock`` lock on the file ``path`` (created if missing), shared or exclusive.

    ``flock`` locks belong to the open file, which a forked child shares: a child that outlives
    its parent would keep the lock held forever (a "stale lock"). So every lock held in a process
    is closed in its forked children (closing a duplicate never releases the parent's lock). A
    lock file that is deleted while a process waits on it (eviction) is noticed and the new file
    is locked instead. A lock file that is a symbolic link is never followed (``ELOOP``): a lock
    may sit in a directory someone else can write.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.fd: int | None = None

    def acquire(self, exclusive: bool = True, *, wait: float | None = None) -> bool:
        """Take the lock; wait ``wait`` seconds at most (None: forever, 0: not at all). True if taken.

        Raises:
            OSError: the lock file cannot be created or opened (``ELOOP``: it is a symbolic link).
        """
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            if not _flock(fd, mode, deadline):
                os.close(fd)
                return False
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                self.fd = fd
                _held.add(self)
                return True
            os.close(fd)  # deleted (or replaced) while we waited: lock the file that is there now

    def downgrade(self) -> None:
        """Exclusive to shared (never blocks: no one else holds it)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd is not None:
            _held.discard(self)
            os.close(self.fd)
            self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _flock(fd: int, mode: int, deadline: float | None) -> bool:
    if deadline is None:
        fcntl.flock(fd, mode)
        return True
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)


def _close_inherited_locks() -> None:
    # In a forked child: drop its duplicates of the parent's locks, so that the child (a worker
    # that may outlive its parent) neither holds them nor thinks it does.
    for lock in list(_held):
        with contextlib.suppress(OSError):
            os.close(lock.fd)
        lock.fd = None
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)

