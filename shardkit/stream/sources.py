"""What a ``StreamingDataset`` reads: the shard list of a converted dataset (from its manifest) or
of webdataset shards without one (counted by one scan, the counts cached)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from .. import storage
from ..errors import ShardError, SourceError, StorageError
from ..format.records import split_name
from ..format.tar import iter_members
from ..inspect import load_manifest

log = logging.getLogger(__name__)

#: Image member extensions accepted in webdataset shards (the same safe decoders as ours).
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ShardRef:
    """One shard to read: where it is, how it is named in messages, and what it should hold."""

    path: str
    name: str
    samples: int
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """A resolved source: ``kind`` ("images" or "sequences"), the shards, and for images the class
    names (None for webdataset shards). ``labelled``: every image sample carries a ``.cls``."""

    kind: str
    shards: tuple[ShardRef, ...]
    classes: tuple[str, ...] | None = None
    labelled: bool = True
    manifest: Any = None  # the Manifest, when there is one

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def resolve(source: str | os.PathLike | Sequence[str | os.PathLike], *,
            storage_options: dict[str, Any] | None = None, cache_dir: str | os.PathLike | None = None) -> Source:
    """Resolve a dataset directory/URL (with ``manifest.json``), a list of tar paths or a brace
    pattern of tar paths (``shards/train-{000000..000009}.tar``).

    Raises:
        ManifestError: the directory holds no valid manifest.
        SourceError: an empty shard list, or a webdataset shard that cannot be read or counted.
    """
    if isinstance(source, (list, tuple)):
        return _webdataset([os.fspath(p) for p in source], storage_options, cache_dir)
    path = os.fspath(source)
    if "{" in path or path.endswith(".tar"):
        return _webdataset(list(braceexpand(path)), storage_options, cache_dir)
    manifest = load_manifest(path, storage_options)
    shards = tuple(ShardRef(storage.join(path, s.name), s.name, s.samples, s.bytes, s.sha256)
                   for s in manifest.shards)
    classes = tuple(manifest.classes) if manifest.classes is not None else None
    return Source(manifest.kind, shards, classes, True, manifest)


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/shardkit``, or ``~/.cache/shardkit``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shardkit"


def _webdataset(paths: list[str], storage_options: dict[str, Any] | None,
                cache_dir: str | os.PathLike | None) -> Source:
    if not paths:
        raise SourceError("no shards given: the list (or brace pattern) is empty")
    # a dot name: the shard cache in ``cache_dir`` passes over dot entries when it evicts
    counts_dir = (Path(cache_dir) if cache_dir is not None else default_cache_root()) / ".wds-counts"
    shards = tuple(_count(path, storage_options, counts_dir) for path in paths)
    return Source("images", shards, None, False)


def _stat(path: str, storage_options: dict[str, Any] | None) -> tuple[int, str]:
    """``(size, a version stamp)`` of a shard: its mtime locally, whatever the store offers remotely
    (asked with ``storage``'s retries; the message of a failure carries no credentials)."""
    try:
        info = storage.info(path, storage_options)
    except (OSError, StorageError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise SourceError(f"cannot read shard {storage.safe_url(path)}: {reason}") from None
    stamp = next((str(info[k]) for k in ("mtime", "LastModified", "last_modified", "ETag", "etag") if k in info), "")
    return int(info["size"]), stamp


def _count(path: str, storage_options: dict[str, Any] | None, counts_dir: Path) -> ShardRef:
    """The sample count of one webdataset shard, from the cache when its size and stamp match."""
    size, stamp = _stat(path, storage_options)
    name = storage.safe_url(path) if storage.is_url(path) else path
    key = hashlib.sha256(f"{os.path.abspath(path) if not storage.is_url(path) else name}\0{size}\0{stamp}".encode()).hexdigest()
    cached = counts_dir / f"{key}.json"
    try:
        samples = int(json.loads(cached.read_text())["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        samples = _scan(path, name, size, storage_options)
        _write_atomically(cached, json.dumps({"path": name, "size": size, "stamp": stamp, "samples": samples}))
    return ShardRef(path, name, samples, size, None)


def _scan(path: str, name: str, size: int, storage_options: dict[str, Any] | None) -> int:
    """Samples (runs of members sharing a key) in a shard. Every sample is one the reader yields."""
    keys, last = 0, None
    try:
        with storage.open_shard(path, storage_options=storage_options, size=size) as stream:
            for member in iter_members(stream, name, size=size):
                key = split_name(member.name)[0]
                if key != last:
                    keys, last = keys + 1, key
    except ShardError as err:
        raise SourceError(f"cannot count the samples of webdataset shard {name}: {err}") from None
    except (OSError, StorageError) as err:
        raise SourceError(f"cannot read shard {name}: {err}") from None
    log.info("counted %d samples in %s", keys, name)
    return keys


def _write_atomically(path: Path, text: str) -> None:
    """Best effort: a cache that cannot be written only means counting again next time."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot cache the sample count in %s: %s", path, err)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
