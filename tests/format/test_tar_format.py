"""The tar container: what TarWriter writes, every reader reads; what others write, iter_members reads."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile

import pytest
import webdataset as wds

from shardkit.errors import ShardError
from shardkit.format.tar import (BLOCK, END_OF_ARCHIVE, Member, TarWriter, header_stamp, iter_members, member_header,
                                 read_members)

#: Names and sizes that stress the layout: empty, block-sized ±1, 100-byte and prefix-split names, UTF-8.
MEMBERS = [
    ("000000000.jpg", b"\xff\xd8" + bytes(range(256)) * 3),
    ("000000000.cls", b"7"),
    ("000000000.json", '{"path": "ému/ñ.jpg"}'.encode()),
    ("000000001.empty", b""),
    ("000000002.a", b"a" * 511),
    ("000000002.b", b"b" * 512),
    ("000000002.c", b"c" * 513),
    ("n" * 96 + ".cls", b"1"),  # exactly 100 bytes: the whole USTAR name field
    ("deep/" * 30 + "x.cls", b"2"),  # 151 bytes: USTAR splits it into prefix and name
    ("ünïcödé.json", b"{}"),
]


def write_shard(members=MEMBERS) -> bytes:
    buf = io.BytesIO()
    writer = TarWriter(buf)
    for name, data in members:
        writer.add(name, data)
    writer.close()
    assert writer.bytes_written == len(buf.getvalue())
    return buf.getvalue()


def headers(shard: bytes) -> list[bytes]:
    """The header blocks of a shard written by TarWriter (walked with the sizes we wrote)."""
    blocks, pos = [], 0
    for _, data in MEMBERS:
        blocks.append(shard[pos:pos + BLOCK])
        pos += BLOCK + len(data) + (-len(data) % BLOCK)
    assert shard[pos:] == END_OF_ARCHIVE
    return blocks


def test_round_trip_through_iter_members():
    shard = write_shard()
    members = read_members(shard)
    assert [(m.name, m.data) for m in members] == MEMBERS
    assert all(m.offset % BLOCK == 0 for m in members)
    assert [shard[m.offset + BLOCK:m.offset + BLOCK + len(m.data)] for m in members] == [d for _, d in MEMBERS]


def test_python_tarfile_reads_what_tarwriter_writes():
    with tarfile.open(fileobj=io.BytesIO(write_shard()), mode="r:") as tar:
        got = [(info.name, tar.extractfile(info).read()) for info in tar.getmembers()]
        assert all(info.isreg() and info.pax_headers == {} for info in tar.getmembers())
    assert got == MEMBERS


def test_gnu_tar_lists_what_tarwriter_writes(tmp_path):
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(write_shard())
    listed = subprocess.run(["tar", "tf", str(path)], check=True, capture_output=True, text=True)
    assert listed.stdout.splitlines() == [name for name, _ in MEMBERS]
    assert listed.stderr == ""


def test_webdataset_reads_what_tarwriter_writes(tmp_path):
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(write_shard(MEMBERS[:7]))
    samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002"]
    assert samples[0]["jpg"] == MEMBERS[0][1] and samples[0]["cls"] == b"7"
    assert samples[2]["b"] == b"b" * 512


def test_headers_are_plain_ustar_and_deterministic():
    shard = write_shard()
    assert write_shard() == shard
    for block in headers(shard):
        assert block[156:157] == tarfile.REGTYPE  # no PAX ('x') or GNU ('L') headers
        assert block[257:265] == b"ustar\x0000"
        assert block[136:148] == b"00000000000\0"  # mtime 0
        assert block[265:297] == bytes(32)  # no owner name
    # Pins the exact bytes: a change here changes every shard's sha256 (and needs a format version).
    assert hashlib.sha256(shard).hexdigest() == "318446dcbffead6dfdc98facf588c20cd389a66943dcbe1f24c9fa2261171a70"


def test_member_header_is_one_block_and_checksummed():
    header = member_header("000000001.cls", 3)
    assert len(header) == BLOCK
    assert tarfile.TarInfo.frombuf(header, "utf-8", "strict").size == 3


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../up.jpg", "a/../../b.jpg", "a\\b.jpg", "nul\0.jpg",
                                  "x" * 101, "p" * 160 + "/" + "n" * 101])
def test_writer_refuses_unsafe_or_unencodable_names(name):
    with pytest.raises(ValueError):
        TarWriter(io.BytesIO()).add(name, b"x")


def test_writer_accepts_memoryview():
    data = memoryview(bytes(range(100))).cast("B")
    assert read_members(write_shard([("000000000.bin", data)]))[0].data == bytes(range(100))


def tarfile_shard(fmt: int, members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        dirinfo = tarfile.TarInfo("somedir")
        dirinfo.type = tarfile.DIRTYPE
        tar.addfile(dirinfo)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000.25  # a float mtime forces PAX records
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LONG_NAMES = [("k" * 150 + ".jpg", b"long"), ("ünï/" * 40 + "c.cls", b"3"), ("short.cls", b"5")]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_reads_long_names_and_extended_headers_written_by_tarfile(fmt):
    shard = tarfile_shard(fmt, LONG_NAMES)
    assert (b"././@PaxHeader" if fmt == tarfile.PAX_FORMAT else b"././@LongLink") in shard
    assert [(m.name, m.data) for m in read_members(shard)] == LONG_NAMES


def test_reads_pax_global_headers():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "made by x"}) as tar:
        info = tarfile.TarInfo("a.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    assert buf.getvalue()[156:157] == tarfile.XGLTYPE
    assert [(m.name, m.data) for m in read_members(buf.getvalue())] == [("a.cls", b"1")]


def test_reads_what_webdataset_tarwriter_writes():
    buf = io.BytesIO()
    writer = wds.TarWriter(buf)
    for i in range(3):
        writer.write({"__key__": f"s{i}", "cls": str(i).encode(), "npy": b"\x93NUMPY" + bytes(i * 300)})
    writer.close()
    members = read_members(buf.getvalue())
    assert [m.name for m in members] == ["s0.cls", "s0.npy", "s1.cls", "s1.npy", "s2.cls", "s2.npy"]
    assert members[3].data == b"\x93NUMPY" + bytes(300)


class Trickle(io.RawIOBase):
    """A non-seekable stream that hands out at most ``step`` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size=-1) -> bytes:
        size = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._pos:self._pos + size]
        self._pos += len(chunk)
        return chunk


