"""Records: member naming, image samples, token blocks, and the .npy decoder that never unpickles."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest

from shardkit.errors import ShardError
from shardkit.format.manifest import TOKEN_DTYPES
from shardkit.format.records import (LABELS_EXT, LENGTHS_EXT, TOKENS_EXT, block_members, decode_block,
                                     image_members, load_npy, sample_key, smallest_signed, smallest_unsigned,
                                     split_name)


def npy(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


def test_keys_and_names():
    assert sample_key(0) == "000000000" and sample_key(123_456_789) == "123456789"
    assert split_name("000000012.tokens.npy") == ("000000012", "tokens.npy")
    assert split_name("000000012.jpg") == ("000000012", "jpg")
    assert split_name("noext") == ("noext", "")


def test_image_members():
    members = dict(image_members("000000004", "png", b"\x89PNG", 2, {"path": "dög/a b.png", "label": 2, "class": "dög"}))
    assert members["000000004.png"] == b"\x89PNG" and members["000000004.cls"] == b"2"
    assert json.loads(members["000000004.json"]) == {"path": "dög/a b.png", "label": 2, "class": "dög"}


@pytest.mark.parametrize("largest, dtype", [(0, "uint8"), (255, "uint8"), (256, "uint16"), (65535, "uint16"),
                                            (65536, "uint32"), (2**32, "uint64"), (2**64 - 1, "uint64")])
def test_smallest_unsigned(largest, dtype):
    assert smallest_unsigned(largest) == np.dtype(dtype)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_smallest_unsigned_refuses(value):
    with pytest.raises(ValueError):
        smallest_unsigned(value)


@pytest.mark.parametrize("low, high, dtype", [(-1, 4, "int8"), (-128, 127, "int8"), (-129, 0, "int16"),
                                              (0, 2**31, "int64"), (-2**63, 2**63 - 1, "int64")])
def test_smallest_signed(low, high, dtype):
    assert smallest_signed(low, high) == np.dtype(dtype)


def _block(dtype: str, labels: bool):
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    seqs = [rng.integers(0, top, n, dtype=dtype, endpoint=True) for n in (1, 5, 300, 2)]
    seqs[0][0] = top  # the largest id must survive
    lab = np.array([-1, 0, 4, 1_000_000]) if labels else None
    lengths = np.array([len(s) for s in seqs])
    return seqs, lengths, lab


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "no-labels"])
@pytest.mark.parametrize("dtype", TOKEN_DTYPES)
def test_block_round_trip(dtype, labels):
    seqs, lengths, lab = _block(dtype, labels)
    members = block_members("000000007", np.concatenate(seqs), lengths, lab)
    names = [name for name, _ in members]
    assert names == ["000000007.tokens.npy", "000000007.lengths.npy"] + (["000000007.labels.npy"] if labels else [])
    by_ext = {split_name(name)[1]: data for name, data in members}
    tokens, offsets, got_labels = decode_block(by_ext, "s.tar", "000000007")
    assert tokens.dtype == np.dtype(dtype) and offsets.dtype == np.int64
    assert [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == [s.tolist() for s in seqs]
    assert (got_labels is None) if not labels else got_labels.tolist() == lab.tolist()
    assert np.load(io.BytesIO(by_ext[LENGTHS_EXT])).dtype == np.uint16  # smallest that holds 300


def test_load_npy_gives_native_writable_arrays():
    array = load_npy(npy(np.arange(5, dtype=">u4")), "s", "m")
    assert array.dtype == np.dtype("=u4") and array.tolist() == [0, 1, 2, 3, 4]
    array[0] = 9  # torch.from_numpy warns on read-only arrays
    assert load_npy(npy(np.array([], dtype=np.uint8)), "s", "m").tolist() == []


class Explode:
    """Unpickling this creates a file: the proof that a decoder ran code from a shard."""

    target = None

    def __reduce__(self):
        return (open, (self.target, "w"))


def _npy_version(major: int) -> bytes:
    data = bytearray(npy(np.arange(3, dtype=np.uint8)))
    data[6] = major
    return bytes(data)


def _header_claims(count: int) -> bytes:
    """A valid .npy header for ``count`` uint64 values, followed by only 3 of them."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u8", "fortran_order": False, "shape": (count,)})
    return buf.getvalue() + bytes(24)


