"""What convert promises, for each of the new input kinds (table, tabular, webdataset): kill -9 and a
re-run give the bytes of an uninterrupted run, Dask writes the same bytes, a remote destination gets
them too, the CLI's summary line, and kind detection from the files."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shardkit
from convert_helpers import REPO
from datagen import dst_files
from shardkit.convert.output import PARTIAL
from shardkit.convert.sources import detect_kind
from shardkit.convert.options import ConvertOptions
from table_helpers import caption_rows, features, write_table, write_tabular
from table_helpers import write_tars


def make_source(kind: str, root, big: bool = False):
    """``(SRC args for the CLI, convert() kwargs)`` of a small source of ``kind``."""
    if kind == "table":
        rows = caption_rows(root, 60 if big else 10)
        table = write_table(root / "t.csv", rows, "csv")
        return [str(table), "--image-field", "path"], {"src": table, "image_field": "path"}
    if kind == "tabular":
        x, y = features(3000 if big else 500)
        src, kwargs = write_tabular(root, x, y, "npy")
        return [str(src), "--labels", str(kwargs["labels"])], {"src": src, "labels": kwargs["labels"]}
    write_tars(root, tars=3, per_tar=20 if big else 4)
    return [str(root)], {"src": root}


KINDS = ["table", "tabular", "webdataset"]


@pytest.mark.parametrize("kind", KINDS)
def test_kill_9_then_rerun_gives_the_bytes_of_an_uninterrupted_run(tmp_path, kind):
    src_args, _ = make_source(kind, tmp_path / "src", big=True)
    per_shard = "5" if kind == "tabular" else "2"

    def cli(dst):
        return [sys.executable, "-m", "shardkit", "convert", *src_args, str(dst), "--workers", "1",
                "--max-shard-samples", per_shard, "--seed", "5"]

    subprocess.run(cli(tmp_path / "reference"), cwd=REPO, check=True, capture_output=True, timeout=120)
    dst = tmp_path / "out"
    proc = subprocess.Popen(cli(dst), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(dst.glob("shard-*.tar"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGSTOP)  # freeze it at once, then look, then kill
    interrupted = not (dst / "manifest.json").exists()
    kept = len(list(dst.glob("shard-*.tar")))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert interrupted, "the conversion finished before it could be killed; give it more data"
    assert kept >= 3, "killed before 3 shards were written: the rerun would not resume from kept shards"
    assert (dst / PARTIAL).exists()
    rerun = subprocess.run(cli(dst), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert dst_files(dst) == dst_files(tmp_path / "reference")
    assert not [n for n in os.listdir(dst) if n.startswith(".")], "scratch files left behind"


@pytest.mark.timeout(180)
def test_dask_and_a_remote_destination_write_the_bytes_of_a_local_run(tmp_path):
    import fsspec

    local = {}
    for kind in KINDS:
        _, kwargs = make_source(kind, tmp_path / kind)
        src = kwargs.pop("src")
        shardkit.convert(src, tmp_path / f"{kind}-local", workers=1, max_shard_samples=4, **kwargs)
        local[kind] = (src, kwargs, dst_files(tmp_path / f"{kind}-local"))
    fs = fsspec.filesystem("memory")
    for kind, (src, kwargs, expected) in local.items():
        url = f"memory://shardkit-{kind}-{os.getpid()}/ds"  # (memory:// is per process: workers=1)
        try:
            shardkit.convert(src, url, workers=1, max_shard_samples=4, **kwargs)
            assert {p.split("/ds/", 1)[1]: fs.cat_file(p) for p in fs.find(url)} == expected
        finally:
            fs.rm(url, recursive=True)
    for kind, (src, kwargs, expected) in local.items():
        shardkit.convert(src, tmp_path / f"{kind}-dask", workers=2, scheduler="local", max_shard_samples=4, **kwargs)
        assert dst_files(tmp_path / f"{kind}-dask") == expected


@pytest.mark.parametrize("kind", KINDS)
def test_cli_summary_and_a_rerun_that_returns_the_finished_manifest(tmp_path, kind):
    src_args, _ = make_source(kind, tmp_path / "src")
    cmd = [sys.executable, "-m", "shardkit", "convert", *src_args, str(tmp_path / "out"), "--workers", "2"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert " samples, 1 shards, " in first.stdout and "0 skipped" in first.stdout
    before = dst_files(tmp_path / "out")
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and dst_files(tmp_path / "out") == before
    info = subprocess.run([sys.executable, "-m", "shardkit", "verify", str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and info.stdout.startswith("ok: 1 shards"), info.stdout + info.stderr


def test_an_empty_conversion_is_an_error_from_the_cli(tmp_path):
    (tmp_path / "t.csv").write_text("a,label\nnan,1\n")
    proc = subprocess.run([sys.executable, "-m", "shardkit", "convert", str(tmp_path / "t.csv"), str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "found no sample" in proc.stderr and "t.csv:2" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_detection_from_the_files(tmp_path):
    x, y = features(10)
    np.save(tmp_path / "X.npy", x)
    np.savez(tmp_path / "d.npz", features=x, label=y)
    write_tabular(tmp_path / "num", x, y, "csv")
    write_table(tmp_path / "cap" / "t.csv", [{"path": "a.jpg", "caption": "x"}], "csv")
    write_table(tmp_path / "rows.jsonl", [{"path": "a.jpg", "caption": "x"}], "jsonl")
    write_tars(tmp_path / "tars", tars=2, per_tar=1)
    assert detect_kind(str(tmp_path / "X.npy")) == "tabular" and detect_kind(str(tmp_path / "d.npz")) == "tabular"
    assert detect_kind(str(tmp_path / "num" / "d.csv")) == "tabular" and detect_kind(str(tmp_path / "num")) == "tabular"
    assert detect_kind(str(tmp_path / "cap" / "t.csv")) == "table" and detect_kind(str(tmp_path / "cap")) == "table"
    assert detect_kind(str(tmp_path / "rows.jsonl")) == "sequences"  # as before: JSONL lines are token records...
    assert detect_kind(str(tmp_path / "rows.jsonl"), options=ConvertOptions(image_field="path")) == "table"
    assert detect_kind(str(tmp_path / "tars")) == "webdataset"
    assert detect_kind(str(tmp_path / "tars" / "old-{000000..000001}.tar")) == "webdataset"
    assert detect_kind(str(tmp_path / "tars" / "*.tar")) == "webdataset"
    assert detect_kind([str(tmp_path / "X.npy")]) == "webdataset"  # a list is tars (checked when listed)