@pytest.mark.parametrize("step", [1, 7, 512, 100_000])
def test_short_reads_from_unseekable_streams(step):
    shard = write_shard()
    members = list(iter_members(Trickle(shard, step), "s"))
    assert [(m.name, m.data) for m in members] == MEMBERS


def test_local_file_size_is_found_by_itself(tmp_path):
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(write_shard()[:-2 * BLOCK - 512])  # drops the end marker and the last data block
    with open(path, "rb") as f, pytest.raises(ShardError, match="header claims 2 bytes but the shard ends"):
        list(iter_members(f, "shard-000000.tar"))


def test_member_larger_than_one_read_chunk():
    big = bytes(range(256)) * (5 << 12)  # 5 MiB, more than the reader's 4 MiB chunk
    assert read_members(write_shard([("000000000.tokens.npy", big)])) == [Member("000000000.tokens.npy", big, 0)]


def test_end_marker_of_one_block_and_record_padding_are_accepted():
    shard = write_shard()
    one_zero_block = shard[:-BLOCK]
    record_padded = shard + bytes(10240 - len(shard) % 10240)
    assert read_members(one_zero_block) == read_members(record_padded) == read_members(shard)


def test_names_that_are_not_utf8_come_through_byte_exact():
    """A latin-1 name (an old tar's) is no error: its bytes survive as surrogate escapes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tar:
        info = tarfile.TarInfo("café.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"4"))
    (member,) = read_members(buf.getvalue())
    assert member.name.encode("utf-8", "surrogateescape") == "café.cls".encode("latin-1")
    assert member.data == b"4"


@pytest.mark.parametrize("name", ["000000001.jpg", "a" * 100, "ü" * 50, "x/y/z.cls", "000000012.tokens.npy"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 12345, 8 ** 11 - 1])
def test_header_template_gives_tarfiles_bytes(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert member_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


@pytest.mark.parametrize("name", ["000000001.jpg", "d" * 50 + "/" + "a" * 90], ids=["short", "split-at-a-slash"])
@pytest.mark.parametrize("stamp", ["s" * 32, "stämp"])
def test_a_stamp_the_group_name_field_cannot_hold_is_refused_for_any_name(name, stamp):
    with pytest.raises(ValueError, match="at most 31 ASCII"):
        member_header(name, 10, stamp)
    assert header_stamp(member_header(name, 10, "s" * 31)) == "s" * 31
