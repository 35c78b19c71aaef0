"""Weighted mixing (issue 13): exact per-source shares per epoch and per window, repetition and
continuation, ranks × workers exactly once per share, resume on the same and another layout,
weights changed at a resume, which source each sample came from, and what cannot mix."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from stream_helpers import batch_ids, check_resume, id_sequences, seq_id, write_sequence_shards
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.device import DeviceLoader
from shardkit.stream.loader import make_loader
from shardkit.stream.mix import RUN, Mix, shares

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

#: name: (first id, shard sizes, token dtype); ids name their source
SOURCES = {"a": (0, [20, 25, 15], "uint16"), "b": (1000, [80, 100, 70, 50], "uint32"), "c": (2000, [45, 45], "uint16")}


def source_of(i: int) -> str:
    return "abc"[i // 1000]


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mix")
    out = {}
    for name, (first, sizes, dtype) in SOURCES.items():
        seqs = [[first + i] + s[1:] for i, s in enumerate(id_sequences(sum(sizes), seed=first, max_len=12))]
        write_sequence_shards(base / name, seqs, sizes, dtype=dtype)
        out[name] = base / name
    return out


def datasets(roots, names="ab", **options):
    options.setdefault("shuffle_buffer", 8)
    return {n: StreamingDataset(roots[n], **options) for n in names}


def ids_of(stream) -> list[int]:
    return [seq_id(sample[0]) for sample in stream]


@pytest.mark.parametrize("weights, size", [({"a": 0.7, "b": 0.3}, 200), ({"a": 1, "b": 1, "c": 1}, 100),
                                           ({"a": 0.2, "b": 0.5, "c": 0.3}, 333), ({"a": 0, "b": 2}, 50)],
                         ids=["70-30", "thirds", "three", "zero"])
def test_every_epoch_gives_each_source_its_exact_share(roots, weights, size):
    mix = Mix(datasets(roots, "".join(weights)), weights=weights, epoch_size=size, seed=3)
    expected = shares(list(weights.values()), size)
    total = sum(weights.values())
    assert sum(expected) == size and all(abs(n - w / total * size) < 1 for n, w in zip(expected, weights.values()))
    assert len(mix) == size
    for _ in range(3):
        got = Counter(source_of(i) for i in ids_of(mix))
        assert [got[n] for n in weights] == expected


def test_default_weights_are_the_sizes_and_the_default_epoch_their_sum(roots):
    mix = Mix(datasets(roots, "abc"))
    assert len(mix) == 60 + 300 + 90
    ids = ids_of(mix)
    assert sorted(ids) == sorted(range(60)) + sorted(range(1000, 1300)) + sorted(range(2000, 2090)), \
        "each source's whole epoch, exactly once"
    sized = Mix({"a": StreamingDataset(roots["a"], epoch_size=30), "b": StreamingDataset(roots["b"])})
    assert len(sized) == 330 and Counter(source_of(i) for i in ids_of(sized))["a"] == 30, \
        "a source's own epoch_size is its size in the mix"


@pytest.mark.parametrize("weights", [{"a": 0.7, "b": 0.3}, {"a": 0.5, "b": 0.2, "c": 0.3}], ids=str)
def test_every_window_is_close_to_the_weights(roots, weights):
    mix = Mix(datasets(roots, "".join(weights)), weights=weights, epoch_size=900)
    ids = ids_of(mix)
    total = sum(weights.values())
    for width in (64, 256):
        for start in range(0, len(ids) - width + 1, 7):
            got = Counter(source_of(i) for i in ids[start:start + width])
            for n, w in weights.items():
                assert abs(got[n] - w / total * width) <= 2 * RUN + 1, f"window {start}+{width}: {dict(got)}"


def test_a_small_source_repeats_reshuffled_and_a_large_one_goes_on(roots):
    mix = Mix(datasets(roots, "ab"), weights={"a": 0.5, "b": 0.5}, epoch_size=240)  # 120 each per epoch
    epochs = [ids_of(mix) for _ in range(6)]
    for ids in epochs:
        small = [i for i in ids if i < 1000]
        counts = Counter(small)
        assert set(counts) == set(range(60)) and set(counts.values()) == {2}, "60 samples twice in 120: two passes"
        first, second = [], []
        for i in small:
            (first if i not in first else second).append(i)
        assert first != second, "each repetition in a new order"
    large = [i for ids in epochs for i in ids if i >= 1000]
    for p in range(len(large) // 300):  # 120 per epoch: the passes over b follow each other
        assert sorted(large[p * 300:(p + 1) * 300]) == list(range(1000, 1300)), "b's samples once per pass"
    assert len(set(large[:240])) == 240, "the second epoch goes on with what the first did not give"


@pytest.mark.parametrize("world_size, workers, batch", [(1, 0, 7), (2, 2, 6), (3, 1, 5)], ids=str)
def test_ranks_and_workers_read_each_share_exactly_once(roots, world_size, workers, batch):
    weights = {"a": 0.3, "b": 0.5, "c": 0.2}
    loaders = [make_loader(Mix(datasets(roots, "abc", rank=r, world_size=world_size), weights=weights,
                               epoch_size=250, seed=1), batch, num_workers=workers) for r in range(world_size)]
    assert len({len(ld) for ld in loaders}) == 1
    reference = ids_of(Mix(datasets(roots, "abc"), weights=weights, epoch_size=250, seed=1))
    for epoch in range(2):
        per_rank = [[i for b in ld for i in batch_ids(b)] for ld in loaders]
        assert len({len(x) for x in per_rank}) == 1 and len(per_rank[0]) == math.ceil(250 / world_size)
        union = Counter(i for x in per_rank for i in x)
        padding = world_size * len(per_rank[0]) - 250
        assert sum(union.values()) - padding == 250
        got = Counter(source_of(i) for x in per_rank for i in x)
        share = dict(zip("abc", shares(list(weights.values()), 250)))
        assert all(share[n] <= got[n] <= share[n] + padding for n in "abc")
        if epoch == 0:
            assert set(union) == set(reference), "the same samples as one process reads, whatever the layout"


def loaders_of(roots, world_size, workers, weights, batch=6):
    return [make_loader(Mix(datasets(roots, "ab", rank=r, world_size=world_size), weights=weights, epoch_size=180),
                        batch, num_workers=workers) for r in range(world_size)]


@pytest.mark.parametrize("stop_after, epochs", [(5, 1), (14, 2)], ids=["mid-epoch", "second-epoch"])
def test_same_layout_resume_gives_exactly_the_uninterrupted_batches(roots, tmp_path, stop_after, epochs):
    check_resume(lambda: loaders_of(roots, 1, 2, {"a": 0.4, "b": 0.6})[0], stop_after, epochs, tmp_path)


@pytest.mark.parametrize("saved, restored", [((2, 2), (3, 1)), ((1, 0), (2, 2)), ((3, 1), (1, 0))], ids=str)
def test_another_layout_reads_the_rest_of_each_share_exactly_once(roots, saved, restored):
    weights = {"a": 0.3, "b": 0.7}  # shares 54 and 126: no source repeats within the epoch
    before = loaders_of(roots, *saved, weights)
    iters = [iter(ld) for ld in before]
    seen = [i for _ in range(len(before[0]) // 2) for it in iters for i in batch_ids(next(it))]
    states = [ld.state_dict() for ld in before]
    assert all(s == states[0] for s in states) and "mix" in states[0]["extra"]
    del iters
    after = loaders_of(roots, *restored, weights, batch=5)
    for ld in after:
        ld.load_state_dict(states[0])
    rest = [[i for b in ld for i in batch_ids(b)] for ld in after]
    assert len({len(r) for r in rest}) == 1, "equal per-rank counts after the restore"
    done, left = set(seen), {i for r in rest for i in r}
    assert not done & left, "nothing consumed comes again"
    epoch0 = set(ids_of(Mix(datasets(roots, "ab"), weights=weights, epoch_size=180)))
    assert done | left == epoch0
    following = [i for b in after[0] for i in batch_ids(b)]  # the next epoch, on the new layout
    assert len(following) == len(after[0].stream) and not set(following) & {i for i in epoch0 if i >= 1000}


@pytest.mark.parametrize("when", ["mid-epoch", "epoch-end"])
def test_weights_changed_at_a_resume_apply_from_the_next_epoch_that_begins(roots, when):
    old, new = {"a": 0.7, "b": 0.3}, {"a": 0.2, "b": 0.8}
    first = loaders_of(roots, 1, 0, old)[0]
    taken = []
    it = iter(first)
    steps = 10 if when == "mid-epoch" else len(first)
    for _ in range(steps):
        taken += batch_ids(next(it))
    state = first.state_dict()
    second = loaders_of(roots, 1, 0, new)[0]
    second.load_state_dict(state)
    rest = [i for b in second for i in batch_ids(b)] if when == "mid-epoch" else []
    epoch0 = Counter(source_of(i) for i in taken + rest)
    assert [epoch0["a"], epoch0["b"]] == shares([0.7, 0.3], 180), "the epoch under way keeps its shares"
    epoch1 = [i for b in second for i in batch_ids(b)]
    assert [Counter(source_of(i) for i in epoch1)[n] for n in "ab"] == shares([0.2, 0.8], 180)
    b_seen = [i for i in taken + rest + epoch1 if i >= 1000]
    assert len(b_seen) == len(set(b_seen)), "b's stream goes on where it stood (54 + 144 < 300: no repeats)"
    again = Mix(datasets(roots, "ab"), weights=new, epoch_size=180)
    again.load_state_dict(second.state_dict())
    assert [Counter(source_of(i) for i in ids_of(again))[n] for n in "ab"] == shares([0.2, 0.8], 180)


def test_with_source_names_the_source_of_each_sample_and_batch(roots):
    mix = Mix(datasets(roots, "ab"), weights={"a": 0.5, "b": 0.5}, epoch_size=40, with_source=True)
    samples = list(mix)
    assert all(len(s) == 3 and s[2] == source_of(seq_id(s[0])) for s in samples)
    batch = next(iter(make_loader(mix, 8, num_workers=2)))
    padded, lengths, labels, names = batch
    assert names == [source_of(i) for i in padded[:, 0].tolist()] and padded.shape[0] == 8
    fields = Mix({n: StreamingDataset(roots[n], fields=["tokens"]) for n in "ab"}, with_source=True, epoch_size=20)
    got = list(fields)
    assert all(set(s) == {"tokens", "source"} and s["source"] == source_of(int(s["tokens"][0])) for s in got)


def test_each_source_keeps_its_own_transform(roots):
    mix = Mix({"a": StreamingDataset(roots["a"], transform=torch.neg), "b": StreamingDataset(roots["b"])},
              weights={"a": 1, "b": 1}, epoch_size=40)
    firsts = [int(tokens[0]) for tokens, _ in mix]
    assert sorted(-f for f in firsts if f <= 0) == sorted(set(-f for f in firsts if f <= 0)) and \
        sum(f <= 0 for f in firsts) == 20 and sum(f >= 1000 for f in firsts) == 20, "a's negated, b's as stored"


def test_image_mixes_go_through_the_device_loader(image_root):
    crop = v2.RandomResizedCrop(16)
    mix = Mix({"x": StreamingDataset(image_root, transform=crop), "y": StreamingDataset(image_root, transform=crop,
                                                                                      shuffle_buffer=3)},
              with_source=True)
    loader = DeviceLoader(make_loader(mix, 6, num_workers=2), "cpu", mean=(0.5,) * 3, std=(0.5,) * 3)
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == 60 and batches[0][0].dtype == torch.float32
    assert batches[0][0].shape[1:] == (3, 16, 16)
    assert Counter(n for b in batches for n in b[2]) == {"x": 30, "y": 30}


def test_what_cannot_mix_is_refused_with_what_differs(roots, image_root):
    tokens, images = StreamingDataset(roots["a"]), StreamingDataset(image_root)
    with pytest.raises(ValueError, match="kind differ.*'images'.*'sequences'|kind differ.*'sequences'.*'images'"):
        Mix({"img": images, "tok": tokens})
    with pytest.raises(ValueError, match="fields differ"):
        Mix({"a": StreamingDataset(roots["a"], fields=["tokens"]), "b": StreamingDataset(roots["b"])})
    with pytest.raises(ValueError, match="rank and world_size"):
        Mix({"a": StreamingDataset(roots["a"], rank=0, world_size=2), "b": StreamingDataset(roots["b"])})
    with pytest.raises(ValueError, match="on_error"):
        Mix({"a": StreamingDataset(roots["a"], on_error="skip"), "b": StreamingDataset(roots["b"])})
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        Mix({"a": tokens, "b": StreamingDataset(roots["b"])}, weights={"a": 1})
    with pytest.raises(ValueError, match="weights"):
        Mix({"a": tokens, "b": StreamingDataset(roots["b"])}, weights={"a": 0, "b": 0})
    with pytest.raises(ValueError, match="epoch_size"):
        Mix({"a": tokens}, epoch_size=0)
    with pytest.raises(TypeError, match="StreamingDataset"):
        Mix({"a": tokens, "b": [1, 2]})
    with pytest.raises(ValueError, match="non-empty"):
        Mix({})


def test_a_state_of_another_mix_is_refused(roots):
    state = Mix(datasets(roots, "ab")).state_dict()
    with pytest.raises(ValueError, match="another dataset"):
        Mix(datasets(roots, "ac")).load_state_dict(state)
    with pytest.raises(ValueError, match="another seed"):
        Mix(datasets(roots, "ab"), seed=5).load_state_dict(state)


def test_each_worker_reads_a_source_s_shards_one_after_the_other(roots):
    """A worker's stretch of a mixed epoch takes turns between the sources, but within each
    source walks its shards in order, never back to one it left (the reader keeps them open)."""
    mix = Mix(datasets(roots, "ab", shuffle_buffer=30), weights={"a": 0.5, "b": 0.5}, epoch_size=200)
    plan = mix.epoch_plan(mix.settle(mix._state, mix.layout()), mix.layout(2, 4))
    b_shards = set(range(mix.offsets[1], mix.offsets[1] + len(SOURCES["b"][1])))
    for segs in plan.workers[0]:
        visits = [s.shard for s in segs if s.shard in b_shards]  # b's 100 of epoch 0 lie in one pass
        runs = [x for i, x in enumerate(visits) if i == 0 or visits[i - 1] != x]
        assert len(runs) == len(set(runs))
        assert any(s.shard not in b_shards for s in segs), "the sources take turns"


def test_named_field_datasets_mix_and_a_source_field_is_never_overwritten(tmp_path):
    import shardkit

    for name, first in (("x", 0), ("y", 100)):
        with shardkit.ShardWriter(tmp_path / name, max_shard_samples=4) as writer:
            for i in range(10):
                writer.write({"txt": f"{name}{first + i}", "source": b"theirs", "cls": first + i})
    sources = {n: StreamingDataset(tmp_path / n, shuffle_buffer=3) for n in "xy"}
    mix = Mix(sources, weights={"x": 1, "y": 1}, epoch_size=12)
    samples = list(mix)
    assert Counter(s["txt"][0] for s in samples) == {"x": 6, "y": 6} and all(s["source"] == b"theirs" for s in samples)
    with pytest.raises(ValueError, match="'source' field"):
        Mix(sources, with_source=True)
    tagged = Mix({n: StreamingDataset(tmp_path / n, fields=["txt", "cls"]) for n in "xy"}, with_source=True)
    batch = next(iter(make_loader(tagged, 5, num_workers=0)))
    assert batch["source"] == [t[0] for t in batch["txt"]]
