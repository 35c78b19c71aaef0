"""The destination: re-runs, other datasets, the lock, read-only and full disks, kill -9 and resume."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import datagen
from datagen import dst_files
import shardkit
from convert_helpers import REPO, manifest_doc
from shardkit.convert.output import PARTIAL
from shardkit.errors import DestinationError


def test_rerun_of_a_finished_conversion_is_a_no_op(jpeg_tree, tmp_path):
    first = shardkit.convert(jpeg_tree, tmp_path / "out", workers=1, max_shard_samples=10)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = shardkit.convert(jpeg_tree, tmp_path / "out", workers=2, max_shard_samples=10)
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps
    doc = manifest_doc(tmp_path / "out")
    assert doc["source"]["files"] == 30 and len(doc["source"]["digest"]) == 64
    assert str(tmp_path) not in (tmp_path / "out" / "manifest.json").read_text()  # no absolute paths


@pytest.mark.parametrize("change", ["seed", "source", "foreign file", "stray shard", "partial of another plan"])
def test_destination_holding_something_else_is_refused(jpeg_tree, tmp_path, change):
    dst = tmp_path / "out"
    seed = 0
    if change == "seed":
        shardkit.convert(jpeg_tree, dst, workers=1)
        seed = 1
    elif change == "source":
        shardkit.convert(jpeg_tree, dst, workers=1)
        (jpeg_tree / "class00" / "img00000.jpg").unlink()
    elif change == "foreign file":
        dst.mkdir()
        (dst / "notes.txt").write_text("mine")
    elif change == "stray shard":
        dst.mkdir()
        (dst / "shard-000000.tar").write_bytes(b"\0" * 1024)
    else:
        dst.mkdir()
        (dst / PARTIAL).mkdir()
        (dst / PARTIAL / "plan.json").write_text('{"digest": "0123"}')
    before = dst_files(dst)
    with pytest.raises(DestinationError, match="--overwrite"):
        shardkit.convert(jpeg_tree, dst, workers=1, seed=seed)
    assert dst_files(dst) == before  # refused before touching anything
    if change == "stray shard":  # no manifest names it: shardkit cannot know it wrote it
        with pytest.raises(DestinationError, match=r"shard-000000\.tar, which no shardkit manifest there names"):
            shardkit.convert(jpeg_tree, dst, workers=1, seed=seed, overwrite=True)
        assert dst_files(dst) == before
        return
    manifest = shardkit.convert(jpeg_tree, dst, workers=1, seed=seed, overwrite=True)
    assert manifest.params["seed"] == seed and manifest_doc(dst)["samples"] == manifest.samples
    if change == "foreign file":
        assert (dst / "notes.txt").read_text() == "mine"  # overwrite removes shardkit's files only


def test_overwrite_removes_shards_the_new_plan_does_not_have(jpeg_tree, tmp_path):
    shardkit.convert(jpeg_tree, tmp_path / "out", workers=1, max_shard_samples=3)
    shardkit.convert(jpeg_tree, tmp_path / "out", workers=1, max_shard_samples=20, overwrite=True)
    shardkit.convert(jpeg_tree, tmp_path / "fresh", workers=1, max_shard_samples=20)
    assert dst_files(tmp_path / "out") == dst_files(tmp_path / "fresh")


def test_destination_inside_an_imagefolder_is_refused(jpeg_tree):
    with pytest.raises(DestinationError, match="inside the ImageFolder tree"):
        shardkit.convert(jpeg_tree, jpeg_tree / "shards", workers=1)
    assert not (jpeg_tree / "shards").exists()


def test_lock_refuses_a_concurrent_conversion(jpeg_tree, tmp_path):
    dst = tmp_path / "out"
    (dst / PARTIAL).mkdir(parents=True)
    with open(dst / PARTIAL / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running conversion holds
        with pytest.raises(DestinationError, match="another conversion is writing"):
            shardkit.convert(jpeg_tree, dst, workers=1)
    assert shardkit.convert(jpeg_tree, dst, workers=1).samples == 30  # free again once released
    assert not (dst / PARTIAL).exists()


def test_a_cli_conversion_is_refused_while_another_holds_the_lock(jpeg_tree, tmp_path):
    dst = tmp_path / "out"
    args = [sys.executable, "-m", "shardkit", "convert", str(jpeg_tree), str(dst), "--workers", "1",
            "--max-shard-samples", "1"]
    (dst / PARTIAL).mkdir(parents=True)
    with open(dst / PARTIAL / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running conversion holds
        refused = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "another conversion" in refused.stderr
    assert subprocess.run(args, cwd=REPO, capture_output=True, timeout=120).returncode == 0
    assert manifest_doc(dst)["samples"] == 30


def test_unusable_destination_is_an_error_before_any_work(jpeg_tree, tmp_path, mount_tmpfs):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match="cannot create|not a directory"):
        shardkit.convert(jpeg_tree, tmp_path / "file" / "out", workers=1)
    read_only = mount_tmpfs("ro", "64k", ro=True)
    if read_only is None:  # not root: a plain permission bit does it
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o555)
    with pytest.raises(DestinationError, match="not writable|cannot create"):
        shardkit.convert(jpeg_tree, read_only / "out", workers=1)
    with pytest.raises(DestinationError, match="not writable"):
        shardkit.convert(jpeg_tree, read_only, workers=1)


def test_full_disk_then_resume_gives_the_same_bytes(tmp_path, mount_tmpfs, monkeypatch):
    """ENOSPC from a real full file system (a 192 KiB tmpfs: the tests run as root), then the same
    conversion after the tmpfs is grown. Without root no real disk can be filled here, so the
    shard writer's stream is patched to raise ENOSPC past a byte budget instead."""
    import errno

    from shardkit.convert import output

    src = datagen.make_jpeg_tree(tmp_path / "src", per_class=12, sizes=(120, 160))
    shardkit.convert(src, tmp_path / "reference", workers=1, max_shard_samples=4)
    reference = dst_files(tmp_path / "reference")
    assert sum(len(v) for v in reference.values()) > 300_000
    small = mount_tmpfs("small", "192k")
    if small is None:
        small, budget, write = tmp_path / "small", {"left": 192 << 10}, output._Hashing.write

        def full_disk(self, data):
            budget["left"] -= len(data)
            if budget["left"] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(self, data)

        monkeypatch.setattr(output._Hashing, "write", full_disk)
    dst = small / "out"
    with pytest.raises(DestinationError, match=r"no space left .* shard-\d{6}\.tar"):
        shardkit.convert(src, dst, workers=2, max_shard_samples=4)
    assert not (dst / "manifest.json").exists()
    for name, data in dst_files(dst).items():  # whatever has a final name is complete
        if name.endswith(".tar") and not name.startswith(PARTIAL):
            assert data == reference[name]
    assert not [n for n in dst_files(dst) if ".tmp-" in n]
    if os.path.ismount(small):
        subprocess.run(["mount", "-o", "remount,size=4m", str(small)], check=True)
    else:
        monkeypatch.undo()
    shardkit.convert(src, dst, workers=2, max_shard_samples=4)
    assert dst_files(dst) == reference


