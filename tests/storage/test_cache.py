"""The shard cache: one download per shard, checked, shared by processes, evicted least recently used."""

import hashlib
import multiprocessing
import os

import pytest

from shardkit import storage
from shardkit.errors import ShardError
from shardkit.storage import cache as cache_module


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(url, data, cache, limit=None, **kwargs):
    with storage.open_shard(url, cache_dir=cache, cache_limit=limit, size=len(data), sha256=_sha(data),
                            **kwargs) as f:
        return f.read()


def _cached(cache):
    """The shard files in the cache (not locks, stamps or downloads in progress)."""
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(".") and p.suffix not in (".ok", ".lock"))


def _serve_random_shards(http, tmp_path, count: int):
    """``count`` shards of 100 kB of random bytes (``s0.tar``, ...) behind a fresh HTTP server."""
    shards = {f"s{i}.tar": os.urandom(100_000) for i in range(count)}
    for name, data in shards.items():
        (tmp_path / "served" / name).write_bytes(data)
    server, url = http()
    return server, url, shards


def _fetched(server, name):
    """Bytes of ``name`` asked for in ranged GETs: one download of an object asks for all its bytes once."""
    spans = [r.split("=")[1].split("-") for m, p, r in server.requests if m == "GET" and p == f"/{name}"]
    return sum(int(stop) - int(start) + 1 for start, stop in spans)


@pytest.mark.parametrize("with_manifest", [True, False], ids=["size-and-sha", "bare-url"])
def test_a_shard_is_downloaded_once_then_read_from_the_cache(http, objects, tmp_path, with_manifest):
    server, url = http()
    cache, data = tmp_path / "cache", objects["big.bin"]
    extra = {"size": len(data), "sha256": _sha(data)} if with_manifest else {}
    for _ in range(3):
        with storage.open_shard(f"{url}/big.bin", cache_dir=cache, **extra) as f:
            assert f.read() == data
    assert _fetched(server, "big.bin") == len(data)  # one download
    assert len(_cached(cache)) == 1
    assert (cache / _cached(cache)[0]).read_bytes() == data


def test_the_first_reader_gets_data_before_the_download_ends(http, objects, tmp_path):
    server, url = http()
    data = objects["big.bin"]
    with storage.open_shard(f"{url}/big.bin", cache_dir=tmp_path / "c", size=len(data), sha256=_sha(data)) as f:
        assert f.read(1000) == data[:1000]
        assert _fetched(server, "big.bin") < len(data)  # still streaming: not every range asked for yet
        assert _cached(tmp_path / "c") == []  # and not published before it is complete
        assert f.read() == data[1000:]
    assert len(_cached(tmp_path / "c")) == 1


def test_limit_is_honoured_by_evicting_the_least_recently_used(http, tmp_path):
    server, url, shards = _serve_random_shards(http, tmp_path, 4)
    cache, limit = tmp_path / "cache", 250_000
    for name in ["s0.tar", "s1.tar", "s0.tar", "s2.tar", "s3.tar"]:  # s0 used again: s1 is the oldest
        assert _read(f"{url}/{name}", shards[name], cache, limit) == shards[name]
        total = sum((cache / n).stat().st_size for n in _cached(cache))
        assert total <= limit
    kept = {n.split("-", 1)[1] for n in _cached(cache)}
    assert kept == {"s2.tar", "s3.tar"}
    assert _read(f"{url}/s1.tar", shards["s1.tar"], cache, limit) == shards["s1.tar"]
    assert _fetched(server, "s1.tar") == 2 * len(shards["s1.tar"])  # evicted, so fetched again


def test_a_shard_being_read_is_never_evicted(http, tmp_path):
    server, url, shards = _serve_random_shards(http, tmp_path, 3)
    cache, limit = tmp_path / "cache", 150_000
    _read(f"{url}/s0.tar", shards["s0.tar"], cache, limit)
    with storage.open_shard(f"{url}/s0.tar", cache_dir=cache, cache_limit=limit,
                            size=100_000, sha256=_sha(shards["s0.tar"])) as held:
        for name in ["s1.tar", "s2.tar"]:
            assert _read(f"{url}/{name}", shards[name], cache, limit) == shards[name]
            assert any(n.endswith("-s0.tar") for n in _cached(cache))  # in use, so kept over the limit
        assert held.read() == shards["s0.tar"]
    _read(f"{url}/s2.tar", shards["s2.tar"], cache, limit)  # any later use evicts what is over the limit
    assert not any(n.endswith("-s0.tar") for n in _cached(cache))


