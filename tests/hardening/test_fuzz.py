"""Property-based fuzzing (hypothesis) of everything that parses bytes from outside: the tar reader
(with grouping and token-block decoding), the manifest loader and the sequence line parser.

Each property: damaged input raises only the parser's own error type (never another exception, a
hang or an allocation beyond the bounds), and what lies before the damage comes through intact.
Examples per property: ``fuzz_examples`` (60, or 2000 with ``--fuzz-long``).
"""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc

import numpy as np
import pytest
from fuzzing import fuzz
from hypothesis import strategies as st

from shardkit.errors import ManifestError, ShardError
from shardkit.format.manifest import TOKEN_DTYPES, Manifest, ShardInfo, shard_name
import datagen
from shardkit.format.records import sample_key, split_name
from shardkit.format.tar import BLOCK, TarWriter, iter_members, read_members

pytestmark = pytest.mark.timeout(300)  # a hang fails the test instead of blocking the suite

LIMIT = 1 << 16  # max_member_size in these properties: small, so the bound itself is exercised
SHARD = "fuzz.tar"


# --- shards ----------------------------------------------------------------------------------

DATA = st.one_of(st.binary(max_size=1100), st.sampled_from([b"", b"\0" * 700, b"x" * 511, b"y" * 512, b"z" * 513]))
MEMBERS = st.lists(st.tuples(st.sampled_from(["jpg", "cls", "json", "png"]), DATA), min_size=1, max_size=5)


def write(members: list[tuple[str, bytes]], fmt: str) -> bytes:
    """A shard as shardkit writes it, or as tarfile writes it (PAX or GNU headers, long names)."""
    buf = io.BytesIO()
    if fmt == "shardkit":
        writer = TarWriter(buf)
        for name, data in members:
            writer.add(name, data)
        writer.close()
    else:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT if fmt == "pax" else tarfile.GNU_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1.5  # float mtime: tarfile adds PAX records
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@st.composite
def shards(draw):
    """``(shard bytes, its members as read back, where each member's region ends)``.

    A member's region runs from the end of the previous one (so it covers its PAX / long-name
    headers) to the end of its padding; damage outside it must not touch it."""
    fmt = draw(st.sampled_from(["shardkit", "pax", "gnu"]))
    deep = "d/" * 60 if fmt != "shardkit" and draw(st.booleans()) else ""
    members = [(f"{deep}{sample_key(i // 2)}.{ext}", data) for i, (ext, data) in enumerate(draw(MEMBERS))]
    shard = write(members, fmt)
    read = read_members(shard)
    assert [(m.name, m.data) for m in read] == members
    ends = [m.offset + BLOCK + len(m.data) + (-len(m.data) % BLOCK) for m in read]
    return shard, read, ends


def read_all(data: bytes, *, streamed: bool = False, on_damage=None) -> tuple[list, ShardError | None]:
    """The members the reader yields before it stops, and the ShardError it stopped with, if any.

    Any other exception type propagates and fails the property."""
    got = []
    try:
        for m in iter_members(io.BytesIO(data), SHARD, max_member_size=LIMIT,
                              size=None if streamed else len(data), on_damage=on_damage):
            got.append(m)
    except ShardError as err:
        assert err.shard == SHARD and err.offset is not None and 0 <= err.offset <= len(data)
        return got, err
    return got, None


def intact_before(members, ends, position: int) -> list:
    return [m for m, end in zip(members, ends) if end <= position]


def test_random_bytes(fuzz_examples):
    @fuzz(fuzz_examples, st.one_of(st.binary(max_size=4096), st.binary(min_size=512, max_size=512)), st.booleans())
    def prop(data, streamed):
        read_all(data, streamed=streamed)
        damage = []
        read_all(data, streamed=streamed, on_damage=damage.append)
        assert all(isinstance(d, ShardError) for d in damage)


def test_truncation_keeps_every_member_before_the_cut(fuzz_examples):
    @fuzz(fuzz_examples, shards(), st.data(), st.booleans())
    def prop(shard, data, streamed):
        shard_bytes, members, ends = shard
        cut = data.draw(st.integers(0, len(shard_bytes) - 1))
        got, err = read_all(shard_bytes[:cut], streamed=streamed)
        complete = cut >= ends[-1] + BLOCK  # the first end-of-archive block is there
        assert (err is None) == complete, err
        assert got == (members if complete else intact_before(members, ends, cut))
        if not complete:
            assert "truncated" in str(err)


