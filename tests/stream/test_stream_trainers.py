"""shardkit as trainers' users run it: a torchrun (gloo) script that saves on rank 0 and resumes
on 1 and on 3 processes; PyTorch Lightning's ddp on CPU; Hugging Face Accelerate; torchdata's
StatefulDataLoader; and the README's "From ImageFolder + DataLoader" diff and example. Samples are sequences whose first token is their id (``seq_root``: 103 of
them), so every check is by sample identity: each sample once per epoch across the ranks, plus
exactly the padding DistributedSampler's rule adds (a rank count rounded up to a multiple of the
world size, by repeating the start of the sequence, which rank 0 holds, at the last rank's end).

The distributed runs are real processes started by the tests (scripts in ``trainers/``), in
their own process group, killed with it on a timeout.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from shardkit import StreamingDataset, make_loader, pad_collate
from stream_helpers import batch_ids

SCRIPTS = Path(__file__).parent / "trainers"
REPO = Path(__file__).parents[2]
SAMPLES = 103  # seq_root

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11


# -- running the trainers ---------------------------------------------------------------------

def run_command(args: list[str], timeout: float, cwd: Path | None = None) -> str:
    """Run ``args`` in a new process group with this checkout's shardkit; its output. Every
    process of the group is killed when it ends (or times out), so none outlives the test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=cwd)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(args[:6])} ran past {timeout} s:\n{out[-4000:]}") from None
    finally:
        _kill_group(proc.pid)
    assert proc.returncode == 0, f"{' '.join(args[:6])} exited with {proc.returncode}:\n{out[-6000:]}"
    return out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def torchrun(nproc: int, script: str | Path, *args, timeout: float = 90, cwd: Path | None = None) -> str:
    """``torchrun --standalone --nproc_per_node=nproc script args`` (a name in ``trainers/``, or a path)."""
    return run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        str(SCRIPTS / script), *map(str, args)], timeout, cwd)


def read_ranks(out: Path) -> list[dict]:
    docs = [json.loads(p.read_text()) for p in out.glob("rank*.json")]
    docs.sort(key=lambda d: d["rank"])
    assert [d["rank"] for d in docs] == list(range(docs[0]["world"])), "a rank wrote nothing"
    return docs


def epoch_ids(doc: dict, epoch: int) -> list[int]:
    return [i for s in doc["seen"] if s["epoch"] == epoch for i in s["ids"]]


