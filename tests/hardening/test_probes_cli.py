"""Probes of the ``shardkit`` command (issue 15): bad arguments and hostile inputs give one line
naming the culprit and exit 1 or 2, never a traceback; names from the data cannot drive the
terminal; a conversion whose main process is killed leaves no worker and no lock behind; a pool
that cannot start is an error within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import datagen
from datagen import dst_files
from shardkit.convert.output import PARTIAL

REPO = Path(__file__).resolve().parents[2]


def tree(root: Path) -> Path:
    return datagen.make_jpeg_tree(root, classes=2, per_class=3)


def dataset(root: Path) -> Path:
    """A converted 3-shard dataset at ``root/ds``."""
    import shardkit

    shardkit.convert(tree(root / "ds-src"), root / "ds", workers=1, max_shard_samples=2)
    return root / "ds"


def sequences_with_an_unreadable_file(root: Path) -> Path:
    datagen.write_jsonl(root / "seq" / "a.jsonl", [([1, 2], None)] * 5)
    datagen.write_jsonl(root / "seq" / "b.jsonl", [([3], None)] * 5)
    (root / "seq" / "b.jsonl").chmod(0)
    return root / "seq"


def shard_linked_to_a_directory(root: Path) -> Path:
    dst = dataset(root)
    (root / "elsewhere").mkdir()
    (dst / "shard-000001.tar").unlink()
    (dst / "shard-000001.tar").symlink_to(root / "elsewhere")
    return dst


def directory_named_like_a_shard(root: Path) -> Path:
    (root / "proj" / "shard-000007.tar" / "deep").mkdir(parents=True)
    (root / "proj" / "shard-000007.tar" / "deep" / "n").write_text("x")
    return root / "proj"


def foreign_manifest(root: Path) -> Path:
    (root / "proj").mkdir()
    (root / "proj" / "manifest.json").write_text("{}")
    return root / "proj"


def partial_linked_out(root: Path) -> Path:
    (root / "victim").mkdir()
    (root / "victim" / "a.txt").write_text("v")
    (root / "dstl").mkdir()
    (root / "dstl" / PARTIAL).symlink_to("../victim")
    return root / "dstl"


def mixed(root: Path) -> Path:
    for i in range(3):
        datagen.write_jsonl(root / "mixed" / f"part-{i}.jsonl", [([i, 1], None)] * 4)
    datagen.write_image(root / "mixed" / "img" / "one.jpg", "RGB", "JPEG", np.random.default_rng(0))
    return root / "mixed"


def readmes(root: Path) -> Path:
    for name in "ab":
        (root / "readmes" / name).mkdir(parents=True)
        (root / "readmes" / name / "readme.txt").write_text("photos\n")
    return root / "readmes"


#: id: (arguments, given the working directory; what the message must name; exit status; as uid 65534)
CASES = {
    "C1 huge --max-shard-size": (lambda r: ["convert", tree(r / "src"), r / "out", "--max-shard-size",
                                            "99999999999999999999999999TB"], "--max-shard-size", 2, False),
    "C3 unreadable .jsonl in a directory": (lambda r: ["convert", sequences_with_an_unreadable_file(r), r / "out"],
                                            "b.jsonl", 1, True),
    "C3 unreadable .jsonl in a glob": (lambda r: ["convert", f"{sequences_with_an_unreadable_file(r)}/*.jsonl",
                                                  r / "out"], "b.jsonl", 1, True),
    "C4 empty --tokens-field": (lambda r: ["convert", tree(r / "src"), r / "out", "--tokens-field="],
                                "--tokens-field", 2, False),
    "C4 empty --label-field": (lambda r: ["convert", tree(r / "src"), r / "out", "--label-field="],
                               "--label-field", 2, False),
    "C5 info foo://bar": (lambda r: ["info", "foo://bar"], "foo://bar", 1, False),
    "C5 verify foo://bar": (lambda r: ["verify", "foo://bar"], "foo://bar", 1, False),
    "C5 convert into foo://x": (lambda r: ["convert", tree(r / "src"), "foo://x"], "foo://x", 1, False),
    "C5 convert from foo://x": (lambda r: ["convert", "foo://x", r / "out"], "foo://x", 1, False),
    "C6 --overwrite over a shard linked to a directory": (lambda r: ["convert", tree(r / "src"),
                                                                     shard_linked_to_a_directory(r), "--overwrite"],
                                                          "shard-000001.tar", 1, False),
    "D1 partial directory linked out of DST": (lambda r: ["convert", tree(r / "src"), partial_linked_out(r)],
                                               ".shardkit-partial", 1, False),
    "D2 --overwrite over a directory named like a shard": (lambda r: ["convert", tree(r / "src"),
                                                                      directory_named_like_a_shard(r), "--overwrite"],
                                                           "shard-000007.tar", 1, False),
    "D2 --overwrite over a manifest that is not shardkit's": (lambda r: ["convert", tree(r / "src"),
                                                                         foreign_manifest(r), "--overwrite"],
                                                              "manifest.json", 1, False),
    "D3 mixed sources": (lambda r: ["convert", mixed(r), r / "out"], "--kind", 1, False),
    "M2 class folders of readmes": (lambda r: ["convert", readmes(r), r / "out"], "a/readme.txt", 1, False),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_naming_the_culprit_and_no_traceback(tmp_path, open_tmp, cli, as_nobody, case):
    make, culprit, status, unprivileged = CASES[case]
    root = open_tmp if unprivileged else tmp_path
    args = make(root)
    done = (as_nobody if unprivileged else cli)(*args, "--workers", "2") if args[0] == "convert" else cli(*args)
    output = done.stdout + done.stderr
    assert done.returncode == status, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and culprit in errors[0], output
    if status == 1:
        assert done.stderr == errors[0] + "\n" and not done.stdout


def test_a_class_folder_named_in_latin1_converts_and_prints_escaped(tmp_path, cli):
    root = tmp_path / "src"
    tree(root)
    os.makedirs(os.path.join(os.fsencode(root), b"c\xfe"))
    datagen.write_image(Path(os.fsdecode(os.path.join(os.fsencode(root), b"c\xfe", b"x.jpg"))), "RGB", "JPEG",
                        np.random.default_rng(0))
    done = cli("convert", root, tmp_path / "out", "--workers", "2")
    assert done.returncode == 0 and "7 samples" in done.stdout, done.stderr
    info = cli("info", tmp_path / "out")
    assert info.returncode == 0 and "classes (3): class00, class01, c\\xfe" in info.stdout


def test_names_with_terminal_escapes_are_printed_escaped(tmp_path, cli):
    root = tree(tmp_path / "src")
    evil = root / "class00" / "evil\x1b[2J\x1b]0;pwned\x07.jpg"
    evil.write_bytes(b"not an image")
    (root / "class\x1b[31mred").mkdir()
    datagen.write_image(root / "class\x1b[31mred" / "x.jpg", "RGB", "JPEG", np.random.default_rng(1))
    done = cli("convert", root, tmp_path / "out", "--workers", "1")
    assert done.returncode == 0, done.stderr
    info = cli("info", tmp_path / "out")
    strict = cli("convert", root, tmp_path / "strict", "--strict", "--workers", "1")
    for output in (info.stdout, strict.stderr):
        assert "\x1b" not in output and "\x07" not in output
    assert "class\\x1b[31mred" in info.stdout and "evil\\x1b[2J\\x1b]0;pwned\\x07.jpg: not an image" in info.stdout
    assert strict.returncode == 1 and "evil\\x1b[2J" in strict.stderr and strict.stderr.count("\n") == 1


# --- H1: the main process killed ------------------------------------------------------------------

@pytest.fixture(scope="module")
def med(tmp_path_factory):
    """A few hundred larger JPEGs: with --resize, long enough a conversion to kill in the middle."""
    return datagen.make_jpeg_tree(tmp_path_factory.mktemp("med") / "med", classes=4, per_class=60, sizes=(360, 480))


def _workers_of(proc: subprocess.Popen, count: int, deadline: float) -> list[psutil.Process]:
    main = psutil.Process(proc.pid)
    while time.monotonic() < deadline:
        children = main.children()
        if len(children) >= count:
            return children
        time.sleep(0.05)
    raise AssertionError(f"the conversion started {len(main.children())} workers, expected {count}")


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("moment", ["starting", "writing"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT], ids=["SIGTERM", "SIGKILL", "SIGINT"])
def test_killing_the_main_process_leaves_no_worker_and_no_lock(med, tmp_path, cli, sig, moment):
    """``kill`` of the main process alone (the OOM killer, ``docker stop``), while its workers start
    or while they write shards: they die with it, nothing holds the lock, and the same command
    resumes to the bytes of an uninterrupted run."""
    args = ["convert", str(med), None, "--workers", "2", "--resize", "300", "--max-shard-samples", "20"]

    def argv(dst):
        return [sys.executable, "-m", "shardkit", *[str(dst) if a is None else a for a in args]]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv(tmp_path / "out"), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        workers = _workers_of(proc, 1 if moment == "starting" else 2, time.monotonic() + 60)
        deadline = time.monotonic() + 60
        while moment == "writing" and not list((tmp_path / "out").glob("shard-*.tar")) and time.monotonic() < deadline:
            time.sleep(0.01)  # in the middle: a shard or two done
        assert moment != "writing" or list((tmp_path / "out").glob("shard-*.tar")), "no shard written within 60 s"
        workers = psutil.Process(proc.pid).children()
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "out" / "manifest.json").exists(), "finished before the signal; give it more data"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # cleaned up as Ctrl-C does, with a message saying how to go on
        assert proc.returncode == 128 + sig, stderr
        assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 10
    while not all(_gone(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(w) for w in workers), "a worker outlived the main process"
    again = subprocess.run(argv(tmp_path / "out"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr  # the lock is free, and the conversion resumes
    assert "another conversion" not in again.stderr
    reference = subprocess.run(argv(tmp_path / "reference"), cwd=REPO, env=env, capture_output=True, timeout=300)
    assert reference.returncode == 0
    assert dst_files(tmp_path / "out") == dst_files(tmp_path / "reference")


# --- H2: a pool that cannot start ------------------------------------------------------------------

def test_a_pool_that_cannot_fork_its_workers_is_an_error_within_seconds(open_tmp, as_nobody):
    src = datagen.make_jpeg_tree(open_tmp / "src", classes=1, per_class=250, sizes=(32, 32))
    started = time.monotonic()
    done = as_nobody("convert", src, open_tmp / "out", "--workers", "200", "--max-shard-samples", "1", nproc=40,
                     timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot start 200 conversion worker processes" in done.stderr and "--workers" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert time.monotonic() - started < 60
    assert not (open_tmp / "out").exists()
