"""load_manifest, summary and verify on real converted datasets, intact and damaged."""

import pytest

import datagen
import shardkit
from shardkit.errors import ManifestError
from shardkit.inspect import load_manifest, summary, verify


@pytest.fixture
def image_dst(tmp_path, image_tree):
    shardkit.convert(image_tree, tmp_path / "image_shards", workers=1, max_shard_samples=4)
    return tmp_path / "image_shards"


@pytest.fixture
def sequence_dst(tmp_path, jsonl_file):
    shardkit.convert(jsonl_file, tmp_path / "seq_shards", workers=1, max_shard_size="40KB")
    return tmp_path / "seq_shards"


@pytest.mark.parametrize("which", ["image_dst", "sequence_dst"])
def test_intact_datasets_verify(which, request):
    dst = request.getfixturevalue(which)
    manifest = load_manifest(str(dst))
    report = verify(str(dst))
    assert report.ok and report.problems == {}
    assert report.shards == len(manifest.shards) > 1 and report.samples == manifest.samples
    assert "ok" in str(report)


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip in a header":
        data[3] ^= 0x01  # a byte of the first member's name
    elif how == "flip in the data":
        data[512 + 40] ^= 0x01  # inside the first member's content
    elif how == "flip in the end blocks":
        data[-10] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "grown":
        data += b"\0" * 512
    path.write_bytes(bytes(data))


HOWS = ["flip in a header", "flip in the data", "flip in the end blocks", "truncated", "grown", "missing"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("which", ["image_dst", "sequence_dst"])
def test_verify_names_each_damaged_shard(which, how, request):
    dst = request.getfixturevalue(which)
    target = dst / "shard-000001.tar"
    if how == "missing":
        target.unlink()
    else:
        _damage(target, how)
    report = verify(str(dst))
    assert not report.ok
    assert list(report.problems) == ["shard-000001.tar"]
    assert "shard-000001.tar" in str(report)


DAMAGED_JPEGS = {"truncated": (lambda data: data[: len(data) // 2], "cannot decode image (OSError"),
                 "header wrecked": (lambda data: b"\0" * 16 + data[16:], "cannot decode image (UnidentifiedImageError")}


@pytest.mark.parametrize("damage", DAMAGED_JPEGS)
def test_verify_catches_an_undecodable_image_with_a_matching_checksum(tmp_path, damage):
    """A well-formed shard holding a damaged JPEG, with a manifest that agrees with it: only
    decoding catches it, and the reason is the image's (verify runs in a fresh process, where PIL
    has loaded only its first plugins: it used to say KeyError: 'MPO')."""
    import hashlib
    import io
    import json
    import subprocess
    import sys
    from pathlib import Path

    from shardkit.format.tar import TarWriter, read_members

    cut, reason = DAMAGED_JPEGS[damage]
    root = tmp_path / "tree"
    datagen.make_jpeg_tree(root, classes=1, per_class=2)
    shardkit.convert(root, tmp_path / "out", workers=1)
    shard = tmp_path / "out" / "shard-000000.tar"
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    buf = io.BytesIO()
    writer = TarWriter(buf, doc["shards"][0]["stamp"])  # written by the same conversion
    for m in read_members(shard.read_bytes()):
        writer.add(m.name, cut(m.data) if m.name.endswith(".jpg") else m.data)
    writer.close()
    shard.write_bytes(buf.getvalue())
    doc["shards"][0].update(sha256=hashlib.sha256(buf.getvalue()).hexdigest(), bytes=len(buf.getvalue()))
    doc["bytes"] = len(buf.getvalue())
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(doc))
    report = verify(str(tmp_path / "out"))
    assert not report.ok and reason in report.problems["shard-000000.tar"]
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "shardkit", "verify", str(tmp_path / "out")], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and reason in done.stderr and "KeyError" not in done.stderr, done.stderr


def test_missing_manifest_says_what_to_do(tmp_path):
    with pytest.raises(ManifestError, match="not a shardkit dataset.*resume"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        verify(str(tmp_path))


def test_summary(image_dst, sequence_dst, tmp_path):
    text = summary(load_manifest(str(image_dst)))
    assert text.startswith("images: 12 samples in 3 shards") and "classes (4): cat, dog, empty, ému" in text
    assert "skipped: 0" in text
    text = summary(load_manifest(str(sequence_dst)))
    assert text.startswith("sequences: 500 samples") and "as uint16" in text and "median" in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(['{"tokens": [1]}'] + ["oops"] * 7) + "\n")
    shardkit.convert(bad, tmp_path / "bad", workers=1)
    text = summary(load_manifest(str(tmp_path / "bad")))
    assert "skipped: 7" in text and "bad.jsonl:2: not valid JSON" in text and "and 2 more" in text
