"""Probes of the storage side (issue 15): a manifest or shard that is no regular file, or too large,
is refused instead of hanging a reader or filling its memory; unknown protocols, refused
connections and a server answering 503 forever give short, true errors.

Each hostile file is read in a subprocess with a timeout, so a regression fails instead of hanging."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import datagen
import shardkit
from servers import RangeHTTPServer, free_port
from shardkit import storage
from shardkit.errors import StorageError
from shardkit.inspect import MANIFEST_LIMIT

REPO = Path(__file__).resolve().parents[2]
#: Seconds any one hostile read may take: everything here is refused at open.
HANG = 60


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def link_to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def make_directory(path: Path) -> None:
    path.mkdir()


def larger_than_the_limit(path: Path) -> None:
    with open(path, "wb") as f:  # sparse: nothing is written, nothing need be read
        f.truncate(MANIFEST_LIMIT + 1)


HOSTILE = {"a FIFO": make_fifo, "a link to /dev/zero": link_to_dev_zero, "a directory": make_directory}
MESSAGES = {"a FIFO": "is a FIFO, not a regular file", "a link to /dev/zero": "is a character device, not a regular file",
            "a directory": "is a directory, not a regular file",
            "larger than the limit": f"holds more than {MANIFEST_LIMIT} bytes"}

READ_DATASET = """
import sys
from shardkit import StreamingDataset
from shardkit.errors import ManifestError, ShardError
try:
    ds = StreamingDataset(sys.argv[1], on_error=sys.argv[2], shuffle=False, decode=False)
    n = sum(1 for _ in ds)
except (ManifestError, ShardError) as err:
    print(type(err).__name__, err)
    sys.exit(3)
print("done", n, sum(r["dropped"] for r in ds.errors), "; ".join(r["error"] for r in ds.errors))
"""


def read_dataset(dst: Path, on_error: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", READ_DATASET, str(dst), on_error], cwd=REPO, capture_output=True,
                          text=True, timeout=HANG, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 3-shard image dataset (2 samples each): ``(dst, its files)``, copied per test."""
    root = tmp_path_factory.mktemp("ds")
    src = datagen.make_jpeg_tree(root / "src", classes=2, per_class=3)
    shardkit.convert(src, root / "dst", workers=1, max_shard_samples=2)
    return root / "dst", datagen.dst_files(root / "dst")


def fresh_copy(dataset, where: Path) -> Path:
    where.mkdir()
    for name, data in dataset[1].items():
        (where / name).write_bytes(data)
    return where


# --- H3: manifest.json ---------------------------------------------------------------------------

@pytest.mark.parametrize("reader", ["info", "verify", "StreamingDataset", "convert into it"])
@pytest.mark.parametrize("what", [*HOSTILE, "larger than the limit"])
def test_a_manifest_that_is_no_regular_file_or_too_large_is_refused(dataset, tmp_path, cli, what, reader):
    dst = fresh_copy(dataset, tmp_path / "dst")
    (dst / "manifest.json").unlink()
    (HOSTILE.get(what) or larger_than_the_limit)(dst / "manifest.json")
    started = time.monotonic()
    if reader == "StreamingDataset":
        done = read_dataset(dst, "skip")
        assert done.returncode == 3 and done.stdout.startswith("ManifestError"), done.stdout + done.stderr
        output = done.stdout
    else:
        args = ["convert", datagen.make_jpeg_tree(tmp_path / "src", 1, 1), dst] if reader == "convert into it" \
            else [reader, dst]
        done = cli(*args, timeout=HANG)
        assert done.returncode == 1, done.stdout + done.stderr
        output = done.stderr
        assert output.count("\n") == 1 and output.startswith("Error: cannot read ") and "Traceback" not in output
    assert "manifest.json" in output and MESSAGES[what] in output
    assert time.monotonic() - started < HANG


def test_a_manifest_under_the_limit_is_read_whole(dataset, tmp_path):
    dst = fresh_copy(dataset, tmp_path / "dst")
    data = (dst / "manifest.json").read_bytes()
    assert storage.read_bytes(dst / "manifest.json", limit=len(data)) == data
    with pytest.raises(storage.TooLargeError, match=f"holds more than {len(data) - 1} bytes"):
        storage.read_bytes(dst / "manifest.json", limit=len(data) - 1)


# --- H4: a shard -----------------------------------------------------------------------------------

