"""webdataset tars as input (``old/shard-{000000..000099}.tar``, a list, a glob or a directory of
``.tar``): every sample with all its fields, shuffled globally, validated, re-cut into shards.

Pass 1 (:class:`TarScan`, a task per tar) reads each tar with the reader the stream uses
(``format.tar.iter_members`` → ``format.records.group_samples``), passing over damage as a skip-mode
reader does: a damaged member is reported with its shard and member, and so is the sample it
belonged to; the rest is kept, each sample known by the byte offset of its first member. Pass 2
(:class:`TarChunk`) reads each sample again at its offset, checks that every field decodes by its
codec (images fully, with PIL, and of the format their extension names) and stores its members'
bytes unchanged under the sample's new key. The schema is the one ``StreamingDataset`` infers for
the same tars, so the converted dataset yields what the tars did.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from braceexpand import braceexpand

from ... import storage
from ...errors import ShardError, SourceError, StorageError
from ...format.fields import codec_of, extension, load_npy, sniff_image
from ...format.manifest import Manifest
from ...format.records import group_samples, sample_key, split_name
from ...format.schema import infer_schema
from ...format.tar import entry_bytes, iter_members
from ..images import SkipImage, encode_image
from ..names import relative, source_path
from ..output import ChunkResult
from ..plan import Plan, cut, sample_order
from ..sources import TAR_FORMATS, DataFile, DataSource, file_stamp, list_data_files, skip_entry
from .base import InputKind, Listed, Request, all_skipped, refuse_dst_inside, shard_infos

#: A chunk holds at most this many samples, or this many bytes.
CHUNK_SAMPLES = 64
CHUNK_BYTES = 16 << 20
#: Members of shardkit's token and row blocks: such tars are converted from their source instead.
_BLOCK_MEMBERS = ({"tokens.npy", "lengths.npy"}, {"features.npy", "labels.npy"})


@dataclass
class Scanned:
    """One tar's samples: their first member's offset and their bytes; the distinct field sets
    (``fields[i]`` of sample ``i`` indexes them); the damage met."""

    offsets: np.ndarray
    nbytes: np.ndarray
    fields: np.ndarray
    field_sets: list[tuple[str, ...]]
    skipped: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TarScan:
    """Pass 1 over one tar (see the module docstring)."""

    path: str
    name: str
    size: int
    storage_options: dict[str, Any] | None = None

    @property
    def nbytes(self) -> int:
        return self.size

    def __call__(self) -> Scanned:
        damage: dict[tuple, ShardError] = {}  # each place once (a resync may meet it twice)
        groups, end = [], 0

        def tracked(members):
            nonlocal end
            for member in members:
                end = member.offset + entry_bytes(len(member.data))
                yield member

        def damaged(err: ShardError) -> None:
            damage.setdefault((err.member, err.offset, str(err)), err)

        try:
            with storage.open_shard(self.path, storage_options=self.storage_options, size=self.size) as stream:
                groups = list((g.offset, g.key, tuple(g.fields), g.duplicate) for g in group_samples(
                    tracked(iter_members(stream, self.name, size=self.size, on_damage=damaged))))
        except (OSError, StorageError) as err:
            raise SourceError(f"cannot read the tar {self.name}: {err}") from None
        ends = [g[0] for g in groups[1:]] + [end]
        sets: dict[tuple, int] = {}
        offsets, sizes, fields, skipped = [], [], [], []
        for (offset, key, names, duplicate), stop in zip(groups, ends):
            # a sample is damaged when a member of it is, or damage lies between its members
            bad = [d for d in damage.values() if (d.member and split_name(d.member)[0] == key)
                   or (d.offset is not None and offset <= d.offset < stop)]
            if duplicate or bad:
                why = f"duplicate member {duplicate!r}" if duplicate else f"a member of the sample is damaged ({bad[0]})"
                skipped.append(skip_entry(self.name, why, member=key))
                continue
            offsets.append(offset)
            sizes.append(stop - offset)
            fields.append(sets.setdefault(names, len(sets)))
        for d in damage.values():
            skipped.append(skip_entry(self.name, str(d), member=d.member or (f"byte {d.offset}" if d.offset is not None
                                                                              else None)))
        return Scanned(np.array(offsets, np.int64), np.array(sizes, np.int64), np.array(fields, np.int64),
                       list(sets), skipped)


@dataclass(frozen=True)
class Samples:
    """Pass 1's result: per kept sample its tar, offset and bytes; the tars; the schema."""

    tar: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray
    tars: tuple[tuple[str, str, int], ...]  # (path, recorded name, size)
    schema: Any
    storage_options: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.tar)


