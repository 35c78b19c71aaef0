"""One state, the same on every rank, restored on any world size, worker count and batch size
(issue 16): the rest of the epoch comes exactly once; batches as a map-style DataLoader makes
them; evaluation exactly once; wrong states refused; each worker reads about its share."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

import pytest
import torch

import shardkit.storage as storage
from stream_helpers import batch_ids, id_sequences, write_sequence_shards
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.device import DeviceLoader
from shardkit.stream.loader import make_loader

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 CPUs

N_SEQ, N_IMG = 103, 30
LAYOUTS = [(1, 0), (2, 2), (3, 1)]


def image_ids(batch) -> list[str]:
    return [hashlib.sha256(b).hexdigest() for b in batch[0]]


KINDS = {
    # kind: (root fixture, batch size, ids of a batch, dataset options)
    "sequences": ("seq_root", 6, batch_ids, {"shuffle_buffer": 10}),
    "images": ("image_root", 4, image_ids, {"decode": False, "shuffle_buffer": 5}),
}


def loaders(root, kind, world_size, workers, *, batch=None, persistent=True, seed=0):
    _, size, _, options = KINDS[kind]
    return [make_loader(StreamingDataset(root, rank=r, world_size=world_size, seed=seed, **options),
                        batch or size, num_workers=workers, persistent_workers=persistent)
            for r in range(world_size)]


def step_all(rank_loaders, kind, steps):
    """``steps`` batches from every rank in lockstep, as DDP runs them; their ids, and each rank's state."""
    ids_of = KINDS[kind][2]
    iters = [iter(loader) for loader in rank_loaders]
    seen = []
    for _ in range(steps):
        for it in iters:
            seen += ids_of(next(it))
    states = [loader.state_dict() for loader in rank_loaders]
    return seen, states, iters


def rest(rank_loaders, kind):
    ids_of = KINDS[kind][2]
    return [i for loader in rank_loaders for batch in loader for i in ids_of(batch)]


