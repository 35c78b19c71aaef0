"""The converter against real damaged files (tests/corpus.py): every bad file is reported in
``manifest.skipped`` with a reason, no valid image or sequence is lost, nothing is fatal; with
``strict=True`` the same input is a ``SourceError`` and no manifest is written."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

import corpus
import shardkit
from shardkit.errors import SourceError
from shardkit.format.manifest import MANIFEST_NAME, Manifest
import datagen
from shardkit.format.records import split_name

LABEL_EXT, META_EXT = "cls", "json"
from shardkit.format.tar import iter_members


def pil_fully_decodes(data: bytes) -> bool:
    """The issue's rule for a valid image: PIL decodes all of it, and it is no decompression bomb."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except Exception:  # noqa: BLE001 - any failure at all means "not a valid image"
            return False
    return True


def read_groups(dst) -> dict[str, dict[str, bytes]]:
    """Every sample of a converted DST, by key, read with shardkit's own strict reader."""
    manifest = Manifest.from_json((dst / MANIFEST_NAME).read_text())
    groups: dict[str, dict[str, bytes]] = {}
    for shard in manifest.shards:
        with open(dst / shard.name, "rb") as f:
            for member in iter_members(f, shard.name):
                key, ext = split_name(member.name)
                groups.setdefault(key, {})[ext] = member.data
    return groups


@pytest.fixture(scope="module")
def damaged_tree(tmp_path_factory):
    return corpus.make_damaged_image_tree(tmp_path_factory.mktemp("corpus") / "images")


def test_the_corpus_is_really_damaged(damaged_tree):
    """Guards the corpus itself: PIL refuses every bad file and decodes every valid one."""
    root, valid, bad = damaged_tree
    assert len(bad) >= 35 and len(valid) >= 15
    for rel in sorted(bad - {"cat/y.png"}):
        assert not pil_fully_decodes((root / rel).read_bytes()), rel
    assert not (root / "cat/y.png").exists() and (root / "cat/y.png").is_symlink()
    for rel in sorted(valid):
        assert pil_fully_decodes((root / rel).read_bytes()), rel


def test_torchvision_lists_the_same_files(damaged_tree):
    """The corpus follows ImageFolder's rules: bad files have image extensions, x.jpg/ is walked into."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root, valid, bad = damaged_tree
    folder = ImageFolder(str(root), loader=lambda path: path, allow_empty=True)
    assert set(IMG_EXTENSIONS) == set(corpus.IMG_EXTENSIONS)
    listed = {str(Path(path).relative_to(root)): label for path, label in folder.samples}
    assert set(listed) == set(valid) | bad
    assert {rel: listed[rel] for rel in valid} == valid
    assert "dog/x.jpg/inside.png" in valid


@pytest.fixture(scope="module")
def converted(damaged_tree, tmp_path_factory):
    root, _, _ = damaged_tree
    dst = tmp_path_factory.mktemp("converted") / "out"
    return shardkit.convert(root, dst, workers=2, progress=False), dst


def test_every_bad_file_is_skipped_with_a_reason(damaged_tree, converted):
    _, _, bad = damaged_tree
    manifest, dst = converted
    skipped = {entry["path"]: entry["reason"] for entry in manifest.skipped}
    assert set(skipped) == bad
    assert len(manifest.skipped) == len(bad)  # each reported once
    assert all(isinstance(reason, str) and reason.strip() for reason in skipped.values())
    for rel in bad:
        if "huge" in rel or "bomb" in rel:
            assert "bomb" in skipped[rel] or "pixels" in skipped[rel], (rel, skipped[rel])
    assert Manifest.from_json((dst / MANIFEST_NAME).read_text()).skipped == manifest.skipped


def test_no_valid_image_is_lost(damaged_tree, converted):
    root, valid, _ = damaged_tree
    manifest, dst = converted
    groups = read_groups(dst)
    assert manifest.samples == len(groups) == len(valid)
    got = {}
    for members in groups.values():
        meta = json.loads(members[META_EXT])
        got[meta["path"]] = int(members[LABEL_EXT])
        assert meta["label"] == got[meta["path"]] and meta["class"] == manifest.classes[meta["label"]]
        (image,) = [data for ext, data in members.items() if ext not in (LABEL_EXT, META_EXT)]
        assert pil_fully_decodes(image), meta["path"]
    assert got == valid


def test_strict_refuses_the_same_tree(damaged_tree, tmp_path):
    root, _, _ = damaged_tree
    with pytest.raises(SourceError):
        shardkit.convert(root, tmp_path / "strict", workers=1, progress=False, strict=True)
    assert not (tmp_path / "strict" / MANIFEST_NAME).exists()


def test_damaged_jsonl_lines(tmp_path):
    path, valid, bad = corpus.damaged_jsonl(tmp_path / "src" / "damaged.jsonl")
    manifest = shardkit.convert(path, tmp_path / "out", workers=1, shuffle=False, progress=False)
    assert sorted(entry["line"] for entry in manifest.skipped) == bad  # 1-based line numbers
    assert all(entry["path"].endswith("damaged.jsonl") and entry["reason"].strip() for entry in manifest.skipped)
    assert manifest.samples == len(valid)
    got = []
    for key, members in sorted(read_groups(tmp_path / "out").items()):
        tokens, offsets, labels = datagen.decode_token_block(members, "shard", key)
        for i in range(len(offsets) - 1):
            label = None if labels is None or labels[i] == -1 else int(labels[i])
            got.append((tokens[offsets[i]:offsets[i + 1]].tolist(), label))
    # -1 is also the "no label" value, so compare labels the way the loader hands them out
    assert got == [(tokens, None if label in (None, -1) else label) for tokens, label in valid]


def test_damaged_jsonl_strict(tmp_path):
    path, _, bad = corpus.damaged_jsonl(tmp_path / "src" / "damaged.jsonl")
    with pytest.raises(SourceError, match=f"{len(bad) - 5} more"):
        shardkit.convert(path, tmp_path / "out", workers=1, progress=False, strict=True)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def _snapshot(root) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.is_symlink(), p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(Path(root).rglob("*"))}


def test_conversion_writes_only_inside_dst(tmp_path, monkeypatch):
    """SRC, DST's siblings and the temporary directory are left as they were; DST holds only the
    shards and the manifest (no temporary or lock file left behind)."""
    root, _, _ = corpus.make_damaged_image_tree(tmp_path / "src" / "images")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)
    before = _snapshot(tmp_path)
    manifest = shardkit.convert(root, tmp_path / "out" / "dst", workers=1, progress=False)
    after = _snapshot(tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed <= {"out", "out/dst"} | {f"out/dst/{n}" for n in [MANIFEST_NAME] + [f for s in manifest.shards for f in s.files]}
