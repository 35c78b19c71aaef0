"""Random access (issue 13): ``IndexedDataset[i]`` is the i-th sample in stored order, for every
kind of source (this version, version 1, webdataset shards); one read per sample locally and one
range request remotely; the same decoding, fields and errors as StreamingDataset; negative
indices, IndexError; Subset, DataLoader workers, DistributedSampler under two simulated ranks."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Subset

import datagen
import shardkit
import shardkit.storage as storage
from servers import RangeHTTPServer
from shardkit.errors import ManifestError, ShardError
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.indexed import IndexedDataset

FIXTURES = Path(__file__).parent.parent / "fixtures" / "v1"


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.fixture
def wds_shards(tmp_path) -> list[str]:
    rng = np.random.default_rng(1)
    with wds.ShardWriter(str(tmp_path / "w-%06d.tar"), maxcount=4, verbose=0) as sink:
        for i in range(10):
            buf = io.BytesIO()
            Image.fromarray(datagen.natural_image(rng, 32, 30)).save(buf, format="JPEG")
            sink.write({"__key__": f"s{i:04d}", "jpg": buf.getvalue(), "cls": i % 3})
    return sorted(str(p) for p in tmp_path.glob("w-*.tar"))


SOURCES = {
    "sequences": lambda r: (r.getfixturevalue("seq_root"), {}),
    "images": lambda r: (r.getfixturevalue("image_root"), {"decode": False}),
    "images-decoded": lambda r: (r.getfixturevalue("image_root"), {}),
    "v1-sequences": lambda r: (FIXTURES / "sequences", {}),
    "v1-images": lambda r: (FIXTURES / "images", {"decode": False}),
    "webdataset": lambda r: (r.getfixturevalue("wds_shards"), {"decode": False}),
    "fields": lambda r: (r.getfixturevalue("image_root"), {"fields": ["cls", "jpg"], "decode": False}),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_index_i_is_the_i_th_sample_in_stored_order(request, tmp_path, name):
    source, options = SOURCES[name](request)
    stored = list(StreamingDataset(source, shuffle=False, cache_dir=tmp_path, **options))
    dataset = IndexedDataset(source, cache_dir=tmp_path, **options)
    assert len(dataset) == len(stored)
    for i in np.random.default_rng(0).permutation(len(stored)).tolist():  # any order
        assert same(dataset[i], stored[i]), f"sample {i}"
    assert same(dataset[-1], stored[-1]) and same(dataset[-len(stored)], stored[0])


def test_out_of_range_and_bad_indices(seq_root):
    dataset = IndexedDataset(seq_root)
    for bad in (len(dataset), -len(dataset) - 1, 10**9):
        with pytest.raises(IndexError, match="out of range"):
            dataset[bad]
    for bad in ("3", 1.0, None):
        with pytest.raises(TypeError, match="ints"):
            dataset[bad]
    assert same(dataset[np.int64(3)], dataset[3])


def test_transform_and_the_same_view_as_streaming(image_root):
    crop = lambda image: image[:, :4, :4]  # noqa: E731
    dataset = IndexedDataset(image_root, transform=crop)
    image, label = dataset[5]
    assert image.shape == (3, 4, 4) and image.dtype == torch.uint8 and isinstance(label, int)
    assert dataset.classes == StreamingDataset(image_root).classes


def test_streaming_dataset_points_to_it():
    with pytest.raises(TypeError, match="IndexedDataset"):
        StreamingDataset(FIXTURES / "sequences")[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_subset_and_dataloader_workers(seq_root, workers):
    dataset = IndexedDataset(seq_root)
    indices = list(range(100, 3, -7))
    subset = Subset(dataset, indices)
    got = [s for batch in DataLoader(subset, batch_size=4, num_workers=workers, collate_fn=list) for s in batch]
    assert all(same(g, dataset[i]) for g, i in zip(got, indices)) and len(got) == len(indices)


def test_distributed_sampler_under_two_ranks(seq_root):
    dataset = IndexedDataset(seq_root)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=1, collate_fn=list)
        samples = [s for batch in loader for s in batch]
        indices = list(sampler)
        assert len(samples) == len(indices) == 52 and all(same(s, dataset[i]) for s, i in zip(samples, indices))
        seen += indices
    assert set(seen) == set(range(len(dataset))), "each sample on one of the two ranks (plus the sampler's padding)"


@pytest.fixture
def converted_tokens(tmp_path, jsonl_file) -> Path:
    """500 sequences converted by shardkit (index sidecars, token counts), blocks of several each."""
    shardkit.convert(jsonl_file, tmp_path / "tokens", max_shard_samples=120, workers=1)
    return tmp_path / "tokens"


@pytest.mark.parametrize("kind", ["images", "sequences"])
def test_one_range_request_per_sample_over_http(request, tmp_path, kind):
    root = request.getfixturevalue("image_root" if kind == "images" else "converted_tokens")
    served = tmp_path / "served"
    shutil.copytree(root, served / "data")
    local = IndexedDataset(root, decode=False)
    server = RangeHTTPServer(served)

    def gets(suffix):
        return sum(1 for m, p, _ in server.requests if m == "GET" and p.endswith(suffix))

    with server as url:
        dataset = IndexedDataset(f"{url}/data", decode=False)
        order = np.random.default_rng(2).permutation(len(dataset)).tolist()[:25]
        reads = 0
        for i in order + order[:3]:
            shard, j = dataset.locate(i)
            held = any(key[0] == shard and dataset._index(shard).locate(j)[0] == key[1] for key in dataset._blocks)
            before = gets(".tar")
            assert same(dataset[i], local[i])
            assert gets(".tar") - before == (0 if held else 1), f"sample {i}: one range request (none if held)"
            reads += gets(".tar") - before
        assert gets(".idx") == len({dataset.locate(i)[0] for i in order}), "each shard's index fetched once"
        ranges = [r for m, p, r in server.requests if m == "GET" and p.endswith(".tar")]
        assert len(ranges) == reads and all(r and r.startswith("bytes=") for r in ranges)
        assert reads >= (len(order) if kind == "images" else 5)


def test_read_range_locally_and_over_http(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 4)
    assert storage.read_range(str(path), 10, 20) == bytes(range(10, 20))
    assert storage.read_range(str(path), 1020, 1024) == bytes(range(252, 256))
    with pytest.raises(ValueError, match="byte range"):
        storage.read_range(str(path), 5, 4)
    with pytest.raises(FileNotFoundError):
        storage.read_range(str(tmp_path / "missing"), 0, 1)
    server = RangeHTTPServer(tmp_path)
    with server as url:
        assert storage.read_range(f"{url}/f.bin", 300, 310) == (bytes(range(256)) * 4)[300:310]
        assert server.requests == [("GET", "/f.bin", "bytes=300-309")], "one request"


def test_damaged_and_missing_shards_raise_shardkit_errors(tmp_path, seq_root, image_root):
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    dataset = IndexedDataset(copy)
    shard, _ = dataset.locate(3)
    tar = copy / dataset.source.shards[shard].name.split("/")[-1]
    data = bytearray(tar.read_bytes())
    first = dataset._index(shard).offsets[1]
    data[first + 100:first + 600] = b"\x00" * 500  # inside the second group: its header and data
    tar.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard"):
        dataset[dataset._starts[shard] + 1]
    assert same(dataset[dataset._starts[shard]], IndexedDataset(image_root)[dataset._starts[shard]]), \
        "the group before is intact"
    tar.unlink()
    with pytest.raises(ManifestError, match="missing"):
        IndexedDataset(copy)[dataset._starts[shard]]


def test_image_bytes_are_the_stored_files(image_root, image_ids):
    dataset = IndexedDataset(image_root, decode=False)
    assert sorted(hashlib.sha256(dataset[i][0]).hexdigest() for i in range(len(dataset))) == sorted(image_ids)
