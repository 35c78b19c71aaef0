"""What a ``StreamingDataset`` reads: the shard list of a converted dataset (from its manifest) or
of webdataset shards without one (counted by one scan, which also finds their schema and where
each sample starts; the result cached). The same cached scan gives a version 1 dataset's shards
what later versions record: where each sample starts (for random access) and how many tokens
they hold (for packing)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from braceexpand import braceexpand

from .. import storage
from ..errors import ShardError, SourceError, StorageError
from ..format.blocks import row_layout, token_layout
from ..format.fields import load_npy
from ..format.index import ShardIndex, index_name
from ..format.records import group_samples
from ..format.schema import Schema, infer_schema
from ..format.tar import entry_bytes, iter_members
from ..inspect import load_manifest
from ..storage.files import best_effort_write

log = logging.getLogger(__name__)
_COUNT_CACHE_VERSION = 3


@dataclass(frozen=True)
class ShardRef:
    """One shard to read: where it is, how it is named in messages, what it should hold, the stamp
    its headers carry (None: unchecked), and where its index is (a sidecar path, or offsets found
    by a scan). ``tokens``: the tokens of a token dataset's shard, when known (manifests of this
    version, or a scan). ``schema``: the shard's own schema, where it differs from its source's
    (the sources of a mix)."""

    path: str
    name: str
    samples: int
    size: int | None = None
    sha256: str | None = None
    stamp: str | None = None
    index_path: str | None = None
    index_sha256: str | None = None
    scanned: ShardIndex | None = field(default=None, repr=False)
    tokens: int | None = None
    schema: Schema | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Source:
    """A resolved source: its schema, its shards, the class names (ImageFolder datasets), the
    manifest (None for webdataset shards) and a digest that identifies its content."""

    schema: Schema
    shards: tuple[ShardRef, ...]
    classes: tuple[str, ...] | None = None
    manifest: Any = None
    digest: str = ""

    @property
    def kind(self) -> str:
        return self.schema.kind

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def counts(self) -> list[int]:
        return [s.samples for s in self.shards]


def resolve(source: str | os.PathLike | Sequence[str | os.PathLike], *,
            storage_options: dict[str, Any] | None = None, cache_dir: str | os.PathLike | None = None) -> Source:
    """Resolve a dataset directory/URL (with ``manifest.json``), a list of tar paths or a brace
    pattern of tar paths (``shards/train-{000000..000009}.tar``).

    Raises:
        ManifestError: the directory holds no valid manifest.
        SourceError: an empty shard list, or a webdataset shard that cannot be read or counted.
        TypeError: a list of datasets (mix them with ``shardkit.Mix``) or another object.
    """
    if isinstance(source, (list, tuple)):
        paths = [os.fspath(p) for p in source]
        return _webdataset(paths, storage_options, cache_dir)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"a source is a directory, URL, brace pattern or list of shards, not {type(source).__name__}")
    path = os.fspath(source)
    if "{" in path or path.endswith(".tar"):
        return _webdataset(list(braceexpand(path)), storage_options, cache_dir)
    manifest = load_manifest(path, storage_options)
    shards = tuple(ShardRef(storage.join(path, s.name), s.name, s.samples, s.bytes, s.sha256, s.stamp,
                            storage.join(path, s.index_name) if s.index is not None else None,
                            s.index["sha256"] if s.index is not None else None, tokens=s.tokens)
                   for s in manifest.shards)
    classes = tuple(manifest.classes) if manifest.classes is not None else None
    return Source(manifest.schema, shards, classes, manifest, manifest.digest)


def load_index(ref: ShardRef, storage_options: dict[str, Any] | None) -> ShardIndex | None:
    """The shard's index: from its sidecar (checked against the manifest's sha256), from the
    scan that counted it, or None when it has neither (the reader then reads from the start).

    Raises:
        ShardError: the sidecar is missing, damaged or disagrees with its shard.
    """
    if ref.scanned is not None:
        return ref.scanned
    if ref.index_path is None:
        return None
    try:
        data = storage.read_bytes(ref.index_path, storage_options)
    except (OSError, StorageError) as err:
        raise ShardError(f"cannot read its index {index_name(ref.name)}: {err}", shard=ref.name) from None
    return ShardIndex.from_bytes(data, ref.name, ref.size, ref.samples, ref.index_sha256)


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/shardkit``, or ``~/.cache/shardkit``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shardkit"


def _webdataset(paths: list[str], storage_options: dict[str, Any] | None,
                cache_dir: str | os.PathLike | None) -> Source:
    if not paths:
        raise SourceError("no shards given: the list (or brace pattern) is empty")
    not_tar = [p for p in paths if not p.endswith(".tar") and "://" not in p and os.path.isdir(p)]
    if not_tar:
        raise TypeError(f"{not_tar[0]} is a directory: StreamingDataset takes one dataset (a directory or URL "
                        f"with a manifest) or a list of .tar shards; to read several datasets together, "
                        f"use shardkit.Mix({{'a': StreamingDataset(...), 'b': StreamingDataset(...)}})")
    counts_dir = _counts_dir(cache_dir)
    scans = [_count(path, storage_options, counts_dir) for path in paths]
    schema = infer_schema((frozenset(g) for scan in scans for g in scan["groups"]),
                          blocks=all(scan["blocks"] is not None for scan in scans))
    indexes = [_index(scan, schema) for scan in scans]
    shards = tuple(ShardRef(path, scan["name"], index.samples, scan["size"], None, None, None, None, index,
                            sum(scan["tokens"]) if scan.get("tokens") is not None else None)
                   for path, scan, index in zip(paths, scans, indexes))
    digest = hashlib.sha256("\n".join(f"{s['name']}\0{s['size']}\0{s['stamp']}" for s in scans).encode()).hexdigest()
    return Source(schema, shards, None, None, digest)


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


def _count(path: str, storage_options: dict[str, Any] | None, counts_dir: Path) -> dict[str, Any]:
    """What one scan of a webdataset shard tells (samples, where each starts, the field sets),
    from the cache when the shard's size and stamp match."""
    size, stamp = _stat(path, storage_options)
    name = storage.safe_url(path) if storage.is_url(path) else path
    key = hashlib.sha256(f"{os.path.abspath(path) if not storage.is_url(path) else name}\0{size}\0{stamp}".encode()).hexdigest()
    cached = counts_dir / f"{key}.json"
    try:
        scan = json.loads(cached.read_text())
        if scan.get("version") != _COUNT_CACHE_VERSION:
            raise ValueError("an older cache entry")
        list(scan["offsets"]), list(scan["groups"])
    except (OSError, ValueError, KeyError, TypeError):
        scan = _scan(path, name, size, storage_options)
        scan.update(version=_COUNT_CACHE_VERSION, path=name, size=size, stamp=stamp)
        if not best_effort_write(cached, json.dumps(scan)):
            log.warning("cannot cache the sample count in %s", cached)
    scan["name"] = name
    return scan