def test_a_record_that_does_not_fit_is_an_error_and_leaves_nothing_behind(tmp_path, mount_tmpfs, monkeypatch):
    """ENOSPC while writing a shard's resume record (a tmpfs filled to the last byte; without root,
    fsync raising ENOSPC instead): the error names the shard and no temporary file is left."""
    import errno

    from shardkit.convert.output import Destination, ShardRecord

    small = mount_tmpfs("tiny", "64k") or tmp_path / "tiny"
    with Destination(str(small / "out")) as dst:
        if os.path.ismount(small):
            with open(small / "filler", "wb", buffering=0) as filler, pytest.raises(OSError, match="space"):
                while True:
                    filler.write(b"x" * 4096)
        else:
            def no_space(fd):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(os, "fsync", no_space)
        with pytest.raises(DestinationError, match=r"no space left .*the record of shard-000001\.tar"):
            dst.save_record(ShardRecord("shard-000001.tar", 4, 10_240, "0" * 64, []))
        assert not [n for n in os.listdir(small / "out" / PARTIAL) if ".tmp-" in n]


def test_kill_9_then_rerun_gives_the_bytes_of_an_uninterrupted_run(tmp_path):
    src = datagen.make_jpeg_tree(tmp_path / "src", classes=4, per_class=40)
    args = ["convert", str(src), None, "--workers", "1", "--max-shard-samples", "2", "--seed", "5"]

    def cli(dst):
        return [sys.executable, "-m", "shardkit", *[str(dst) if a is None else a for a in args]]

    subprocess.run(cli(tmp_path / "reference"), cwd=REPO, check=True, capture_output=True, timeout=120)
    dst = tmp_path / "out"
    proc = subprocess.Popen(cli(dst), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(dst.glob("shard-*.tar"))) < 2 and time.monotonic() < deadline:  # shard 0 then recorded
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGSTOP)  # freeze it at once, then look, then kill
    interrupted = not (dst / "manifest.json").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert interrupted, "the conversion finished before it could be killed; give it more data"
    survivors = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dst.glob("shard-*.tar")}
    assert survivors and (dst / PARTIAL).exists()
    rerun = subprocess.run(cli(dst), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert dst_files(dst) == dst_files(tmp_path / "reference")
    reused = [n for n, stamp in survivors.items() if ((dst / n).stat().st_ino, (dst / n).stat().st_mtime_ns) == stamp]
    assert "shard-000000.tar" in reused  # finished shards were kept, not rewritten


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_rerun_repairs_a_finished_conversion_whose_shards_were_damaged(jpeg_tree, tmp_path, damage):
    shardkit.convert(jpeg_tree, tmp_path / "out", workers=1, max_shard_samples=10)
    reference = dst_files(tmp_path / "out")
    shard = tmp_path / "out" / "shard-000001.tar"
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:1000])
    shardkit.convert(jpeg_tree, tmp_path / "out", workers=1, max_shard_samples=10)
    assert dst_files(tmp_path / "out") == reference