@pytest.mark.parametrize("what", HOSTILE)
def test_a_shard_that_is_no_regular_file_fails_verify_naming_it(dataset, tmp_path, cli, what):
    dst = fresh_copy(dataset, tmp_path / "dst")
    (dst / "shard-000001.tar").unlink()
    HOSTILE[what](dst / "shard-000001.tar")
    done = cli("verify", dst, timeout=HANG)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 of 3 shards are bad" in done.stderr and "Traceback" not in done.stderr
    line, = [line for line in done.stderr.splitlines() if "shard-000001.tar" in line]
    assert MESSAGES[what] in line


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("what", HOSTILE)
def test_a_shard_that_is_no_regular_file_is_an_error_when_streamed_never_a_hang(dataset, tmp_path, what, on_error):
    dst = fresh_copy(dataset, tmp_path / "dst")
    (dst / "shard-000001.tar").unlink()
    HOSTILE[what](dst / "shard-000001.tar")
    done = read_dataset(dst, on_error)
    if done.returncode == 3:  # a ShardError naming the shard (what "raise" gives; "skip" may too)
        assert done.stdout.startswith("ShardError") and "shard-000001.tar" in done.stdout, done.stdout
        if on_error == "skip":
            assert MESSAGES[what] in done.stdout
    else:  # "skip" that goes on: the other shards' samples, the bad shard's counted as dropped
        assert on_error == "skip" and done.returncode == 0, done.stdout + done.stderr
        _, yielded, dropped, _ = done.stdout.split(" ", 3)
        assert (int(yielded), int(dropped)) == (4, 2)


@pytest.mark.parametrize("what", HOSTILE)
def test_open_shard_refuses_what_is_no_regular_file(tmp_path, what):
    path = tmp_path / "shard-000000.tar"
    HOSTILE[what](path)
    with pytest.raises(shardkit.ShardError, match=f"shard {path}: {MESSAGES[what]}: a shard must be a file"):
        storage.open_shard(path)
    with pytest.raises(storage.NotRegularFileError, match=MESSAGES[what]):
        storage.open_input(path)


# --- C5, M3, M6: URLs ------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [lambda u: storage.read_bytes(u), lambda u: storage.size(u),
                                  lambda u: storage.list_files(u), lambda u: storage.open_shard(u)],
                         ids=["read_bytes", "size", "list_files", "open_shard"])
def test_an_unknown_protocol_is_a_storage_error_naming_it(call):
    with pytest.raises(StorageError, match=r"foo://bar/x: unknown protocol 'foo'"):
        call("foo://bar/x")


def test_a_refused_connection_to_a_host_that_never_answered_gives_up_after_a_few_fast_tries(caplog):
    url = f"http://127.0.0.1:{free_port()}/shard-000000.tar"  # nothing listens there
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="shardkit"), pytest.raises(
            StorageError, match=r"connection was refused 3 times and the host has not answered yet"):
        storage.read_bytes(url)  # the default policy
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == storage.RetryPolicy().refused_attempts - 1
    assert time.monotonic() - started < 20  # the default policy's backoff alone took 71 s before


def test_a_refused_connection_to_a_host_that_answered_before_is_retried_as_usual(tmp_path, caplog):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "a.bin").write_bytes(b"abc")
    policy = storage.RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.02, deadline=5, timeout=1)
    server = RangeHTTPServer(tmp_path / "served")
    url = server.start() + "/a.bin"
    assert storage.read_bytes(url, retry=policy) == b"abc"
    server.stop()  # a restart, say: the same host refuses for a while
    fresh = {"skip_instance_cache": True}  # a new session: the old one's kept-alive connection is still open
    with caplog.at_level(logging.WARNING, logger="shardkit"), pytest.raises(StorageError, match=r"failed 6 times"):
        storage.read_bytes(url, fresh, retry=policy)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 5


def test_503_forever_on_the_size_request_says_503_not_file_not_found(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "a.bin").write_bytes(b"abc")
    policy = storage.RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.02, deadline=5, timeout=1)
    server = RangeHTTPServer(tmp_path / "served", fail_always=True)
    url = server.start() + "/a.bin"
    try:
        with pytest.raises(StorageError) as info:
            storage.size(url, retry=policy)
    finally:
        server.stop()
    message = str(info.value)
    assert "asking for the size failed 4 times" in message and "last error: HTTP 503 Service Unavailable" in message
    assert "last error: FileNotFoundError" not in message
