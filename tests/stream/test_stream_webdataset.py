"""Shards written by webdataset's own ShardWriter, without a manifest: counted once, then streamed."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

import datagen
from stream_helpers import sample_ids
from shardkit.stream import sources
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.loader import make_loader

N = 23


@pytest.fixture
def wds_shards(tmp_path):
    """23 images (JPEG, and every fifth a PNG stored as .png, every seventh a .jpeg) in shards of 7."""
    rng = np.random.default_rng(0)
    expected = {}
    with wds.ShardWriter(str(tmp_path / "train-%06d.tar"), maxcount=7, verbose=0) as sink:
        for i in range(N):
            buf = io.BytesIO()
            fmt, ext = ("PNG", "png") if i % 5 == 0 else ("JPEG", "jpeg" if i % 7 == 0 else "jpg")
            Image.fromarray(datagen.natural_image(rng, 32, 30)).save(buf, format=fmt)
            sink.write({"__key__": f"sample{i:05d}", ext: buf.getvalue(), "cls": i % 4})
            expected[hashlib.sha256(buf.getvalue()).hexdigest()] = i % 4
    paths = sorted(str(p) for p in tmp_path.glob("train-*.tar"))
    assert len(paths) == 4
    return tmp_path, paths, expected


@pytest.mark.parametrize("form", ["list", "brace"])
def test_reads_webdataset_shards_exactly_once(wds_shards, tmp_path, form):
    root, paths, expected = wds_shards
    source = paths if form == "list" else str(root / "train-{000000..000003}.tar")
    ds = StreamingDataset(source, decode=False, cache_dir=tmp_path / "cache")
    assert len(ds) == N and ds.kind == "images" and ds.manifest is None
    samples = list(ds)
    assert sorted(sample_ids(samples, "images")) == sorted(expected)
    assert all(expected[hashlib.sha256(data).hexdigest()] == label for data, label in samples)


def test_decoded_through_workers(wds_shards, tmp_path):
    _, paths, _ = wds_shards
    loader = make_loader(StreamingDataset(paths, cache_dir=tmp_path / "cache", transform=lambda x: x[:, :8, :8]),
                         5, num_workers=2)
    images = [b[0] for b in loader]
    assert sum(len(b) for b in images) == N and images[0].dtype == torch.uint8 and images[0].shape[1:] == (3, 8, 8)


def test_counts_are_cached_by_path_size_and_mtime(wds_shards, tmp_path, monkeypatch):
    _, paths, _ = wds_shards
    cache = tmp_path / "cache"
    StreamingDataset(paths, cache_dir=cache)
    assert len(list((cache / ".wds-counts").glob("*.json"))) == 4

    def no_scan(*args):
        raise AssertionError("counted again")
    monkeypatch.setattr(sources, "_scan", no_scan)
    assert len(StreamingDataset(paths, cache_dir=cache)) == N
    with open(paths[0], "ab") as f:  # the shard changed: its count must be redone
        f.write(b"\0" * 1024)
    with pytest.raises(AssertionError, match="counted again"):
        StreamingDataset(paths, cache_dir=cache)


def test_default_count_cache_lives_under_xdg_cache_home(wds_shards, tmp_path, monkeypatch):
    _, paths, _ = wds_shards
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    StreamingDataset(paths[:1])
    assert len(list((tmp_path / "xdg" / "shardkit" / ".wds-counts").glob("*.json"))) == 1


def test_caption_shards_yield_every_field(tmp_path):
    """img2dataset's layout (KEY.jpg + KEY.txt + KEY.json): nothing is dropped, the sample is a dict."""
    rng = np.random.default_rng(1)
    captions = {}
    with wds.ShardWriter(str(tmp_path / "pairs-%06d.tar"), maxcount=4, verbose=0) as sink:
        for i in range(10):
            jpg = datagen.encode_image("RGB", "JPEG", rng, size=(40, 30))
            captions[hashlib.sha256(jpg).hexdigest()] = f"caption {i}"
            sink.write({"__key__": f"{i:06d}", "jpg": jpg, "txt": f"caption {i}", "json": {"i": i}})
    ds = StreamingDataset(str(tmp_path / "pairs-{000000..000002}.tar"), shuffle=False, decode=False)
    assert ds.kind == "samples" and len(ds) == 10
    samples = list(ds)
    assert [s["json"]["i"] for s in samples] == list(range(10))
    assert all(captions[hashlib.sha256(s["jpg"]).hexdigest()] == s["txt"] for s in samples)
    decoded = next(iter(StreamingDataset(str(tmp_path / "pairs-{000000..000002}.tar"), shuffle=False)))
    assert decoded["jpg"].dtype == torch.uint8 and decoded["jpg"].shape == (3, 30, 40) and decoded["txt"] == "caption 0"
    loader = make_loader(StreamingDataset(str(tmp_path / "pairs-{000000..000002}.tar"),
                                          transform=lambda s: {**s, "jpg": s["jpg"][:, :8, :8]}), 4, num_workers=2)
    batches = list(loader)
    assert [len(b["txt"]) for b in batches] == [4, 4, 2] and batches[0]["jpg"].shape == (4, 3, 8, 8)
    assert sorted(j["i"] for b in batches for j in b["json"]) == list(range(10))


def test_npy_and_cls_shards_yield_tensors_and_ints(tmp_path):
    with wds.ShardWriter(str(tmp_path / "arr-%06d.tar"), maxcount=50, verbose=0) as sink:
        for i in range(100):
            sink.write({"__key__": f"k{i:04d}", "npy": np.full((2, 3), i, np.float32), "cls": i % 7})
    ds = StreamingDataset(sorted(str(p) for p in tmp_path.glob("arr-*.tar")), shuffle=False)
    assert len(ds) == 100 and ds.kind == "samples"
    samples = list(ds)
    assert [s["cls"] for s in samples] == [i % 7 for i in range(100)]
    assert all(torch.equal(s["npy"], torch.full((2, 3), float(i))) for i, s in enumerate(samples))
