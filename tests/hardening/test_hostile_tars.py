"""Hostile and damaged tars, built with ``tarfile`` here: each is refused with a ShardError that names
the shard, the member and the byte offset; under ``on_damage`` the valid members around it come through.
The reader never writes anything anywhere."""

from __future__ import annotations

import builtins
import io
import os
import shutil
import tarfile
import tracemalloc

import pytest

from shardkit.errors import ShardError
from shardkit.format.tar import BLOCK, MAX_META_SIZE, TarWriter, iter_members, read_members

SHARD = "shard-000007.tar"
BEFORE = [("000000000.jpg", b"\xff\xd8" + b"j" * 700), ("000000000.cls", b"0")]
AFTER = [("000000002.png", b"\x89PNG" + b"p" * 300), ("000000002.cls", b"2")]


def _regular(name: str, data: bytes, **pax) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = pax
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


def build(hostile: list[tuple[tarfile.TarInfo, bytes]], fmt=tarfile.PAX_FORMAT) -> tuple[bytes, int]:
    """Valid members, the hostile entries, valid members: ``(tar bytes, offset of the first hostile header)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in BEFORE:
            tar.addfile(_regular(name, data)[0], io.BytesIO(data))
        start = buf.tell()
        for info, data in hostile:
            tar.addfile(info, io.BytesIO(data) if data else None)
        for name, data in AFTER:
            tar.addfile(_regular(name, data)[0], io.BytesIO(data))
    return buf.getvalue(), start


def patch_header(shard: bytes, offset: int, field: slice, value: bytes) -> bytes:
    """Overwrite one header field and fix the checksum, so only the field's meaning is hostile."""
    data = bytearray(shard)
    data[field] = value.ljust(field.stop - field.start, b"\0")
    data[offset + 148:offset + 156] = b" " * 8
    data[offset + 148:offset + 156] = b"%06o\0 " % sum(data[offset:offset + BLOCK])
    return bytes(data)


SIZE = slice(124, 136)


def _claims_more_than_the_shard():
    shard, at = build([_regular("000000001.jpg", b"x" * 10)])
    return patch_header(shard, at, slice(at + SIZE.start, at + SIZE.stop), b"%011o" % (1 << 30)), at


def _size_field(value: bytes):
    shard, at = build([_regular("000000001.jpg", b"x" * 10)])
    return patch_header(shard, at, slice(at + SIZE.start, at + SIZE.stop), value), at


def _bad_checksum():
    shard, at = build([_regular("000000001.jpg", b"x" * 10)])
    data = bytearray(shard)
    data[at + 3] ^= 0x20
    return bytes(data), at


def _pax_record(record: bytes):
    """A hand-made PAX header holding ``record``, then a regular member it applies to."""
    shard, at = build([_regular("000000001.jpg", b"x" * 10)], fmt=tarfile.USTAR_FORMAT)
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    head = pax.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (-len(record) % BLOCK)
    return shard[:at] + head + shard[at:], at


