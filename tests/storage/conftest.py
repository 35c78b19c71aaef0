import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from servers import RangeHTTPServer, moto_s3  # noqa: E402

from shardkit.storage import RetryPolicy  # noqa: E402
from shardkit.storage import remote  # noqa: E402

#: Sizes of the test objects: empty, smaller than a range, several ranges and a partial one.
SIZES = {"empty.bin": 0, "small.bin": 1000, "big.bin": 300_000}


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch):
    """64 KB ranges after a first one of 16 KB, so objects of a few hundred KB span several requests."""
    monkeypatch.setattr(remote, "CHUNK_SIZE", 64 << 10)
    monkeypatch.setattr(remote, "FIRST_CHUNK_SIZE", 16 << 10)


@pytest.fixture
def fast_retry():
    """Retries fast enough for tests, with a deadline short enough to wait for."""
    return RetryPolicy(attempts=8, base_delay=0.01, max_delay=0.05, deadline=3.0, timeout=1.0)


@pytest.fixture
def objects(tmp_path):
    """A directory of random binary objects (see SIZES); returns {name: bytes}."""
    root = tmp_path / "served"
    root.mkdir()
    content = {name: os.urandom(size) for name, size in SIZES.items()}
    for name, data in content.items():
        (root / name).write_bytes(data)
    return content


@pytest.fixture
def http(tmp_path, objects):
    """``http(**faults)`` starts a RangeHTTPServer over the objects; returns (server, base URL)."""
    servers = []

    def start(**faults):
        server = RangeHTTPServer(tmp_path / "served", **faults)
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def prefix(s3):
    """A fresh prefix in the shared bucket."""
    return f"s3://bucket/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def s3():
    """storage_options for a moto S3 server with an empty bucket named ``bucket``."""
    with moto_s3("bucket") as options:
        yield options


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    """``local_run(per_class, **options)`` → ``(src, files, options)``: a 3-class JPEG tree and the
    files of its local one-worker conversion, what remote and Dask conversions must reproduce."""
    import datagen
    import shardkit

    def run(per_class: int, **options):
        root = tmp_path_factory.mktemp("local-run")
        src = datagen.make_jpeg_tree(root / "src", classes=3, per_class=per_class)
        shardkit.convert(src, root / "local", workers=1, progress=False, **options)
        return src, datagen.dst_files(root / "local"), options

    return run