@pytest.mark.parametrize("make, fragment", [
    (lambda: npy(np.array([1, "a"], dtype=object), allow_pickle=True), "1-D integer"),
    (lambda: npy(np.arange(3, dtype=np.float32)), "1-D integer"),
    (lambda: npy(np.arange(4, dtype=np.uint8).reshape(2, 2)), "shape (2, 2)"),
    (lambda: npy(np.array(7, dtype=np.int64)), "shape ()"),
    (lambda: npy(np.array([True])), "1-D integer"),
    (lambda: npy(np.zeros(2, dtype=[("a", "<u4")])), "1-D integer"),
    (lambda: npy(np.arange(3, dtype=np.uint8))[:-1], "holds 2 bytes"),
    (lambda: npy(np.arange(3, dtype=np.uint8)) + b"x", "holds 4 bytes"),
    (lambda: _header_claims(10**15), "header says 1000000000000000 values"),
    (lambda: _npy_version(3), "not a valid .npy"),
    (lambda: b"", "not a valid .npy"),
    (lambda: b"\x93NUMPY\x01\x00\xff\xff{'descr'", "not a valid .npy"),
    (lambda: b"PK\x03\x04" + bytes(60), "not a valid .npy"),  # an .npz (zip) is not an array
    (lambda: pickle.dumps([1, 2, 3]), "not a valid .npy"),
], ids=["object", "float", "2-d", "0-d", "bool", "structured", "short", "long", "huge-claim", "v3", "empty",
        "bad-header", "npz", "pickle"])
def test_load_npy_refuses(make, fragment):
    with pytest.raises(ShardError, match="shard s.tar, member 'k.tokens.npy'") as info:
        load_npy(make(), "s.tar", "k.tokens.npy")
    assert fragment in str(info.value)


def test_pickled_members_never_run(tmp_path):
    Explode.target = str(tmp_path / "pwned")
    payloads = [pickle.dumps(Explode()), npy(np.array([Explode()], dtype=object), allow_pickle=True)]
    assert not (tmp_path / "pwned").exists()
    for payload in payloads:
        with pytest.raises(ShardError):
            load_npy(payload, "s.tar", "k.tokens.npy")
        with pytest.raises(ShardError):
            decode_block({TOKENS_EXT: payload, LENGTHS_EXT: payload}, "s.tar", "k")
    assert not (tmp_path / "pwned").exists()


def _members(tokens, lengths, labels=None):
    members = {TOKENS_EXT: npy(np.asarray(tokens[0], dtype=tokens[1])),
               LENGTHS_EXT: npy(np.asarray(lengths[0], dtype=lengths[1]))}
    if labels is not None:
        members[LABELS_EXT] = npy(np.asarray(labels, dtype=np.int8))
    return members


@pytest.mark.parametrize("members, fragment", [
    ({LENGTHS_EXT: npy(np.array([1], np.uint8))}, "lacks member k.tokens.npy"),
    ({TOKENS_EXT: npy(np.array([1], np.uint8))}, "lacks member k.lengths.npy"),
    (_members(([1, 2, 3], "u1"), ([1, 1], "u1")), "sum to 2 but it holds 3 tokens"),
    (_members(([1, 2, 3], "u1"), ([4], "u1")), "a length of 4 exceeds"),
    (_members(([1, 2], "u1"), ([2**64 - 1, 1], "u8")), "exceeds the block's 2 tokens"),
    (_members(([1, 2], "i2"), ([2], "u1")), "member 'k.tokens.npy'"),
    (_members(([1, 2], "u1"), ([-1, 3], "i1")), "member 'k.lengths.npy'"),
    (_members(([1, 2], "u1"), ([1, 1], "u1"), labels=[1]), "1 labels for 2 sequences"),
    ({**_members(([1], "u1"), ([1], "u1")), LABELS_EXT: npy(np.array([0.5]))}, "member 'k.labels.npy'"),
], ids=["no-tokens", "no-lengths", "sum", "too-long", "overflow", "signed-tokens", "negative-length",
        "labels-count", "float-labels"])
def test_decode_block_refuses(members, fragment):
    with pytest.raises(ShardError, match="shard s.tar") as info:
        decode_block(members, "s.tar", "k")
    assert fragment in str(info.value)