class WebdatasetKind(InputKind):
    name = "webdataset"
    reads = "no .tar file"
    whole_shards = True
    takes_lists = True

    def check(self, src, dst, opts) -> None:
        if isinstance(src, str) and os.path.isdir(src):
            refuse_dst_inside(src, dst, "directory of tars")
        if opts.resize is not None:
            raise SourceError("--resize does not apply to webdataset tars: re-sharding keeps every member's bytes "
                              "(it applies to ImageFolder trees and tables)")

    def list(self, src, request: Request) -> Listed:
        if isinstance(src, str) and not ("{" in src and not os.path.exists(src)):
            if storage.is_url(src) and not src.endswith(".tar"):
                files = request.remote_files if request.remote_files is not None else \
                    storage.list_files(src, request.storage_options)
                paths = [storage.join(src, f.path) for f in files if f.path.endswith(".tar")]
                source = _listed_paths(paths, request, src)
            elif storage.is_url(src):
                source = _listed_paths([src], request)
            else:
                source = list_data_files(src, TAR_FORMATS, "webdataset", checksum=request.checksum)
        else:
            paths = list(braceexpand(src)) if isinstance(src, str) else list(src)
            not_tar = [p for p in paths if not p.endswith(".tar")]
            if not_tar:
                raise SourceError(f"{not_tar[0]}: webdataset shards must end in .tar")
            source = _listed_paths(paths, request)
        return Listed(source.root, source.listing(), data=(source, request.storage_options),
                      skipped=source.skipped, ignored=source.ignored)

    def scan_tasks(self, listed, opts, workers, scratch):
        source, storage_options = listed.data
        return [TarScan(_where(source, f), f.path, f.size, storage_options) for f in source.files]

    def plan(self, listed, scans, opts, digest):
        source, storage_options = listed.data
        used = {scan.field_sets[i] for scan in scans for i in set(scan.fields.tolist())}
        blocks = [s for s in used if any(b <= set(s) for b in _BLOCK_MEMBERS)]
        if blocks:
            raise SourceError(f"{listed.root}: these tars hold shardkit's token or row blocks ({', '.join(blocks[0])}); "
                              f"re-sharding would shuffle blocks, not samples: convert their source instead")
        schema = infer_schema((frozenset(s) for s in used), blocks=False)
        cat = lambda name: np.concatenate([getattr(s, name) for s in scans]) if scans else np.zeros(0, np.int64)
        samples = Samples(np.concatenate([np.full(len(s.offsets), i, np.int32) for i, s in enumerate(scans)])
                          if scans else np.zeros(0, np.int32), cat("offsets"), cat("nbytes"),
                          tuple((_where(source, f), f.path, f.size) for f in source.files), schema, storage_options)
        order = sample_order(len(samples), opts)
        starts = cut(samples.nbytes[order] if len(order) else samples.nbytes, opts.max_shard_size,
                     opts.max_shard_samples)
        skipped = list(listed.skipped) + [e for s in scans for e in s.skipped]
        return Plan("webdataset", opts, digest, order, starts, skipped, source=samples)

    def shard_tasks(self, plan, index):
        samples, opts = plan.source, plan.options
        tasks, items, size = [], [], 0
        for position in plan.shard_positions(index):
            s = int(plan.order[position])
            if items and (len(items) == CHUNK_SAMPLES or size + samples.nbytes[s] > CHUNK_BYTES):
                tasks.append(TarChunk(samples, tuple(items), opts.validate))
                items, size = [], 0
            items.append((position, int(samples.tar[s]), int(samples.offset[s]), int(samples.nbytes[s])))
            size += int(samples.nbytes[s])
        tasks.append(TarChunk(samples, tuple(items), opts.validate))
        return tasks

    def manifest(self, plan, records):
        samples = plan.source
        return Manifest(kind=samples.schema.kind, schema=samples.schema, shards=shard_infos(records),
                        params=plan.options.as_params(), skipped=all_skipped(plan, records),
                        stats={"tars": len(samples.tars), "samples": len(samples)})


def _where(source: DataSource, f: DataFile) -> str:
    """Where the tar recorded as ``f.path`` is (the recorded name is an escape of the real one)."""
    return os.fsdecode(source_path(source.root, f.path))


