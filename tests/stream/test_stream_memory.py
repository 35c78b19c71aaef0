"""Memory stays bounded and flat (issue 7): what the reader holds depends on the shuffle buffer,
not on the dataset's size or on how many epochs have run. Measured with tracemalloc, which sees
every Python and numpy allocation of the reader (shard bytes, members, the shuffle buffer)."""

from __future__ import annotations

import tracemalloc

import pytest

import datagen
import shardkit


@pytest.fixture(scope="module")
def sized_roots(tmp_path_factory):
    """The same kind of images at two dataset sizes: 24 and 96 samples, 8 per shard."""
    roots = {}
    for n in (24, 96):
        base = tmp_path_factory.mktemp(f"mem{n}")
        src = datagen.make_jpeg_tree(base / "src", classes=2, per_class=n // 2, sizes=(96, 128))
        shardkit.convert(src, base / "dst", max_shard_samples=8, workers=1)
        roots[n] = base / "dst"
    return roots


def _peak_per_epoch(root, epochs: int, buffer: int) -> list[int]:
    dataset = shardkit.StreamingDataset(root, decode=False, shuffle_buffer=buffer, seed=0)
    peaks = []
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]  # once: what an epoch keeps counts in the next ones
        for _ in range(epochs):
            tracemalloc.reset_peak()
            count = sum(1 for _ in dataset)
            assert count == len(dataset)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    return peaks


def test_peak_memory_does_not_grow_with_the_dataset(sized_roots):
    small = max(_peak_per_epoch(sized_roots[24], 2, buffer=8))
    large = max(_peak_per_epoch(sized_roots[96], 2, buffer=8))
    # 4x the samples: the peak stays what the buffer and one shard need (a leak per sample would be 4x)
    assert large < 1.5 * small, (small, large)


def test_peak_memory_follows_the_shuffle_buffer(sized_roots):
    # both within a shard (8 samples), which bounds a span; buffer=1 would read in stored order, in
    # chunks of whole shards here, and so hold as much as a buffer of 8
    few = max(_peak_per_epoch(sized_roots[96], 1, buffer=2))
    many = max(_peak_per_epoch(sized_roots[96], 1, buffer=8))
    assert many > few + 4 * 4000  # six more samples held (4-6 KB each): the measure sees the buffer


def test_memory_is_flat_over_epochs(sized_roots):
    peaks = _peak_per_epoch(sized_roots[96], 10, buffer=16)
    assert max(peaks[2:]) < 1.2 * max(peaks[:2]), peaks