def test_bit_flips(fuzz_examples):
    @fuzz(fuzz_examples, shards(), st.data(), st.booleans())
    def prop(shard, data, streamed):
        shard_bytes, members, ends = shard
        position = data.draw(st.integers(0, len(shard_bytes) - 1))
        damaged = bytearray(shard_bytes)
        damaged[position] ^= 1 << data.draw(st.integers(0, 7))
        got, _ = read_all(bytes(damaged), streamed=streamed)
        intact = intact_before(members, ends, position)
        assert got[:len(intact)] == intact
        # under on_damage, every member the flip did not touch comes through, in order, and at most
        # the one it touched differs (a flip in its data; data bytes are sha256's job, not tar's)
        damage = []
        got, err = read_all(bytes(damaged), streamed=streamed, on_damage=damage.append)
        assert err is None
        starts = [0] + ends[:-1]
        untouched = [m for m, start, end in zip(members, starts, ends) if not start <= position < end]
        assert [m for m in got if m in untouched] == untouched
        assert len([m for m in got if m not in members]) <= 1


HEADER_FIELDS = [(0, 100), (100, 108), (124, 136), (136, 148), (148, 156), (156, 157), (157, 257), (257, 265),
                 (345, 500)]  # name, mode, size, mtime, checksum, type, linkname, magic+version, prefix


def test_header_mutations_stay_within_bounds(fuzz_examples):
    """A header field set to anything (its checksum fixed or not): only ShardError, no big buffers."""
    @fuzz(fuzz_examples, shards(), st.data(), st.booleans(), st.booleans())
    def prop(shard, data, fix_checksum, streamed):
        shard_bytes, members, ends = shard
        header = data.draw(st.sampled_from(sorted({m.offset for m in members} | set(ends[:-1]))))
        start, stop = data.draw(st.sampled_from(HEADER_FIELDS))
        value = data.draw(st.one_of(
            st.binary(min_size=stop - start, max_size=stop - start),
            st.sampled_from([b"\xff" * 12, b"\x80" + b"\xff" * 11, b"77777777777", b"0" * 11 + b"\0", b"../" * 33,
                             b"x", b"2", b"L", b"K", b"S", b"\0"]).map(lambda v: v[:stop - start].ljust(stop - start, b"\0"))))
        damaged = bytearray(shard_bytes)
        damaged[header + start:header + stop] = value
        if fix_checksum:
            damaged[header + 148:header + 156] = b" " * 8
            damaged[header + 148:header + 156] = b"%06o\0 " % sum(damaged[header:header + BLOCK])
        tracemalloc.start()
        try:
            got, _ = read_all(bytes(damaged), streamed=streamed)
            read_all(bytes(damaged), streamed=streamed, on_damage=lambda err: None)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2 * LIMIT + 4 * len(shard_bytes) + (256 << 10), peak
        intact = intact_before(members, ends, header)
        assert got[:len(intact)] == intact


