"""Collation and length bucketing: padding, sorting, masks, every sample once, token budgets."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from stream_helpers import batch_ids
from shardkit.stream.collate import BucketBatchSampler, image_collate, pad_collate
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.loader import make_loader


def seqs(lengths, label=3):
    return [(torch.arange(1, n + 1) * 10 + i, label + i) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("padding_value", [0, -100])
def test_pad_collate_pads_to_the_longest(padding_value):
    batch = seqs([3, 1, 4])
    padded, lengths, labels = pad_collate(batch, padding_value=padding_value)
    assert padded.dtype == torch.int64 and padded.shape == (3, 4)
    assert lengths.tolist() == [3, 1, 4] and labels.tolist() == [3, 4, 5]
    for row, (tokens, _) in zip(padded, batch):
        assert torch.equal(row[:len(tokens)], tokens)
        assert (row[len(tokens):] == padding_value).all()


def test_pad_collate_sorts_and_masks():
    batch = seqs([2, 5, 2, 3])
    padded, lengths, labels, mask = pad_collate(batch, sort_by_length=True, return_mask=True)
    assert lengths.tolist() == [5, 3, 2, 2]
    assert labels.tolist() == [4, 6, 3, 5], "stable: equal lengths keep their order"
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == lengths.tolist()
    assert torch.equal(mask, padded != 0)
    torch.nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True)  # accepted as sorted


def test_pad_collate_takes_numpy_tokens():
    padded, lengths, _ = pad_collate([(np.array([1, 2], np.uint16), 0), (np.array([7], np.uint16), 1)])
    assert padded.tolist() == [[1, 2], [7, 0]] and padded.dtype == torch.int64


def test_image_collate_stacks_uint8():
    images = [torch.randint(0, 255, (3, 5, 4), dtype=torch.uint8) for _ in range(3)]
    stacked, labels = image_collate([(im, i) for i, im in enumerate(images)])
    assert stacked.shape == (3, 3, 5, 4) and stacked.dtype == torch.uint8 and torch.equal(stacked[1], images[1])
    assert labels.tolist() == [0, 1, 2] and labels.dtype == torch.int64


def test_image_collate_names_the_size_problem():
    with pytest.raises(ValueError, match="differ in size.*RandomResizedCrop"):
        image_collate([(torch.zeros(3, 4, 4, dtype=torch.uint8), 0), (torch.zeros(3, 5, 4, dtype=torch.uint8), 1)])


def test_image_collate_keeps_bytes():
    images, labels = image_collate([(b"a", 1), (b"bc", 2)])
    assert images == [b"a", b"bc"] and labels.tolist() == [1, 2]


LENGTHS = [int(x) for x in np.random.default_rng(0).integers(1, 60, 500)]


def stream():
    return [(np.arange(n), i) for i, n in enumerate(LENGTHS)]


@pytest.mark.parametrize("kwargs", [
    dict(batch_size=16), dict(batch_size=16, window=50), dict(max_tokens=200),
    dict(max_tokens=200, batch_size=5), dict(max_tokens=200, window=1), dict(batch_size=7, window=1),
], ids=str)
def test_bucketing_places_every_sample_once_within_limits(kwargs):
    sampler = BucketBatchSampler(**kwargs)
    batches = list(sampler(iter(stream()), random.Random(0)))
    ids = Counter(label for batch in batches for _, label in batch)
    assert ids == Counter(range(len(LENGTHS)))
    for batch in batches:
        longest = max(len(t) for t, _ in batch)
        if sampler.max_tokens:
            assert longest * len(batch) <= sampler.max_tokens
        if sampler.batch_size:
            assert len(batch) <= sampler.batch_size
    if sampler.batch_size and not sampler.max_tokens:
        assert sum(len(b) < sampler.batch_size for b in batches) <= 1, "only the last batch is short"
        assert len(batches) == sampler.num_batches(len(LENGTHS))


def padding(batches):
    return sum(max(len(t) for t, _ in b) * len(b) - sum(len(t) for t, _ in b) for b in batches)


def test_bucketing_cuts_padding_and_shuffles_buckets():
    rng = random.Random(0)
    plain = list(BucketBatchSampler(16, window=1)(iter(stream()), rng))
    bucketed = list(BucketBatchSampler(16)(iter(stream()), random.Random(0)))
    assert padding(bucketed) < padding(plain) / 3
    longest = [max(len(t) for t, _ in b) for b in bucketed]
    assert longest != sorted(longest), "buckets come in a random order"
    again = list(BucketBatchSampler(16)(iter(stream()), random.Random(0)))
    assert [[i for _, i in b] for b in again] == [[i for _, i in b] for b in bucketed], "deterministic"


def test_bucketing_drop_last_and_long_sequences(caplog):
    batches = list(BucketBatchSampler(16, drop_last=True)(iter(stream()), random.Random(0)))
    assert all(len(b) == 16 for b in batches) and len(batches) == 500 // 16
    long = [(np.arange(300), 0), (np.arange(5), 1)]
    batches = list(BucketBatchSampler(max_tokens=100)(iter(long), random.Random(0)))
    assert sorted(len(b) for b in batches) == [1, 1] and "exceeds max_tokens" in caplog.text


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_with_token_budget(seq_root, workers):
    loader = make_loader(StreamingDataset(seq_root), max_tokens=100, bucketing=True, num_workers=workers)
    ids = []
    for padded, lengths, labels in loader:
        assert padded.numel() <= 100 and lengths.max() == padded.shape[1]
        ids += batch_ids((padded,))
    assert sorted(ids) == list(range(103))
    with pytest.raises(TypeError, match="max_tokens"):
        len(loader)


def test_loader_bucketing_by_batch_size_has_a_length(seq_root):
    loader = make_loader(StreamingDataset(seq_root), 8, bucketing=True, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) and sorted(i for b in batches for i in batch_ids(b)) == list(range(103))


def test_bucketing_is_for_sequences(image_root):
    with pytest.raises(ValueError, match="sequences"):
        make_loader(StreamingDataset(image_root), 4, bucketing=True)


def _slow_pad(batch):
    return pad_collate(batch)  # not pad_collate itself: the loader then goes sample by sample


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "stored-order"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("labelled", [True, False])
def test_padded_batches_from_the_blocks_equal_pad_collate_of_the_samples(tmp_path, workers, labelled, shuffle):
    from stream_helpers import id_sequences, write_sequence_shards

    seqs = id_sequences(97, max_len=30)
    write_sequence_shards(tmp_path / "ds", seqs, [40, 57], labels=[i % 7 for i in range(97)] if labelled else None,
                          block=9)  # batches of 10 straddle blocks and shards
    def batches(collate):
        ds = StreamingDataset(tmp_path / "ds", seed=3, shuffle_buffer=12) if shuffle else \
            StreamingDataset(tmp_path / "ds", shuffle=False)  # in stored order: each block's part is one slice
        return list(make_loader(ds, 10, num_workers=workers, **({"collate_fn": collate} if collate else {})))

    fast, slow = batches(None), batches(_slow_pad)
    assert len(fast) == len(slow) == 10
    for a, b in zip(fast, slow):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