def padding(total: int, world_size: int) -> int:
    return world_size * -(-total // world_size) - total


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("saved", LAYOUTS, ids=str)
@pytest.mark.parametrize("restored", LAYOUTS, ids=str)
def test_mid_epoch_state_restores_on_any_layout_exactly_once(request, tmp_path, kind, saved, restored):
    root = request.getfixturevalue(KINDS[kind][0])
    n = N_SEQ if kind == "sequences" else N_IMG
    before_loaders = loaders(root, kind, *saved)
    steps = len(before_loaders[0]) // 2
    before, states, iters = step_all(before_loaders, kind, steps)
    del iters
    assert all(s == states[0] for s in states), "the state is the same on every rank: saving rank 0's is enough"
    torch.save(states[0], tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert json.loads(json.dumps(state)) == state
    after_loaders = loaders(root, kind, *restored, batch=KINDS[kind][1] + 1)  # another batch size too
    for loader in after_loaders:
        loader.load_state_dict(state)
    per_rank = [rest([loader], kind) for loader in after_loaders]
    assert len({len(ids) for ids in per_rank}) == 1, "equal per-rank counts after the restore (DDP would hang)"
    after = [i for ids in per_rank for i in ids]
    union = Counter(before + after)
    left = n - len(set(before))
    assert len(union) == n, "every sample of the epoch, before or after"
    extra = sum(union.values()) - n
    assert extra == (len(before) - len(set(before))) + padding(left, restored[0]), \
        "nothing consumed comes again; only DistributedSampler's padding repeats"


def loaders_restored(root, kind, layout, state):
    out = loaders(root, kind, *layout)
    for loader in out:
        loader.load_state_dict(state)
    return out


@pytest.mark.parametrize("saved, restored", [((2, 2), (3, 1)), ((3, 1), (1, 0)), ((1, 0), (2, 2))], ids=str)
def test_epoch_boundary_state_starts_the_next_epoch_on_the_new_layout(seq_root, saved, restored):
    before = loaders(seq_root, "sequences", *saved)
    _, states, _ = step_all(before, "sequences", len(before[0]))
    assert states[0]["epoch"] == 1 and states[0]["position"] == 0
    after = loaders_restored(seq_root, "sequences", restored, states[0])
    got = [rest([loader], "sequences") for loader in after]
    fresh = loaders(seq_root, "sequences", *restored)
    for loader in fresh:
        loader.stream.set_epoch(1)
    assert got == [rest([loader], "sequences") for loader in fresh], "the new layout's epoch 1, deterministically"
    assert set(i for g in got for i in g) == set(range(N_SEQ))


@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_same_layout_gives_exactly_the_uninterrupted_batches(request, kind, persistent):
    root = request.getfixturevalue(KINDS[kind][0])
    ids_of = KINDS[kind][2]
    reference = [ids_of(b) for b in loaders(root, kind, 2, 2, persistent=persistent)[1]]
    first = loaders(root, kind, 2, 2, persistent=persistent)[1]
    it = iter(first)
    taken = [ids_of(next(it)) for _ in range(3)]
    state = first.state_dict()
    del it
    again = loaders(root, kind, 2, 2, persistent=persistent)[1]
    again.load_state_dict(state)
    assert taken + [ids_of(b) for b in again] == reference


def test_through_device_loader_the_state_is_that_of_the_batch_handed_out(image_root):
    def device(rank_loaders):
        return [DeviceLoader(loader, "cpu") for loader in rank_loaders]

    before = device(loaders(image_root, "images", 2, 2))
    iters = [iter(d) for d in before]
    for _ in range(2):
        for it in iters:
            next(it)  # the DeviceLoader has the next batch in hand already
    state = before[0].state_dict()
    assert state["position"] == 2 and state == before[1].state_dict()
    del iters
    after = device(loaders_restored(image_root, "images", (1, 0), state))
    seen = sum(len(b[0]) for d in after for b in d)
    assert seen == N_IMG - 2 * 2 * 4


@pytest.mark.parametrize("n", [400, 401, 399])
@pytest.mark.parametrize("batch", [16, 199])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_batches_like_a_map_style_dataloader(tmp_path_factory, n, batch, workers):
    root = tmp_path_factory.getbasetemp() / f"n{n}"
    if not (root / "manifest.json").exists():
        write_sequence_shards(root, id_sequences(n, max_len=5), [n // 4, n // 4, n // 4, n - 3 * (n // 4)])
    for drop_last in (False, True):
        loader = make_loader(StreamingDataset(root, seed=1), batch, num_workers=workers, drop_last=drop_last,
                             persistent_workers=False)
        sizes = [len(b[1]) for b in loader]
        assert len(sizes) == len(loader) == (n // batch if drop_last else -(-n // batch))
        assert all(s == batch for s in sizes[:-1]) and n - sum(sizes) < batch
        assert sizes[-1] == (batch if drop_last else n - (len(sizes) - 1) * batch)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_evaluation_mode_gives_each_sample_to_exactly_one_rank(seq_root, world_size):
    counts, seen = [], Counter()
    for rank in range(world_size):
        ds = StreamingDataset(seq_root, shuffle=False, even=False, rank=rank, world_size=world_size)
        ids = [i for b in make_loader(ds, 8, num_workers=2, shuffle=False, sampler=None) for i in batch_ids(b)]
        assert len(ids) == len(ds)
        counts.append(len(ids))
        seen.update(ids)
    assert seen == Counter(range(N_SEQ)), "no padding, no dropping"
    assert max(counts) - min(counts) <= 1


@pytest.fixture
def other_seq_root(tmp_path):
    root = tmp_path / "val"
    write_sequence_shards(root, [[1000 + i] for i in range(40)], [20, 20])
    return root


def test_wrong_states_are_refused_saying_what_differs(seq_root, other_seq_root):
    train = make_loader(StreamingDataset(seq_root), 6, num_workers=0)
    it = iter(train)
    next(it)
    state = train.state_dict()
    with pytest.raises(ValueError, match="load_state_dict while an iteration is under way"):
        train.load_state_dict(state)
    del it
    cases = [
        (StreamingDataset(other_seq_root), "another dataset"),
        (StreamingDataset(seq_root, seed=9), "another seed"),
        (StreamingDataset(seq_root, shuffle=False), "shuffle=True"),
        (StreamingDataset(seq_root, epoch_size=50), "another epoch_size"),
    ]
    for dataset, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            make_loader(dataset, 6, num_workers=0).load_state_dict(state)
    for bad, fragment in [({**state, "version": 99}, "upgrade shardkit"), ({"epoch": 1}, "not a shardkit stream state"),
                          ({**state, "consumed": [[1, 2]]}, "malformed")]:
        loader = make_loader(StreamingDataset(seq_root), 6, num_workers=0)
        with pytest.raises(ValueError, match=fragment):
            loader.load_state_dict(bad)
            next(iter(loader))


def test_make_loader_takes_a_scripts_harmless_arguments_and_says_why_others_do_not_apply(seq_root):
    ds = StreamingDataset(seq_root, shuffle=False)
    assert len(list(make_loader(ds, 8, num_workers=0, shuffle=False, sampler=None, batch_sampler=None))) == 13
    with pytest.raises(ValueError, match="shuffle=True does not apply.*StreamingDataset\\(..., shuffle=True\\)"):
        make_loader(ds, 8, shuffle=True)
    with pytest.raises(ValueError, match="sampler does not apply.*partitions and orders"):
        make_loader(ds, 8, sampler=range(3))


def test_each_worker_reads_about_its_share_of_the_bytes(tmp_path, image_root, monkeypatch):
    """With 2 ranks × 2 workers on 5 shards, a worker seeks to its first sample (the index) and
    reads little beyond its own samples (bytes taken from the shard streams, counted per process)."""
    log = tmp_path / "reads.log"
    real_open = storage.open_shard

    class Counting:
        def __init__(self, stream, name):
            self.stream, self.name, self.count = stream, name, 0

        def read(self, n=-1):
            data = self.stream.read(n)
            self.count += len(data)
            return data

        def close(self):
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {self.count}\n")
            self.stream.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    monkeypatch.setattr(storage, "open_shard", lambda path, **kw: Counting(real_open(path, **kw), path))
    total = sum(p.stat().st_size for p in image_root.glob("shard-*.tar"))
    for rank in range(2):
        loader = make_loader(StreamingDataset(image_root, rank=rank, world_size=2, decode=False), 2, num_workers=2,
                             persistent_workers=False)
        assert sum(len(b[0]) for b in loader) == 15
    per_worker = Counter()
    for line in log.read_text().split("\n"):
        if line:
            pid, count = line.split()
            per_worker[pid] += int(count)
    assert len(per_worker) == 4
    share = total / 4
    assert max(per_worker.values()) <= 1.2 * share, (per_worker, share)