def test_zeroed_blocks(fuzz_examples):
    """A crash that leaves zero-filled holes: reported (raise) or passed over (skip), never silent loss."""
    @fuzz(fuzz_examples, shards(), st.data())
    def prop(shard, data):
        shard_bytes, members, ends = shard
        block = data.draw(st.integers(0, len(shard_bytes) // BLOCK - 1))
        count = data.draw(st.integers(1, 4))
        damaged = bytearray(shard_bytes)
        damaged[block * BLOCK:(block + count) * BLOCK] = bytes(len(damaged[block * BLOCK:(block + count) * BLOCK]))
        damaged = bytes(damaged)
        got, err = read_all(damaged)
        if err is None:
            # Only data or padding was zeroed, so every member is there by name, or the hole turned
            # the shard's tail into zeros, which tar cannot tell from its end-of-archive marker (the
            # loader's per-shard sample count, from the manifest, catches that case).
            names = {m.name for m in got}
            for m in members:
                assert m.name in names or damaged[m.offset:].count(0) == len(damaged) - m.offset
        assert got[:len(intact_before(members, ends, block * BLOCK))] == intact_before(members, ends, block * BLOCK)
        skipped_got, _ = read_all(damaged, on_damage=lambda e: None)
        starts = [0] + ends[:-1]
        hole = range(block * BLOCK, (block + count) * BLOCK)
        untouched = [m for m, s, e in zip(members, starts, ends) if e <= hole.start or s >= hole.stop]
        assert [m for m in skipped_got if m in untouched] == untouched


# --- token shards: tar + grouping + decode_block -----------------------------------------------

SEQUENCES = st.lists(st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=40), min_size=1, max_size=12)


@st.composite
def token_shards(draw):
    """A shard of token blocks as the converter writes them, and the sequences per block key."""
    seqs = draw(SEQUENCES)
    labels = draw(st.booleans())
    per_block = draw(st.integers(1, 5))
    dtype = np.dtype(draw(st.sampled_from(TOKEN_DTYPES[1:])))
    buf = io.BytesIO()
    writer, expected = TarWriter(buf), {}
    for b, first in enumerate(range(0, len(seqs), per_block)):
        block = seqs[first:first + per_block]
        lab = np.arange(first, first + len(block)) - 3 if labels else None
        for name, data in datagen.token_block_members(sample_key(b), np.concatenate([np.array(s, dtype) for s in block]),
                                        np.array([len(s) for s in block]), lab):
            writer.add(name, data)
        expected[sample_key(b)] = (block, None if lab is None else lab.tolist())
    writer.close()
    return buf.getvalue(), expected


def decode_groups(members) -> dict[str, tuple[list, list | None]]:
    """Group members by key, as the loader does, and decode each block; only ShardError may escape."""
    groups: dict[str, dict[str, bytes]] = {}
    for m in members:
        key, ext = split_name(m.name)
        groups.setdefault(key, {})[ext] = m.data
    decoded = {}
    for key, by_ext in groups.items():
        try:
            tokens, offsets, labels = datagen.decode_token_block(by_ext, SHARD, key)
        except ShardError as err:
            assert err.shard == SHARD
            continue
        decoded[key] = ([tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])],
                        None if labels is None else labels.tolist())
    return decoded


def test_token_shards_damaged_anywhere(fuzz_examples):
    @fuzz(fuzz_examples, token_shards(), st.data())
    def prop(shard, data):
        shard_bytes, expected = shard
        assert decode_groups(read_members(shard_bytes)) == expected
        members = read_members(shard_bytes)
        ends = [m.offset + BLOCK + len(m.data) + (-len(m.data) % BLOCK) for m in members]
        damaged = bytearray(shard_bytes)
        kind = data.draw(st.sampled_from(["flip", "cut", "overwrite"]))
        position = data.draw(st.integers(0, len(damaged) - 1))
        if kind == "flip":
            damaged[position] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del damaged[position:]
        else:
            junk = data.draw(st.binary(min_size=1, max_size=64))
            damaged[position:position + len(junk)] = junk
        for on_damage in (None, lambda err: None):
            got, _ = read_all(bytes(damaged), on_damage=on_damage)
            decoded = decode_groups(got)
            # every block whose members all end before the damage decodes to the original sequences
            for key, (seqs, labels) in expected.items():
                keyed = [end for m, end in zip(members, ends) if split_name(m.name)[0] == key]
                if max(keyed) <= position:
                    assert decoded[key] == (seqs, labels)


# --- the manifest ----------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)


def valid_manifest_doc(kind: str) -> dict:
    shards = [ShardInfo(shard_name(i), 3 + i, 10240 * (i + 1), f"{i:02x}" * 32) for i in range(2)]
    manifest = Manifest(kind=kind, shards=shards, params={"seed": 0}, skipped=[{"path": "a", "reason": "b"}],
                        classes=["a", "b"] if kind == "images" else None,
                        sequences={"dtype": "uint16", "has_labels": False} if kind == "sequences" else None)
    return json.loads(manifest.to_json())


def parse_manifest(text) -> Manifest | None:
    """The manifest, or None when refused; only ManifestError may escape from_json."""
    try:
        manifest = Manifest.from_json(text, "m.json")
    except ManifestError as err:
        assert str(err).startswith("m.json: ")
        return None
    assert Manifest.from_json(manifest.to_json()) == manifest  # what is accepted round-trips
    return manifest


