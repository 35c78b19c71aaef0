"""Blocks: many small samples under one key, as columns (token sequences, tabular rows)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from shardkit.errors import ShardError
from shardkit.format.blocks import NPY_HEADER, row_layout, smallest_signed, smallest_unsigned, token_layout
from shardkit.format.fields import npy_bytes
from shardkit.format.manifest import TOKEN_DTYPES
from shardkit.format.records import split_name
from shardkit.format.tar import entry_bytes

TOKENS_EXT, LENGTHS_EXT, LABELS_EXT = "tokens.npy", "lengths.npy", "labels.npy"


def npy(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


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
def test_token_block_round_trip(dtype, labels):
    seqs, lengths, lab = _block(dtype, labels)
    layout = token_layout(dtype)
    members = layout.members("000000007", {"tokens": np.concatenate(seqs), "label": lab}, lengths=lengths)
    names = [name for name, _ in members]
    assert names == ["000000007.tokens.npy", "000000007.lengths.npy"] + (["000000007.labels.npy"] if labels else [])
    by_ext = {split_name(name)[1]: data for name, data in members}
    assert layout.count(by_ext, "s.tar", "000000007") == len(seqs)
    block = layout.decode(by_ext, "s.tar", "000000007")
    assert block.arrays["tokens"].dtype == np.dtype(dtype) and block.offsets["tokens"].dtype == np.int64
    assert [block.value("tokens", i).tolist() for i in range(block.size)] == [s.tolist() for s in seqs]
    assert ("label" not in block.arrays) if not labels else block.arrays["label"].tolist() == lab.tolist()
    assert np.load(io.BytesIO(by_ext[LENGTHS_EXT])).dtype == np.uint16  # smallest that holds 300
    sizes = {"tokens": len(np.concatenate(seqs)) * np.dtype(dtype).itemsize}
    if labels:
        sizes["label"] = len(lab) * smallest_signed(int(lab.min()), int(lab.max())).itemsize
    assert layout.block_bytes(sizes, len(seqs), int(lengths.max())) == sum(entry_bytes(len(d)) for _, d in members)


def test_npy_header_size_is_what_np_save_writes():
    for shape in ((0,), (1,), (10**5,), (7, 20), (0, 20)):
        for dtype in ("uint8", "uint64", "float32", "int64"):
            assert len(npy_bytes(np.zeros(shape, dtype))) == NPY_HEADER + int(np.prod(shape)) * np.dtype(dtype).itemsize


def test_rows_round_trip():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(9, 20)).astype(np.float32), rng.integers(-3, 300, 9)
    layout = row_layout(20)
    members = {split_name(n)[1]: d for n, d in layout.members("000000001", {"features": features, "label": labels})}
    assert sorted(members) == ["features.npy", "labels.npy"]
    block = layout.decode(members, "s.tar", "000000001")
    assert block.size == 9 and layout.count(members, "s.tar", "000000001") == 9
    assert np.array_equal(block.arrays["features"], features) and block.arrays["label"].tolist() == labels.tolist()
    assert np.array_equal(block.value("features", 3), features[3]) and block.value("label", 3) == labels[3]
    with pytest.raises(ShardError, match="rows of 20 values, the manifest says 21"):
        row_layout(21).decode(members, "s.tar", "000000001")


def _members(tokens, lengths, labels=None):
    members = {TOKENS_EXT: npy(np.asarray(tokens[0], dtype=tokens[1])),
               LENGTHS_EXT: npy(np.asarray(lengths[0], dtype=lengths[1]))}
    if labels is not None:
        members[LABELS_EXT] = npy(np.asarray(labels, dtype=np.int8))
    return members


@pytest.mark.parametrize("members, fragment", [
    ({LENGTHS_EXT: npy(np.array([1], np.uint8))}, "lacks member k.tokens.npy"),
    ({TOKENS_EXT: npy(np.array([1], np.uint8))}, "lacks member k.lengths.npy"),
    (_members(([1, 2, 3], "u1"), ([1, 1], "u1")), "sum to 2 but it holds 3 values"),
    (_members(([1, 2, 3], "u1"), ([4], "u1")), "a length of 4 exceeds"),
    (_members(([1, 2], "u1"), ([2**64 - 1, 1], "u8")), "exceeds the block's 2 values"),
    (_members(([1, 2], "i2"), ([2], "u1")), "member 'k.tokens.npy'"),
    (_members(([1, 2], "u1"), ([-1, 3], "i1")), "member 'k.lengths.npy'"),
    (_members(([1, 2], "u1"), ([1, 1], "u1"), labels=[1]), "1 values for 2 samples"),
    ({**_members(([1], "u1"), ([1], "u1")), LABELS_EXT: npy(np.array([0.5]))}, "member 'k.labels.npy'"),
], ids=["no-tokens", "no-lengths", "sum", "too-long", "overflow", "signed-tokens", "negative-length",
        "labels-count", "float-labels"])
def test_decode_block_refuses(members, fragment):
    with pytest.raises(ShardError, match="shard s.tar") as info:
        token_layout(None).decode(members, "s.tar", "k")
    assert fragment in str(info.value)
