"""Resumption: one contract (conftest.check_resume) for the loader, the dataset, bucketing and
the device loader: stop after k items, save with torch.save, restore into fresh objects, compare."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.transforms import v2

from stream_helpers import check_resume
from shardkit.stream.collate import BucketBatchSampler
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.device import DeviceLoader
from shardkit.stream.loader import make_loader

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 CPUs

crop = v2.Compose([v2.RandomResizedCrop(16), v2.RandomHorizontalFlip()])


def image_loader(root, workers, **kwargs):
    return lambda: make_loader(StreamingDataset(root, shuffle_buffer=5, transform=crop), 4, num_workers=workers,
                               **kwargs)


def seq_loader(root, workers, **kwargs):
    return lambda: make_loader(StreamingDataset(root, shuffle_buffer=10), 6, num_workers=workers, **kwargs)


# 30 images / 4 → 8 batches per epoch (2 workers: 4 + 4); 103 sequences / 6 → 18 (2 workers: 9 + 9)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after, epochs", [(3, 1), (5, 2), (8, 2), (11, 2)],
                         ids=["mid-epoch", "odd-worker", "end-of-epoch", "second-epoch"])
def test_images_resume(image_root, tmp_path, workers, stop_after, epochs):
    check_resume(image_loader(image_root, workers), stop_after, epochs, tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after, epochs", [(7, 1), (18, 2), (25, 2)], ids=["mid", "end-of-epoch", "second-epoch"])
def test_sequences_resume(seq_root, tmp_path, workers, stop_after, epochs):
    check_resume(seq_loader(seq_root, workers), stop_after, epochs, tmp_path)


@pytest.mark.parametrize("persistent", [True, False])
def test_resume_with_uneven_workers_and_drop_last(seq_root, tmp_path, persistent):
    # 3 workers of 35, 34, 34 samples, batches of 8, drop_last: 4 batches each, the last ones dropped
    make = lambda: make_loader(StreamingDataset(seq_root, rank=0, world_size=1), 8, num_workers=3,  # noqa: E731
                               drop_last=True, persistent_workers=persistent)
    check_resume(make, 7, 2, tmp_path)
    check_resume(make, 12, 2, tmp_path)  # right after the epoch's last batch


@pytest.mark.parametrize("workers", [0, 2])
def test_bucketing_resume(seq_root, tmp_path, workers):
    make = lambda: make_loader(StreamingDataset(seq_root), num_workers=workers,  # noqa: E731
                               bucketing=BucketBatchSampler(max_tokens=120, window=20))
    check_resume(make, 6, 2, tmp_path)


def test_dataset_resume_without_loader(seq_root, tmp_path):
    check_resume(lambda: StreamingDataset(seq_root, shuffle_buffer=10), 40, 2, tmp_path)
    check_resume(lambda: StreamingDataset(seq_root, shuffle_buffer=10), 103, 2, tmp_path)


def test_device_loader_resume(image_root, tmp_path):
    make = lambda: DeviceLoader(image_loader(image_root, 2)(), "cpu", mean=(0.5,) * 3, std=(0.2,) * 3)  # noqa: E731
    check_resume(make, 5, 2, tmp_path)


def test_state_is_plain(seq_root, tmp_path):
    loader = seq_loader(seq_root, 2)()
    it = iter(loader)
    next(it)
    state = loader.state_dict()

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (int, bool, str)

    assert plain(state), state
    assert state["epoch"] == 0 and state["layout"]["num_workers"] == 2 and state["position"] == 1
    assert json.loads(json.dumps(state)) == state


def test_load_then_set_epoch_of_the_same_epoch_still_resumes(seq_root):
    """The usual loop calls set_epoch(epoch) after restoring: it must not discard the position."""
    loader = seq_loader(seq_root, 2)()
    it = iter(loader)
    taken = [next(it) for _ in range(4)]
    state = loader.state_dict()
    rest = list(it)
    again = seq_loader(seq_root, 2)()
    again.load_state_dict(state)
    again.stream.set_epoch(state["epoch"])
    got = list(again)
    assert len(got) == len(rest) and all(torch.equal(a[0], b[0]) for a, b in zip(got, rest))
    assert len(taken) + len(got) == len(again)
