"""Token packing (issue 13): every token exactly once per epoch across ranks and workers (tokens
are unique in the fixture, so each names its document and place), position ids and cu_seqlens
consistent with the documents, long documents split, the tail padded or dropped, resume on the
same and another layout, older datasets, mixes, and what packing refuses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_helpers import check_resume, write_sequence_shards
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.device import DeviceLoader
from shardkit.stream.loader import make_loader
from shardkit.stream.mix import Mix, shares

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

FIXTURES = Path(__file__).parent.parent / "fixtures" / "v1"
EOS = 99_999


def unique_documents(n: int, first: int, seed: int) -> list[list[int]]:
    """``n`` documents of 1..20 tokens, every seventh of 40..90 (longer than a row); token values
    are consecutive from ``first``, so each appears once in the dataset."""
    rng = np.random.default_rng(seed)
    docs, at = [], first
    for i in range(n):
        length = int(rng.integers(40, 91)) if i % 7 == 3 else int(rng.integers(1, 21))
        docs.append(list(range(at, at + length)))
        at += length
    return docs


@pytest.fixture(scope="module")
def docs() -> list[list[int]]:
    return unique_documents(83, 1, 0)


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory, docs) -> Path:
    root = tmp_path_factory.mktemp("pack") / "tokens"
    write_sequence_shards(root, docs, [20, 31, 1, 31], dtype="uint32")
    return root


def place(docs) -> dict[int, tuple[int, int]]:
    """Token → (its document, its position in it)."""
    return {t: (d, k) for d, doc in enumerate(docs) for k, t in enumerate(doc)}


def loaders(root, world_size, workers, batch, block, eos=None, **options):
    drop_last = options.pop("drop_last", False)
    return [make_loader(StreamingDataset(root, rank=r, world_size=world_size, **options), batch, block_size=block,
                        eos_id=eos, num_workers=workers, drop_last=drop_last) for r in range(world_size)]


def check_batch(batch, block, docs_place=None, eos=None, rows=None) -> None:
    """What every packed batch must satisfy (see the packing module)."""
    ids, pos, doc = batch["input_ids"], batch["position_ids"], batch["document_ids"]
    cu, longest = batch["cu_seqlens"], batch["max_seqlen"]
    assert ids.dtype == pos.dtype == torch.int64 and cu.dtype == torch.int32 and ids.shape[1] == block
    assert ids.shape == pos.shape == doc.shape and (rows is None or ids.shape[0] <= rows)
    flat_ids, flat_pos, flat_doc, cu = ids.reshape(-1), pos.reshape(-1), doc.reshape(-1), cu.tolist()
    n = flat_ids.numel()
    assert cu[0] == 0 and cu[-1] == n and all(a < b for a, b in zip(cu, cu[1:]))
    assert longest == max(b - a for a, b in zip(cu, cu[1:]))
    for k, (a, b) in enumerate(zip(cu, cu[1:])):
        d = flat_doc[a:b]
        assert bool((d == k).all()) or bool((d == -1).all()), "a segment is one document piece, or padding"
        assert bool((flat_pos[a + 1:b] == flat_pos[a:b - 1] + 1).all()), "positions go on within a segment"
    assert bool((flat_ids[flat_doc < 0] == 0).all()), "padding is pad_id"
    starts = set(cu[:-1])
    for t in range(n):  # within a row, a segment begins exactly where the position is 0
        if t % block:
            assert (t in starts) == (int(flat_pos[t]) == 0)
    if docs_place is not None:
        for t, p, d in zip(flat_ids.tolist(), flat_pos.tolist(), flat_doc.tolist()):
            if d >= 0 and t != eos:
                assert p == docs_place[t][1], "a document's position ids go on from where it left off"


def real_tokens(batches, eos=None) -> list[int]:
    return [t for b in batches
            for t, d in zip(b["input_ids"].reshape(-1).tolist(), b["document_ids"].reshape(-1).tolist())
            if d >= 0 and t != eos]


@pytest.mark.parametrize("world_size, workers, batch, block, eos", [
    (1, 0, 2, 16, None), (2, 2, 3, 16, EOS), (3, 1, 1, 32, EOS), (2, 1, 4, 8, None)], ids=str)
def test_every_token_exactly_once_and_equal_counts(pack_root, docs, world_size, workers, batch, block, eos):
    rank_loaders = loaders(pack_root, world_size, workers, batch, block, eos)
    total = sum(map(len, docs)) + (len(docs) if eos is not None else 0)
    where = place(docs)
    for _ in range(2):
        per_rank = [list(ld) for ld in rank_loaders]
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(rank_loaders[0])
        for batches in per_rank:
            for i, b in enumerate(batches):
                check_batch(b, block, where, eos, rows=batch)
                assert i == len(batches) - 1 or b["input_ids"].shape[0] == batch, "only the last batch is short"
        flat = [b for batches in per_rank for b in batches]
        assert sorted(real_tokens(flat, eos)) == sorted(t for d in docs for t in d), "every token exactly once"
        if eos is not None:
            eos_count = sum(int(((b["input_ids"] == eos) & (b["document_ids"] >= 0)).sum()) for b in flat)
            assert eos_count == len(docs), "one eos_id after each document"
        padding = sum(int((b["document_ids"] < 0).sum()) for b in flat)
        assert padding == sum(b["input_ids"].numel() for b in flat) - total < (world_size + 1) * block


def test_long_documents_continue_across_rows_and_batches(pack_root, docs):
    batches = list(loaders(pack_root, 1, 0, 2, 16, EOS)[0])
    where = place(docs)
    rows_of = {}
    for bi, b in enumerate(batches):
        for r, row in enumerate(b["input_ids"].tolist()):
            for t in row:
                if t in where:
                    rows_of.setdefault(where[t][0], set()).add((bi, r))
    long = [d for d, doc in enumerate(docs) if len(doc) > 16]
    assert long and all(len(rows_of[d]) >= 2 for d in long), "split over rows"
    assert any(len({bi for bi, _ in rows_of[d]}) >= 2 for d in long), "and over batches"


def test_drop_last_drops_the_tail_instead_of_padding(pack_root, docs):
    rank_loaders = loaders(pack_root, 2, 1, 3, 16, drop_last=True)
    per_rank = [list(ld) for ld in rank_loaders]
    assert len({len(b) for b in per_rank}) == 1
    flat = [b for batches in per_rank for b in batches]
    assert all(b["input_ids"].shape == (3, 16) and bool((b["document_ids"] >= 0).all()) for b in flat)
    got = real_tokens(flat)
    assert len(got) == len(set(got)) and set(got) <= {t for d in docs for t in d}
    assert len(got) > sum(map(len, docs)) - 2 * 4 * 16, "less than a batch and a row per rank dropped"


class _Tuples:
    """A packing loader whose batches are tuples (what check_resume compares)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for b in self.loader:
            yield b["input_ids"], b["position_ids"], b["document_ids"], b["cu_seqlens"], b["max_seqlen"]

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after, epochs", [(4, 1), (13, 2)], ids=["mid-epoch", "second-epoch"])
def test_same_layout_resume_gives_exactly_the_same_blocks(pack_root, tmp_path, workers, stop_after, epochs):
    check_resume(lambda: _Tuples(loaders(pack_root, 1, workers, 3, 16, EOS, shuffle_buffer=5)[0]), stop_after,
                 epochs, tmp_path)


