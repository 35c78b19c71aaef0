"""Reading samples out of shards, by index, with the error policy.

A :class:`ShardReader` belongs to one process (a DataLoader worker, or the main process). It
keeps the shard it reads open and positioned, so reading the samples that follow continues the
same sequential stream; reading elsewhere opens the shard again at the group holding the first
sample wanted (a seek locally, a ranged request remotely), found in the shard's index. The chain
is: open (``storage.open_shard``) → tar members (``format.tar.iter_members``) → groups by key
(``format.records.group_samples``) → samples (one per group, or a block's rows).

Samples are identified by their index in the shard: with an index, a group is known by its byte
offset, so damage that makes one vanish shifts nothing; without one (version 1 datasets), by its
ordinal from the shard's start, which every reader counts the same way since they all read from
there. A sample that cannot be read is ``None`` in what :meth:`ShardReader.read` returns; the
caller stands in for it (see ``dataset``) and counts it.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple

from .. import storage
from ..errors import ManifestError, ShardError, StorageError
from ..format.blocks import Block
from ..format.index import ShardIndex
from ..format.records import Group, group_samples
from ..format.tar import iter_members
from ..storage.files import HashingReader
from .sources import Source, load_index

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
#: Shards a reader keeps open and positioned at once.
OPEN_SHARDS = 4


class BlockItem(NamedTuple):
    """Sample ``index`` of a decoded block (whose key is ``key``)."""

    block: Block
    index: int
    key: str


#: A sample before decoding: its group of members (one sample per key), or a block's row.
Raw = Group | BlockItem


class BlockRows:
    """The samples of a decoded block as a sequence of :class:`BlockItem`, made only when asked
    for: a batch built straight from the block (``ShardReader.read_blocks``) needs none of them."""

    __slots__ = ("block", "key")

    def __init__(self, block: Block, key: str) -> None:
        self.block, self.key = block, key

    def __len__(self) -> int:
        return self.block.size

    def __getitem__(self, i: int | slice) -> BlockItem | list[BlockItem]:
        if isinstance(i, slice):
            block, key = self.block, self.key
            rows = range(*i.indices(block.size))
            n = len(rows)
            # tuple.__new__ mapped in C: a third of what BlockItem(...) in a comprehension costs
            return list(map(tuple.__new__, repeat(BlockItem, n), zip(repeat(block, n), rows, repeat(key, n))))
        if not -self.block.size <= i < self.block.size:
            raise IndexError(i)
        return BlockItem(self.block, i % self.block.size, self.key)


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
        self._seen: set[tuple] = set()

    @property
    def dropped(self) -> int:
        return sum(r["dropped"] for r in self.records)

    def damaged(self, err: ShardError, dropped: int = 0) -> None:
        """Record ``err`` (once per place), with ``dropped`` samples lost to it; raise under ``"raise"``."""
        if self.policy == "raise":
            raise err
        where = (err.shard, err.member, err.offset, str(err))
        if where in self._seen and not dropped:
            return
        self._seen.add(where)
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
            log.warning("%s: %d damaged samples at %d places were replaced by repeats of intact ones "
                        "(on_error='skip'): %s%s", where, self.dropped, len(self.records), shown, more)


def check_shards(source: Source, indices: Iterable[int], storage_options: dict[str, Any] | None,
                 errors: ErrorLog) -> set[int]:
    """Check that the shards exist with the sizes the manifest (or the count) recorded, before
    anything is read. Under ``"skip"`` the problems are recorded and the missing shards returned;
    a shard of another size is read and loses what it lacks.

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
                                  shard=source.shards[i].name, offset=size))
    for i in missing:
        errors.damaged(ShardError("the shard is missing", shard=source.shards[i].name))
    return set(missing)


@dataclass
class _Cursor:
    """An open shard, positioned: the next group comes from ``groups``; ``held`` is the last group
    read (a block may serve the next read too), ``next_sample`` the index of the sample after it."""

    shard: int
    stream: Any
    groups: Iterator[Group]
    next_sample: int
    hashing: HashingReader | None = None
    held_first: int = -1
    held: list | BlockRows = field(default_factory=list)
    ended: bool = False


