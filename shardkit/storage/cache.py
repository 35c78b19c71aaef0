"""A local cache of remote shards, shared by every worker and process on the machine.

Layout of ``cache_dir``, per shard (``NAME`` = a hash of the safe URL or the manifest's sha256,
then the shard's file name):

- ``NAME``        the shard, complete and checked (it only ever appears by atomic rename);
- ``NAME.ok``     the stamp ``size mtime_ns inode sha256`` written when the shard was checked;
- ``NAME.lock``   an ``fcntl.flock`` lock: shared while the shard is read, exclusive while it is
                  downloaded, checked or evicted, so one process downloads and the others wait;
- ``.NAME.<pid>.tmp`` a download in progress.

The first reader streams from the server and writes what it reads to the temporary file
(:class:`_Filling`), so its first sample arrives early; at the end the size and sha256 are
checked against the manifest and the file is renamed into place. Later readers get the local
file. A cached file whose stat no longer matches its stamp is hashed again; if the hash is wrong
it is deleted and fetched again. When the files exceed ``limit`` bytes, the least recently used
(by access time, touched on each use) are evicted, except those being read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..errors import ShardError
from .files import FileLock, HashingWriter, sha256_of_file
from .redact import safe_url
from .remote import ReadStream

log = logging.getLogger(__name__)

#: Seconds a reader waits for another process's download before it streams the shard itself.
WAIT_FOR_DOWNLOAD = 60.0
#: A reader closed this close to the end of its shard (readers stop after their last sample,
#: before the end-of-archive blocks, or after their part of a shard) first fetches the rest, so
#: the shard is cached; further from the end, the download is abandoned.
DRAIN_LIMIT = 32 << 20
class ShardCache:
    """The cache in ``root``, holding at most ``limit`` bytes of shards (None: no limit)."""

    def __init__(self, root: str | os.PathLike, limit: int | None = None) -> None:
        self.root = Path(root)
        self.limit = limit
        self.root.mkdir(parents=True, exist_ok=True)

    def name(self, url: str, sha256: str | None) -> str:
        key = sha256[:24] if sha256 else hashlib.sha256(safe_url(url).encode()).hexdigest()[:24]
        base = safe_url(url).rstrip("/").rsplit("/", 1)[-1] or "object"
        return f"{key}-{base}"

    def open(self, url: str, fetch: Callable[[], IO[bytes]], *, size: int | None = None,
             sha256: str | None = None) -> IO[bytes]:
        """A stream over the shard at ``url``: the cached copy, or ``fetch()`` copied into the cache.

        If another process is downloading the same shard, waits for it (at most
        ``WAIT_FOR_DOWNLOAD`` seconds, then streams with ``fetch()`` without caching).

        Raises:
            ShardError: (at the end of the stream) the downloaded bytes disagree with ``size`` or
                ``sha256``; nothing is cached then.
        """
        name = self.name(url, sha256)
        path, lock = self.root / name, FileLock(self.root / f"{name}.lock")
        if not lock.acquire(False, wait=WAIT_FOR_DOWNLOAD):
            log.warning("%s: waited %.0fs for another process's download; streaming it directly",
                        safe_url(url), WAIT_FOR_DOWNLOAD)
            return fetch()
        cached = self._open_valid(path, size, sha256, check=False)
        if cached is not None:
            self.evict(keep=name)  # files over the limit that were in use may be free now
            return _CachedFile(cached, lock)
        lock.release()
        if not lock.acquire(True, wait=WAIT_FOR_DOWNLOAD):
            return fetch()
        cached = self._open_valid(path, size, sha256, check=True)
        if cached is not None:
            lock.downgrade()
            self.evict(keep=name)
            return _CachedFile(cached, lock)
        for stale in self.root.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
        self.evict(incoming=size or 0, keep=name)
        try:
            source = fetch()
        except BaseException:
            lock.release()
            raise
        return _Filling(self, source, path, lock, url, size, sha256)

    # -- checking -------------------------------------------------------------------------
    def _open_valid(self, path: Path, size: int | None, sha256: str | None, *, check: bool) -> int | None:
        """An fd on the cached shard if it is there and sound, else None (a corrupt one is deleted).

        Without ``check`` only the stamp is compared; with it (under the exclusive lock) a file
        whose stat changed since it was stamped is hashed again.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        stamp = _read_stamp(path)
        sound = (size is None or st.st_size == size) and stamp is not None \
            and stamp[:3] == (st.st_size, st.st_mtime_ns, st.st_ino) and (sha256 is None or stamp[3] == sha256)
        if not sound and check and (size is None or st.st_size == size):
            expected = sha256 or (stamp[3] if stamp else None)
            sound = expected is not None and sha256_of_file(fd)[1] == expected
            if sound:
                _write_stamp(path, st, expected)
        if sound:
            os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))  # LRU by access time; keep the stamp's mtime
            return fd
        os.close(fd)
        if check:
            log.warning("%s: cached copy is corrupt (size or sha256 differs); fetching it again", path)
            path.unlink(missing_ok=True)
            Path(f"{path}.ok").unlink(missing_ok=True)
        return None

    # -- eviction -------------------------------------------------------------------------
    def evict(self, *, incoming: int = 0, keep: str | None = None) -> None:
        """Delete least-recently-used shards until the cache plus ``incoming`` bytes fits the limit.

        Shards being read or downloaded (their lock is held) are never deleted.
        """
        if self.limit is None:
            return
        shards, total = [], 0
        for entry in os.scandir(self.root):
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                if entry.name.endswith(".tmp"):
                    total += st.st_size
                elif not entry.name.startswith(".") and not entry.name.endswith((".ok", ".lock")):
                    total += st.st_size
                    shards.append((st.st_atime_ns, entry.name, st.st_size))
        for _, name, size in sorted(shards):
            if total + incoming <= self.limit:
                return
            if name == keep:
                continue
            lock = FileLock(self.root / f"{name}.lock")
            if not lock.acquire(True, wait=0):
                continue
            try:
                (self.root / name).unlink(missing_ok=True)
                Path(self.root / f"{name}.ok").unlink(missing_ok=True)
                Path(lock.path).unlink(missing_ok=True)
                total -= size
                log.debug("evicted %s (%d bytes) from the shard cache", name, size)
            finally:
                lock.release()
        if total + incoming > self.limit:
            log.info("shard cache %s holds %d bytes over its limit of %d: the rest is in use",
                     self.root, total + incoming - self.limit, self.limit)


