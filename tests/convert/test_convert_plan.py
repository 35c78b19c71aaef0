"""The plan as plain numbers: order, shard cuts, token blocks, digests. No files."""

import numpy as np
import pytest

from shardkit.convert.options import ConvertOptions, parse_size
from shardkit.convert.plan import (SequenceTable, block_bytes, cut, digest, plan_sequences,
                                   sample_order)
from shardkit.convert.sources import SequenceFile, SequenceSource
import datagen
from shardkit.format.blocks import BLOCK_TOKEN_BYTES, NPY_HEADER
from shardkit.format.fields import npy_bytes as _npy
from shardkit.format.tar import END_OF_ARCHIVE, entry_bytes


@pytest.mark.parametrize("text, value", [("1000", 1000), ("10MB", 10**7), ("10mb", 10**7), ("1.5GiB", 3 * 2**29),
                                         ("64 KiB", 65536), ("2K", 2000), ("1TB", 10**12), (4096, 4096)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MB", "10XB", "-5MB", "0", "1e3", "ten", "1.5.2GB"])
def test_parse_size_errors(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_options_validate_and_record_params():
    params = ConvertOptions(max_shard_size="1MB").as_params()
    assert params["max_shard_size"] == 10**6 and set(params) >= {"seed", "shuffle", "max_shard_samples"}
    with pytest.raises(TypeError, match="colour"):
        ConvertOptions.from_kwargs({"colour": "red"})
    for bad in ({"validate": "none"}, {"quality": 0}, {"max_shard_samples": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            ConvertOptions(**bad)
    with pytest.raises(TypeError):
        ConvertOptions(shuffle="yes")


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_order_is_a_seeded_permutation(seed):
    opts = ConvertOptions(seed=seed)
    order = sample_order(1000, opts)
    assert sorted(order.tolist()) == list(range(1000))
    assert order.tolist() == np.random.default_rng(seed).permutation(1000).tolist()
    assert (sample_order(1000, ConvertOptions(seed=seed, shuffle=False)) == np.arange(1000)).all()


@pytest.mark.parametrize("sizes, max_bytes, max_samples, expected", [
    ([100] * 10, 10**9, 3, [0, 3, 6, 9, 10]),
    ([100] * 10, 10**9, None, [0, 10]),
    ([500] * 4, 1024 + 1000, None, [0, 2, 4]),       # two fit beside the end-of-archive blocks
    ([500] * 4, 1024 + 999, None, [0, 1, 2, 3, 4]),
    ([10_000, 100, 100], 2048, None, [0, 1, 3]),      # an oversized sample gets a shard of its own
    ([], 1000, 5, [0]),
])
def test_cut(sizes, max_bytes, max_samples, expected):
    assert cut(np.array(sizes, dtype=np.int64), max_bytes, max_samples).tolist() == expected


def test_npy_header_size_is_what_np_save_writes():
    for dtype in ("uint8", "uint16", "uint32", "uint64", "int8", "int64"):
        for n in (0, 1, 10**6):
            assert len(_npy(np.zeros(n, dtype))) == NPY_HEADER + n * np.dtype(dtype).itemsize


def _table(ntokens, labels=None, max_id=60_000):
    n = len(ntokens)
    return SequenceTable(SequenceSource("/nowhere", [SequenceFile("x.jsonl", "jsonl", 0)]), np.zeros(n, np.int32),
                         np.arange(n, dtype=np.int64), np.ones(n, np.int64), np.array(ntokens, np.int64),
                         np.array(labels if labels is not None else [-1] * n, np.int64), max_id, labels is not None)


@pytest.mark.parametrize("max_size, max_samples", [(256 * 10**6, None), (20_000, None), (10**9, 7), (3000, 4)])
@pytest.mark.parametrize("labelled", [True, False])
def test_sequence_plan_respects_every_limit(max_size, max_samples, labelled):
    rng = np.random.default_rng(0)
    ntokens = np.clip(rng.lognormal(4.0, 0.9, 2000).astype(int), 1, 2048)
    labels = rng.integers(0, 5, 2000) if labelled else None
    table = _table(ntokens, labels)
    opts = ConvertOptions(max_shard_size=max_size, max_shard_samples=max_samples)
    plan = plan_sequences(table, opts, "d", [])
    assert sorted(plan.order.tolist()) == list(range(2000))
    seen = []
    for i in range(plan.num_shards):
        blocks = plan.shard_blocks(i)
        assert blocks[0][0] == plan.shard_starts[i] and blocks[-1][1] == plan.shard_starts[i + 1]
        shard_bytes = len(END_OF_ARCHIVE)
        for start, end in blocks:
            rows = plan.order[start:end]
            assert ntokens[rows].sum() * 2 <= BLOCK_TOKEN_BYTES or end - start == 1
            exact = sum(entry_bytes(len(data)) for _, data in datagen.token_block_members(
                "k", np.zeros(ntokens[rows].sum(), np.uint16), ntokens[rows],
                None if labels is None else labels[rows]))
            assert block_bytes(ntokens[rows], None if labels is None else labels[rows], np.dtype("uint16")) == exact
            shard_bytes += exact
            seen.extend(range(start, end))
        assert shard_bytes <= max_size or len(blocks) == 1
        if max_samples:
            assert plan.shard_starts[i + 1] - plan.shard_starts[i] <= max_samples
    assert seen == list(range(2000))


def test_sequence_plan_of_nothing():
    plan = plan_sequences(_table([]), ConvertOptions(), "d", [])
    assert plan.num_shards == 0


def test_digest_covers_options_and_listing_only():
    listing = [("a/1.jpg", 10), ("b/2.jpg", 20)]
    base = digest("images", ConvertOptions(), listing)
    assert base == digest("images", ConvertOptions(), list(listing))
    assert len({base, digest("sequences", ConvertOptions(), listing), digest("images", ConvertOptions(seed=1), listing),
                digest("images", ConvertOptions(), listing[:1]), digest("images", ConvertOptions(),
                                                                      [("a/1.jpg", 11), ("b/2.jpg", 20)])}) == 5