@pytest.mark.parametrize("damage", ["flip", "truncate", "stamp"])
def test_a_corrupt_cached_file_is_fetched_again(http, objects, tmp_path, damage):
    server, url = http()
    cache, data = tmp_path / "cache", objects["big.bin"]
    _read(f"{url}/big.bin", data, cache)
    path = cache / _cached(cache)[0]
    if damage == "flip":
        with open(path, "r+b") as f:
            f.seek(12345)
            byte = f.read(1)
            f.seek(12345)
            f.write(bytes([byte[0] ^ 1]))
    elif damage == "truncate":
        os.truncate(path, 1000)
    else:  # the file is right but its stamp is gone: hashed again, kept
        os.remove(f"{path}.ok")
    before = _fetched(server, "big.bin")
    assert _read(f"{url}/big.bin", data, cache) == data
    assert _fetched(server, "big.bin") == before + (0 if damage == "stamp" else len(data))
    assert path.read_bytes() == data


def test_a_download_that_disagrees_with_the_manifest_is_an_error_and_not_cached(http, objects, tmp_path):
    server, url = http()
    cache, data = tmp_path / "cache", objects["big.bin"]
    with storage.open_shard(f"{url}/big.bin", cache_dir=cache, size=len(data), sha256="0" * 64) as f:
        with pytest.raises(ShardError, match=r"big\.bin.*sha256 .*the manifest says 0000"):
            f.read()
    assert _cached(cache) == [] and not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert _read(f"{url}/big.bin", data, cache) == data  # the lock was released


def test_a_reader_closed_near_the_end_still_caches_the_shard(http, objects, tmp_path):
    server, url = http()
    cache, data = tmp_path / "cache", objects["big.bin"]
    with storage.open_shard(f"{url}/big.bin", cache_dir=cache, size=len(data), sha256=_sha(data)) as f:
        assert f.read(len(data) - 1024) == data[:-1024]  # a tar reader stops before the end-of-archive blocks
    assert len(_cached(cache)) == 1
    assert _read(f"{url}/big.bin", data, cache) == data
    assert _fetched(server, "big.bin") == len(data)


def test_a_download_abandoned_far_from_the_end_leaves_nothing_behind(http, objects, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "DRAIN_LIMIT", 100_000)
    server, url = http()
    cache, data = tmp_path / "cache", objects["big.bin"]
    with storage.open_shard(f"{url}/big.bin", cache_dir=cache, size=len(data), sha256=_sha(data)) as f:
        f.read(100)
    assert _cached(cache) == [] and not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert _read(f"{url}/big.bin", data, cache) == data  # the lock was released
    assert len(_cached(cache)) == 1


def test_local_shards_are_not_cached(objects, tmp_path):
    path = tmp_path / "served" / "small.bin"
    with storage.open_shard(path, cache_dir=tmp_path / "cache") as f:
        assert f.read() == objects["small.bin"]
    assert not (tmp_path / "cache").exists()


def _reader_process(url, size, sha, cache, barrier, results):
    barrier.wait()
    with storage.open_shard(url, cache_dir=cache, size=size, sha256=sha) as f:
        results.put(_sha(f.read()))


def test_two_processes_share_one_cache_and_one_download(http, objects, tmp_path):
    server, url = http(latency=0.05)  # slow enough that the two readers overlap
    data, cache = objects["big.bin"], tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_reader_process, args=(f"{url}/big.bin", len(data), _sha(data), cache,
                                                       barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert [results.get(timeout=5) for _ in procs] == [_sha(data)] * 2
    assert _fetched(server, "big.bin") == len(data)  # one download
    assert len(_cached(cache)) == 1

