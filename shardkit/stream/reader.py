"""Reading stages: pieces of shards → tar members → samples (raw, undecoded), with the error policy.

One chain per piece: open the shard (``storage.open_shard``, local or remote, in the process
that reads), expand its members (``format.tar.iter_members``), group them by key
(``format.records.group_samples``), build samples, keep those of the piece's range.

A sample's index in a shard is its ordinal among the member groups (images) or the running
count of sequences over the blocks whose lengths can be read (sequences). Damage that makes a
group vanish shifts the indices after it the same way for every reader of the shard, so ranges
given to different workers still never overlap: no sample is read twice, and the samples a
damaged shard lacks are counted once, by the reader whose range reaches past its end.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from .. import storage
from ..errors import ManifestError, ShardError
from ..format.records import LABEL_EXT, LENGTHS_EXT, decode_block, group_samples, load_npy
from ..format.tar import iter_members
from .partition import Piece
from .sources import WDS_IMAGE_EXTENSIONS, ShardRef, Source

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


class RawImage(NamedTuple):
    """An image sample before decoding: its bytes, its label, and where it came from."""

    data: bytes
    label: int
    shard: str
    member: str


class ReadOptions(NamedTuple):
    on_error: str = "raise"
    verify: bool = False
    storage_options: dict[str, Any] | None = None
    cache_dir: str | None = None
    cache_limit: int | None = None


class ErrorLog:
    """Damage met under a policy: ``"raise"`` raises the ``ShardError``; ``"skip"`` records it.

    ``records``: one dict per problem (shard, member, offset, error, samples dropped), plain
    values so it can cross processes. ``new`` holds those not yet handed to the main process.
    """

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.records: list[dict[str, Any]] = []
        self.new: list[dict[str, Any]] = []

    @property
    def dropped(self) -> int:
        return sum(r["dropped"] for r in self.records)

    def damaged(self, err: ShardError, dropped: int) -> None:
        if self.policy == "raise":
            raise err
        record = {"shard": err.shard, "member": err.member, "offset": err.offset, "error": str(err),
                  "dropped": dropped}
        self.records.append(record)
        self.new.append(record)

    def take_new(self) -> list[dict[str, Any]]:
        new, self.new = self.new, []
        return new

    def report(self, where: str) -> None:
        if self.records:
            shown = "; ".join(r["error"] for r in self.records[:3])
            more = f" (and {len(self.records) - 3} more)" if len(self.records) > 3 else ""
            log.warning("%s: skipped %d damaged samples at %d places (on_error='skip'): %s%s",
                        where, self.dropped, len(self.records), shown, more)


def check_shards(source: Source, indices: Iterable[int], storage_options: dict[str, Any] | None,
                 errors: ErrorLog) -> set[int]:
    """Check that the shards exist with the sizes the manifest (or the count) recorded, before
    anything is read. Under ``"skip"`` the problems are recorded and the missing shards returned
    (their samples will be dropped); a shard of another size is read and loses what it lacks.

    Raises:
        ManifestError: (``"raise"``) shards missing; all problems are named.
        ShardError: (``"raise"``) no shard missing but some of another size (truncated, or data
            appended); the first is ``shard``, its size the ``offset``.
    """
    missing, resized = [], []
    indices = sorted(set(indices))
    found = storage.sizes([source.shards[i].path for i in indices], storage_options)  # one round trip
    for i, size in zip(indices, found):
        ref = source.shards[i]
        if size is None:
            missing.append(i)
        elif ref.size is not None and size != ref.size:
            resized.append((i, size))
    problems = ([f"{source.shards[i].name} is missing" for i in missing] +
                [f"{source.shards[i].name} has {size} bytes, expected {source.shards[i].size}" for i, size in resized])
    if not problems:
        return set()
    where = "manifest.json" if source.manifest is not None else "the counted webdataset shards"
    text = f"the shards disagree with {where}: {'; '.join(problems[:10])}" + (
        f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
    if errors.policy == "raise":
        if missing:
            raise ManifestError(text)
        first, size = resized[0]
        raise ShardError(text, shard=source.shards[first].name, offset=size)
    for i, size in resized:
        errors.damaged(ShardError(f"has {size} bytes, expected {source.shards[i].size}",
                                  shard=source.shards[i].name, offset=size), 0)
    return set(missing)


def read_pieces(pieces: Iterable[Piece], source: Source, opts: ReadOptions, errors: ErrorLog) -> Iterator[Any]:
    """Raw samples of the pieces, in order: :class:`RawImage` or ``(tokens array, label)``.

    Before the first sample, the pieces' shards are checked against the manifest
    (:func:`check_shards`); the pieces of missing shards are counted as dropped (under ``"skip"``).
    A remote first shard is already being fetched during the check, so the check's round trip
    and the first shard's overlap instead of adding up.
    """
    read = _image_samples if source.kind == "images" else _sequence_samples
    pieces = list(pieces)
    ahead = None  # the next piece's shard, opened early: a remote open starts fetching at once,
    try:          # so its first-byte latency passes while the check runs or this shard is read
        if pieces and storage.is_url(source.shards[pieces[0].shard].path):
            ahead = _open(source.shards[pieces[0].shard], opts)
        missing = check_shards(source, (p.shard for p in pieces), opts.storage_options, errors)
        for piece in pieces:
            if piece.shard in missing:
                errors.damaged(ShardError("the shard is missing", shard=source.shards[piece.shard].name),
                               piece.stop - piece.start)
        if pieces and pieces[0].shard in missing and ahead is not None:
            ahead.close()
            ahead = None
        pieces = [p for p in pieces if p.shard not in missing]
        for i, piece in enumerate(pieces):
            raw, ahead = ahead or _open(source.shards[piece.shard], opts), None
            following = pieces[i + 1] if i + 1 < len(pieces) else None
            if following is not None and following.shard != piece.shard and storage.is_url(source.shards[following.shard].path):
                ahead = _open(source.shards[following.shard], opts)
            yield from _read_shard(raw, source, source.shards[piece.shard], piece.start, piece.stop, read, opts, errors)
    finally:
        if ahead is not None:
            ahead.close()


def _open(ref: ShardRef, opts: ReadOptions):
    return storage.open_shard(ref.path, storage_options=opts.storage_options, cache_dir=opts.cache_dir,
                              cache_limit=opts.cache_limit, size=ref.size, sha256=ref.sha256)


class _Range:
    """How far a reader is in its shard: whether damage met now falls in its range."""

    def __init__(self, start: int) -> None:
        self.inside = start == 0


def _read_shard(raw, source: Source, ref: ShardRef, start: int, stop: int, read, opts: ReadOptions,
                errors: ErrorLog) -> Iterator[Any]:
    where = _Range(start)

    def on_damage(err: ShardError) -> None:
        if where.inside:
            errors.damaged(err, 0)

    with raw:
        stream = _Hashing(raw) if opts.verify and ref.sha256 else raw
        members = iter_members(stream, ref.name, size=ref.size,
                               on_damage=None if errors.policy == "raise" else on_damage)
        found = yield from read(group_samples(members), source, ref, start, stop, errors, where)
        if found < stop:
            where.inside = True
            errors.damaged(ShardError(f"ends after {found} samples, expected {ref.samples}", shard=ref.name),
                           stop - max(found, start))
        elif isinstance(stream, _Hashing):
            stream.finish(ref, errors)


def _image_samples(groups, source: Source, ref: ShardRef, start: int, stop: int, errors: ErrorLog,
                   where: _Range):
    """Yield the range's image samples; return how many samples (up to ``stop``) the shard has."""
    index = 0
    classes = len(source.classes) if source.classes is not None else None
    for key, members in groups:
        if index >= start:
            sample = _image_sample(key, members, ref, source.labelled, classes, errors)
            if sample is not None:
                yield sample
        index += 1
        if index >= stop:
            return index
        where.inside = index >= start
    return index