def _read_stamp(path: Path) -> tuple[int, int, int, str] | None:
    try:
        size, mtime, inode, digest = Path(f"{path}.ok").read_text().split()
        return int(size), int(mtime), int(inode), digest
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, st: os.stat_result, digest: str) -> None:
    Path(f"{path}.ok").write_text(f"{st.st_size} {st.st_mtime_ns} {st.st_ino} {digest}\n")


class _CachedFile(io.BufferedReader):
    """The cached shard, holding its lock (so it is not evicted) until closed."""

    def __init__(self, fd: int, lock: FileLock) -> None:
        super().__init__(io.FileIO(fd, "rb", closefd=True), 1 << 20)
        self._lock = lock

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._lock.release()


class _Filling(ReadStream):
    """Streams ``source`` to the reader while writing it to the cache; checks and publishes at the end."""

    def __init__(self, cache: ShardCache, source: IO[bytes], path: Path, lock: FileLock, url: str,
                 size: int | None, sha256: str | None) -> None:
        super().__init__()
        self._cache, self._source, self._path, self._lock = cache, source, path, lock
        self._url, self._size, self._sha256 = url, size, sha256
        self._pid = os.getpid()
        self._tmp = path.with_name(f".{path.name}.{self._pid}.tmp")
        # unbuffered: a forked child must not flush into it; hashed and counted as it is written
        self._out = HashingWriter(io.FileIO(self._tmp, "wb"))
        self._finished = False

    def tell(self) -> int:
        return self._out.size

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all the rest if negative); fewer only at the end of the shard."""
        want = -1 if size is None else size
        data = self._source.read(want)
        if data:
            self._out.write(data)
        if (want < 0 or len(data) < want) and not self._finished:
            self._finish()
        return data

    def _finish(self) -> None:
        self._finished = True
        self._out.stream.close()
        digest, written = self._out.hexdigest(), self._out.size
        wrong = []
        if self._size is not None and written != self._size:
            wrong.append(f"{written} bytes, the manifest says {self._size}")
        if self._sha256 is not None and digest != self._sha256:
            wrong.append(f"sha256 {digest}, the manifest says {self._sha256}")
        try:
            if wrong:
                self._tmp.unlink(missing_ok=True)
                raise ShardError(f"downloaded copy differs from the manifest: {'; '.join(wrong)}",
                                 shard=safe_url(self._url))
            _write_stamp(self._path, os.stat(self._tmp), digest)
            os.replace(self._tmp, self._path)
        finally:
            self._lock.release()
        try:
            self._cache.evict(keep=self._path.name)
        except OSError as err:
            if err.errno != errno.ENOENT:
                log.warning("shard cache eviction failed: %s", err)

    def close(self) -> None:
        if self.closed:
            return
        if os.getpid() == self._pid:
            if not self._finished and self._size is not None and self._size - self._out.size <= DRAIN_LIMIT:
                try:
                    while self.read(1 << 20):
                        pass
                except Exception as err:  # noqa: BLE001 - the reader is done; only the cache misses out
                    log.info("%s: not cached (%s)", safe_url(self._url), err)
            with contextlib.suppress(Exception):
                self._source.close()
            if not self._finished:  # abandoned before the end: nothing is cached
                self._finished = True
                self._out.stream.close()
                self._tmp.unlink(missing_ok=True)
                self._lock.release()
        super().close()
