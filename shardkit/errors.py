"""shardkit's exceptions: one family, each message naming the file, shard or member at fault."""

from __future__ import annotations


class ShardkitError(Exception):
    """Base class of every error shardkit raises on purpose."""


class SourceError(ShardkitError):
    """Input that cannot be converted (with ``strict=True``) or a source that cannot be read at all."""


class DestinationError(ShardkitError):
    """The conversion's destination is unusable: another dataset, locked, read-only, full."""


class ManifestError(ShardkitError):
    """A ``manifest.json`` that is missing, malformed, or disagrees with its shards."""


class ShardError(ShardkitError):
    """A damaged, truncated or hostile shard.

    ``shard``, ``member`` and ``offset`` (byte offset in the shard) say where, when known.
    """

    def __init__(self, message: str, *, shard: str | None = None, member: str | None = None,
                 offset: int | None = None) -> None:
        where = []
        if shard is not None:
            where.append(f"shard {shard}")
        if member is not None:
            where.append(f"member {member!r}")
        if offset is not None:
            where.append(f"byte {offset}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.shard, self.member, self.offset = shard, member, offset

    def __reduce__(self):  # keep the fields when the error crosses a worker process
        return _rebuild_shard_error, (self.args[0], self.shard, self.member, self.offset)


def _rebuild_shard_error(text, shard, member, offset):
    err = ShardError.__new__(ShardError)
    Exception.__init__(err, text)
    err.shard, err.member, err.offset = shard, member, offset
    return err


class StorageError(ShardkitError):
    """Remote storage that failed after its retries, or refused access (names the URL, never credentials)."""


class MissingExtraError(ShardkitError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""
