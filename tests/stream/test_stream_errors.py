"""Damaged shards, mismatched manifests, dying workers and failing transforms, as the reader sees them."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import tarfile
import time

import psutil
import pytest

from stream_helpers import batch_ids, sample_ids
from shardkit import ManifestError, ShardError
from shardkit.format.manifest import MANIFEST_NAME
from shardkit.format.tar import read_members
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.loader import make_loader

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 CPUs

N_SEQ = 103
SHARD = "shard-000001.tar"  # sequences 17..46, in blocks of 4


@pytest.fixture
def seq_copy(seq_root, tmp_path):
    return shutil.copytree(seq_root, tmp_path / "ds")


def record_shard(root, name):
    """Make the manifest agree with the shard's current bytes (a shard written damaged)."""
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    data = (root / name).read_bytes()
    for entry in manifest["shards"]:
        if entry["name"] == name:
            manifest["bytes"] += len(data) - entry["bytes"]
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


def truncate(root, name, keep):
    path = root / name
    path.write_bytes(path.read_bytes()[:keep])


def ids_of(root, **kwargs):
    ds = StreamingDataset(root, shuffle=False, **kwargs)
    return sample_ids(ds), ds


@pytest.mark.parametrize("recorded", [True, False], ids=["manifest-agrees", "manifest-disagrees"])
def test_truncated_shard_raises_naming_shard_and_offset(seq_copy, recorded):
    truncate(seq_copy, SHARD, 3000)
    if recorded:
        record_shard(seq_copy, SHARD)
    ds = StreamingDataset(seq_copy, shuffle=False)
    it = iter(ds)
    if not recorded:  # the size disagrees: reported before the first sample
        with pytest.raises(ShardError, match=f"shard {SHARD}, byte 3000: .*has 3000 bytes, expected"):
            next(it)
        return
    with pytest.raises(ShardError, match=rf"shard {SHARD}, .*byte \d+: truncated") as info:
        list(it)
    assert info.value.shard == SHARD and info.value.offset is not None


def assert_stand_ins(ids, lost, errors, count):
    """Every rank keeps its count under damage: each lost sample is replaced by a repeat of an
    intact one (counted as dropped), and no intact sample is missing."""
    assert len(ids) == count
    intact = set(range(N_SEQ)) - lost
    assert intact <= set(ids) and not lost & set(ids)
    repeats = len(ids) - len(set(ids))
    assert repeats == sum(e["dropped"] for e in errors) == len(lost & set(range(N_SEQ)))