class ShardReader:
    """Reads samples ``start..stop`` of any shard of ``source`` for one process (see the module
    docstring); ``close()`` closes what is open (and finishes a ``verify`` hash)."""

    def __init__(self, source: Source, opts: ReadOptions, errors: ErrorLog) -> None:
        self.source, self.opts, self.errors = source, opts, errors
        self._cursors: OrderedDict[int, _Cursor] = OrderedDict()  # by shard, least recently used first
        self._ahead: _Cursor | None = None
        self._indexes: dict[int, ShardIndex | None] = {}
        self._missing: set[int] = set()
        self._verified: set[int] = set()

    # -- the shards this process will read ------------------------------------------------------
    def check(self, shards: Iterable[int]) -> None:
        """Check the shards' presence and sizes before the first sample (see :func:`check_shards`)."""
        self._missing |= check_shards(self.source, shards, self.opts.storage_options, self.errors)

    def open_ahead(self, shard: int, start: int) -> None:
        """Start opening ``shard`` at sample ``start`` (a remote shard begins to arrive meanwhile)."""
        if self._ahead is None and storage.is_url(self.source.shards[shard].path) and shard not in self._missing:
            if shard not in self._cursors:
                self._ahead = self._open(shard, start)

    # -- reading --------------------------------------------------------------------------------
    def read(self, shard: int, start: int, stop: int) -> list[Raw | None]:
        """The raw samples ``start..stop`` of shard ``shard``; ``None`` for each that could not be
        read (under ``on_error="skip"``; the damage is recorded).

        Raises:
            ShardError, ManifestError, StorageError: (``"raise"``) damaged or missing data.
        """
        out: list[Raw | None] = [None] * (stop - start)
        if start >= stop or shard in self._missing:
            return out
        for first, held in self._held(shard, start, stop):
            lo, hi = max(first, start), min(first + len(held), stop)
            out[lo - start:hi - start] = held[lo - first:hi - first]
        return out

    def read_blocks(self, shard: int, start: int, stop: int) -> list[tuple[int, BlockRows]] | None:
        """``(index of its first sample, its rows)`` of each block holding samples ``start..stop``,
        in order, when all of them are intact; else None (then :meth:`read` says which are not).

        Raises:
            the same as :meth:`read`.
        """
        if start >= stop or shard in self._missing:
            return None
        blocks, covered = [], start
        for first, held in self._held(shard, start, stop):
            if not isinstance(held, BlockRows) or first > covered:
                return None
            blocks.append((first, held))
            covered = first + len(held)
        return blocks if covered >= stop else None

    def _held(self, shard: int, start: int, stop: int) -> list[tuple[int, Any]]:
        """``(index of its first sample, samples)`` of each group read that holds samples of
        ``start..stop``: a list (``None`` for those that could not be read) or ``BlockRows``."""
        cur, found = self._position(shard, start), []
        while True:
            first, held = cur.held_first, cur.held
            if held and first < stop and first + len(held) > start:
                found.append((first, held))
            if first + len(held) >= stop or cur.ended:
                break
            self._pull(cur, start)
        ref = self.source.shards[shard]
        if cur.ended and cur.next_sample < stop:
            self.errors.damaged(ShardError(f"ends after {cur.next_sample} samples, expected {ref.samples}",
                                           shard=ref.name))
        if cur.ended or (cur.next_sample >= ref.samples and stop >= ref.samples):
            self._finish(self._cursors.pop(shard))  # nothing more to read from it: free its buffers
        return found

    def close(self) -> None:
        for cur in [*self._cursors.values(), self._ahead]:
            if cur is not None:
                self._finish(cur)
        self._cursors.clear()
        self._ahead = None

    # -- the cursor -----------------------------------------------------------------------------
    def _position(self, shard: int, start: int) -> _Cursor:
        """A cursor on ``shard`` that has not passed ``start``: one already open (a few stay open,
        for readers that take turns between shards, as a mix does), the one opened ahead, or a new
        one at the group holding ``start``."""
        cur = self._cursors.pop(shard, None)
        if cur is not None and not _serves(cur, start):
            self._finish(cur)
            cur = None
        if cur is None:
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead.shard == shard and _serves(ahead, start):
                cur = ahead
            else:
                if ahead is not None:
                    self._finish(ahead)
                cur = self._open(shard, start)
        self._cursors[shard] = cur
        while len(self._cursors) > OPEN_SHARDS:
            self._finish(self._cursors.popitem(last=False)[1])
        return cur

    def _index(self, shard: int) -> ShardIndex | None:
        if shard not in self._indexes:
            self._indexes[shard] = load_index(self.source.shards[shard], self.opts.storage_options)
        return self._indexes[shard]

    def _open(self, shard: int, start: int) -> _Cursor:
        ref = self.source.shards[shard]
        # the index is fetched only to seek: a read from the shard's start needs none (a remote
        # sidecar would cost a round trip before the first byte of every shard); one a scan found
        # is in memory already, and with it damage shifts no sample
        index = self._index(shard) if start > 0 or ref.scanned is not None else self._indexes.get(shard)
        offset, first = 0, 0
        # with verify, a shard is read (and hashed) whole, from its start, once per process
        if index is not None and not (self.opts.verify and ref.sha256 and shard not in self._verified):
            _, offset, first = index.locate(min(start, index.samples - 1) if index.samples else 0)
        try:
            raw = storage.open_shard(ref.path, storage_options=self.opts.storage_options, cache_dir=self.opts.cache_dir,
                                     cache_limit=self.opts.cache_limit, size=ref.size, sha256=ref.sha256, offset=offset)
        except (OSError, StorageError) as err:
            if isinstance(err, FileNotFoundError):
                raise ManifestError(f"shard {ref.name} is missing") from None
            raise
        hashing = HashingReader(raw) if offset == 0 and self.opts.verify and ref.sha256 else None
        members = iter_members(hashing or raw, ref.name, size=ref.size, stamp=ref.stamp, start=offset,
                               on_damage=None if self.errors.policy == "raise" else self.errors.damaged)
        return _Cursor(shard, raw, group_samples(members), first, hashing)

    def _pull(self, cur: _Cursor, wanted: int) -> None:
        """Read the next group into ``cur.held`` (a group wholly before sample ``wanted`` is passed
        over, a block undecoded); at the end of the shard, mark it ended."""
        ref = self.source.shards[cur.shard]
        schema = ref.schema or self.source.schema  # (the sources of a mix may differ, in token dtype say)
        index = self._indexes.get(cur.shard)
        for group in cur.groups:
            first = cur.next_sample
            if index is not None:
                g = _group_number(index, group.offset)
                if g is None:  # a group the index does not know: what a resync found in damaged data
                    self.errors.damaged(ShardError("a group of members where the index has none", shard=ref.name,
                                                   member=group.key, offset=group.offset))
                    continue
                first = index.starts[g]
            expected = index.starts[g + 1] - first if index is not None else None
            try:
                if group.duplicate is not None and self.source.manifest is not None:  # not as written
                    raise ShardError(f"duplicate member {group.duplicate!r}", shard=ref.name, offset=group.offset)
                n = schema.count(group.fields, ref.name, group.key)
                if expected is not None and n != expected:
                    raise ShardError(f"the group holds {n} samples, the index says {expected}", shard=ref.name,
                                     member=group.key, offset=group.offset)
                if first + n <= wanted:  # passed over: nothing held, so a read of it opens the shard again
                    cur.held_first, cur.held, cur.next_sample = first + n, [], first + n
                    return
                held = self._samples(group, ref.name, schema)
            except ShardError as err:
                n = expected or 0
                self.errors.damaged(err)
                held = [None] * n
            cur.held_first, cur.held, cur.next_sample = first, held, first + n
            return
        cur.ended = True
        cur.held_first, cur.held = cur.next_sample, []
        self._finish_hash(cur)

    def _samples(self, group: Group, shard: str, schema) -> list[Raw] | BlockRows:
        blocks = schema.blocks
        if blocks is None:
            return [group]
        return BlockRows(blocks.decode(group.fields, shard, group.key), group.key)

    def _finish(self, cur: _Cursor) -> None:
        try:
            if cur.hashing is not None and not cur.ended:
                ref = self.source.shards[cur.shard]
                if ref.size is None or ref.size - cur.hashing.size <= 32 << 20:
                    cur.hashing.drain()
                    self._finish_hash(cur)
        finally:
            cur.stream.close()

    def _finish_hash(self, cur: _Cursor) -> None:
        """After a whole shard was read and hashed: compare with the manifest (damage if different)."""
        hashing, cur.hashing = cur.hashing, None
        if hashing is None:
            return
        hashing.drain()
        ref = self.source.shards[cur.shard]
        self._verified.add(cur.shard)
        found = hashing.hexdigest()
        if found != ref.sha256 or (ref.size is not None and hashing.size != ref.size):
            self.errors.damaged(ShardError(f"sha256 mismatch: read {hashing.size} bytes hashing to {found}, the "
                                           f"manifest says {ref.size} bytes with sha256 {ref.sha256}", shard=ref.name))


def _serves(cur: _Cursor, start: int) -> bool:
    """Whether ``cur`` has not read past sample ``start`` (it still holds it, or has yet to reach it)."""
    return cur.held_first <= start if cur.held else cur.next_sample <= start


def _group_number(index: ShardIndex, offset: int) -> int | None:
    g = bisect.bisect_left(index.offsets, offset)
    return g if g < index.groups and index.offsets[g] == offset else None
