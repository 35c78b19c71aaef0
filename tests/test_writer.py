"""shardkit.ShardWriter: your own samples into shards + manifest, read back by StreamingDataset,
by webdataset and by tar; the same guarantees as convert."""

from __future__ import annotations

import io
import logging
import subprocess
import tarfile
import uuid

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

import datagen
import shardkit
from servers import moto_s3
from shardkit import DestinationError, ShardWriter, StreamingDataset, make_loader, verify
from shardkit.format.manifest import MANIFEST_NAME


def pairs(n: int, seed: int = 0):
    """``n`` samples of every codec: a JPEG, a PNG mask, a caption, a label, JSON, an array, raw bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append({"jpg": datagen.encode_image("RGB", "JPEG", rng, size=(40, 30)),
                    "mask.png": Image.fromarray((datagen.natural_image(rng, 40, 30)[..., 0] > 128).astype(np.uint8)),
                    "txt": f"a caption, ünïcode {i}", "cls": i % 3, "json": {"i": i, "tags": ["a", "b"][: i % 3]},
                    "emb.npy": rng.normal(size=8).astype(np.float32), "raw.bin": bytes([i % 256]) * (i % 5)})
    return out


def write(dst, samples, **kwargs):
    with ShardWriter(dst, **kwargs) as writer:
        for sample in samples:
            writer.write(sample)
    return shardkit.load_manifest(str(dst))


def test_every_codec_round_trips_through_the_stream(tmp_path):
    samples = pairs(10)
    manifest = write(tmp_path / "ds", samples, max_shard_samples=4)
    assert manifest.kind == "samples" and manifest.samples == 10 and len(manifest.shards) == 3
    schema = {f.name: f for f in manifest.schema.fields}
    assert {n: f.codec.name for n, f in schema.items()} == {"jpg": "image", "mask.png": "image", "txt": "txt",
                                                            "cls": "cls", "json": "json", "emb.npy": "npy",
                                                            "raw.bin": "bytes"}
    assert schema["emb.npy"].dtype == "float32" and schema["emb.npy"].shape == (8,)
    raw = list(StreamingDataset(tmp_path / "ds", shuffle=False, decode=False))
    decoded = list(StreamingDataset(tmp_path / "ds", shuffle=False))
    for want, got, bytes_ in zip(samples, decoded, raw):
        assert bytes_["jpg"] == want["jpg"], "image bytes byte for byte"
        assert got["jpg"].dtype == torch.uint8 and got["jpg"].shape == (3, 30, 40)
        assert np.array_equal(got["mask.png"][0].numpy(), np.asarray(want["mask.png"])), "lossless PNG"
        assert got["txt"] == want["txt"] and got["cls"] == want["cls"] and got["json"] == want["json"]
        assert torch.equal(got["emb.npy"], torch.from_numpy(want["emb.npy"])) and got["raw.bin"] == want["raw.bin"]
    assert verify(str(tmp_path / "ds")).ok


def test_webdataset_and_tar_read_what_it_writes(tmp_path):
    samples = pairs(6)
    write(tmp_path / "ds", samples, max_shard_samples=6)
    shard = tmp_path / "ds" / "shard-000000.tar"
    names = subprocess.run(["tar", "tf", str(shard)], check=True, capture_output=True, text=True).stdout.split()
    assert names[:7] == [f"000000000.{f}" for f in samples[0]]
    got = list(wds.WebDataset(str(shard), shardshuffle=False).decode())
    assert [g["__key__"] for g in got] == [f"{i:09d}" for i in range(6)]
    assert [g["txt"] for g in got] == [s["txt"] for s in samples] and [g["cls"] for g in got] == [0, 1, 2, 0, 1, 2]
    assert all(np.array_equal(g["emb.npy"], s["emb.npy"]) for g, s in zip(got, samples))
    with tarfile.open(shard) as tar:
        assert all(m.isfile() and m.uname == "shardkit" for m in tar.getmembers())


def test_loader_collates_dicts_and_device_loader_normalises_only_image_fields(tmp_path):
    samples = pairs(10)
    for s in samples:
        s["mask.npy"] = np.full((30, 40), 7, np.uint8)[None]  # a uint8 tensor that is not an image
    write(tmp_path / "ds", samples, max_shard_samples=5)
    crop = lambda s: {**s, "jpg": s["jpg"][:, :16, :16], "mask.png": s["mask.png"][:, :16, :16]}  # noqa: E731
    loader = make_loader(StreamingDataset(tmp_path / "ds", transform=crop, seed=1), 4, num_workers=2)
    assert set(loader.image_keys) == {"jpg", "mask.png"}
    batches = list(shardkit.DeviceLoader(loader, "cpu", mean=(0.5,) * 3, std=(0.5,) * 3))
    first = batches[0]
    assert first["jpg"].dtype == torch.float32 and first["jpg"].shape == (4, 3, 16, 16)
    assert first["mask.npy"].dtype == torch.uint8 and int(first["mask.npy"].max()) == 7, "moved, not normalised"
    assert first["cls"].dtype == torch.int64 and isinstance(first["txt"], list) and isinstance(first["json"], list)
    assert isinstance(first["raw.bin"], list) and first["emb.npy"].shape == (4, 8)
    assert sorted(j["i"] for b in batches for j in b["json"]) == list(range(10))


def test_images_of_unequal_sizes_say_what_to_do(tmp_path):
    write(tmp_path / "ds", [{"jpg": datagen.encode_image("RGB", "JPEG", np.random.default_rng(i), size=(40 + i, 30))}
                            for i in range(4)])
    with pytest.raises(ValueError, match="images of field 'jpg' in a batch differ in size.*RandomResizedCrop"):
        list(make_loader(StreamingDataset(tmp_path / "ds"), 4, num_workers=0))


def test_fields_reads_and_decodes_only_those(tmp_path, monkeypatch):
    write(tmp_path / "ds", pairs(5))
    from shardkit.format import fields

    def no_npy(*args, **kwargs):
        raise AssertionError("an unselected field was decoded")
    monkeypatch.setattr(fields.NpyCodec, "decode", no_npy)
    got = list(StreamingDataset(tmp_path / "ds", shuffle=False, fields=("jpg", "txt")))
    assert [sorted(g) for g in got] == [["jpg", "txt"]] * 5
    with pytest.raises(ValueError, match="not in this dataset"):
        StreamingDataset(tmp_path / "ds", fields=("nope",))


@pytest.mark.parametrize("sample, fragment", [
    ({"jpg": b"not an image", "txt": "x"}, "sample 2: field 'jpg': the bytes are not a JPEG"),
    ({"jpg": b"\xff\xd8\xff", "txt": 5}, "sample 2: field 'txt': expected a str"),
    ({"jpg": b"\xff\xd8\xff", "txt": "x", "extra.txt": "y"}, "sample 2: field 'extra.txt' is not in the first"),
    ({"jpg": b"\xff\xd8\xff"}, "sample 2: field 'txt' is missing"),
    ({"__key__": "k", "jpg": b"\xff\xd8\xff", "txt": "x"}, "keys samples by their position"),
    ("not a dict", "sample 2: expected a mapping"),
], ids=["bad-image", "txt-int", "extra", "missing", "key", "not-mapping"])
def test_a_bad_sample_is_refused_by_field_and_position_and_nothing_of_it_is_written(tmp_path, sample, fragment):
    good = {"jpg": datagen.encode_image("RGB", "JPEG", np.random.default_rng(0)), "txt": "ok"}
    with ShardWriter(tmp_path / "ds", optional=("note.txt",)) as writer:
        writer.write(good)
        writer.write({**good, "note.txt": "optional fields may come and go"})
        with pytest.raises(ValueError, match=fragment):
            writer.write(sample)
        writer.write(good)
    assert [s["txt"] for s in StreamingDataset(tmp_path / "ds", shuffle=False, decode=False)] == ["ok"] * 3
    assert verify(str(tmp_path / "ds")).ok


def test_an_exception_inside_the_with_block_leaves_no_manifest_and_says_so(tmp_path, caplog):
    class Stop(Exception):
        pass

    with caplog.at_level(logging.WARNING):
        with pytest.raises(Stop):
            with ShardWriter(tmp_path / "ds", max_shard_samples=2) as writer:
                for s in pairs(5):
                    writer.write(s)
                raise Stop
    assert not (tmp_path / "ds" / MANIFEST_NAME).exists()
    assert "no manifest written" in caplog.text and "Stop" in caplog.text
    with pytest.raises(DestinationError, match="unfinished write"):
        write(tmp_path / "ds", pairs(2))
    assert write(tmp_path / "ds", pairs(2), overwrite=True).samples == 2


def test_same_samples_same_bytes_and_another_dataset_is_refused(tmp_path):
    write(tmp_path / "a", pairs(7), max_shard_size=30_000)
    write(tmp_path / "b", pairs(7), max_shard_size=30_000)
    assert datagen.dst_files(tmp_path / "a") == datagen.dst_files(tmp_path / "b")
    manifest = shardkit.load_manifest(str(tmp_path / "a"))
    assert len(manifest.shards) > 1 and all(s.bytes <= 30_000 for s in manifest.shards)
    with pytest.raises(DestinationError, match="holds another dataset"):
        write(tmp_path / "a", pairs(3))
    assert write(tmp_path / "a", pairs(3, seed=5), overwrite=True).samples == 3
    assert len(list(StreamingDataset(tmp_path / "a"))) == 3


def test_a_sample_larger_than_a_shard_gets_a_shard_of_its_own(tmp_path):
    big = {"raw.bin": bytes(50_000)}
    manifest = write(tmp_path / "ds", [{"raw.bin": b"x"}, big, {"raw.bin": b"y"}], max_shard_size=20_000)
    assert [s.samples for s in manifest.shards] == [1, 1, 1]


def test_an_empty_write_writes_no_manifest(tmp_path):
    with pytest.raises(ValueError, match="no sample was written"):
        with ShardWriter(tmp_path / "ds"):
            pass
    assert not (tmp_path / "ds" / MANIFEST_NAME).exists()


def test_writes_to_s3_and_streams_back(tmp_path):
    with moto_s3("wbucket") as options:
        url = f"s3://wbucket/{uuid.uuid4().hex[:8]}/pairs"
        samples = pairs(6)
        with ShardWriter(url, max_shard_samples=4, storage_options=options) as writer:
            for s in samples:
                writer.write(s)
        got = list(StreamingDataset(url, shuffle=False, decode=False, storage_options=options))
        assert [g["txt"] for g in got] == [s["txt"] for s in samples]
        assert verify(url, storage_options=options).ok
        remote = [s.sha256 for s in shardkit.load_manifest(url, options).shards]
    write(tmp_path / "local", samples, max_shard_samples=4)
    assert remote == [s.sha256 for s in shardkit.load_manifest(str(tmp_path / "local")).shards], \
        "the same bytes wherever they are written"


def test_info_shows_the_fields(tmp_path):
    write(tmp_path / "ds", pairs(3))
    result = subprocess.run([*shardkit_cli(), "info", str(tmp_path / "ds")], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("samples: 3 samples in 1 shards")
    assert "fields: jpg (image), mask.png (image), txt (txt), cls (cls), json (json), emb.npy (npy, float32)" in result.stdout


def shardkit_cli():
    import sys

    return [sys.executable, "-m", "shardkit"]


def test_pil_images_go_to_jpeg_at_the_quality_given(tmp_path):
    image = Image.fromarray(datagen.natural_image(np.random.default_rng(0), 64, 48))
    low = write(tmp_path / "low", [{"jpg": image}], quality=20)
    high = write(tmp_path / "high", [{"jpg": image}], quality=95)
    assert low.bytes < high.bytes
    got = next(iter(StreamingDataset(tmp_path / "high", decode=False)))["jpg"]
    assert got[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(got)).size == (64, 48)
