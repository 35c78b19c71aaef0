"""Re-sharding webdataset tars (written by webdataset itself): every sample with all its fields,
byte for byte, shuffled and re-cut; damaged members and samples reported with shard and member;
brace patterns, lists and directories; the same bytes for any worker count."""

import tarfile

import numpy as np
import pytest
import webdataset as wds

import datagen
import shardkit
from datagen import dst_files
from shardkit.errors import SourceError
from table_helpers import write_tars


def members_of(tar_path):
    with tarfile.open(tar_path) as tf:
        return {m.name: m for m in tf.getmembers()}


def read_back(dst):
    """The converted samples as webdataset reads them, by caption: ``{ext: bytes}``."""
    doc = shardkit.StreamingDataset(dst).manifest
    got = list(wds.WebDataset([str(dst / s.name) for s in doc.shards], shardshuffle=False))
    return {s["txt"].decode(): s for s in got}


@pytest.mark.parametrize("how", ["brace", "list", "directory", "glob"])
def test_every_sample_is_kept_byte_for_byte(tmp_path, how):
    samples = write_tars(tmp_path / "old")
    src = {"brace": str(tmp_path / "old" / "old-{000000..000002}.tar"),
           "list": [tmp_path / "old" / f"old-{t:06d}.tar" for t in range(3)],
           "directory": tmp_path / "old", "glob": str(tmp_path / "old" / "old-*.tar")}[how]
    manifest = shardkit.convert(src, tmp_path / "out", workers=2, max_shard_samples=5)
    assert manifest.samples == 24 and len(manifest.shards) == 5 and not manifest.skipped
    got = read_back(tmp_path / "out")
    for caption, sample in samples.items():
        assert got[caption]["jpg"] == sample["jpg"] and int(got[caption]["cls"]) == sample["cls"]
    # the order is a global shuffle: no output shard holds only one input tar's samples in order
    assert [s.split()[1] for s in list(got)[:8]] != [f"0-{i}" for i in range(8)]
    # the schema StreamingDataset infers for the old tars themselves, so both yield the same samples
    old = shardkit.StreamingDataset([str(tmp_path / "old" / f"old-{t:06d}.tar") for t in range(3)], shuffle=False)
    new = shardkit.StreamingDataset(tmp_path / "out", shuffle=False)
    assert new.schema == old.schema and manifest.kind == "samples"
    assert sorted(s["txt"] for s in new) == sorted(s["txt"] for s in old)


def test_image_and_label_tars_become_an_image_dataset(tmp_path):
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(tmp_path / "a.tar")) as w:
        for i in range(6):
            w.write({"__key__": f"k{i}", "jpg": datagen.encode_image("RGB", "JPEG", rng), "cls": i % 2})
    manifest = shardkit.convert(tmp_path / "a.tar", tmp_path / "out", workers=1, shuffle=False)
    assert manifest.kind == "images"
    labels = [label for _, label in shardkit.StreamingDataset(tmp_path / "out", shuffle=False)]
    assert labels == [i % 2 for i in range(6)]


def test_a_damaged_member_is_reported_and_the_rest_kept(tmp_path):
    samples = write_tars(tmp_path / "old")
    path = tmp_path / "old" / "old-000001.tar"
    data = bytearray(path.read_bytes())
    members = members_of(path)
    jpg = members["001/00002.jpg"]
    data[jpg.offset_data:jpg.offset_data + jpg.size] = b"x" * jpg.size  # its bytes replaced: no longer an image
    txt = members["001/00005.txt"]
    data[txt.offset + 20] ^= 0x55  # a header damaged: its checksum no longer holds
    path.write_bytes(bytes(data))
    manifest = shardkit.convert(str(tmp_path / "old" / "old-{000000..000002}.tar"), tmp_path / "out", workers=2)
    assert manifest.samples == 22
    entries = [(e["path"], e.get("member")) for e in manifest.skipped]
    assert ("old-000001.tar", "001/00002.jpg") in entries  # the decode failure, by member
    assert ("old-000001.tar", "001/00005") in entries      # the sample whose member's header was damaged
    assert ("old-000001.tar", f"byte {txt.offset}") in entries  # and the damage itself, where it is
    got = read_back(tmp_path / "out")
    assert set(got) == set(samples) - {"caption 1-2", "caption 1-5"}
    assert all(got[c]["jpg"] == samples[c]["jpg"] for c in got)


def test_fields_are_validated_by_their_codec(tmp_path):
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(tmp_path / "a.tar")) as w:
        w.write({"__key__": "good", "png": datagen.encode_image("RGB", "PNG", rng), "json": b'{"a": 1}'})
        w.write({"__key__": "badjson", "png": datagen.encode_image("RGB", "PNG", rng), "json": b"{nope"})
        w.write({"__key__": "jpeg_as_png", "png": datagen.encode_image("RGB", "JPEG", rng), "json": b"{}"})
        w.write({"__key__": "badnpy", "png": datagen.encode_image("RGB", "PNG", rng), "json": b"{}",
                 "x.npy": b"\x93NUMPY garbage"})
    manifest = shardkit.convert(tmp_path / "a.tar", tmp_path / "out", workers=1)
    reasons = {e["member"]: e["reason"] for e in manifest.skipped}
    assert set(reasons) == {"badjson.json", "jpeg_as_png.png", "badnpy.x.npy"}
    assert "not valid JSON" in reasons["badjson.json"] and "not the PNG image" in reasons["jpeg_as_png.png"]
    assert manifest.samples == 1 and manifest.kind == "samples"


def test_token_blocks_are_refused_and_resize_too(tmp_path, jsonl_file):
    shardkit.convert(jsonl_file, tmp_path / "tokens", workers=1)
    with pytest.raises(SourceError, match="token or row blocks"):
        shardkit.convert(str(tmp_path / "tokens" / "shard-000000.tar"), tmp_path / "out", workers=1)
    write_tars(tmp_path / "old", tars=1)
    with pytest.raises(SourceError, match="--resize does not apply"):
        shardkit.convert(tmp_path / "old" / "old-000000.tar", tmp_path / "out", workers=1, resize=32)


def test_same_bytes_for_any_worker_count(tmp_path):
    write_tars(tmp_path / "old", tars=4, per_tar=6)
    shardkit.convert(tmp_path / "old", tmp_path / "w1", workers=1, max_shard_samples=4)
    shardkit.convert(tmp_path / "old", tmp_path / "w2", workers=2, max_shard_samples=4)
    assert dst_files(tmp_path / "w1") == dst_files(tmp_path / "w2")


def test_a_tar_whose_name_needs_escaping_is_read(tmp_path):
    # recorded names escape a backslash (and undecodable bytes); the tar is opened by its real name
    samples = write_tars(tmp_path / "old", tars=1, per_tar=4)
    (tmp_path / "old" / "old-000000.tar").rename(tmp_path / "old" / "a\\b.tar")
    manifest = shardkit.convert(tmp_path / "old", tmp_path / "out")
    assert manifest.samples == 4 and not manifest.skipped
    assert set(read_back(tmp_path / "out")) == set(samples)
