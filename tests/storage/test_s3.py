"""S3 through moto's server on 127.0.0.1: upload, list, read with retries, and errors without secrets."""

import hashlib
import os

import pytest

from shardkit import storage
from shardkit.storage import remote
from shardkit.errors import StorageError


def test_put_list_read_remove(s3, prefix, tmp_path, objects):
    for name, data in objects.items():
        (tmp_path / name).write_bytes(data)
        storage.put_file(tmp_path / name, f"{prefix}/dir/{name}", s3)
    storage.put_file(tmp_path / "small.bin", f"{prefix}/top.bin", s3)

    assert storage.ls(prefix, s3) == ["dir", "top.bin"]
    assert storage.walk_files(prefix, s3) == sorted(
        [(f"dir/{n}", len(d)) for n, d in objects.items()] + [("top.bin", len(objects["small.bin"]))])
    for name, data in objects.items():
        url = f"{prefix}/dir/{name}"
        assert storage.size(url, s3) == len(data) and storage.exists(url, s3)
        assert storage.read_bytes(url, s3) == data
        assert storage.sha256_of(url, s3) == (len(data), hashlib.sha256(data).hexdigest())
    storage.remove(f"{prefix}/top.bin", s3)
    storage.remove(f"{prefix}/top.bin", s3)  # already gone: fine
    assert storage.ls(prefix, s3) == ["dir"]
    assert storage.ls(f"{prefix}/nothing-here", s3) == [] and storage.walk_files(f"{prefix}/nothing", s3) == []


@pytest.mark.parametrize("size_known", [True, False])
def test_open_shard_streams_from_s3(s3, prefix, tmp_path, objects, size_known):
    data = objects["big.bin"]
    (tmp_path / "shard.tar").write_bytes(data)
    storage.put_file(tmp_path / "shard.tar", f"{prefix}/shard.tar", s3)
    with storage.open_shard(f"{prefix}/shard.tar", storage_options=s3,
                            size=len(data) if size_known else None) as f:
        assert f.read(100) == data[:100]
        assert f.read() == data[100:]


def test_open_shard_from_s3_through_the_cache(s3, prefix, tmp_path, objects):
    data = objects["big.bin"]
    (tmp_path / "shard.tar").write_bytes(data)
    storage.put_file(tmp_path / "shard.tar", f"{prefix}/shard.tar", s3)
    sha = hashlib.sha256(data).hexdigest()
    for _ in range(2):
        with storage.open_shard(f"{prefix}/shard.tar", storage_options=s3, cache_dir=tmp_path / "cache",
                                size=len(data), sha256=sha) as f:
            assert f.read() == data
    storage.remove(f"{prefix}/shard.tar", s3)
    with storage.open_shard(f"{prefix}/shard.tar", storage_options=s3, cache_dir=tmp_path / "cache",
                            size=len(data), sha256=sha) as f:
        assert f.read() == data  # served by the cache alone


def test_publish_uploads_whole_and_removes_the_temporary_file(s3, prefix, tmp_path):
    tmp = tmp_path / ".shard-000000.tar.tmp"
    tmp.write_bytes(b"x" * 70_000)
    storage.publish(tmp, f"{prefix}/shard-000000.tar", s3)
    assert not tmp.exists()
    assert storage.read_bytes(f"{prefix}/shard-000000.tar", s3) == b"x" * 70_000


def test_a_large_shard_is_uploaded_in_parts(s3, prefix, tmp_path, monkeypatch):
    """s3fs uploads a file of at least twice its 50 MiB part size as a multipart upload; the object
    is whole, and only appears once complete (the multipart ETag ends in -<parts>)."""
    monkeypatch.setattr(remote, "CHUNK_SIZE", 8 << 20)  # read back in 13 ranges, not 1600
    path = tmp_path / "shard-000000.tar"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(101):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    storage.put_file(path, f"{prefix}/shard-000000.tar", s3)
    info = storage.info(f"{prefix}/shard-000000.tar", s3)
    assert info["size"] == 101 << 20 and info["ETag"].strip('"').endswith("-3")
    assert storage.sha256_of(f"{prefix}/shard-000000.tar", s3) == (101 << 20, digest.hexdigest())


def test_publish_to_a_local_path_renames(tmp_path):
    tmp = tmp_path / "part.tmp"
    tmp.write_bytes(b"abc")
    storage.publish(tmp, tmp_path / "final.tar")
    assert (tmp_path / "final.tar").read_bytes() == b"abc" and not tmp.exists()


@pytest.mark.parametrize("url", ["{prefix}/missing.tar", "s3://no-such-bucket/x.tar"])
def test_missing_object_is_a_clear_error_without_secrets(s3, prefix, url, fast_retry):
    url = url.format(prefix=prefix)
    with pytest.raises(StorageError, match=r"not found \(HTTP 404\)") as info:
        storage.read_bytes(url, s3, retry=fast_retry)
    assert url in str(info.value)
    assert s3["secret"] not in str(info.value) and s3["key"] not in str(info.value)
    assert storage.size(url, s3, retry=fast_retry) is None


def test_unreachable_endpoint_gives_up_within_the_deadline(tmp_path):
    from servers import free_port

    options = {"key": "k", "secret": "s3cr3t-value", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"},
               "config_kwargs": {"retries": {"max_attempts": 1}}}
    policy = storage.RetryPolicy(base_delay=0.01, max_delay=0.05, deadline=1.0, timeout=0.5)
    with pytest.raises(StorageError, match=r"s3://bucket/x\.tar: .*giving up") as info:
        storage.read_bytes("s3://bucket/x.tar", options, retry=policy)
    assert "s3cr3t-value" not in str(info.value)


def test_sizes_of_many_objects_at_once(s3, prefix, tmp_path, objects):
    for name, data in objects.items():
        (tmp_path / name).write_bytes(data)
        storage.put_file(tmp_path / name, f"{prefix}/{name}", s3)
    names = sorted(objects) + ["missing.bin"]
    assert storage.sizes([f"{prefix}/{n}" for n in names], s3) == [len(objects[n]) for n in names[:-1]] + [None]
    assert storage.sizes([tmp_path / n for n in names]) == [len(objects[n]) for n in names[:-1]] + [None]