def _image_sample(key: str, members: dict[str, bytes], ref: ShardRef, labelled: bool,
                  classes: int | None, errors: ErrorLog) -> RawImage | None:
    ext = next((e for e in WDS_IMAGE_EXTENSIONS if e in members), None)
    if ext is None:
        errors.damaged(ShardError(f"sample has no image member (.{', .'.join(WDS_IMAGE_EXTENSIONS)}); "
                                  f"found {', '.join(sorted(members)) or 'nothing'}", shard=ref.name, member=key), 1)
        return None
    label = -1
    if LABEL_EXT in members:
        try:
            label = int(members[LABEL_EXT])
        except ValueError:
            label = None
        if label is None or (classes is not None and not 0 <= label < classes):
            errors.damaged(ShardError(f"label {members[LABEL_EXT][:20]!r} is not a class index",
                                      shard=ref.name, member=f"{key}.{LABEL_EXT}"), 1)
            return None
    elif labelled:
        errors.damaged(ShardError("sample has no label member", shard=ref.name, member=f"{key}.{LABEL_EXT}"), 1)
        return None
    return RawImage(members[ext], label, ref.name, f"{key}.{ext}")


def _sequence_samples(groups, source: Source, ref: ShardRef, start: int, stop: int, errors: ErrorLog,
                      where: _Range):
    """Yield the range's ``(tokens, label)`` pairs; return how many sequences (up to ``stop``) the
    shard has. Blocks wholly before ``start`` are passed over by their lengths, never decoded."""
    index = 0
    for key, members in groups:
        try:
            count = len(load_npy(members[LENGTHS_EXT], ref.name, f"{key}.{LENGTHS_EXT}"))
        except KeyError:
            errors.damaged(ShardError("token block has no lengths member", shard=ref.name, member=key), 0)
            continue
        except ShardError as err:
            errors.damaged(err, 0)
            continue
        if index + count > start:
            lo, hi = max(start - index, 0), min(stop - index, count)
            try:
                tokens, offsets, labels = decode_block(members, ref.name, key)
            except ShardError as err:
                errors.damaged(err, hi - lo)
            else:
                offsets = offsets.tolist()
                labels = labels.tolist() if labels is not None else None
                for i in range(lo, hi):
                    yield tokens[offsets[i]:offsets[i + 1]], -1 if labels is None else labels[i]
        index += count
        if index >= stop:
            return stop
        where.inside = index >= start
    return index


class _Hashing:
    """A read-through stream that hashes and counts every byte, for ``verify=True``."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._digest = hashlib.sha256()
        self._bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._digest.update(data)
        self._bytes += len(data)
        return data

    def finish(self, ref: ShardRef, errors: ErrorLog) -> None:
        """Read to the end and compare with the manifest; a mismatch is damage (after the samples)."""
        while self.read(1 << 20):
            pass
        found = self._digest.hexdigest()
        if found != ref.sha256 or (ref.size is not None and self._bytes != ref.size):
            errors.damaged(ShardError(f"sha256 mismatch: read {self._bytes} bytes hashing to {found}, the manifest "
                                      f"says {ref.size} bytes with sha256 {ref.sha256}", shard=ref.name), 0)
