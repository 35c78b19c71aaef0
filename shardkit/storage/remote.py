"""Sequential reading of a remote object as ranged requests, retried, resumed and read ahead.

The object is fetched as consecutive byte ranges (``fs.cat_file(path, start, end)``), each asked
for in one or more requests ("pieces"), each piece retried on its own: a failed piece is asked
for again from its first byte, so the bytes handed to the reader are exactly the object's, none
twice and none skipped. After a failure the pieces shrink, so a connection that keeps dropping
still makes progress. On an async filesystem (HTTP, S3, GCS) up to ``READAHEAD + 1`` ranges are
in flight on background threads while the caller consumes the current one, which hides a
per-request latency (a 20 ms first byte costs nothing at steady state); when the size is known,
the first range is short, so the first bytes arrive one latency after the open, not after a
whole range."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fsspec.asyn import AsyncFileSystem

from ..errors import StorageError
from .redact import safe_url
from .retry import DEFAULT_POLICY, RetryPolicy, call, cut_short, status

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 << 20
FIRST_CHUNK_SIZE = 256 << 10  # the first range is short, so the first samples arrive one latency after the open
READAHEAD = 2
_MIN_PIECE = 64 << 10
_fetchers: ThreadPoolExecutor | None = None
_fetchers_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _fetchers, _fetchers_lock
    # threads do not survive a fork, and a parent thread may have held the lock at that moment
    _fetchers, _fetchers_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _pool() -> ThreadPoolExecutor:
    """This process's fetch threads."""
    global _fetchers
    with _fetchers_lock:
        if _fetchers is None:
            _fetchers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="shardkit-fetch")
        return _fetchers


def _past_the_end(exc: BaseException) -> bool:
    """HTTP 416 / S3 ``InvalidRange``: a range that starts at or after the object's end."""
    return 416 in (status(exc), status(exc.__cause__)) or "not satisfiable" in str(exc).lower()


def _done(fn, *args) -> Future:
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
        future.set_exception(exc)
    return future


class ReadStream(io.RawIOBase):
    """A raw stream whose subclasses define only ``read(size)``: the other reads follow from it."""

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)