def padding(count: int, world: int) -> int:
    """What DistributedSampler adds to ``count`` samples on ``world`` ranks."""
    return -(-count // world) * world - count


def check_padding_repeats(ranks: list[list[int]], expected: int) -> None:
    """Exactly ``expected`` samples come twice, each once on rank 0 and once at the last rank."""
    counts = Counter(i for r in ranks for i in r)
    repeats = [i for i, n in counts.items() if n > 1]
    assert max(counts.values(), default=1) <= 2 and len(repeats) == expected, (repeats, expected)
    for i in repeats:
        assert i in ranks[0] and i in ranks[-1], f"sample {i} repeated other than as padding"


def reference_batches(root: Path, world: int, epoch: int, workers: int, **options) -> list[list[list[int]]]:
    """Each rank's batches of ``epoch`` from a loader made in this process (``rank=``, ``world_size=``)."""
    out = []
    for rank in range(world):
        loader = make_loader(StreamingDataset(root, rank=rank, world_size=world, **options), 5, num_workers=workers)
        loader.sampler.set_epoch(epoch)
        out.append([batch_ids(b) for b in loader])
    return out


# -- 1. torchrun + gloo: save on rank 0, resume on 1 and 3 processes ----------------------------

@pytest.fixture(scope="module")
def first_runs(seq_root, tmp_path_factory):
    """2-process runs stopped after k steps (each k run once for the module)."""
    runs = {}

    def get(stop: int) -> Path:
        if stop not in runs:
            out = tmp_path_factory.mktemp(f"torchrun-stop{stop}")
            torchrun(2, "torchrun_train.py", seq_root, out, "--stop", stop)
            runs[stop] = out
        return runs[stop]
    return get


# 103 samples on 2 ranks: 52 each (1 padding), 11 batches of 5 (the last of 2); k = 11 is the
# epoch's last batch, where the state is the next epoch's start
@pytest.mark.parametrize("stop, world, workers", [(3, 1, 1), (3, 3, 0), (11, 3, 1)],
                         ids=["mid-epoch-to-1-rank", "mid-epoch-to-3-ranks", "last-batch-to-3-ranks"])
def test_torchrun_save_on_rank0_resume_on_other_world_sizes(seq_root, first_runs, tmp_path, stop, world, workers):
    first_out = first_runs(stop)
    first = read_ranks(first_out)
    assert all(d["states_equal"] for d in first), "loader.state_dict() differs between ranks at the same step"
    assert [d["len"] for d in first] == [11, 11] and all(len(d["seen"]) == stop for d in first)
    state = torch.load(first_out / "ckpt.pt", weights_only=True)["loader"]

    torchrun(world, "torchrun_train.py", seq_root, tmp_path, "--resume", first_out / "ckpt.pt", "--workers", workers)
    after = read_ranks(tmp_path)
    assert len(after) == world

    # the interrupted epoch: what the 2 ranks read, then what the resumed ranks read
    before0 = [epoch_ids(d, 0) for d in first]
    after0 = [epoch_ids(d, 0) for d in after]
    b, a = [i for r in before0 for i in r], [i for r in after0 for i in r]
    assert set(b) | set(a) == set(range(SAMPLES)), "samples lost"
    assert not set(b) & set(a), "samples read before the checkpoint read again after it"
    finished = stop == first[0]["len"]
    check_padding_repeats(before0, padding(SAMPLES, 2) if finished else 0)
    check_padding_repeats(after0, padding(SAMPLES - len(set(b)), world))
    assert state["epoch"] == (1 if finished else 0)
    assert len({len(r) for r in after0}) == 1, "resumed ranks read different counts (DDP would hang)"

    # the next epoch, whole on the new world size: exactly what a fresh run of it gives
    after1 = [epoch_ids(d, 1) for d in after]
    assert sorted(set(i for r in after1 for i in r)) == list(range(SAMPLES))
    check_padding_repeats(after1, padding(SAMPLES, world))
    expected = reference_batches(seq_root, world, 1, workers, seed=3, shuffle_buffer=10)
    assert [[s["ids"] for s in d["seen"] if s["epoch"] == 1] for d in after] == expected


# -- 2. PyTorch Lightning: Trainer(strategy="ddp", accelerator="cpu", devices=2) ----------------

@pytest.fixture(scope="module")
def lightning_run(seq_root, tmp_path_factory) -> Path:
    """Two epochs, checkpoints after step 3 (mid-epoch), step 11 (epoch 0's last batch, saved in
    on_train_batch_end) and at each epoch's end."""
    out = tmp_path_factory.mktemp("lightning")
    run_command([sys.executable, str(SCRIPTS / "lightning_train.py"), str(seq_root), str(out), "--workers", "1",
                 "--save-steps", "3", "11", "--save-epoch-end"], timeout=120)
    return out


def test_lightning_ddp_keeps_shardkit_sharding_and_advances_the_epoch(seq_root, lightning_run):
    ranks = read_ranks(lightning_run)
    for d in ranks:
        # no sampler injected, no loader rebuilt: Lightning sees a DistributedSampler already
        assert d["same_loader"] and d["sampler"] == "shardkit.stream.loader._Units"
        assert d["epochs_set"] == [0, 1] and d["len"] == d["num_training_batches"] == 11
    for epoch in (0, 1):
        ids = [epoch_ids(d, epoch) for d in ranks]
        assert [len(r) for r in ids] == [52, 52], "not sharded once: each rank should read half"
        assert set(ids[0]) | set(ids[1]) == set(range(SAMPLES))
        check_padding_repeats(ids, padding(SAMPLES, 2))
    assert epoch_ids(ranks[0], 0) != epoch_ids(ranks[0], 1), "epoch 1 repeats epoch 0's order"
    expected = reference_batches(seq_root, 2, 1, 1, seed=5, shuffle_buffer=10)
    assert [[s["ids"] for s in d["seen"] if s["epoch"] == 1] for d in ranks] == expected


@pytest.mark.parametrize("checkpoint, step", [("step=3", 3), ("step=11", 11), ("epoch=0", 11)],
                         ids=["mid-epoch", "last-batch", "epoch-end"])
def test_lightning_resumes_its_own_checkpoint_exactly(seq_root, lightning_run, tmp_path, checkpoint, step):
    ckpt = lightning_run / f"{checkpoint}.ckpt"
    # Lightning saves the loader's state_dict by itself (a loader with state_dict/load_state_dict)
    saved = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert [s["format"] for s in saved] == ["shardkit.stream"]
    run_command([sys.executable, str(SCRIPTS / "lightning_train.py"), str(seq_root), str(tmp_path), "--workers", "1",
                 "--resume", str(ckpt)], timeout=120)
    for full, resumed in zip(read_ranks(lightning_run), read_ranks(tmp_path)):
        assert resumed["seen"] == [s for s in full["seen"] if s["step"] >= step]


# -- 3. Hugging Face Accelerate -------------------------------------------------------------------

@pytest.fixture(scope="module")
def accelerate_run(seq_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("accelerate")
    torchrun(2, "accelerate_train.py", seq_root, out, "--try-prepare-loader")
    return out


def test_accelerate_prepare_rebuilds_the_loader_and_fails(accelerate_run):
    """Accelerate's prepare() makes a new DataLoader over the loader's dataset with a sharding
    sampler of its own: shardkit's sampler is dropped and the result cannot be iterated, with
    the DataLoaderConfiguration settings that change the sharding too."""
    for d in read_ranks(accelerate_run):
        prepared = d["prepared"]
        assert not prepared["is_shardkit_loader"] and prepared["type"] == "DataLoaderShard"
        assert prepared["sampler"] != "_Units"
        assert prepared["outcome"] == "TypeError: 'NoneType' object is not iterable"
        assert sorted(d["variants"]) == ["even_batches=False", "split_batches=True", "use_stateful_dataloader=True"]
        assert all(outcome != "batch" for outcome in d["variants"].values()), d["variants"]


def test_accelerate_without_preparing_the_loader_sees_every_sample_once(accelerate_run):
    ranks = read_ranks(accelerate_run)
    assert [(d["dataset_rank"], d["dataset_world"]) for d in ranks] == [(0, 2), (1, 2)]
    assert all(d["distributed_type"] == "DistributedType.MULTI_CPU" for d in ranks)
    for epoch in (0, 1):
        ids = [epoch_ids(d, epoch) for d in ranks]
        assert set(ids[0]) | set(ids[1]) == set(range(SAMPLES)) and [len(r) for r in ids] == [52, 52]
        check_padding_repeats(ids, padding(SAMPLES, 2))


def test_accelerate_save_state_and_load_state_carry_the_loader(seq_root, accelerate_run, tmp_path):
    """``register_for_checkpointing(loader)``: save_state at step 4, load_state in a new run."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    torchrun(2, "accelerate_train.py", seq_root, first, "--stop", 4)
    torchrun(2, "accelerate_train.py", seq_root, second, "--resume", first / "state")
    for full, before, after in zip(read_ranks(accelerate_run), read_ranks(first), read_ranks(second)):
        assert before["seen"] + after["seen"] == full["seen"]


# -- 4. torchdata's StatefulDataLoader over a StreamingDataset ----------------------------------

def stateful_run(root, workers, persistent, *, stop=None, state=None, after_epoch=None, epochs=3, epoch_size=None,
                 set_epoch=True):
    """An epoch loop over ``StatefulDataLoader(StreamingDataset(root), batch_size=4)``: the batches'
    ids, and (with ``stop`` batches or ``after_epoch``) the state to resume from then."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    dataset = StreamingDataset(root, shuffle_buffer=10, epoch_size=epoch_size)
    loader = StatefulDataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=pad_collate,
                                persistent_workers=persistent)
    start = 0
    if state is not None:
        loader.load_state_dict(state["loader"])
        start = state["epoch"]
    out = []
    for epoch in range(start, epochs):
        if set_epoch:
            dataset.set_epoch(epoch)
        for batch in loader:
            out.append(batch_ids(batch))
            if len(out) == stop:
                return out, {"loader": loader.state_dict(), "epoch": epoch}
        if epoch == after_epoch:
            return out, {"loader": loader.state_dict(), "epoch": epoch + 1}
    return out, None


# 103 samples, batches of 4: 26 per epoch (2 workers: 13 + 13, worker 0 done after batch 25)
@pytest.mark.parametrize("workers, persistent", [(0, False), (2, False), (2, True)],
                         ids=["main-process", "2-workers", "2-persistent-workers"])
@pytest.mark.parametrize("stop, after_epoch", [(5, None), (25, None), (26, None), (30, None), (None, 0)],
                         ids=["mid-epoch", "one-worker-done", "epoch-last-batch", "second-epoch", "between-epochs"])
def test_stateful_dataloader_resumes_exactly(seq_root, tmp_path, workers, persistent, stop, after_epoch):
    reference, _ = stateful_run(seq_root, workers, persistent)
    assert len(reference) == 3 * 26
    assert reference[:26] != reference[26:52], "the epochs should differ"
    taken, state = stateful_run(seq_root, workers, persistent, stop=stop, after_epoch=after_epoch)
    torch.save(state, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    rest, _ = stateful_run(seq_root, workers, persistent, state=state)
    assert taken + rest == reference


@pytest.mark.parametrize("workers, persistent", [(0, False), (2, True), (2, False)],
                         ids=["main-process", "persistent-workers", "workers"])
def test_stateful_dataloader_epochs_without_set_epoch(seq_root, workers, persistent):
    """The epoch advances by itself in the main process and in persistent workers; fresh workers
    get the main process's copy, so, as with a plain DataLoader, they need set_epoch."""
    reference, _ = stateful_run(seq_root, workers, persistent)
    alone, _ = stateful_run(seq_root, workers, persistent, set_epoch=False)
    if workers == 0 or persistent:
        assert alone == reference
    else:
        assert alone[:26] == reference[:26] and alone[26:52] == alone[:26] != reference[26:52]


def test_stateful_dataloader_worker_states_restore_on_their_own_layout_only(seq_root):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def make(world):
        return StatefulDataLoader(StreamingDataset(seq_root, rank=0, world_size=world), batch_size=4, num_workers=1,
                                  collate_fn=pad_collate)
    loader = make(2)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    other = make(1)
    other.load_state_dict(state)
    failing = iter(other)
    with pytest.raises(ValueError, match="restores only on that layout.*make_loader") as raised:
        next(failing)
    del raised, failing  # shut its worker down now, not in a later test's garbage collection
    gc.collect()


def test_stateful_dataloader_main_process_after_a_full_last_batch(seq_root):
    """The one inexact case: with num_workers=0, a state taken right after an epoch's last batch,
    when that batch is full (100 samples / 4), is the next epoch's start, and StatefulDataLoader
    reads that epoch as the rest of this one. The batches still come in the uninterrupted order
    (a loop that counts steps resumes exactly); a loop that counts epochs runs one more."""
    reference, _ = stateful_run(seq_root, 0, False, epoch_size=100, epochs=2, set_epoch=False)
    taken, state = stateful_run(seq_root, 0, False, epoch_size=100, stop=25, set_epoch=False)
    rest, _ = stateful_run(seq_root, 0, False, epoch_size=100, state=state, epochs=2, set_epoch=False)
    assert len(reference) == 50 and taken + rest[:25] == reference
    assert len(rest) == 50, "the epoch loop's first resumed 'epoch' should be the next epoch"


# -- 5. the README's "From ImageFolder + DataLoader" section runs ---------------------------------

def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## From ImageFolder + DataLoader")
    return text[start:text.index("\n## ", start)]


def apply_diff(source: str, diff: str) -> str:
    """``source`` with each hunk of the unified ``diff`` applied (its old side must occur once)."""
    for hunk in re.split(r"^@@.*\n", diff, flags=re.M)[1:]:
        lines = hunk.rstrip("\n").split("\n")
        old = "\n".join(line[1:] for line in lines if line[:1] != "+")
        new = "\n".join(line[1:] for line in lines if line[:1] != "-")
        assert source.count(old) == 1, f"the README's hunk does not apply once:\n{old}"
        source = source.replace(old, new)
    return source


def test_readme_imagenet_diff_and_validation_example_run(image_root, tmp_path):
    """The README's diff, applied to a script shaped like imagenet/main.py (trainers/imagenet_shaped.py),
    trains on 2 gloo ranks, saves and resumes; its validation example counts every sample once."""
    section = readme_section()
    [diff] = re.findall(r"```diff\n(.*?)```", section, re.S)
    [snippet] = re.findall(r"```python\n(.*?)```", section, re.S)
    assert sum(line.startswith("+") for line in diff.splitlines()) <= 10
    script = tmp_path / "main.py"
    script.write_text(apply_diff((SCRIPTS / "imagenet_shaped.py").read_text(), diff))
    data = tmp_path / "data"
    data.mkdir()
    (data / "train").symlink_to(image_root)  # shards (30 images, 3 classes)
    (data / "val").symlink_to(image_root.parent / "src")  # the ImageFolder tree the unchanged val loader reads
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "val").symlink_to(image_root)  # the example's "shards/val"
    (tmp_path / "snippet.py").write_text("import torch\nimport shardkit\n" + snippet)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()

    torchrun(2, script, data, first, "--epochs", 1, cwd=tmp_path)
    for d in map(json.loads, (p.read_text() for p in sorted(first.glob("rank*.json")))):
        epoch = d["epochs"]["0"]
        assert epoch["count"] == 15 and epoch["val"] == 30  # 30 images, 2 ranks
        assert epoch["dtypes"] == ["torch.float32"] and epoch["shapes"] == [[3, 224, 224]]
        assert abs(epoch["mean"]) < 3, "batches not normalised (uint8 scale?)"
    checkpoint = torch.load(first / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["loader"]["epoch"] == 1

    torchrun(2, script, data, second, "--epochs", 2, "--resume", first / "checkpoint.pth.tar",
             "--snippet", tmp_path / "snippet.py", cwd=tmp_path)
    for d in map(json.loads, (p.read_text() for p in sorted(second.glob("rank*.json")))):
        assert list(d["epochs"]) == ["1"] and d["epochs"]["1"]["count"] == 15
        correct, total = d["totals"]
        assert total == 30 and 0 <= correct <= 30 and d["top1"] == pytest.approx(correct / total)