def _scan(path: str, name: str, size: int, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Where each group (run of members sharing a key) of a shard starts and where the last one
    ends, the distinct field sets the groups have, and each group's sample count if they are all
    blocks as shardkit writes them. Every sample counted is one the reader yields."""
    offsets, field_sets, block_counts, tokens, end = [], {}, [], [], 0

    def tracked(members):
        nonlocal end
        for member in members:
            end = member.offset + entry_bytes(len(member.data))
            yield member

    try:
        with storage.open_shard(path, storage_options=storage_options, size=size) as stream:
            for group in group_samples(tracked(iter_members(stream, name, size=size))):
                offsets.append(group.offset)
                field_sets.setdefault(tuple(sorted(group.fields)), None)
                if block_counts is not None:
                    block_counts = _block_count(group, name, block_counts)
                if tokens is not None:
                    tokens = _token_count(group, name, tokens)
    except ShardError as err:
        raise SourceError(f"cannot count the samples of webdataset shard {name}: {err}") from None
    except (OSError, StorageError) as err:
        raise SourceError(f"cannot read shard {name}: {err}") from None
    log.info("counted %d groups in %s", len(offsets), name)
    return {"offsets": offsets + [end], "groups": [list(g) for g in field_sets], "blocks": block_counts,
            "tokens": tokens}


def _block_count(group, name: str, counts: list[int]) -> list[int] | None:
    """``counts`` plus the group's sample count if it is a block, else None (not every group is)."""
    for layout in (token_layout(None), row_layout(None)):
        if {c.member for c in layout.columns if not c.optional} <= group.fields.keys():
            return counts + [layout.count(group.fields, name, group.key)]
    return None


def _token_count(group, name: str, counts: list[int]) -> list[int] | None:
    """``counts`` plus the tokens of the group if it is a token block (the sum of its lengths
    member), else None (not every group is)."""
    column = token_layout(None).columns[0]
    if column.lengths not in group.fields or column.member not in group.fields:
        return None
    lengths = load_npy(group.fields[column.lengths], name, f"{group.key}.{column.lengths}", kinds="u", ndim=1)
    return counts + [int(lengths.sum(dtype=np.int64))]


def _index(scan: dict[str, Any], schema: Schema) -> ShardIndex:
    offsets = scan["offsets"]
    per_group = scan["blocks"] if schema.blocks is not None else [1] * (len(offsets) - 1)
    return ShardIndex(tuple(offsets), tuple(itertools.accumulate(per_group, initial=0)))


# -- what version 1 manifests lack, found by the webdataset scan (cached) -------------------------
def _counts_dir(cache_dir: str | os.PathLike | None) -> Path:
    # a dot name: the shard cache in ``cache_dir`` passes over dot entries when it evicts
    return (Path(cache_dir) if cache_dir is not None else default_cache_root()) / ".wds-counts"


def scanned(ref: ShardRef, storage_options: dict[str, Any] | None,
            cache_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The scan of one shard (where each group starts, samples and tokens per group), from the
    cache when the shard's size and stamp match.

    Raises:
        SourceError: the shard cannot be read, or holds damaged data.
    """
    return _count(ref.path, storage_options, _counts_dir(cache_dir))


def shard_index(ref: ShardRef, schema: Schema, storage_options: dict[str, Any] | None,
                cache_dir: str | os.PathLike | None) -> ShardIndex:
    """Where each sample of the shard starts: its sidecar, the scan that counted it, or (a version
    1 dataset) one scan of the shard now, cached.

    Raises:
        ShardError: a sidecar damaged or disagreeing with its shard, or a scan that counts other
            than the manifest's samples.
        SourceError: the shard cannot be read.
    """
    index = load_index(ref, storage_options)
    if index is not None:
        return index
    index = _index(scanned(ref, storage_options, cache_dir), schema)
    if index.samples != ref.samples:
        raise ShardError(f"a scan counts {index.samples} samples, the manifest says {ref.samples}", shard=ref.name)
    return index


def token_counts(source: Source, storage_options: dict[str, Any] | None,
                 cache_dir: str | os.PathLike | None) -> tuple[list[int], Source]:
    """The tokens each shard of a token dataset holds, and the source with what a scan found: the
    manifest's counts (this version), else one scan of each shard lacking them (version 1
    datasets), cached; the scan's index then goes with a shard that had none, so the reader seeks
    in it and knows each block's size (damage then shifts no sample).

    Raises:
        SourceError: a shard without token blocks, or one that cannot be read.
    """
    out, refs = [], []
    for ref in source.shards:
        if ref.tokens is None:
            scan = scanned(ref, storage_options, cache_dir)
            if scan.get("tokens") is None:
                raise SourceError(f"shard {ref.name} holds no token blocks: only token datasets can be packed")
            tokens = sum(scan["tokens"])
            index = _index(scan, ref.schema or source.schema)
            if ref.index_path is None and ref.scanned is None and index.samples == ref.samples:
                ref = dataclasses.replace(ref, scanned=index)
            ref = dataclasses.replace(ref, tokens=tokens)
        out.append(ref.tokens)
        refs.append(ref)
    return out, dataclasses.replace(source, shards=tuple(refs))
