"""Where bytes come from and go to: local paths and fsspec URLs (s3://, gs://, https://, ...).

Every file shardkit reads or writes goes through this package, so retries (:mod:`.retry`),
range resumption and read-ahead (:mod:`.remote`), the local shard cache (:mod:`.cache`) and the
rule that credentials never reach a message (:mod:`.redact`) live in one place. Local paths
take the plain ``open``/``os`` route; URLs go through fsspec, each call retried.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, NamedTuple, TypeVar

from fsspec.asyn import AsyncFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from ..errors import MissingExtraError, ShardError, StorageError
from . import fork as _fork  # noqa: F401 - makes fsspec's event loop safe in forked DataLoader workers
from . import retry as _retry
from .cache import ShardCache
from .files import HashingReader
from .redact import safe_url, secrets_of
from .remote import RangeReader
from .retry import RetryPolicy, call

__all__ = ["FileEntry", "NotRegularFileError", "RetryPolicy", "ShardCache", "TooLargeError", "exists", "filesystem",
           "info", "is_url", "join", "list_files", "ls", "open_input", "open_shard", "publish", "put_file",
           "read_bytes", "read_range", "remove", "safe_url", "sha256_of", "size", "sizes", "walk_files"]

T = TypeVar("T")
Options = dict[str, Any] | None


def is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def join(base: str | os.PathLike, name: str) -> str:
    base = os.fspath(base)
    return f"{base.rstrip('/')}/{name}" if is_url(base) else os.path.join(base, name)


#: shardkit's extras that bring a protocol's fsspec implementation.
_EXTRAS = {"s3": "s3", "s3a": "s3", "http": "http", "https": "http"}


def filesystem(path: str | os.PathLike, storage_options: Options = None):
    """``(fs, path_in_fs)`` for a local path or URL.

    fsspec keeps one instance per process (and thread) for the same options, so a DataLoader
    worker forked after the main process used a URL gets its own, never the parent's.

    Raises:
        MissingExtraError: the protocol's implementation (s3fs, aiohttp, gcsfs, ...) is not
            installed; the message says what to install.
        StorageError: a protocol fsspec does not know (``foo://``).
    """
    try:
        return url_to_fs(os.fspath(path), **(storage_options or {}))
    except ValueError as err:
        if "Protocol not known" not in str(err):
            raise
        protocol = os.fspath(path).split("://", 1)[0]
        raise StorageError(f"{safe_url(path)}: unknown protocol {protocol!r:.40}: use a local path or a URL "
                           f"such as s3://, gs://, https://, file://") from None
    except ImportError as err:
        protocol = os.fspath(path).split("://", 1)[0].lower()
        extra = _EXTRAS.get(protocol)
        hint = f"pip install 'shardkit[{extra}]'" if extra else "install the package fsspec names"
        raise MissingExtraError(f"{safe_url(path)}: {protocol}:// URLs need an optional "
                                f"package ({err}): {hint}") from None


def _remote(path: str | os.PathLike, storage_options: Options):
    """``(fs, path_in_fs, url)`` for a URL that fsspec does not map to the local disk, else None."""
    if not is_url(path):
        return None
    fs, fspath = filesystem(path, storage_options)
    return None if isinstance(fs, LocalFileSystem) else (fs, fspath, os.fspath(path))


def _local(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path.split("://", 1)[1] if path.startswith("file://") else path


def _is_http(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("http", "https")


def _policy(retry: RetryPolicy | None) -> RetryPolicy:
    return retry or _retry.DEFAULT_POLICY  # looked up at each call, so tests may shorten it


def _run(remote, what: str, op: Callable[..., T], storage_options: Options, retry: RetryPolicy | None,
         *, busy_not_found: bool | None = None, **kwargs) -> T:
    """``op(fs, path, **timeout)`` retried under ``retry`` (the timeout only for async filesystems)."""
    fs, fspath, url = remote
    threaded = isinstance(fs, AsyncFileSystem)
    return call(lambda timeout: op(fs, fspath, **({"timeout": timeout} if threaded else {})),
                url=url, what=what, policy=_policy(retry), secrets=secrets_of(storage_options),
                busy_not_found=_is_http(fs) if busy_not_found is None else busy_not_found, **kwargs)


# -- reading ----------------------------------------------------------------------------
class NotRegularFileError(OSError):
    """A local path that is a directory, FIFO, device or socket where a file is expected:
    reading it could block forever (a FIFO) or never end (``/dev/zero``). ``what`` says which."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path} is {what}, not a regular file")
        self.what = what