@pytest.mark.parametrize("recorded", [True, False], ids=["manifest-agrees", "manifest-disagrees"])
def test_truncated_shard_skipped_keeps_every_intact_sample(seq_copy, recorded, caplog):
    truncate(seq_copy, SHARD, 3000)
    if recorded:
        record_shard(seq_copy, SHARD)
    with caplog.at_level(logging.WARNING):
        ids, ds = ids_of(seq_copy, on_error="skip")
    lost = set(range(17, 47)) - set(ids)
    assert lost == set(range(47 - len(lost), 47)) and lost, "what follows the cut is lost, nothing before it"
    assert_stand_ins(ids, lost, ds.errors, N_SEQ)
    assert all(e["shard"] == SHARD for e in ds.errors)
    assert "replaced by repeats" in caplog.text and SHARD in caplog.text


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_errors_from_workers_reach_the_main_process_and_ranks_keep_equal_counts(seq_copy, world_size):
    truncate(seq_copy, SHARD, 3000)
    record_shard(seq_copy, SHARD)
    ids, errors = [], []
    for rank in range(world_size):
        ds = StreamingDataset(seq_copy, on_error="skip", rank=rank, world_size=world_size)
        loader = make_loader(ds, 5, num_workers=2)
        rank_ids = [i for b in loader for i in batch_ids(b)]
        assert len(rank_ids) == len(ds) == -(-N_SEQ // world_size), "DDP would hang on unequal counts"
        ids += rank_ids
        errors += ds.errors
    lost = set(range(17, 47)) - set(ids)
    padding = world_size * -(-N_SEQ // world_size) - N_SEQ
    assert lost and len(ids) == N_SEQ + padding
    assert sum(e["dropped"] for e in errors) >= len(lost)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_missing_shard_is_reported_before_the_first_sample(seq_copy, on_error):
    os.remove(seq_copy / SHARD)
    ds = StreamingDataset(seq_copy, shuffle=False, on_error=on_error)
    if on_error == "raise":
        with pytest.raises(ManifestError, match=f"{SHARD} is missing"):
            next(iter(ds))
    else:
        ids = sample_ids(ds)
        assert_stand_ins(ids, set(range(17, 47)), ds.errors, N_SEQ)
        assert [i for i in ids if not 17 <= i < 47][:17] == list(range(17)), "the intact ones in order"
        assert any(f"{SHARD}: the shard is missing" in e["error"] for e in ds.errors)


def flip_byte(root, name, where):
    path = root / name
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_catches_a_flipped_byte(seq_copy):
    first = read_members((seq_copy / SHARD).read_bytes())[0]  # a tokens.npy member
    flip_byte(seq_copy, SHARD, first.offset + 512 + 200)
    assert sorted(ids_of(seq_copy)[0]) == list(range(N_SEQ)), "without verify, nothing is noticed"
    with pytest.raises(ShardError, match=f"shard {SHARD}: sha256 mismatch"):
        ids_of(seq_copy, verify=True)
    ids, ds = ids_of(seq_copy, verify=True, on_error="skip")
    assert len(ids) == N_SEQ and len(ds.errors) == 1 and "sha256 mismatch" in ds.errors[0]["error"]


def test_verify_passes_sound_shards_also_read_in_part(seq_root):
    seen = []
    for worker_ids in (ids_of(seq_root, verify=True)[0],
                       [i for b in make_loader(StreamingDataset(seq_root, verify=True), 7, num_workers=3)
                        for i in batch_ids(b)]):
        seen.append(sorted(worker_ids))
    assert seen == [list(range(N_SEQ))] * 2


def insert_symlink(root, name, after):
    """Put a symbolic link member after member number ``after`` of the shard."""
    members = read_members((root / name).read_bytes())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, m in enumerate(members):
            info = tarfile.TarInfo(m.name)
            info.size = len(m.data)
            tar.addfile(info, io.BytesIO(m.data))
            if i == after:
                link = tarfile.TarInfo("evil.tokens.npy")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
    (root / name).write_bytes(out.getvalue())
    record_shard(root, name)


def test_hostile_member_refused_or_skipped_without_losing_valid_samples(seq_copy):
    insert_symlink(seq_copy, SHARD, after=5)
    with pytest.raises(ShardError, match=f"shard {SHARD}, member 'evil.tokens.npy', byte .*symbolic link"):
        ids_of(seq_copy)
    ids, ds = ids_of(seq_copy, on_error="skip")
    assert ids == list(range(N_SEQ)), "nothing valid dropped"
    assert len(ds.errors) == 1 and ds.errors[0]["dropped"] == 0


def test_undecodable_image_skipped(image_root, tmp_path):
    root = shutil.copytree(image_root, tmp_path / "img")
    name = "shard-000002.tar"
    victim = next(m for m in read_members((root / name).read_bytes()) if m.name.endswith(".jpg"))
    data = bytearray((root / name).read_bytes())
    data[victim.offset + 512: victim.offset + 512 + len(victim.data)] = b"\0" * len(victim.data)
    (root / name).write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"shard {name}, member '{victim.name}': cannot decode image"):
        list(StreamingDataset(root, shuffle=False))
    ds = StreamingDataset(root, shuffle=False, on_error="skip")
    assert len(list(ds)) == 30, "a repeat of an intact image stands in for it"
    assert ds.errors[0]["member"] == victim.name and ds.errors[0]["dropped"] == 1


def slow(tokens):
    time.sleep(0.01)
    return tokens


def test_a_killed_worker_is_reported_within_seconds(image_root):
    loader = make_loader(StreamingDataset(image_root, transform=slow, decode=False), 2, num_workers=2,
                         persistent_workers=False, collate_fn=list)
    before = {p.pid for p in psutil.Process().children()}  # earlier tests may have left helpers
    it = iter(loader)
    for _ in range(3):  # both workers have delivered a batch (round robin)
        next(it)
    workers = [p for p in psutil.Process().children() if p.pid not in before]
    assert len(workers) == 2
    victim = workers[-1]
    victim.send_signal(signal.SIGKILL)
    started = time.monotonic()
    caught = None
    try:
        for _ in it:
            pass
    except RuntimeError as err:
        caught = err
        # Nothing may keep the iterator alive: deleting it shuts the other worker down and takes
        # torch's SIGCHLD check off, which would otherwise raise again at the next SIGCHLD,
        # wherever the test runner happens to be.
        caught.__traceback__ = None
    del it
    assert caught is not None and time.monotonic() - started < 10
    assert re.search(rf"DataLoader worker \(pid.*{victim.pid}.*\)", str(caught))


class Boom(Exception):
    pass


def explode(image):
    raise Boom("transform failed on purpose")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_transform_surfaces_the_original_exception(image_root, workers):
    loader = make_loader(StreamingDataset(image_root, transform=explode), 4, num_workers=workers)
    with pytest.raises(Boom, match="transform failed on purpose") as info:
        next(iter(loader))
    text = str(info.value) + " ".join(getattr(info.value, "__notes__", []))
    assert "in the transform of" in text and "shard-0000" in text


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_shard_of_another_dataset_put_in_place_is_an_error_under_any_policy(tmp_path, on_error):
    """Two datasets with shards of the same names and sizes (a conversion with --overwrite while a
    reader runs): every header carries its dataset's stamp, so the swap is noticed, not streamed."""
    from shardkit import ShardWriter

    for name, text in (("a", "aaaa"), ("b", "bbbb")):
        with ShardWriter(tmp_path / name, max_shard_samples=5) as writer:
            for _ in range(10):
                writer.write({"txt": text})
    dataset = StreamingDataset(tmp_path / "a", shuffle=False, on_error=on_error)  # reads a's manifest
    shard = "shard-000001.tar"
    assert (tmp_path / "a" / shard).stat().st_size == (tmp_path / "b" / shard).stat().st_size
    shutil.copyfile(tmp_path / "b" / shard, tmp_path / "a" / shard)
    with pytest.raises(ShardError, match="belongs to another dataset") as info:
        list(dataset)
    assert info.value.shard == shard
