"""Listing sources and parsing sequence lines: pure functions, no conversion."""

import os

import numpy as np
import pytest
import torchvision.datasets.folder as tv_folder
from torchvision.datasets import ImageFolder

import datagen
from shardkit.convert.sources import (IMG_EXTENSIONS, RecordError, detect_kind, list_images, list_sequences,
                                      parse_line)
from shardkit.errors import SourceError


def test_extensions_are_torchvisions():
    assert IMG_EXTENSIONS == tv_folder.IMG_EXTENSIONS


def _odd_tree(root):
    """Upper-case extensions, non-image files, nested folders, an empty class, a hidden class folder."""
    datagen.make_image_tree(root, empty_classes=("aaa_empty", "zzz_empty", ".hidden"))
    rng = np.random.default_rng(3)
    datagen.write_image(root / "cat" / "UPPER.PNG", "RGB", "PNG", rng)
    datagen.write_image(root / "dog" / "x" / "y" / "deep.jpeg", "RGB", "JPEG", rng)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("top-level files are not samples")
    return root


def test_listing_matches_imagefolder(tmp_path):
    root = _odd_tree(tmp_path / "tree")
    ours = list_images(str(root))
    theirs = ImageFolder(str(root), allow_empty=True)
    assert ours.classes == theirs.classes
    assert [(os.path.join(root, i.path), i.label) for i in ours.items] == theirs.samples
    assert ours.classes[:2] == [".hidden", "aaa_empty"]  # empty classes keep their index, as in torchvision
    assert {i.label for i in ours.items} == {2, 3, 5}
    assert all(i.size == os.path.getsize(os.path.join(root, i.path)) for i in ours.items)
    assert ours.skipped == []


def test_listing_reports_broken_links_and_survives_loops(tmp_path):
    root = datagen.make_image_tree(tmp_path / "tree")
    os.symlink(root / "missing.jpg", root / "cat" / "broken.jpg")
    os.symlink(root / "cat", root / "cat" / "sub" / "loop")  # a folder that contains itself
    os.mkfifo(root / "dog" / "pipe.png")
    listed = list_images(str(root))
    assert {e["path"]: e["reason"].split(":")[0].split(" (")[0] for e in listed.skipped} == {
        "cat/broken.jpg": "cannot read", "dog/pipe.png": "not a regular file",
        "cat/sub/loop": "a link to a directory already listed"}
    assert len(listed.items) == len(ImageFolder(str(root), allow_empty=True, is_valid_file=lambda p: (
        p.lower().endswith(IMG_EXTENSIONS) and "loop" not in p and os.path.isfile(p))).samples)


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "no class folder"),
    (lambda root: (root / "cat").mkdir(), "no image file"),
])
def test_listing_errors(tmp_path, make, message):
    root = tmp_path / "tree"
    root.mkdir()
    make(root)
    with pytest.raises(SourceError, match=message):
        list_images(str(root))


def test_sequence_listing(tmp_path):
    for rel in ("b/2.jsonl", "a.txt", "b/1.JSONL", "c/skip.csv"):
        datagen.write_jsonl(tmp_path / "seq" / rel, [([1, 2], 0)])
    root = str(tmp_path / "seq")
    assert [f.path for f in list_sequences(root).files] == ["a.txt", "b/1.JSONL", "b/2.jsonl"]
    assert [f.fmt for f in list_sequences(root).files] == ["txt", "jsonl", "jsonl"]
    assert [f.path for f in list_sequences(root + "/b/*.jsonl").files] == ["2.jsonl"]
    assert [f.path for f in list_sequences(root + "/**/*.jsonl").files] == ["b/2.jsonl"]
    assert [f.path for f in list_sequences(root + "/a.txt").files] == ["a.txt"]
    with pytest.raises(SourceError, match="must end in"):
        list_sequences(root + "/c/skip.csv")
    with pytest.raises(SourceError, match="found no sequence file"):
        list_sequences(root + "/*.parquet")


def test_detect_kind(tmp_path, image_tree, jsonl_file):
    assert detect_kind(str(image_tree)) == "images"
    assert detect_kind(str(jsonl_file)) == "sequences"
    assert detect_kind(str(jsonl_file.parent)) == "sequences"
    assert detect_kind(str(jsonl_file.parent / "*.jsonl")) == "sequences"
    (image_tree / "LICENSE.txt").write_text("a text file beside the classes does not make it sequences")
    assert detect_kind(str(image_tree)) == "images"
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    with pytest.raises(SourceError, match="--kind"):
        detect_kind(str(tmp_path / "nothing"))
    with pytest.raises(SourceError, match="no such file"):
        detect_kind(str(tmp_path / "absent"))