def test_remote_destination_gets_the_bytes_of_a_local_run_and_resumes(jpeg_tree, tmp_path, monkeypatch):
    """fsspec's in-memory filesystem as the remote store (S3 itself is tested in tests/storage)."""
    import fsspec

    from shardkit import storage

    shardkit.convert(jpeg_tree, tmp_path / "local", workers=1, max_shard_samples=8)
    expected = {k: v for k, v in dst_files(tmp_path / "local").items()}
    url = f"memory://shardkit-test-{os.getpid()}/ds"
    publish, published = storage.publish, []

    def interrupted(tmp, dest, *args, **kwargs):
        if str(dest).endswith(".tar"):
            published.append(str(dest))
            if len(published) == 3:
                raise KeyboardInterrupt
        return publish(tmp, dest, *args, **kwargs)

    monkeypatch.setattr(storage, "publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shardkit.convert(jpeg_tree, url, workers=1, max_shard_samples=8)
    fs = fsspec.filesystem("memory")
    assert not fs.exists(f"{url}/manifest.json")
    published.clear()
    shardkit.convert(jpeg_tree, url, workers=1, max_shard_samples=8)
    assert [p.rsplit("/", 1)[1] for p in published] == ["shard-000002.tar", "shard-000003.tar"]  # 0, 1 reused
    got = {p.split("/ds/", 1)[1]: fs.cat_file(p) for p in fs.find(url)}
    assert got == expected
    fs.rm(url, recursive=True)


def test_remote_imagefolder_source_gives_the_bytes_of_a_local_one(jpeg_tree, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    url = f"memory://shardkit-src-{os.getpid()}/tree"
    for path in sorted(jpeg_tree.rglob("*.jpg")):
        fs.pipe_file(f"{url}/{path.relative_to(jpeg_tree).as_posix()}", path.read_bytes())
    fs.pipe_file(f"{url}/README.txt", b"top-level files are not samples")
    local = shardkit.convert(jpeg_tree, tmp_path / "local", workers=1, max_shard_samples=8)
    remote = shardkit.convert(url, tmp_path / "remote", workers=1, max_shard_samples=8)  # memory:// is per process
    assert remote.shards == local.shards and remote.classes == local.classes
    remote_files, local_files = dst_files(tmp_path / "remote"), dst_files(tmp_path / "local")
    assert {k: v for k, v in remote_files.items() if k != "manifest.json"} == \
        {k: v for k, v in local_files.items() if k != "manifest.json"}
    # the source part differs: the store's stamps are not the local modification times, and the
    # README is ignored there
    remote_doc, local_doc = (json.loads(files["manifest.json"]) for files in (remote_files, local_files))
    assert remote_doc.pop("source")["ignored"] == 1 and local_doc.pop("source")["ignored"] == 0
    assert remote_doc == local_doc
    fs.rm(url, recursive=True)