class RangeReader(ReadStream):
    """A read-only, forward-only stream over the remote object ``path`` of ``fs``.

    ``size`` (from a manifest) saves a metadata request; without it the first range (a whole
    ``CHUNK_SIZE``, fetched at once) tells a small object's size and a larger one's is asked for.
    ``start``: the first byte read (with ``size`` known: a reader seeking into a shard).
    ``read(n)`` returns ``n`` bytes unless the object ends first.

    Raises (from ``read``):
        StorageError: a range that failed after its retries, or an object shorter than ``size``.
    """

    def __init__(self, fs: Any, path: str, url: str, *, size: int | None = None, start: int = 0,
                 policy: RetryPolicy = DEFAULT_POLICY, secrets: tuple[str, ...] = (),
                 busy_not_found: bool = False) -> None:
        super().__init__()
        self._fs, self._path, self._url = fs, path, url
        self._size = size
        self._policy, self._secrets, self._busy_not_found = policy, secrets, busy_not_found
        self._chunk = self._piece = CHUNK_SIZE
        # A synchronous filesystem may not be thread-safe: fetch in the caller's thread.
        self._threaded = isinstance(fs, AsyncFileSystem)
        self._readahead = READAHEAD if self._threaded else 0
        self._pending: deque[tuple[Future, int]] = deque()  # (bytes, how many asked for)
        if start and size is None:
            raise ValueError("a RangeReader that starts inside the object needs its size")
        self._first = start
        self._next = start  # first byte not yet asked for
        self._buf = memoryview(b"")
        self._pos = start  # the offset of the next byte handed out
        if size is not None:
            self._schedule()

    # -- fetching -------------------------------------------------------------------------
    def _request(self, start: int, end: int) -> tuple[bytes, int]:
        """One piece from ``start`` (at most ``end``): its bytes and the byte it was asked to stop at."""
        def attempt(timeout: float) -> tuple[bytes, int]:
            stop = min(end, start + self._piece)
            kwargs = {"timeout": timeout} if self._threaded else {}
            try:
                data = self._fs.cat_file(self._path, start=start, end=stop, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only "range not satisfiable" is handled here
                if not _past_the_end(exc):
                    raise
                data = b""  # the object ends before ``start`` (an empty object, or shorter than said)
            if len(data) > stop - start:
                data = self._ignored_range(data, start, stop)
            self._piece = min(self._chunk, self._piece * 2)  # the connection is healthy again
            return data, stop

        return call(attempt, url=self._url, what=f"reading bytes {start}-{end}", policy=self._policy,
                    secrets=self._secrets, on_retry=self._shrink)

    def _ignored_range(self, data: bytes, start: int, stop: int) -> bytes:
        if self._size is not None and len(data) == self._size:
            log.warning("%s: the server ignored the Range header and sent the whole object", safe_url(self._url))
            return data[start:stop]
        raise StorageError(f"{safe_url(self._url)}: asked for bytes {start}-{stop}, got {len(data)} bytes: "
                           "the server does not honour range requests")

    def _shrink(self, exc: BaseException) -> None:
        if cut_short(exc):  # smaller pieces get through a connection that keeps dropping
            self._piece = max(_MIN_PIECE, self._piece // 2)

    def _fetch(self, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (fewer only if the object ends first), asked for in pieces."""
        parts, offset = [], start
        while offset < end:
            data, stop = self._request(offset, end)
            parts.append(data)
            offset += len(data)
            if offset < stop:
                break  # the object ended
        return b"".join(parts)

    def _object_size(self) -> int:
        def attempt(timeout: float) -> int:
            kwargs = {"timeout": timeout} if self._threaded else {}
            return self._fs.size(self._path, **kwargs)

        size = call(attempt, url=self._url, what="asking for the size", policy=self._policy,
                    secrets=self._secrets, busy_not_found=self._busy_not_found)
        if size is None:
            raise StorageError(f"{safe_url(self._url)}: the server does not tell the object's size")
        return size

    def _start_unsized(self) -> None:
        """Without a known size: fetch the first range, then ask for the size only if it was full."""
        first = self._fetch(0, self._chunk)
        self._next = len(first)
        self._size = len(first) if len(first) < self._chunk else self._object_size()
        self._pending.append((_done(lambda: first), len(first)))

    def _schedule(self) -> None:
        while len(self._pending) <= self._readahead and self._next < self._size:
            length = min(self._chunk, FIRST_CHUNK_SIZE) if self._next == self._first and self._threaded else self._chunk
            end = min(self._size, self._next + length)
            if self._threaded:
                future = _pool().submit(self._fetch, self._next, end)
            else:
                future = _done(self._fetch, self._next, end)
            self._pending.append((future, end - self._next))
            self._next = end

    def _refill(self) -> bool:
        if self._size is None:
            self._start_unsized()
        if not self._pending:
            self._schedule()
            if not self._pending:
                return False
        future, expected = self._pending.popleft()
        self._schedule()
        data = future.result()
        if len(data) < expected:
            raise StorageError(f"{safe_url(self._url)}: the object ends at byte {self._pos + len(data)}, "
                               f"expected {self._size} bytes")
        self._buf = memoryview(data)
        return bool(data)

    # -- io.RawIOBase ---------------------------------------------------------------------
    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed RangeReader")
        parts, want = [], size if size is not None and size >= 0 else None
        while want is None or want > 0:
            if not self._buf and not self._refill():
                break
            take = len(self._buf) if want is None else min(want, len(self._buf))
            parts.append(self._buf[:take])
            self._buf = self._buf[take:]
            self._pos += take
            if want is not None:
                want -= take
        return b"".join(parts)

    def close(self) -> None:
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        self._buf = memoryview(b"")
        super().close()