@pytest.mark.parametrize("line, fmt, tokens, label", [
    (b'{"tokens": [1, 2, 3], "label": 4}\n', "jsonl", [1, 2, 3], 4),
    (b'{"tokens": [0], "label": null}', "jsonl", [0], None),
    (b'{"tokens": [9223372036854775807]}\r\n', "jsonl", [2**63 - 1], None),
    (b'{"tokens": [5], "label": -7, "extra": "ignored"}', "jsonl", [5], -7),
    (b'\xef\xbb\xbf{"tokens": [9]}', "jsonl", [9], None),
    (b"1 2   3\t4\n", "txt", [1, 2, 3, 4], None),
    (b"  007 9223372036854775807 \r\n", "txt", [7, 2**63 - 1], None),
    (b"0" * 30 + b"9223372036854775807 " + b"0" * 5000, "txt", [2**63 - 1, 0], None),
])
def test_parse_line_valid(line, fmt, tokens, label):
    array, got_label = parse_line(line, fmt)
    assert array.dtype == np.uint64 and array.tolist() == tokens and got_label == label


@pytest.mark.parametrize("line, fmt, reason", [
    (b'{"tokens": [1, 2', "jsonl", "not valid JSON"),
    (b"\xff\xfe garbage", "jsonl", "not valid JSON"),
    (b"[" * 100_000, "jsonl", "not valid JSON"),
    (b"[1, 2]", "jsonl", "not a JSON object"),
    (b'{"ids": [1]}', "jsonl", "missing field 'tokens'"),
    (b'{"tokens": []}', "jsonl", "is empty"),
    (b'{"tokens": "1 2 3"}', "jsonl", "is a string"),
    (b'{"tokens": {"a": 1}}', "jsonl", "is a object"),
    (b'{"tokens": null}', "jsonl", "is a null"),
    (b'{"tokens": [1, 2.5]}', "jsonl", "non-integer (float"),
    (b'{"tokens": [1, 2.0]}', "jsonl", "non-integer (float"),
    (b'{"tokens": [true, 1]}', "jsonl", "non-integer (bool"),
    (b'{"tokens": [1, "2"]}', "jsonl", "non-integer (string"),
    (b'{"tokens": [1, [2]]}', "jsonl", "non-integer (list"),
    (b'{"tokens": [1, -3]}', "jsonl", "negative token id -3"),
    (b'{"tokens": [9223372036854775808]}', "jsonl", "exceeds 2**63-1"),
    (b'{"tokens": [18446744073709551615]}', "jsonl", "exceeds 2**63-1"),
    (b'{"tokens": [18446744073709551616]}', "jsonl", "exceeds 2**63-1"),
    (b'{"tokens": [1], "label": "cat"}', "jsonl", "'label' is a string"),
    (b'{"tokens": [1], "label": 1.0}', "jsonl", "'label' is a float"),
    (b'{"tokens": [1], "label": true}', "jsonl", "'label' is a bool"),
    (b'{"tokens": [1], "label": 9223372036854775808}', "jsonl", "does not fit"),
    (b'{"tokens": [NaN]}', "jsonl", "non-integer (float"),
    (b"1 2 -3", "txt", "negative token id -3"),
    (b"1 2.5", "txt", "not a non-negative integer"),
    (b"1 +2", "txt", "not a non-negative integer"),
    (b"1 x", "txt", "not a non-negative integer"),
    (b"9223372036854775808", "txt", "exceeds 2**63-1"),
    (b"18446744073709551615", "txt", "exceeds 2**63-1"),
    (b"1" * 30, "txt", "exceeds 2**63-1"),
    (b"   \n", "txt", "empty line"),
])
def test_parse_line_invalid(line, fmt, reason):
    with pytest.raises(RecordError, match=reason.replace("(", r"\(").replace("*", r"\*")) as info:
        parse_line(line, fmt)
    assert isinstance(info.value, ValueError) and info.value.reason == str(info.value)


def test_parse_line_custom_fields():
    tokens, label = parse_line(b'{"ids": [3, 4], "y": 2, "tokens": "ignored"}', "jsonl", "ids", "y")
    assert tokens.tolist() == [3, 4] and label == 2