def test_manifest_random_documents(fuzz_examples):
    @fuzz(fuzz_examples, st.one_of(JSON.map(json.dumps), st.text(max_size=200), st.binary(max_size=200)))
    def prop(text):
        parse_manifest(text)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, prefix + (i,))


def test_manifest_mutations(fuzz_examples):
    @fuzz(fuzz_examples, st.sampled_from(["images", "sequences"]), st.data())
    def prop(kind, data):
        doc = valid_manifest_doc(kind)
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(list(_paths(doc))[1:]))
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()):
                parent[path[-1]] = data.draw(JSON)
            elif isinstance(parent, dict):
                del parent[path[-1]]
        text = json.dumps(doc)
        manifest = parse_manifest(text)
        if manifest is not None:  # what was accepted is consistent
            assert manifest.kind in ("images", "sequences") and all(s.samples >= 0 for s in manifest.shards)
            assert len({s.name for s in manifest.shards}) == len(manifest.shards)
        cut = data.draw(st.integers(0, len(text)))
        flip = data.draw(st.integers(0, max(0, len(text) - 1)))
        raw = bytearray(text.encode())
        if raw:
            raw[flip] ^= 1 << data.draw(st.integers(0, 7))
        parse_manifest(text[:cut])
        parse_manifest(bytes(raw))


# --- the converter's sequence line parser -------------------------------------------------------

def _parser():
    from shardkit.convert.sources import RecordError, parse_line
    return parse_line, RecordError


def _expected_jsonl(record) -> tuple[list[int], int | None] | None:
    """The oracle: the issue's rules for a JSONL record, or None when it must be refused."""
    if not isinstance(record, dict) or not isinstance(record.get("tokens"), list) or not record["tokens"]:
        return None
    tokens, label = record["tokens"], record.get("label")
    if not all(type(t) is int and 0 <= t < 2**63 for t in tokens):  # a stream hands ids out as int64
        return None
    if label is not None and not (type(label) is int and -2**63 <= label < 2**63):
        return None
    return tokens, label


TOKEN = st.one_of(st.integers(0, 2**64 + 5), st.integers(-5, -1), st.floats(), st.booleans(), st.text(max_size=3),
                  st.none(), st.lists(st.integers(0, 3), max_size=2))
RECORDS = st.one_of(
    st.fixed_dictionaries({"tokens": st.lists(st.integers(0, 2**64 - 1), max_size=8)},
                          optional={"label": st.one_of(st.none(), st.integers(-2**64, 2**64), st.floats()),
                                    "x": JSON}),
    st.fixed_dictionaries({"tokens": st.lists(TOKEN, max_size=6)}, optional={"label": TOKEN}),
    JSON)


def test_jsonl_parse_line_matches_the_rules(fuzz_examples):
    parse_line, RecordError = _parser()

    @fuzz(fuzz_examples, RECORDS)
    def prop(record):
        line = json.dumps(record).encode() + b"\n"
        expected = _expected_jsonl(record)
        try:
            tokens, label = parse_line(line, "jsonl")
        except RecordError as err:
            assert expected is None, f"valid record refused: {err}"
            assert err.reason
            return
        assert expected is not None, f"invalid record accepted: {line!r}"
        assert tokens.tolist() == expected[0] and label == expected[1]


def _expected_txt(line: bytes) -> list[int] | None:
    parts = line.split()
    if not parts or not all(p.isdigit() for p in parts) or any(int(p) >= 2**63 for p in parts):
        return None
    return [int(p) for p in parts]


TXT_LINES = st.one_of(
    st.lists(st.one_of(st.integers(0, 2**64 + 5).map(str), st.integers(-9, -1).map(str),
                       st.from_regex(r"\A0{0,25}[0-9]{1,3}\Z"), st.text(max_size=3)),
             max_size=8).map(lambda parts: " ".join(parts).encode("utf-8", "surrogatepass")),
    st.binary(max_size=64))


def test_txt_parse_line_matches_the_rules(fuzz_examples):
    parse_line, RecordError = _parser()

    @fuzz(fuzz_examples, TXT_LINES)
    def prop(line):
        expected = _expected_txt(line)
        try:
            tokens, label = parse_line(line, "txt")
        except RecordError:
            assert expected is None, f"valid line refused: {line!r}"
            return
        assert tokens.tolist() == expected and label is None


