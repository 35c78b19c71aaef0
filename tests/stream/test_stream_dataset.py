"""StreamingDataset through real DataLoader workers: exactly once, equal counts, epochs, sources."""

from __future__ import annotations

import hashlib
import pickle
import random
from collections import Counter

import numpy as np
import pytest
import torch

from stream_helpers import batch_ids, sample_ids, seq_id
from shardkit import ManifestError
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.loader import make_loader

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 CPUs

N_SEQ = 103


def rank_ids(root, rank, world_size, num_workers, drop_last=False, **kwargs):
    ds = StreamingDataset(root, rank=rank, world_size=world_size, drop_last=drop_last, shuffle_buffer=8, **kwargs)
    loader = make_loader(ds, 6, num_workers=num_workers, persistent_workers=False)
    return [i for batch in loader for i in batch_ids(batch)], len(ds)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_exactly_once_across_ranks_and_workers(seq_root, world_size, num_workers):
    seen = Counter()
    for rank in range(world_size):
        ids, length = rank_ids(seq_root, rank, world_size, num_workers)
        assert len(ids) == length == -(-N_SEQ // world_size), "every rank yields len(dataset) samples"
        seen.update(ids)
    assert set(seen) == set(range(N_SEQ))
    assert max(seen.values()) <= 2, "only padding repeats, each sample at most once"


def test_drop_last_cuts_to_equal_counts(seq_root):
    seen = Counter()
    for rank in range(2):
        ids, length = rank_ids(seq_root, rank, 2, 2, drop_last=True)
        assert len(ids) == length == N_SEQ // 2
        seen.update(ids)
    assert max(seen.values()) == 1 and len(seen) == 2 * (N_SEQ // 2)


def test_images_exactly_once_with_workers(image_root, image_ids):
    seen = Counter()
    for rank in range(2):
        ds = StreamingDataset(image_root, rank=rank, world_size=2, decode=False)
        loader = make_loader(ds, 4, num_workers=2)
        for images, labels in loader:
            assert labels.dtype == torch.int64 and isinstance(images[0], bytes)
            seen.update(hashlib.sha256(b).hexdigest() for b in images)
    assert set(seen) == set(image_ids) and sum(seen.values()) == 30


def test_direct_iteration_yields_int64_tokens_and_labels(seq_root):
    samples = list(StreamingDataset(seq_root, shuffle=False))
    assert [seq_id(t) for t, _ in samples] == list(range(N_SEQ)), "unshuffled: the stored order"
    tokens, label = samples[7]
    assert tokens.dtype == torch.int64 and tokens.ndim == 1 and label == 7 % 5
    raw = list(StreamingDataset(seq_root, shuffle=False, decode=False))
    assert raw[7][0].dtype == np.uint16 and np.array_equal(raw[7][0], tokens.numpy())


def test_order_changes_every_epoch_and_repeats_with_the_seed(seq_root):
    def orders(seed, epochs=3):
        ds = StreamingDataset(seq_root, seed=seed, shuffle_buffer=20)
        return [sample_ids(ds) for _ in range(epochs)]

    a, b, c = orders(1), orders(1), orders(2)
    assert a == b, "same seed, same orders"
    assert len({tuple(o) for o in a}) == 3, "each epoch another order"
    assert all(sorted(o) == list(range(N_SEQ)) for o in a)
    assert a != c


@pytest.mark.parametrize("persistent", [True, False])
def test_loader_epochs_advance_and_match_the_dataset_order(seq_root, persistent):
    def run():
        loader = make_loader(StreamingDataset(seq_root, seed=3), 5, num_workers=2, persistent_workers=persistent)
        return [[i for b in loader for i in batch_ids(b)] for _ in range(3)]

    first, second = run(), run()
    assert first == second
    assert len({tuple(e) for e in first}) == 3 and all(sorted(e) == list(range(N_SEQ)) for e in first)


@pytest.mark.parametrize("persistent", [True, False])
def test_set_epoch_is_honoured(seq_root, persistent):
    ds = StreamingDataset(seq_root, seed=3)
    loader = make_loader(ds, 5, num_workers=2, persistent_workers=persistent)
    list(loader)  # epoch 0; the workers stay alive when persistent
    ds.set_epoch(7)
    got = [batch_ids(b) for b in loader]
    fresh = StreamingDataset(seq_root, seed=3)
    fresh.set_epoch(7)
    assert got == [batch_ids(b) for b in make_loader(fresh, 5, num_workers=2)]
    assert ds.epoch == 8
    assert [batch_ids(b) for b in loader] != got, "then epoch 8"


def test_len_of_loader_is_batches_per_epoch(seq_root):
    for workers, batch, drop in [(0, 6, False), (3, 6, False), (3, 6, True), (2, 200, False)]:
        loader = make_loader(StreamingDataset(seq_root, rank=1, world_size=2), batch, num_workers=workers,
                             drop_last=drop)
        assert len(loader) == len(list(loader))


def test_pickles_without_open_files(seq_root):
    ds = StreamingDataset(seq_root)
    it = iter(ds)
    next(it)  # an iteration in progress holds open shards: they must not travel
    clone = pickle.loads(pickle.dumps(ds))
    assert sorted(sample_ids(clone)) == list(range(N_SEQ))


def test_spawned_workers(seq_root):
    loader = make_loader(StreamingDataset(seq_root), 10, num_workers=2, multiprocessing_context="spawn")
    assert sorted(i for b in loader for i in batch_ids(b)) == list(range(N_SEQ))


def seeded_draws(tokens):
    return torch.rand(()).item(), float(np.random.rand()), random.random(), torch.utils.data.get_worker_info().id


def test_workers_seeds_are_distinct_and_reproducible(seq_root):
    def draws():
        ds = StreamingDataset(seq_root, transform=seeded_draws)
        loader = make_loader(ds, 4, num_workers=2, collate_fn=list)
        return [d for batch in loader for d, _ in batch]

    a, b = draws(), draws()
    assert a == b
    for source in range(3):  # torch (per sample), numpy and random (per worker and epoch)
        values = [d[source] for d in a]
        assert len(set(values)) == len(values), "no two samples or workers draw the same"


def record_init(worker_id):
    torch.utils.data.get_worker_info().dataset.initialised = (worker_id, random.random())


def report_init(tokens):
    return torch.utils.data.get_worker_info().dataset.initialised


def test_user_worker_init_fn_runs_after_seeding(seq_root):
    def run():
        ds = StreamingDataset(seq_root, transform=report_init)
        loader = make_loader(ds, 50, num_workers=2, worker_init_fn=record_init, collate_fn=list)
        return {init for batch in loader for init, _ in batch}

    first = run()
    assert {w for w, _ in first} == {0, 1} and first == run(), "seeded before the user's function"


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json"):
        StreamingDataset(tmp_path)


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(on_error="ignore"), dict(rank=1), dict(rank=2, world_size=2)])
def test_bad_arguments(seq_root, kwargs):
    with pytest.raises(ValueError):
        StreamingDataset(seq_root, **kwargs)


def test_images_decode_to_uint8_chw(image_root):
    ds = StreamingDataset(image_root, shuffle=False)
    assert ds.classes == ["class00", "class01", "class02"] and ds.kind == "images" and len(ds) == 30
    image, label = next(iter(ds))
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and isinstance(label, int)
