"""The container: plain POSIX (USTAR) tar, written deterministically and read without trusting it.

The writer emits one 512-byte USTAR header per member with a fixed owner, mode and integer
mtime, so the same records always give the same bytes and no PAX headers are added for
ordinary names (webdataset's own writer adds a 1 KB PAX header per member; see PEERS.md).

The reader is a streaming header parser rather than :mod:`tarfile`, because it must never
extract, never follow links, never allocate what a header merely claims, and must name the
byte offset of whatever is wrong.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from ..errors import ShardError

BLOCK = 512
#: Largest member the reader accepts unless told otherwise (one image or one token block).
DEFAULT_MAX_MEMBER_SIZE = 1 << 30
_MAX_META_SIZE = 1 << 20  # PAX / GNU long-name headers are tiny; anything larger is hostile
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_META = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME)
_LINKS_AND_SPECIALS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link",
                       tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                       tarfile.FIFOTYPE: "FIFO", tarfile.CONTTYPE: "contiguous file"}


def member_header(name: str, size: int) -> bytes:
    """The deterministic 512-byte USTAR header of a regular file member."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


class TarWriter:
    """Writes members to a binary stream as a USTAR tar; ``close()`` adds the end-of-archive blocks.

    Not a context on the underlying file: the caller owns it (and its atomic rename).
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.bytes_written = 0

    def add(self, name: str, data: bytes | memoryview) -> None:
        for chunk in (member_header(name, len(data)), data, padding(len(data))):
            self._stream.write(chunk)
            self.bytes_written += len(chunk)

    def close(self) -> None:
        self._stream.write(END_OF_ARCHIVE)
        self.bytes_written += len(END_OF_ARCHIVE)


class Member(NamedTuple):
    name: str
    data: bytes
    offset: int  # byte offset of the member's header in the shard


def _read_exactly(stream: BinaryIO, size: int, shard: str, what: str, offset: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ShardError(f"truncated: {what} needs {size} bytes, only {len(data)} left",
                         shard=shard, offset=offset)
    return data


def _check_name(name: str, shard: str, offset: int) -> None:
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise ShardError("unsafe member name (absolute or malformed)", shard=shard, member=name, offset=offset)
    if ".." in posixpath.normpath(name).split("/"):
        raise ShardError("unsafe member name (escapes the archive with '..')",
                         shard=shard, member=name, offset=offset)


def _parse_pax(data: bytes, shard: str, offset: int) -> dict[str, str]:
    """PAX records: ``"%d %s=%s\\n"``, the length counting the whole record."""
    fields, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
            record = data[space + 1:pos + length - 1].decode("utf-8")
            key, value = record.split("=", 1)
        except (ValueError, UnicodeDecodeError):
            raise ShardError("malformed PAX extended header", shard=shard, offset=offset) from None
        if length <= 0:
            raise ShardError("malformed PAX extended header", shard=shard, offset=offset)
        fields[key] = value
        pos += length
    return fields


def iter_members(stream: BinaryIO, shard: str, *, max_member_size: int = DEFAULT_MAX_MEMBER_SIZE,
                 size: int | None = None) -> Iterator[Member]:
    """Yield the regular-file members of a tar stream, in order, as ``Member(name, data, offset)``.

    Directories and PAX global headers are passed over. ``size`` (the shard's length, when known)
    lets a member that claims more bytes than remain be refused before anything is read.

    Raises:
        ShardError: truncated or corrupt headers, links, devices, FIFOs, names that are absolute or
            contain ``..``, and members larger than ``max_member_size``; the message names
            ``shard``, the member and its byte offset.
    """
    offset = 0
    pending: dict[str, str] = {}  # from a PAX or GNU long-name header, for the next member
    while True:
        header = stream.read(BLOCK)
        if not header or header == b"\0" * BLOCK:
            return  # end of archive (a missing second zero block is tolerated, as tar does)
        if len(header) != BLOCK:
            raise ShardError(f"truncated: partial header of {len(header)} bytes", shard=shard, offset=offset)
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as err:
            raise ShardError(f"corrupt header ({err})", shard=shard, offset=offset) from None
        is_meta = info.type in _META
        name, member_size = info.name, info.size
        if not is_meta:
            name = pending.get("path", name)
            try:
                member_size = int(pending.get("size", member_size))
            except ValueError:
                raise ShardError("malformed size in PAX header", shard=shard, member=name, offset=offset) from None
            pending = {}
        if member_size < 0:
            raise ShardError("negative member size", shard=shard, member=name, offset=offset)
        limit = _MAX_META_SIZE if is_meta else max_member_size
        if member_size > limit:
            raise ShardError(f"member of {member_size} bytes exceeds the limit of {limit}",
                             shard=shard, member=name, offset=offset)
        if size is not None and offset + BLOCK + member_size > size:
            raise ShardError(f"truncated: header claims {member_size} bytes but the shard ends at byte {size}",
                             shard=shard, member=name, offset=offset)
        if info.type in _LINKS_AND_SPECIALS:
            raise ShardError(f"{_LINKS_AND_SPECIALS[info.type]} members are refused", shard=shard,
                             member=name, offset=offset)
        data = _read_exactly(stream, member_size, shard, f"member {name!r}", offset)
        pad = -member_size % BLOCK
        if pad:
            _read_exactly(stream, pad, shard, "padding", offset)
        here, offset = offset, offset + BLOCK + member_size + pad
        if info.type == tarfile.XHDTYPE:
            pending.update({k: v for k, v in _parse_pax(data, shard, here).items() if k in ("path", "size")})
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            pending["path"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type in _REGULAR:
            _check_name(name, shard, here)
            yield Member(name, data, here)
        elif info.type in (tarfile.DIRTYPE, tarfile.XGLTYPE):
            continue
        else:
            raise ShardError(f"unsupported member type {info.type!r}", shard=shard, member=name, offset=here)


def read_members(data: bytes, shard: str = "<bytes>", **kwargs) -> list[Member]:
    """All members of an in-memory tar (tests, small shards)."""
    return list(iter_members(io.BytesIO(data), shard, size=len(data), **kwargs))
