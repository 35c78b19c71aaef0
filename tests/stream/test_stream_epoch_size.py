"""Epoch size and subsampling (issue 13): N samples per epoch across all ranks, a count or a
fraction; below the dataset's size no sample twice in an epoch and the next epochs go on
through the rest; above it, passes repeat, each reshuffled; ``len()`` the per-rank count; the same
through make_loader, resume and elastic restore."""

from __future__ import annotations

from collections import Counter

import pytest

from stream_helpers import batch_ids, check_resume, seq_id
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.loader import make_loader
from shardkit.stream.plan import epoch_segments

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

N_SEQ = 103
SIZES = [(40, 40), (0.25, 26), (103, 103), (250, 250), (2.5, 258)]  # (epoch_size, samples per epoch)


def epoch_ids(root, size, world_size, epoch, **options):
    """The ids every rank yields in ``epoch`` (iterated directly), and each rank's count."""
    per_rank = []
    for r in range(world_size):
        ds = StreamingDataset(root, epoch_size=size, rank=r, world_size=world_size, shuffle_buffer=8, **options)
        ds.set_epoch(epoch)
        per_rank.append([seq_id(t) for t, _ in ds])
    return per_rank


@pytest.mark.parametrize("size, n", SIZES, ids=str)
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_epoch_holds_n_samples_and_len_is_per_rank(seq_root, size, n, world_size):
    ds = StreamingDataset(seq_root, epoch_size=size, rank=0, world_size=world_size)
    assert ds.epoch_samples == n and len(ds) == -(-n // world_size)
    for epoch in range(3):
        per_rank = epoch_ids(seq_root, size, world_size, epoch)
        assert [len(ids) for ids in per_rank] == [len(ds)] * world_size, "equal per-rank counts, as len() says"
        union = Counter(i for ids in per_rank for i in ids)
        padding = world_size * len(ds) - n
        assert sum(union.values()) == n + padding
        if n <= N_SEQ:
            assert len(union) == n, "below the dataset's size an epoch repeats nothing (but the padding)"
        else:
            assert set(union) == set(range(N_SEQ)), "above it, every sample at least once"


@pytest.mark.parametrize("size", [40, 26, 77, 102], ids=str)
def test_subsampling_epochs_go_on_through_the_rest_and_never_repeat(seq_root, size):
    epochs = [epoch_ids(seq_root, size, 1, e)[0] for e in range(8)]
    for ids in epochs:
        assert len(ids) == size and len(set(ids)) == size, "no sample twice in an epoch, even across a pass's end"
    stream = [i for ids in epochs for i in ids]
    for p in range(len(stream) // N_SEQ):  # the epochs follow each other through whole passes
        assert sorted(stream[p * N_SEQ:(p + 1) * N_SEQ]) == list(range(N_SEQ)), f"pass {p} sees every sample once"
    first_pass = set(stream[:N_SEQ])
    assert first_pass == set(range(N_SEQ)), "every sample gets seen over the epochs"


def test_repeating_epochs_reshuffle_each_pass(seq_root):
    ids = epoch_ids(seq_root, 3 * N_SEQ, 1, 0)[0]
    passes = [ids[p * N_SEQ:(p + 1) * N_SEQ] for p in range(3)]
    assert all(sorted(p) == list(range(N_SEQ)) for p in passes), "each pass holds every sample once"
    assert len({tuple(p) for p in passes}) == 3, "each pass in its own order"


@pytest.mark.parametrize("size", [7, 20, 29, 30])
def test_plan_windows_of_at_most_a_pass_never_repeat(size):
    counts = [10, 0, 15, 5]
    seen = Counter()
    for e in range(12):
        segs = epoch_segments(counts, seed=11, epoch=e, shuffle=True, epoch_size=size)
        got = [(s.shard, int(i)) for s in segs for i in s.indices()]
        assert len(got) == size and len(set(got)) == size
        seen.update((s.pass_, s.shard, int(i)) for s in segs for i in s.indices())
    assert max(seen.values()) == 1, "each (pass, sample) once in the stream"


@pytest.mark.parametrize("size, n", [(40, 40), (0.5, 52), (250, 250)], ids=str)
@pytest.mark.parametrize("world_size, workers, batch", [(1, 0, 6), (2, 2, 5), (3, 1, 4)], ids=str)
def test_through_make_loader(seq_root, size, n, world_size, workers, batch):
    loaders = [make_loader(StreamingDataset(seq_root, epoch_size=size, rank=r, world_size=world_size,
                                            shuffle_buffer=8), batch, num_workers=workers)
               for r in range(world_size)]
    per_rank = -(-n // world_size)
    assert [len(ld) for ld in loaders] == [-(-per_rank // batch)] * world_size
    for _ in range(2):  # two epochs: the second goes on from the first
        ids = [[i for b in ld for i in batch_ids(b)] for ld in loaders]
        assert [len(x) for x in ids] == [per_rank] * world_size
        union = Counter(i for x in ids for i in x)
        assert sum(union.values()) == per_rank * world_size
        if n <= N_SEQ:
            assert len(union) == n


def test_loader_resume_with_an_epoch_size(seq_root, tmp_path):
    check_resume(lambda: make_loader(StreamingDataset(seq_root, epoch_size=40, shuffle_buffer=8), 6, num_workers=2),
                 stop_after=9, epochs=3, tmp_path=tmp_path)


def test_elastic_restore_with_an_epoch_size_keeps_the_epoch_exact(seq_root):
    def loaders(world_size, workers):
        return [make_loader(StreamingDataset(seq_root, epoch_size=60, rank=r, world_size=world_size,
                                             shuffle_buffer=8), 4, num_workers=workers) for r in range(world_size)]

    reference = [i for ld in loaders(1, 0) for b in ld for i in batch_ids(b)]
    before = loaders(2, 2)
    iters = [iter(ld) for ld in before]
    seen = [i for _ in range(3) for it in iters for i in batch_ids(next(it))]
    state = before[0].state_dict()
    del iters
    after = loaders(3, 1)
    for ld in after:
        ld.load_state_dict(state)
    rest = [[i for b in ld for i in batch_ids(b)] for ld in after]
    assert len({len(r) for r in rest}) == 1
    assert set(seen) | {i for r in rest for i in r} == set(reference), "the same 60 samples of epoch 0"
    assert not set(seen) & {i for r in rest for i in r}


@pytest.mark.parametrize("bad", [0, -3, True, "10", 0.0])
def test_bad_epoch_sizes_are_refused(seq_root, bad):
    with pytest.raises(ValueError, match="epoch_size"):
        StreamingDataset(seq_root, epoch_size=bad)
