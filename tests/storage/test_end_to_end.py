"""Converted datasets streamed from S3 (moto) and from a faulty HTTP server: every sample exactly once."""

import shutil
import uuid
from collections import Counter
from pathlib import Path

import pytest

import datagen
import shardkit
from shardkit import StreamingDataset, make_loader, storage
from shardkit.storage import retry
from servers import RangeHTTPServer

SEQUENCES = datagen.random_sequences(120, seed=7, max_len=400)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A sequence dataset converted locally into 6 shards."""
    root = tmp_path_factory.mktemp("e2e")
    src = datagen.write_jsonl(root / "src" / "train.jsonl", SEQUENCES)
    manifest = shardkit.convert(src, root / "dst", workers=1, progress=False, max_shard_samples=20)
    assert len(manifest.shards) == 6
    return root / "dst"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Backoff in milliseconds, also in the DataLoader workers (forked after this patch)."""
    monkeypatch.setattr(retry, "DEFAULT_POLICY", retry.RetryPolicy(base_delay=0.01, max_delay=0.05, deadline=10))


def _expected() -> Counter:
    return Counter((tuple(tokens), label if label is not None else -1) for tokens, label in SEQUENCES)


def _as_list(batch):
    return batch


def _stream(url, world_size, num_workers, **kwargs) -> Counter:
    """Every sample all ranks (simulated one after the other) yield in one epoch."""
    seen = Counter()
    for rank in range(world_size):
        ds = StreamingDataset(url, rank=rank, world_size=world_size, seed=1, **kwargs)
        loader = make_loader(ds, 8, num_workers=num_workers, collate_fn=_as_list, persistent_workers=False)
        batch_samples = [(tuple(tokens.tolist()), int(label)) for batch in loader for tokens, label in batch]
        assert len(batch_samples) == len(ds)
        seen.update(batch_samples)
    return seen


def _upload(local: Path, url: str, options) -> None:
    """Shards (and their indexes) first, the manifest last, as a remote conversion does."""
    for path in sorted(local.glob("shard-*")):
        storage.put_file(path, storage.join(url, path.name), options)
    storage.put_file(local / "manifest.json", storage.join(url, "manifest.json"), options)


@pytest.mark.parametrize("cached", [False, True], ids=["direct", "cache"])
def test_stream_from_s3_exactly_once_across_2_ranks_and_2_workers(s3, dataset, tmp_path, cached):
    url = f"s3://bucket/{uuid.uuid4().hex[:12]}/train"
    _upload(dataset, url, s3)
    cache = {"cache_dir": tmp_path / "cache", "cache_limit": 10 << 20} if cached else {}
    assert _stream(url, 2, 2, storage_options=s3, **cache) == _expected()
    if cached:
        assert len([p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tar")]) == 6


def test_stream_over_http_with_dropped_connections_and_503s_exactly_once(dataset):
    server = RangeHTTPServer(dataset, fail_first=4, drop_after=3000, drops=4, latency=0.005)
    with server as url:
        assert _stream(url, 2, 2) == _expected()
    assert server.count("GET", "/manifest.json") >= 2  # the manifest itself met a fault and was retried
    assert server._dropped == 4 and server._failed == 4  # every fault was met, and survived


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_missing_first_shard_over_http_is_reported_before_the_first_sample(dataset, tmp_path, on_error):
    """The first remote shard is opened while the shards are checked: a missing one is still the
    check's clear error (raise), or its samples counted as dropped and the others read (skip)."""
    served = Path(shutil.copytree(dataset, tmp_path / "served"))
    (served / "shard-000000.tar").unlink()
    with RangeHTTPServer(served) as url:
        ds = StreamingDataset(url, shuffle=False, on_error=on_error)
        if on_error == "raise":
            with pytest.raises(shardkit.ManifestError, match=r"shard-000000\.tar is missing"):
                next(iter(ds))
            return
        seen = Counter((tuple(tokens.tolist()), int(label)) for tokens, label in ds)
    expected = _expected()
    assert sum(seen.values()) == 120 and set(seen) <= set(expected)  # nothing invented, the count kept
    assert len(set(expected) - set(seen)) == 20 == sum(e["dropped"] for e in ds.errors)  # 20 repeats stand in


def test_missing_remote_dataset_is_a_clear_error(dataset):
    with RangeHTTPServer(dataset) as url:
        with pytest.raises(shardkit.ManifestError, match=r"nowhere/manifest\.json.*not found"):
            StreamingDataset(f"{url}/nowhere")