@pytest.mark.parametrize("line, tokens", [
    (b"0" * 21, [0]),  # zero-padded ids are still ids below 2**63
    (b"00000000000000000000009223372036854775807", [2**63 - 1]),
    (b"9223372036854775807 0", [2**63 - 1, 0]),
    (b" 1\t2\r\n", [1, 2]),
])
def test_txt_parse_line_edge_cases(line, tokens):
    """Found by the property above with --fuzz-long; pinned here so the default run checks them."""
    parse_line, _ = _parser()
    got, label = parse_line(line, "txt")
    assert got.tolist() == tokens and label is None


def test_parse_line_on_random_bytes(fuzz_examples):
    parse_line, RecordError = _parser()

    @fuzz(fuzz_examples, st.binary(max_size=200), st.sampled_from(["jsonl", "txt"]))
    def prop(line, fmt):
        try:
            parse_line(line, fmt)
        except RecordError:
            pass


def test_deeply_nested_json_lines_and_manifests():
    """Recursion bombs: a RecursionError must not escape either parser."""
    parse_line, RecordError = _parser()
    bomb = b'{"tokens": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(RecordError):
        parse_line(bomb, "jsonl")
    with pytest.raises(ManifestError):
        Manifest.from_json(bomb)


# --- field codecs, block layouts and the index ---------------------------------------------------

FIELD_NAMES = st.sampled_from(["jpg", "png", "webp", "cls", "txt", "json", "npy", "mask.npy", "caption.txt", "bin",
                               "pth", "pickle"])


def test_field_codecs_raise_only_shard_errors(fuzz_examples):
    from shardkit.format.fields import codec_of

    @fuzz(fuzz_examples, FIELD_NAMES, st.binary(max_size=2000), st.data())
    def prop(field, payload, data):
        if data.draw(st.booleans()):  # a valid member, then damaged at a few places
            from shardkit.format.fields import npy_bytes
            payload = bytearray(data.draw(st.sampled_from([
                b"7", "ünï".encode(), b'{"a": [1, 2]}', npy_bytes(np.arange(6, dtype=np.int16).reshape(2, 3)),
                datagen.encode_image("RGB", "JPEG", np.random.default_rng(0)),
                datagen.encode_image("RGB", "PNG", np.random.default_rng(1))])))
            for _ in range(data.draw(st.integers(1, 4))):
                if payload:
                    payload[data.draw(st.integers(0, len(payload) - 1))] ^= data.draw(st.integers(1, 255))
            payload = bytes(payload)
        try:
            codec_of(field).decode(payload, SHARD, f"k.{field}")
        except ShardError as err:
            assert err.shard == SHARD and err.member == f"k.{field}"


def test_schema_decoding_of_groups_raises_only_shard_errors(fuzz_examples):
    from shardkit.format.blocks import row_layout, token_layout
    from shardkit.format.schema import Schema

    layouts = [token_layout("uint16"), token_layout(None), row_layout(4)]

    @fuzz(fuzz_examples, st.dictionaries(st.sampled_from(["jpg", "cls", "json", "tokens.npy", "lengths.npy",
                                                          "labels.npy", "features.npy"]), st.binary(max_size=300),
                                         max_size=4), st.integers(0, len(layouts) - 1))
    def prop(group, which):
        for call in (lambda: Schema.images().decode_group(group, SHARD, "k"),
                     lambda: layouts[which].decode(group, SHARD, "k"),
                     lambda: layouts[which].count(group, SHARD, "k")):
            try:
                call()
            except ShardError as err:
                assert err.shard == SHARD


def test_index_sidecars_raise_only_shard_errors(fuzz_examples):
    from shardkit.format.fields import npy_bytes
    from shardkit.format.index import ShardIndex

    @fuzz(fuzz_examples, st.lists(st.tuples(st.integers(-5, 10**6), st.integers(-5, 100)), max_size=6),
          st.one_of(st.none(), st.integers(0, 10**6)), st.binary(max_size=100))
    def prop(rows, size, junk):
        for data in (npy_bytes(np.array(rows or [[0, 0]], dtype=np.int64).reshape(-1, 2)), junk):
            try:
                index = ShardIndex.from_bytes(data, SHARD, size)
            except ShardError:
                continue
            assert index.offsets == tuple(sorted(set(index.offsets))) and all(o % BLOCK == 0 for o in index.offsets)