def _many_pax_headers():
    record = b"30 comment=" + b"c" * 18 + b"\n"
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    one = pax.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (BLOCK - len(record))
    shard, at = build([_regular("000000001.jpg", b"x" * 10)], fmt=tarfile.USTAR_FORMAT)
    return shard[:at] + one * (MAX_META_SIZE // (2 * BLOCK) + 2) + shard[at:], at


#: (id, builder → (shard, offset of the hostile header), member named in the error, message fragment)
HOSTILE = [
    ("dotdot", lambda: build([_regular("../evil.jpg", b"x")]), "../evil.jpg", "'..'"),
    ("nested-dotdot", lambda: build([_regular("a/b/../../../evil.jpg", b"x")]), "a/b/../../../evil.jpg", "'..'"),
    ("absolute", lambda: build([_regular("/tmp/shardkit-evil.jpg", b"x")], fmt=tarfile.USTAR_FORMAT),
     "/tmp/shardkit-evil.jpg", "absolute"),
    ("backslash", lambda: build([_regular("..\\evil.jpg", b"x")]), "..\\evil.jpg", "backslash"),
    ("pax-path-dotdot", lambda: build([_regular("ok.jpg", b"x", path="../../evil.jpg")]), "../../evil.jpg", "'..'"),
    ("gnu-longname-dotdot", lambda: build([_regular("../" * 40 + "evil.jpg", b"x")], fmt=tarfile.GNU_FORMAT),
     "../" * 40 + "evil.jpg", "'..'"),
    ("symlink", lambda: build([_special("000000001.jpg", tarfile.SYMTYPE, "/etc/passwd")]), "000000001.jpg",
     "symbolic link"),
    ("hardlink", lambda: build([_special("000000001.jpg", tarfile.LNKTYPE, "000000000.jpg")]), "000000001.jpg",
     "hard link"),
    ("char-device", lambda: build([_special("000000001.jpg", tarfile.CHRTYPE)]), "000000001.jpg", "character device"),
    ("block-device", lambda: build([_special("000000001.jpg", tarfile.BLKTYPE)]), "000000001.jpg", "block device"),
    ("fifo", lambda: build([_special("000000001.jpg", tarfile.FIFOTYPE)]), "000000001.jpg", "FIFO"),
    ("contiguous", lambda: build([_special("000000001.jpg", tarfile.CONTTYPE)]), "000000001.jpg", "contiguous"),
    ("gnu-sparse", lambda: build([_special("000000001.jpg", tarfile.GNUTYPE_SPARSE)], fmt=tarfile.GNU_FORMAT),
     "000000001.jpg", "unsupported member type b'S'"),
    ("volume-label", lambda: build([_special("000000001.jpg", b"V")], fmt=tarfile.GNU_FORMAT), "000000001.jpg",
     "unsupported member type b'V'"),
    ("huge-pax-header", lambda: build([_regular("000000001.jpg", b"x", comment="c" * (2 * MAX_META_SIZE))]),
     "././@PaxHeader", "exceed"),
    ("many-pax-headers", _many_pax_headers, "././@PaxHeader", f"exceed {MAX_META_SIZE}"),
    ("pax-wrong-length", lambda: _pax_record(b"99 path=a.jpg\n"), "././@PaxHeader", "malformed PAX"),
    ("pax-no-length", lambda: _pax_record(b"path=a.jpg\n"), "././@PaxHeader", "malformed PAX"),
    ("pax-zeroed", lambda: _pax_record(bytes(24)), "././@PaxHeader", "malformed PAX"),
    ("file-named-like-a-dir", lambda: build([_regular("000000001/", b"x")], fmt=tarfile.USTAR_FORMAT), "000000001/",
     "a directory name on a file"),
    ("pax-size-not-a-number", lambda: _pax_record(b"12 size=abc\n"), "000000001.jpg", "invalid member size -1"),
    ("pax-size-20-digits", lambda: _pax_record(b"32 size=" + b"9" * 23 + b"\n"), "000000001.jpg",
     "invalid member size -1"),
    ("claims-more-than-the-shard", _claims_more_than_the_shard, "000000001.jpg", "shard ends at byte"),
    ("negative-size", lambda: _size_field(b"\xff" * 12), "000000001.jpg", "invalid member size -1"),
    ("base256-size", lambda: _size_field(b"\x80" + b"\xff" * 11), "000000001.jpg", "shard ends at byte"),
    ("size-not-octal", lambda: _size_field(b"0000000009z"), None, "corrupt header"),
    ("bad-checksum", _bad_checksum, None, "corrupt header (bad checksum)"),
]


@pytest.mark.parametrize("make, member, fragment", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_member_raises_naming_shard_member_offset(make, member, fragment):
    shard, at = make()
    seen = []
    with pytest.raises(ShardError) as info:
        for m in iter_members(io.BytesIO(shard), SHARD, size=len(shard)):
            seen.append((m.name, m.data))
    err = info.value
    assert fragment in str(err)
    assert (err.shard, err.member) == (SHARD, member)
    assert err.offset is not None and at <= err.offset < len(shard) and err.offset % BLOCK == 0
    assert str(err).startswith(f"shard {SHARD}, ") and f"byte {err.offset}" in str(err)
    assert seen == BEFORE


@pytest.mark.parametrize("make, member, fragment", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_member_is_passed_over_under_on_damage(make, member, fragment):
    shard, _ = make()
    damage = []
    got = [(m.name, m.data) for m in read_members(shard, SHARD, on_damage=damage.append)]
    assert len(damage) == 1 and fragment in str(damage[0])
    # a header that claims more than the shard holds is a truncation: nothing after it can be trusted
    assert got == (BEFORE if "shard ends" in fragment else BEFORE + AFTER)


def test_member_over_max_member_size():
    shard, at = build([_regular("000000001.jpg", b"x" * 5000)])
    with pytest.raises(ShardError, match="member of 5000 bytes exceeds the limit of 4096") as info:
        read_members(shard, SHARD, max_member_size=4096)
    assert (info.value.member, info.value.offset) == ("000000001.jpg", at)
    damage = []
    assert [m.name for m in read_members(shard, SHARD, max_member_size=4096, on_damage=damage.append)] == \
        [n for n, _ in BEFORE + AFTER]
    assert len(damage) == 1


def _writer_shard() -> tuple[bytes, list[int]]:
    """Three members written by TarWriter, and their header offsets."""
    buf = io.BytesIO()
    writer, offsets = TarWriter(buf), []
    for name, data in BEFORE + [("000000001.cls", b"1" * 100)]:
        offsets.append(buf.tell())
        writer.add(name, data)
    writer.close()
    return buf.getvalue(), offsets


SHARD_BYTES, OFFSETS = _writer_shard()
# BEFORE[0] has 702 data bytes: header 0..512, data 512..1214, padding 1214..1536; BEFORE[1] at 1536;
# the last member at 2560, its data 3072..3172, padding to 3584; end marker 3584..4608.
TRUNCATIONS = [
    ("empty-file", 0, None, 0, "no end-of-archive marker", 0),
    ("mid-first-header", 100, None, 0, "partial header of 100 bytes", 0),
    ("mid-data", 1000, "000000000.jpg", 0, "claims 702 bytes but the shard ends at byte 1000", 0),
    ("mid-padding", 1300, "000000000.jpg", 0, "padding", 0),
    ("at-member-boundary", 1536, None, 1536, "no end-of-archive marker", 1),
    ("mid-second-header", 1536 + 511, None, 1536, "partial header of 511 bytes", 1),
    ("mid-last-data", 3100, "000000001.cls", 2560, "claims 100 bytes", 2),
    ("no-end-marker", 3584, None, 3584, "no end-of-archive marker", 3),
    ("mid-end-marker", 3584 + 200, None, 3584, "partial header of 200 bytes", 3),
]


@pytest.mark.parametrize("cut, member, offset, fragment, intact", [t[1:] for t in TRUNCATIONS],
                         ids=[t[0] for t in TRUNCATIONS])
@pytest.mark.parametrize("knows_size", [True, False], ids=["size-known", "streamed"])
def test_truncation_at_every_interesting_point(cut, member, offset, fragment, intact, knows_size):
    assert OFFSETS == [0, 1536, 2560] and len(SHARD_BYTES) == 4608
    data = SHARD_BYTES[:cut]
    seen = []
    with pytest.raises(ShardError, match="truncated") as info:
        for m in iter_members(io.BytesIO(data), SHARD, size=len(data) if knows_size else None):
            seen.append(m)
    assert (info.value.shard, info.value.member, info.value.offset) == (SHARD, member, offset)
    if knows_size or "claims" not in fragment:
        assert fragment in str(info.value)
    assert seen == read_members(SHARD_BYTES)[:intact]
    # the skip policy reports the same truncation once and keeps the same intact members
    damage = []
    assert list(iter_members(io.BytesIO(data), SHARD, on_damage=damage.append)) == seen and len(damage) == 1


def test_the_whole_second_end_block_is_optional():
    assert read_members(SHARD_BYTES[:-BLOCK]) == read_members(SHARD_BYTES)
    assert read_members(SHARD_BYTES[:-BLOCK + 100]) == read_members(SHARD_BYTES)


def _zeroed_header():
    data = bytearray(SHARD_BYTES)
    data[OFFSETS[1]:OFFSETS[1] + BLOCK] = bytes(BLOCK)  # a crash left a hole where a header was
    return bytes(data), OFFSETS[1], OFFSETS[1] + BLOCK  # the first non-zero byte is the member's data


def _flipped_end_block():
    data = bytearray(SHARD_BYTES)
    data[-1] = 0x01
    return bytes(data), len(SHARD_BYTES) - 2 * BLOCK, len(SHARD_BYTES) - 1


@pytest.mark.parametrize("make", [_zeroed_header, lambda: (SHARD_BYTES + b"appended", 3584, 4608),
                                  _flipped_end_block], ids=["zeroed-header", "appended", "flipped-end-block"])
def test_non_zero_bytes_after_the_end_marker(make):
    data, end, first = make()
    with pytest.raises(ShardError, match=f"non-zero bytes at byte {first} after the end-of-archive marker") as info:
        read_members(data, SHARD)
    assert info.value.offset == end


def test_zeroed_header_under_on_damage_recovers_the_members_after_it():
    data = bytearray(SHARD_BYTES)
    data[OFFSETS[1]:OFFSETS[1] + BLOCK] = bytes(BLOCK)
    damage = []
    got = read_members(bytes(data), SHARD, on_damage=damage.append)
    assert [m.name for m in got] == ["000000000.jpg", "000000001.cls"]
    assert got[1] == read_members(SHARD_BYTES)[2]
    assert [(d.shard, d.offset) for d in damage] == [(SHARD, OFFSETS[1])]


def test_bad_checksum_under_on_damage_resyncs_to_the_next_header():
    data = bytearray(SHARD_BYTES)
    data[OFFSETS[0] + 10] ^= 0x01
    damage = []
    assert read_members(bytes(data), SHARD, on_damage=damage.append) == read_members(SHARD_BYTES)[1:]
    assert [d.offset for d in damage] == [0] and "bad checksum" in str(damage[0])


class LyingStream(io.RawIOBase):
    """Unseekable, and much shorter than the header in front of it claims."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._inner.readinto(buffer)


def test_a_lying_size_is_never_allocated():
    shard, at = _claims_more_than_the_shard()
    tracemalloc.start()
    try:
        with pytest.raises(ShardError, match="truncated"):
            list(iter_members(io.BufferedReader(LyingStream(shard)), SHARD))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20  # the header claims 1 GiB; reads go in 4 MiB chunks


def test_a_lying_size_in_a_local_file_is_refused_before_reading(tmp_path):
    shard, at = _claims_more_than_the_shard()
    (tmp_path / SHARD).write_bytes(shard)
    with open(tmp_path / SHARD, "rb") as f:
        with pytest.raises(ShardError, match=f"shard ends at byte {len(shard)}"):
            list(iter_members(f, SHARD))
        assert f.tell() <= at + BLOCK + 4096  # it did not read on through the claimed gigabyte


def test_reading_hostile_shards_writes_nothing(tmp_path, monkeypatch):
    """Every hostile shard above, read with every file-creating call disabled, in an empty folder."""
    shards = [make()[0] for _, make, _, _ in HOSTILE]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the reader tried to touch the file system: {args!r:.200}")

    for module, name in [(builtins, "open"), (io, "open"), (os, "open"), (os, "mkdir"), (os, "makedirs"),
                         (os, "symlink"), (os, "link"), (os, "mknod"), (os, "mkfifo"), (os, "rename"),
                         (os, "replace"), (os, "chmod"), (os, "utime"), (shutil, "copyfileobj")]:
        monkeypatch.setattr(module, name, forbidden)
    for shard in shards:
        read_members(shard, SHARD, on_damage=lambda err: None)
        with pytest.raises(ShardError):
            read_members(shard, SHARD)
    monkeypatch.undo()
    assert list(work.iterdir()) == []
    assert not os.path.lexists("/tmp/shardkit-evil.jpg") and not (tmp_path / "evil.jpg").exists()