class TooLargeError(OSError):
    """A file larger than the caller's limit (:func:`read_bytes`)."""


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _open_local(path: str | os.PathLike) -> IO[bytes]:
    """A local regular file, opened without blocking (O_NONBLOCK: a FIFO answers at once) and
    checked with fstat on the open descriptor, so what is checked is what is read.

    Raises:
        NotRegularFileError: a directory, FIFO, device or socket (links are followed).
        OSError: it cannot be opened.
    """
    def opener(name, flags):
        fd = os.open(name, flags | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFileError(os.fsdecode(path), _file_type(mode))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return open(_local(path), "rb", buffering=1 << 20, opener=opener)


def _reader(remote, storage_options: Options, retry: RetryPolicy | None, size: int | None,
            offset: int = 0) -> RangeReader:
    fs, fspath, url = remote
    return RangeReader(fs, fspath, url, size=size, start=offset, policy=_policy(retry),
                       secrets=tuple(secrets_of(storage_options)), busy_not_found=_is_http(fs))


def open_input(path: str | os.PathLike, storage_options: Options = None, *,
               retry: RetryPolicy | None = None) -> IO[bytes]:
    """A buffered binary stream over a local regular file or URL (the caller closes it).

    Remote reads are retried and resumed (see :func:`open_shard`).

    Raises:
        NotRegularFileError: (an ``OSError``) a local path that is no regular file.
        OSError: a local file that cannot be opened.
        StorageError: a URL that is missing, refused, or failing after its retries.
    """
    remote = _remote(path, storage_options)
    if remote is None:
        return _open_local(path)
    return io.BufferedReader(_reader(remote, storage_options, retry, None), 1 << 20)


def read_bytes(path: str | os.PathLike, storage_options: Options = None, *,
               retry: RetryPolicy | None = None, limit: int | None = None) -> bytes:
    """The whole content of a local regular file or URL (a manifest), with the same retries as
    shards; at most ``limit`` bytes.

    Raises:
        TooLargeError: (an ``OSError``) more than ``limit`` bytes; no more than that is read.
        NotRegularFileError, OSError, StorageError: as :func:`open_input`.
    """
    with open_input(path, storage_options, retry=retry) as f:
        if limit is None:
            return f.read()
        # a local file tells its size, so nothing need be read to refuse it; a stream is cut at the limit
        local = _remote(path, storage_options) is None
        data = b"" if local and os.fstat(f.fileno()).st_size > limit else f.read(limit + 1)
        if len(data) > limit or (local and not data and os.fstat(f.fileno()).st_size > limit):
            raise TooLargeError(f"{safe_url(os.fspath(path))} holds more than {limit} bytes, the most shardkit "
                                f"reads of it")
    return data


def read_range(path: str | os.PathLike, start: int, end: int, storage_options: Options = None, *,
               retry: RetryPolicy | None = None) -> bytes:
    """Bytes ``start..end`` of a local regular file or URL: one ``pread`` locally, one request
    remotely (fsspec's ``cat_file`` with a byte range), retried as every remote call is.

    Raises:
        FileNotFoundError: a local file that does not exist.
        NotRegularFileError, OSError: a local path that is no regular file, or cannot be read.
        StorageError: a URL missing, refused, or failing after its retries.
    """
    if not 0 <= start <= end:
        raise ValueError(f"a byte range is 0 <= start <= end, not {start}..{end}")
    remote = _remote(path, storage_options)
    if remote is None:
        # a bare descriptor and one pread, no buffered file: random reads pay only for what they ask
        fd = os.open(_local(path), os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFileError(os.fsdecode(path), _file_type(mode))
            return os.pread(fd, end - start, start)
        finally:
            os.close(fd)
    return _run(remote, f"reading bytes {start}..{end}",
                lambda fs, p, **kw: fs.cat_file(p, start=start, end=end, **kw), storage_options, retry)


def open_shard(path: str | os.PathLike, *, storage_options: Options = None,
               cache_dir: str | os.PathLike | None = None, cache_limit: int | None = None,
               size: int | None = None, sha256: str | None = None, offset: int = 0,
               retry: RetryPolicy | None = None) -> IO[bytes]:
    """A binary stream over one shard, local or remote, read sequentially from byte ``offset``
    (a seek locally, ranges from there remotely; through the cache, the bytes before ``offset``
    are read too, since the cached copy is filled from the start).

    For a URL, the shard is fetched as consecutive byte ranges, a few in flight ahead of the
    reader; a dropped connection, a timeout, a 5xx or a throttling answer is retried with backoff
    from the first byte of the request that failed, so every byte arrives exactly once. ``size``
    and ``sha256`` (from the manifest) save a request and check the cached copy. ``cache_dir`` keeps a
    local copy of each remote shard, shared by all processes, at most ``cache_limit`` bytes
    (least recently used evicted); local shards are never cached.

    Raises:
        OSError: a local shard that cannot be opened.
        StorageError: (from reads too) a URL missing, refused, or failing after ``retry``'s limits.
        ShardError: a local shard that is no regular file (a directory, FIFO or device: it would
            hang or never end), or (at the end of a cached download) bytes that disagree with
            ``size``/``sha256``.
    """
    remote = _remote(path, storage_options)
    if remote is None:
        try:
            f = _open_local(path)
        except NotRegularFileError as err:
            raise ShardError(f"is {err.what}, not a regular file: a shard must be a file",
                             shard=os.fsdecode(path)) from None
        if offset:
            f.seek(offset)
        return f
    if cache_dir is None:
        return _reader(remote, storage_options, retry, size, offset)
    stream = ShardCache(cache_dir, cache_limit).open(remote[2], lambda: _reader(remote, storage_options, retry, size),
                                                     size=size, sha256=sha256)
    _skip(stream, offset)
    return stream


def _skip(stream: IO[bytes], count: int) -> None:
    while count > 0:
        got = len(stream.read(min(count, 4 << 20)))
        if not got:
            return
        count -= got


def sha256_of(path: str | os.PathLike, storage_options: Options = None, *,
              retry: RetryPolicy | None = None) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a local file or URL, read as a stream (to check an uploaded shard)."""
    with open_shard(path, storage_options=storage_options, retry=retry) as f:
        reader = HashingReader(f)
        reader.drain()
    return reader.size, reader.hexdigest()


# -- metadata -----------------------------------------------------------------------------
def info(path: str | os.PathLike, storage_options: Options = None, *,
         retry: RetryPolicy | None = None) -> dict[str, Any]:
    """What the store says about a file or object: at least ``size``, plus its own fields (``mtime``,
    ``ETag``, ``LastModified``, ...), fetched with retries.

    Raises:
        StorageError: not found, access refused, or failing after the retries. (Local: OSError.)
    """
    remote = _remote(path, storage_options)
    if remote is None:
        st = os.stat(_local(path))
        return {"name": _local(path), "size": st.st_size, "mtime": st.st_mtime, "type": "file"}
    return _run(remote, "asking for the object's details", lambda fs, p, **kw: fs.info(p, **kw),
                storage_options, retry)


def size(path: str | os.PathLike, storage_options: Options = None, *,
         retry: RetryPolicy | None = None) -> int | None:
    """The size in bytes of a file or object, None if there is none.

    Raises:
        StorageError: access refused, or failing after the retries.
    """
    remote = _remote(path, storage_options)
    if remote is None:
        try:
            return os.stat(_local(path)).st_size
        except FileNotFoundError:
            return None
    return _run(remote, "asking for the size", lambda fs, p, **kw: fs.info(p, **kw)["size"],
                storage_options, retry, missing=None)


def sizes(paths: list[str | os.PathLike], storage_options: Options = None, *,
          retry: RetryPolicy | None = None) -> list[int | None]:
    """:func:`size` of each path, asked concurrently (16 at a time: a shard list's check costs one
    round trip per 16 shards, not one per shard)."""
    remotes = [_remote(p, storage_options) for p in paths]  # in this thread: one filesystem for all

    def one(pair):
        path, remote = pair
        if remote is None:
            return size(path, storage_options)
        return _run(remote, "asking for the size", lambda fs, p, **kw: fs.info(p, **kw)["size"],
                    storage_options, retry, missing=None)

    if not any(remotes):
        return [one(pair) for pair in zip(paths, remotes)]
    with ThreadPoolExecutor(max_workers=min(16, len(paths)), thread_name_prefix="shardkit-size") as pool:
        return list(pool.map(one, zip(paths, remotes)))


def exists(path: str | os.PathLike, storage_options: Options = None, *,
           retry: RetryPolicy | None = None) -> bool:
    """Whether a file or object exists (see :func:`size`)."""
    remote = _remote(path, storage_options)
    if remote is None:
        return os.path.exists(_local(path))
    return size(path, storage_options, retry=retry) is not None


def ls(path: str | os.PathLike, storage_options: Options = None, *,
       retry: RetryPolicy | None = None) -> list[str]:
    """The sorted names (not paths) directly under a directory or prefix; [] if it does not exist."""
    remote = _remote(path, storage_options)
    if remote is None:
        try:
            return sorted(os.listdir(_local(path)))
        except FileNotFoundError:
            return []

    def listing(fs, p, **kw):
        fs.invalidate_cache(p)  # see what other processes wrote since
        try:
            return fs.ls(p, detail=False, **kw)
        except FileNotFoundError:
            return []

    return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in _run(remote, "listing", listing,
                                                                       storage_options, retry))


class FileEntry(NamedTuple):
    """One file of a listing: path relative to the listed directory (``/`` separators), size, and
    a stamp that changes when the file does (its mtime in ns locally; the store's ETag or time)."""

    path: str
    size: int
    stamp: str


#: The fields of a store's listing that change with an object's content, most telling first.
_STAMP_FIELDS = ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "mtime", "updated", "created")


def list_files(path: str | os.PathLike, storage_options: Options = None, *,
               retry: RetryPolicy | None = None) -> list[FileEntry]:
    """Every file under a directory or prefix, recursively, sorted by path (links not followed).

    Raises:
        StorageError: the listing failed after its retries or was refused.
    """
    remote = _remote(path, storage_options)
    if remote is None:
        root = _local(path)
        found = []
        for top, _dirs, files in os.walk(root):
            for name in files:
                full = os.path.join(top, name)
                st = os.stat(full)
                found.append(FileEntry(os.path.relpath(full, root).replace(os.sep, "/"), st.st_size,
                                       str(st.st_mtime_ns)))
        return sorted(found)

    def find(fs, p, **kw):
        fs.invalidate_cache(p)
        return fs.find(p, detail=True, **kw)

    fs, root, _ = remote
    root = fs._strip_protocol(root).rstrip("/")
    found = []
    for name, info in _run(remote, "listing", find, storage_options, retry).items():
        name = fs._strip_protocol(name)
        if info.get("type", "file") == "file" and name.startswith(root + "/"):
            stamp = next((str(info[k]) for k in _STAMP_FIELDS if info.get(k) is not None), "")
            found.append(FileEntry(name[len(root) + 1:], int(info.get("size") or 0), stamp))
    return sorted(found)


def walk_files(path: str | os.PathLike, storage_options: Options = None, *,
               retry: RetryPolicy | None = None) -> list[tuple[str, int]]:
    """Every file under a directory or prefix, recursively: ``(relative path with '/', size)``, sorted.

    Raises:
        StorageError: the listing failed after its retries or was refused.
    """
    return [(entry.path, entry.size) for entry in list_files(path, storage_options, retry=retry)]


# -- writing ------------------------------------------------------------------------------
def _upload_policy(policy: RetryPolicy, nbytes: int) -> RetryPolicy:
    """A large upload needs longer than one read: allow at least 1 MB/s on top of the usual limits."""
    extra = nbytes / (1 << 20)
    return dataclasses.replace(policy, timeout=policy.timeout + extra, deadline=policy.deadline + extra)


def put_file(local_path: str | os.PathLike, url: str | os.PathLike, storage_options: Options = None, *,
             retry: RetryPolicy | None = None) -> None:
    """Upload a local file to ``url`` (s3fs uploads files of 100 MiB and more in 50 MiB parts).

    An object store shows the object only once it is complete. Raises StorageError.
    """
    remote = _remote(url, storage_options)
    if remote is None:
        target = _local(url)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        shutil.copyfile(local_path, target)
        return
    policy = _upload_policy(_policy(retry), os.path.getsize(local_path))
    _run(remote, "uploading", lambda fs, p, **kw: fs.put_file(os.fspath(local_path), p, **kw),
         storage_options, policy, busy_not_found=False)


def publish(local_tmp: str | os.PathLike, dest: str | os.PathLike, storage_options: Options = None, *,
            retry: RetryPolicy | None = None) -> None:
    """Make a finished local temporary file appear, whole, at ``dest`` (a local path or URL).

    Local: an atomic rename. Remote: an upload (readers never see part of it), then the temporary
    file is deleted. Raises StorageError (remote) or OSError (local).
    """
    remote = _remote(dest, storage_options)
    if remote is None:
        os.replace(local_tmp, _local(dest))
        return
    put_file(local_tmp, dest, storage_options, retry=retry)
    os.remove(local_tmp)


def remove(path: str | os.PathLike, storage_options: Options = None, *,
           retry: RetryPolicy | None = None) -> None:
    """Delete a file or object; one that is already gone is fine."""
    remote = _remote(path, storage_options)
    if remote is None:
        try:
            os.remove(_local(path))
        except FileNotFoundError:
            pass
        return

    def rm(fs, p, **kw):
        try:
            fs.rm_file(p, **kw)
        except FileNotFoundError:
            pass

    _run(remote, "deleting", rm, storage_options, retry, busy_not_found=False)