@pytest.mark.parametrize("saved, restored", [((2, 2, 3), (3, 1, 2)), ((1, 0, 2), (2, 2, 4)), ((3, 1, 1), (1, 0, 3))],
                         ids=str)
def test_another_layout_gives_every_remaining_token_exactly_once(pack_root, docs, saved, restored):
    (w, k, b), (w2, k2, b2) = saved, restored
    before = loaders(pack_root, w, k, b, 16, EOS)
    iters = [iter(ld) for ld in before]
    taken = [next(it) for _ in range(len(before[0]) // 2) for it in iters]
    states = [ld.state_dict() for ld in before]
    assert all(s == states[0] for s in states)
    del iters
    after = loaders(pack_root, w2, k2, b2, 16, EOS)
    for ld in after:
        ld.load_state_dict(states[0])
    rest = [list(ld) for ld in after]
    assert len({len(r) for r in rest}) == 1, "equal per-rank batch counts after the restore"
    for batch in [x for r in rest for x in r]:
        check_batch(batch, 16, eos=EOS, rows=b2)
    got = real_tokens(taken, EOS) + real_tokens([x for r in rest for x in r], EOS)
    assert sorted(got) == sorted(t for d in docs for t in d), "every token of the epoch once, before or after"


def test_older_datasets_are_packed_after_one_cached_scan(tmp_path):
    root = FIXTURES / "sequences"
    cache = tmp_path / "cache"
    stored = [t for tokens, _ in StreamingDataset(root, shuffle=False) for t in tokens.tolist()]
    batches = list(make_loader(StreamingDataset(root, shuffle=False, cache_dir=cache), 2, block_size=8,
                               num_workers=0))
    assert [t for b in batches for t in b["input_ids"][b["document_ids"] >= 0].tolist()] == stored
    scans = list((cache / ".wds-counts").glob("*.json"))
    assert len(scans) == 3, "one scan per shard, kept"
    mtimes = [p.stat().st_mtime_ns for p in scans]
    list(make_loader(StreamingDataset(root, shuffle=False, cache_dir=cache), 2, block_size=8, num_workers=0))
    assert [p.stat().st_mtime_ns for p in scans] == mtimes, "and read back, not scanned again"


def test_an_epoch_size_is_the_same_fraction_of_the_tokens(pack_root, docs):
    total = sum(map(len, docs))
    dataset = StreamingDataset(pack_root, epoch_size=0.25)
    loader = make_loader(dataset, 2, block_size=16, num_workers=0)
    first, second = real_tokens(list(loader)), real_tokens(list(loader))
    expected = round(dataset.epoch_samples * total / len(docs))
    assert len(first) == len(second) == expected
    assert not set(first) & set(second), "the next epoch goes on with the rest"


def test_a_mix_packs_rows_of_one_source_each_in_exact_shares(pack_root, tmp_path):
    other = unique_documents(40, 1_000_000, 1)
    write_sequence_shards(tmp_path / "other", other, [25, 15], dtype="uint32")
    mix = Mix({"main": StreamingDataset(pack_root), "other": StreamingDataset(tmp_path / "other")},
              weights={"main": 0.75, "other": 0.25}, epoch_size=100, with_source=True)
    rank_loaders = [make_loader(Mix({"main": StreamingDataset(pack_root, rank=r, world_size=2),
                                     "other": StreamingDataset(tmp_path / "other", rank=r, world_size=2)},
                                    weights={"main": 0.75, "other": 0.25}, epoch_size=100, with_source=True),
                                3, block_size=16, eos_id=EOS, num_workers=1) for r in range(2)]
    batches = [b for ld in rank_loaders for b in ld]
    rows = Counter()
    for b in batches:
        check_batch(b, 16, eos=EOS)
        for name, row, d in zip(b["source"], b["input_ids"].tolist(), b["document_ids"].tolist()):
            tokens = [t for t, x in zip(row, d) if x >= 0 and t != EOS]
            assert name is None or all((t >= 1_000_000) == (name == "other") for t in tokens), "one source a row"
            rows[name] += 1
    unit, sizes, entries, _ = mix._space(rank_loaders[0].plan_layout)
    assert [rows["main"], rows["other"]] == shares([0.75, 0.25], entries // 16)
    got = real_tokens(batches, EOS)
    assert len(got) == len(set(got)), "no token twice within its source's share"


def test_packed_batches_go_through_the_device_loader(pack_root):
    loader = DeviceLoader(make_loader(StreamingDataset(pack_root), 2, block_size=16, num_workers=1), "cpu")
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "position_ids", "document_ids", "cu_seqlens", "max_seqlen"}
    assert isinstance(batch["max_seqlen"], int) and batch["cu_seqlens"].dtype == torch.int32


def test_what_packing_refuses(pack_root, image_root):
    with pytest.raises(ValueError, match="token datasets"):
        make_loader(StreamingDataset(image_root), 2, block_size=16)
    with pytest.raises(ValueError, match="bucketing"):
        make_loader(StreamingDataset(pack_root), 2, block_size=16, bucketing=True)
    with pytest.raises(ValueError, match="block_size as an int"):
        make_loader(StreamingDataset(pack_root), 2, block_size=0)
    with pytest.raises(ValueError, match="eos_id"):
        make_loader(StreamingDataset(pack_root), 2, block_size=8, eos_id=-1)
    packed = make_loader(StreamingDataset(pack_root), 2, block_size=8, num_workers=0)
    it = iter(packed)
    next(it)
    state = packed.state_dict()
    plain = make_loader(StreamingDataset(pack_root), 2, num_workers=0)
    plain.load_state_dict(state)
    with pytest.raises(ValueError, match="same block_size"):
        next(iter(plain))
    other = make_loader(StreamingDataset(pack_root), 2, block_size=16, num_workers=0)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="rows of 8 tokens"):
        next(iter(other))


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_damaged_blocks_raise_or_become_recorded_padding(tmp_path, pack_root, docs, policy):
    import shutil

    from shardkit.errors import ShardError

    copy = tmp_path / "copy"
    shutil.copytree(pack_root, copy)
    shard = copy / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    at = [i for i in range(len(data)) if data[i:i + 6] == b"\x93NUMPY"][4]  # a member of the third block
    data[at:at + 6] = b"garbag"
    shard.write_bytes(bytes(data))
    loader = make_loader(StreamingDataset(copy, shuffle=False, on_error=policy), 2, block_size=16, num_workers=0)
    if policy == "raise":
        with pytest.raises(ShardError, match="shard-000001"):
            list(loader)
        return
    batches = list(loader)
    assert len(batches) == len(loader) and all(b["input_ids"].shape[1] == 16 for b in batches)
    for b in batches:
        check_batch(b, 16)
    got = real_tokens(batches)
    assert len(got) == len(set(got)) and len(got) < sum(map(len, docs)), "what was lost is padding"
    assert loader.stream.errors and "shard-000001" in loader.stream.errors[0]["shard"]