def _listed_paths(paths: list[str], request: Request, root: str | None = None) -> DataSource:
    """Named tars (a list or brace pattern), each stat'ed; recorded relative to their common folder."""
    if not paths:
        raise SourceError("no .tar file given (an empty list, or a pattern that expands to nothing)")
    remote = storage.is_url(paths[0])
    if root is None:
        root = (os.path.commonprefix(paths).rsplit("/", 1)[0] if remote
                else os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    files = []
    for path in paths:
        try:
            if remote:
                info = storage.info(path, request.storage_options)
                size = int(info["size"])
                stamp = next((str(info[k]) for k in ("ETag", "etag", "LastModified", "mtime") if info.get(k) is not None), "")
                name = path[len(root.rstrip("/")) + 1:]
            else:
                st = os.stat(path)
                if not os.path.isfile(path):
                    raise SourceError(f"{path} is not a regular file")
                size, stamp, name = st.st_size, file_stamp(path, st, request.checksum), relative(os.path.abspath(path), root)
        except (OSError, StorageError) as err:
            raise SourceError(f"cannot read the tar {path}: {getattr(err, 'strerror', None) or err}") from None
        files.append(DataFile(name, "tar", size, stamp))
    return DataSource(root, files)


@dataclass(frozen=True)
class TarChunk:
    """A pass-2 task: the samples ``(position, tar, offset, bytes)`` at consecutive positions of a shard."""

    samples: Samples
    items: tuple[tuple[int, int, int, int], ...]
    validate: str

    def __call__(self) -> ChunkResult:
        members, skipped, read = [], [], 0
        for position, tar, offset, nbytes in self.items:
            path, name, size = self.samples.tars[tar]
            try:
                group = self._group(path, name, size, offset, nbytes)
                self._check(group, name)
            except _Skip as err:
                skipped.append(skip_entry(name, err.reason, member=err.member))
                continue
            key = sample_key(position)
            members += [(f"{key}.{ext}", data) for ext, data in group.fields.items()]
            read += sum(len(d) for d in group.fields.values())
        return ChunkResult(members, len(self.items) - len(skipped), skipped, read)

    def _group(self, path: str, name: str, size: int, offset: int, nbytes: int):
        """The sample whose members span ``offset:offset + nbytes`` (pass 1 saw it intact): damage
        after it (met while looking for its end) is the next sample's, already reported."""
        damage: list[ShardError] = []
        try:
            with storage.open_shard(path, storage_options=self.samples.storage_options, size=size,
                                    offset=offset) as stream:
                group = next(group_samples(iter_members(stream, name, size=size, start=offset,
                                                        on_damage=damage.append), name), None)
        except ShardError as err:
            raise _Skip(str(err), err.member) from None
        except (OSError, StorageError) as err:
            raise SourceError(f"cannot read the tar {name}: {err}; run the conversion again") from None
        inside = [d for d in damage if d.offset is None or d.offset < offset + nbytes]
        if group is None or group.offset != offset or inside:
            raise SourceError(f"the tar {name} changed while converting (at byte {offset}: "
                              f"{inside[0] if inside else 'no sample there'}); run the conversion again")
        return group

    def _check(self, group, shard: str) -> None:
        """Every field decodes by its codec (images fully, and of the format their extension says)."""
        for ext, data in group.fields.items():
            member = f"{group.key}.{ext}"
            if not ext or "/" in ext or ext.endswith("."):
                raise _Skip(f"the field name {ext!r} cannot be a member extension", member)
            codec = codec_of(ext)
            try:
                if codec.image:
                    family = {"jpeg": "jpg"}.get(extension(ext), extension(ext))
                    got, stored = encode_image(data, validate=self.validate)
                    if got != family or stored is not data:  # (a format PIL reads but stores converted)
                        raise _Skip(f"is not the {family.upper()} image its extension says (found "
                                    f"{sniff_image(data) or 'another format'})", member)
                elif codec.name == "npy":
                    load_npy(data, shard, member)
                else:
                    codec.decode(data, shard, member)
            except SkipImage as err:
                raise _Skip(str(err), member) from None
            except ShardError as err:  # the entry names shard and member: keep the message only
                text = str(err)
                raise _Skip(text.split(": ", 1)[1] if text.startswith("shard ") and ": " in text else text,
                            member) from None

    def split(self) -> list["TarChunk"]:
        return [dataclasses.replace(self, items=(item,)) for item in self.items]

    def crashed(self) -> ChunkResult:
        return ChunkResult([], 0, [skip_entry(self.samples.tars[tar][1], "the decoder crashed (its worker process died)",
                                              member=f"byte {offset}") for _, tar, offset, _ in self.items])

    def merge(self, results: list[ChunkResult]) -> ChunkResult:
        return ChunkResult.join(results)

    def __repr__(self) -> str:
        return f"TarChunk({len(self.items)} samples)"


class _Skip(Exception):
    def __init__(self, reason: str, member: str | None) -> None:
        super().__init__(reason)
        self.reason, self.member = reason, member
