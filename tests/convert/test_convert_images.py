"""ImageFolder trees end to end: what webdataset, tar and torchvision see in the output."""

import io
import json
import os
import subprocess

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from torchvision.datasets import ImageFolder

import shardkit
from convert_helpers import make_bad_tree, manifest_doc, samples_by_key
from datagen import dst_files
from shardkit.errors import SourceError
from shardkit.format.fields import IMAGE_FORMATS as IMAGE_EXTENSIONS


def test_webdataset_and_tar_read_every_sample(image_tree, tmp_path):
    dst = tmp_path / "out"
    manifest = shardkit.convert(image_tree, dst, workers=1, max_shard_samples=5)
    names = [s.name for s in manifest.shards]
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert manifest.samples == len(ImageFolder(str(image_tree), allow_empty=True)) == 12
    samples = list(wds.WebDataset([str(dst / n) for n in names], shardshuffle=False))
    assert len(samples) == manifest.samples
    assert len({s["__key__"] for s in samples}) == manifest.samples
    for s in samples:
        image_exts = [e for e in IMAGE_EXTENSIONS if e in s]
        assert len(image_exts) == 1 and int(s["cls"]) == json.loads(s["json"])["label"]
    for info in manifest.shards:
        listed = subprocess.run(["tar", "tf", str(dst / info.name)], capture_output=True, text=True, check=True)
        assert len(listed.stdout.split()) == 3 * info.samples
        assert os.path.getsize(dst / info.name) == info.bytes


def test_labels_classes_and_pixels_match_imagefolder(image_tree, tmp_path):
    manifest = shardkit.convert(image_tree, tmp_path / "out", workers=2)
    reference = ImageFolder(str(image_tree), allow_empty=True)
    by_path = {os.path.relpath(path, image_tree): (path, label) for path, label in reference.samples}
    assert manifest.classes == reference.classes
    seen = set()
    for key, group in samples_by_key(tmp_path / "out").items():
        meta = json.loads(group["json"])
        path, label = by_path[meta["path"]]
        assert meta["label"] == label == int(group["cls"]) and meta["class"] == reference.classes[label]
        (ext,) = [e for e in IMAGE_EXTENSIONS if e in group]
        stored = Image.open(io.BytesIO(group[ext])).convert("RGB")
        assert np.array_equal(np.asarray(stored), np.asarray(reference.loader(path)))
        if os.path.splitext(path)[1].lower() in (".jpg", ".jpeg", ".png", ".webp"):
            assert group[ext] == open(path, "rb").read()  # passed through byte for byte
        seen.add(meta["path"])
    assert seen == set(by_path)
    assert "cat/a.b c.png" in seen and "ému/ünïcode ñame.jpg" in seen


@pytest.mark.parametrize("options", [{"max_shard_samples": 4}, {"max_shard_size": "20KB"},
                                     {"resize": 32, "max_shard_samples": 8}])
def test_same_bytes_for_any_worker_count(jpeg_tree, tmp_path, options):
    one = shardkit.convert(jpeg_tree, tmp_path / "w1", workers=1, **options)
    four = shardkit.convert(jpeg_tree, tmp_path / "w4", workers=4, **options)
    assert one == four and len(one.shards) > 1
    assert dst_files(tmp_path / "w1") == dst_files(tmp_path / "w4")


def test_shards_respect_the_size_limit(jpeg_tree, tmp_path):
    manifest = shardkit.convert(jpeg_tree, tmp_path / "out", workers=1, max_shard_size="12KB")
    assert len(manifest.shards) > 3 and all(s.bytes <= 12_000 for s in manifest.shards)
    assert manifest.params["max_shard_size"] == 12_000


def _paths_in_output_order(dst):
    return [json.loads(group["json"])["path"] for group in samples_by_key(dst).values()]


def test_order_shuffled_by_default_and_kept_with_no_shuffle(jpeg_tree, tmp_path):
    folder_order = [os.path.relpath(p, jpeg_tree) for p, _ in ImageFolder(str(jpeg_tree)).samples]
    shardkit.convert(jpeg_tree, tmp_path / "kept", workers=1, shuffle=False, max_shard_samples=7)
    assert _paths_in_output_order(tmp_path / "kept") == folder_order
    shardkit.convert(jpeg_tree, tmp_path / "shuffled", workers=1, seed=3, max_shard_samples=7)
    shuffled = _paths_in_output_order(tmp_path / "shuffled")
    assert shuffled == [folder_order[i] for i in np.random.default_rng(3).permutation(len(folder_order))]
    first_shard = [p.split("/")[0] for p in shuffled[:7]]
    assert len(set(first_shard)) > 1  # no shard holds a single class
    shardkit.convert(jpeg_tree, tmp_path / "other_seed", workers=1, seed=4, max_shard_samples=7)
    assert _paths_in_output_order(tmp_path / "other_seed") != shuffled


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_images_are_reported_not_fatal(tmp_path, workers):
    expected = make_bad_tree(tmp_path / "bad")
    manifest = shardkit.convert(tmp_path / "bad", tmp_path / "out", workers=workers, max_shard_samples=3)
    assert manifest.samples == 2
    assert {e["path"] for e in manifest.skipped} == set(expected)
    for entry in manifest.skipped:
        assert entry["reason"].startswith(expected[entry["path"]]) and "line" not in entry
    assert manifest.skipped == sorted(manifest.skipped, key=lambda e: e["path"])
    assert manifest_doc(tmp_path / "out")["skipped"] == manifest.skipped
    assert sorted(json.loads(g["json"])["path"] for g in samples_by_key(tmp_path / "out").values()) == [
        "a/good.jpg", "b/good.bmp"]


def test_strict_fails_and_writes_no_manifest(tmp_path):
    make_bad_tree(tmp_path / "bad")
    (tmp_path / "bad" / "b" / "broken link.jpg").unlink()
    (tmp_path / "bad" / "b" / "fifo.png").unlink()  # only decode failures: found while writing shards
    with pytest.raises(SourceError, match=r"strict: \d+ input.*cannot decode|strict: .*empty file"):
        shardkit.convert(tmp_path / "bad", tmp_path / "out", workers=1, strict=True, shuffle=False)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_header_validation_lets_truncated_files_through(tmp_path):
    make_bad_tree(tmp_path / "bad")
    manifest = shardkit.convert(tmp_path / "bad", tmp_path / "out", workers=1, validate="header")
    assert {"a/truncated.jpg", "a/truncated.png"}.isdisjoint(e["path"] for e in manifest.skipped)
    assert manifest.params["validate"] == "header"


def test_unknown_option_is_a_type_error_naming_it(jpeg_tree, tmp_path):
    with pytest.raises(TypeError, match="max_shard_bytes"):
        shardkit.convert(jpeg_tree, tmp_path / "out", max_shard_bytes=10)
    assert not (tmp_path / "out").exists()


def test_convert_stays_callable_after_a_submodule_import(jpeg_tree, tmp_path):
    import shardkit.convert.plan  # noqa: F401  (makes the attribute the package, which is callable)

    assert shardkit.convert(jpeg_tree, tmp_path / "out", workers=1).samples == 30
