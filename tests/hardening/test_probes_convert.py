"""Probes of the converter (issue 15): what it may write and remove, what it reads as which kind,
and what it must never lose. Each case is a bad input a probe of a fresh clone found; the
conversion either does the right thing or fails with a clear error that names the culprit, and
nothing outside DST (nor anything in DST that shardkit did not write) is ever touched."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

import datagen
import shardkit
from datagen import dst_files
from shardkit.convert import api
from shardkit.convert.names import record_name, source_bytes
from shardkit.convert.output import PARTIAL
from shardkit.errors import DestinationError, SourceError
from shardkit.format.records import split_name
from shardkit.format.schema import META_FIELD as META_EXT
from shardkit.format.tar import read_members


def tree_state(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (links not followed): a file's bytes, a link's target, or "dir"."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            state[rel] = (f"-> {os.readlink(path)}" if path.is_symlink() else
                          "dir" if path.is_dir() else path.read_bytes())
    return state


def samples(dst: Path) -> list[dict[str, bytes]]:
    """Every sample of a converted DST, as ``{ext: bytes}``, in shard order."""
    doc = json.loads((dst / "manifest.json").read_text())
    out: dict[str, dict[str, bytes]] = {}
    for shard in doc["shards"]:
        for member in read_members((dst / shard["name"]).read_bytes(), shard["name"]):
            key, ext = split_name(member.name)
            out.setdefault(key, {})[ext] = member.data
    return list(out.values())


@pytest.fixture
def src(tmp_path):
    return datagen.make_jpeg_tree(tmp_path / "src", classes=2, per_class=3)


# --- D1: a link out of DST ------------------------------------------------------------------------

PARTIAL_CASES = {
    "partial is a link to a directory": lambda dst, victim: (dst / PARTIAL).symlink_to(victim),
    "partial is a link to a file": lambda dst, victim: (dst / PARTIAL).symlink_to(victim / "a.txt"),
    "partial is a file": lambda dst, victim: (dst / PARTIAL).write_text("mine"),
    "lock is a link": lambda dst, victim: ((dst / PARTIAL).mkdir(), (dst / PARTIAL / "lock").symlink_to(victim / "a.txt")),
    "plan is a link": lambda dst, victim: ((dst / PARTIAL).mkdir(),
                                           (dst / PARTIAL / "plan.json").symlink_to(victim / "plan.json")),
    "partial holds a directory": lambda dst, victim: (dst / PARTIAL / "shard-000001.json" / "x").mkdir(parents=True),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("case", PARTIAL_CASES)
def test_a_partial_directory_that_is_not_shardkits_is_refused_and_nothing_is_followed(src, tmp_path, case, overwrite):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "a.txt").write_text("v")
    (victim / "plan.json").write_text('{"digest": "x"}')
    (victim / ".shard-000000.tar.tmp-1-0123abcd").write_text("a name shardkit cleans up")
    (victim / "sub" / "n").write_text("deep")
    dst = tmp_path / "dst"
    dst.mkdir()
    PARTIAL_CASES[case](dst, victim)
    before, before_dst = tree_state(victim), tree_state(dst)
    with pytest.raises(DestinationError, match=r"\.shardkit-partial.* (is a symbolic link|is a regular file|"
                                               r"is a directory)"):
        shardkit.convert(src, dst, workers=1, overwrite=overwrite)
    assert tree_state(victim) == before
    assert tree_state(dst) == before_dst


# --- D2: what --overwrite may remove ----------------------------------------------------------------

def _dir_named_like_a_shard(dst: Path, src: Path) -> str:
    (dst / "shard-000007.tar" / "deep").mkdir(parents=True)
    (dst / "shard-000007.tar" / "deep" / "n").write_text("x")
    return "shard-000007.tar"


def _foreign_manifest(dst: Path, src: Path) -> str:
    dst.mkdir()
    (dst / "manifest.json").write_text("{}")
    return "manifest.json"


def _manifest_not_json(dst: Path, src: Path) -> str:
    dst.mkdir()
    (dst / "manifest.json").write_text("my notes, not JSON")
    return "manifest.json"


def _unnamed_shard_beside_a_dataset(dst: Path, src: Path) -> str:
    shardkit.convert(src, dst, workers=1, max_shard_samples=3)
    (dst / "shard-000007.tar").write_bytes(b"\0" * 1024)
    return "shard-000007.tar"


def _named_shard_is_a_link_to_a_directory(dst: Path, src: Path) -> str:
    shardkit.convert(src, dst, workers=1, max_shard_samples=3)
    (dst.parent / "elsewhere").mkdir()
    (dst.parent / "elsewhere" / "keep").write_text("k")
    (dst / "shard-000001.tar").unlink()
    (dst / "shard-000001.tar").symlink_to(dst.parent / "elsewhere")
    return "shard-000001.tar"


def _named_manifest_is_a_link(dst: Path, src: Path) -> str:
    shardkit.convert(src, dst, workers=1, max_shard_samples=3)
    (dst.parent / "manifest-copy.json").write_bytes((dst / "manifest.json").read_bytes())
    (dst / "manifest.json").unlink()
    (dst / "manifest.json").symlink_to(dst.parent / "manifest-copy.json")
    return "manifest.json"


IN_THE_WAY = {"a directory named like a shard": _dir_named_like_a_shard, "a manifest that is not shardkit's":
              _foreign_manifest, "a manifest that is not JSON": _manifest_not_json,
              "a shard no manifest names": _unnamed_shard_beside_a_dataset,
              "a named shard that is a link to a directory": _named_shard_is_a_link_to_a_directory,
              "a manifest that is a link": _named_manifest_is_a_link}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("case", IN_THE_WAY)
def test_overwrite_removes_only_regular_files_a_shardkit_manifest_names(src, tmp_path, case, overwrite):
    dst = tmp_path / "proj"
    culprit = IN_THE_WAY[case](dst, src)
    before, outside = tree_state(dst), tree_state(tmp_path / "elsewhere") if (tmp_path / "elsewhere").exists() else {}
    with pytest.raises(DestinationError) as info:
        shardkit.convert(src, dst, workers=1, seed=4, overwrite=overwrite)
    message = str(info.value)
    if overwrite or not (dst / "shard-000000.tar").exists():
        assert culprit in message
    else:  # beside a dataset of shardkit's, that dataset is what is in the way of a plain run
        assert "holds another dataset (its manifest.json records other sources or parameters); pass --overwrite" \
            in message
    assert tree_state(dst) == before
    if outside:
        assert tree_state(tmp_path / "elsewhere") == outside


def test_an_unusable_manifest_is_not_said_to_record_other_sources(src, tmp_path):
    _foreign_manifest(tmp_path / "proj", src)
    with pytest.raises(DestinationError, match="is not a shardkit manifest") as info:
        shardkit.convert(src, tmp_path / "proj", workers=1)
    assert "other sources" not in str(info.value)


def test_overwrite_removes_the_old_manifest_before_any_of_its_shards(src, tmp_path, monkeypatch):
    """A reader that starts while the old shards go (or the new ones come) must not find the old
    manifest: it is the first thing removed."""
    from shardkit import storage

    dst = tmp_path / "out"
    shardkit.convert(src, dst, workers=1, max_shard_samples=2)
    old = {p.name for p in dst.glob("shard-*")}  # the shards and their indexes
    remove, publish, seen = storage.remove, storage.publish, []

    def removing(path, *args, **kwargs):
        if Path(path).parent == dst:
            seen.append((Path(path).name, (dst / "manifest.json").exists()))
        return remove(path, *args, **kwargs)

    def publishing(tmp, dest, *args, **kwargs):
        if str(dest).endswith(".tar"):
            seen.append(("publish", (dst / "manifest.json").exists()))
        return publish(tmp, dest, *args, **kwargs)

    monkeypatch.setattr(storage, "remove", removing)
    monkeypatch.setattr(storage, "publish", publishing)
    manifest = shardkit.convert(src, dst, workers=1, max_shard_samples=4, seed=9, overwrite=True)
    assert seen[0] == ("manifest.json", True)
    assert {name for name, _ in seen[1:] if name != "publish"} == old
    assert not any(exists for _, exists in seen[1:])
    assert {p.name for p in dst.iterdir()} == {"manifest.json"} | {f for s in manifest.shards for f in s.files}


def test_an_overwrite_killed_after_removing_the_manifest_can_be_run_again(src, tmp_path, monkeypatch):
    """The old manifest is kept in the partial directory until its shards are gone, so a run killed
    in between still knows which files were shardkit's."""
    from shardkit.convert.output import Destination

    dst = tmp_path / "out"
    shardkit.convert(src, dst, workers=1, max_shard_samples=2)
    remove = Destination._remove

    def killed(self, path):
        if str(path).endswith("shard-000001.tar"):
            raise KeyboardInterrupt  # after the manifest and shard 0 went
        return remove(self, path)

    monkeypatch.setattr(Destination, "_remove", killed)
    with pytest.raises(KeyboardInterrupt):
        shardkit.convert(src, dst, workers=1, seed=3, overwrite=True)
    monkeypatch.undo()
    assert not (dst / "manifest.json").exists() and (dst / "shard-000001.tar").exists()
    shardkit.convert(src, dst, workers=1, seed=3, overwrite=True)
    shardkit.convert(src, tmp_path / "fresh", workers=1, seed=3)
    assert dst_files(dst) == dst_files(tmp_path / "fresh")


# --- D3 and M2: which kind, and what is left out ----------------------------------------------------

def _jsonl_files(root: Path, files: int = 5, lines: int = 10) -> None:
    for f in range(files):
        datagen.write_jsonl(root / f"part-{f}.jsonl", [([f, i, i + 1], i % 3) for i in range(lines)])


def test_mixed_sources_are_an_error_naming_what_was_found(tmp_path):
    root = tmp_path / "mixed"
    _jsonl_files(root)
    datagen.write_image(root / "img" / "one.jpg", "RGB", "JPEG", np.random.default_rng(0))
    with pytest.raises(SourceError, match=r"both an ImageFolder tree \(1 image files in 1 class folders: "
                                          r"img/one\.jpg\) and 5 sequence files \(part-0\.jsonl.*--kind"):
        shardkit.convert(root, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()
    sequences = shardkit.convert(root, tmp_path / "seq", kind="sequences", workers=1)
    assert sequences.samples == 50 and sequences.source["ignored"] == 1
    images = shardkit.convert(root, tmp_path / "img", kind="images", workers=1)
    assert images.samples == 1 and images.source["ignored"] == 5


def test_what_a_kind_ignores_is_counted_and_reported(tmp_path, cli):
    root = tmp_path / "mixed"
    _jsonl_files(root, files=2)
    datagen.write_image(root / "img" / "one.jpg", "RGB", "JPEG", np.random.default_rng(0))
    done = cli("convert", root, tmp_path / "out", "--kind", "images", "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "ignored 2 files that are no image" in done.stderr and "part-0.jsonl, part-1.jsonl" in done.stderr
    assert "1 samples, 1 shards" in done.stdout and "0 skipped, 2 ignored" in done.stdout


@pytest.mark.parametrize("beside", ["README.txt", "cat/notes.txt", "labels.txt"])
def test_prose_beside_an_imagefolder_does_not_make_it_ambiguous(tmp_path, beside):
    root = datagen.make_jpeg_tree(tmp_path / "tree", classes=2, per_class=2)
    (root / beside).parent.mkdir(exist_ok=True)
    (root / beside).write_text("cat\ndog\n" if beside == "labels.txt" else "A dataset of two classes.\n")
    manifest = shardkit.convert(root, tmp_path / "out", workers=1)
    assert manifest.kind == "images" and manifest.samples == 4 and manifest.source["ignored"] == 1


def test_token_id_text_beside_an_imagefolder_is_ambiguous(tmp_path):
    root = datagen.make_jpeg_tree(tmp_path / "tree", classes=2, per_class=2)
    datagen.write_txt(root / "tokens.txt", [([1, 2, 3], None)])
    with pytest.raises(SourceError, match=r"both an ImageFolder tree .* 1 sequence files \(tokens\.txt\)"):
        shardkit.convert(root, tmp_path / "out", workers=1)


@pytest.mark.parametrize("kind, match", [
    (None, r"neither an ImageFolder tree .* found 2 other files \(a/readme\.txt, b/readme\.txt; a \.txt file "
           r"counts only when its first line is token ids\)"),
    ("sequences", r"found no sample to convert .*read as sequences.*4 input\(s\) skipped: a/readme\.txt:1: not a "
                  r"non-negative integer"),
])
def test_class_folders_of_readmes_are_an_error_saying_what_was_found(tmp_path, kind, match):
    root = tmp_path / "tree"
    for name in "ab":
        (root / name).mkdir(parents=True)
        (root / name / "readme.txt").write_text(f"Class {name}\nphotos of {name}\n")
    with pytest.raises(SourceError, match=match):
        shardkit.convert(root, tmp_path / "out", kind=kind, workers=1)
    assert not (tmp_path / "out").exists()


def test_a_conversion_in_which_every_image_is_bad_is_an_error(tmp_path):
    root = tmp_path / "bad"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match=r"found no sample .*read as images.*2 input\(s\) skipped: a/x\.jpg: not an "
                                          r"image"):
        shardkit.convert(root, tmp_path / "out", workers=2)
    assert not (tmp_path / "out").exists()


# --- D4, C3: what an unprivileged user cannot read ---------------------------------------------------

def test_an_unreadable_directory_of_sequences_is_an_error_not_a_silent_half(open_tmp, as_nobody):
    src = open_tmp / "seq"
    datagen.write_jsonl(src / "a.jsonl", [([1, 2, 3], None)] * 50)
    datagen.write_jsonl(src / "sub" / "b.jsonl", [([4, 5], None)] * 50)
    (src / "sub").chmod(0)
    done = as_nobody("convert", src, open_tmp / "out", "--workers", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot list the directory sub" in done.stderr and "Permission denied" in done.stderr
    assert "Traceback" not in done.stderr and not (open_tmp / "out" / "manifest.json").exists()


def test_an_unreadable_class_subfolder_is_reported_in_skipped(open_tmp, as_nobody):
    root = datagen.make_jpeg_tree(open_tmp / "tree", classes=2, per_class=2)
    datagen.write_image(root / "class00" / "sub" / "hidden.jpg", "RGB", "JPEG", np.random.default_rng(1))
    (root / "class00" / "sub").chmod(0)
    done = as_nobody("convert", root, open_tmp / "out", "--workers", "2")
    assert done.returncode == 0, done.stderr
    doc = json.loads((open_tmp / "out" / "manifest.json").read_text())
    assert doc["samples"] == 4
    assert doc["skipped"] == [{"path": "class00/sub", "reason": "cannot list directory: Permission denied"}]


# --- D5: token ids that a stream cannot hand out ------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_token_ids_that_do_not_fit_int64_are_skipped_per_line(tmp_path, fmt):
    from shardkit.stream.dataset import StreamingDataset

    rows = [[1, 2], [2**63 - 1, 0], [2**63], [5, 2**64 - 1], [7]]
    path = tmp_path / f"ids.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"tokens": r}) + "\n" for r in rows))
    else:
        path.write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    manifest = shardkit.convert(path, tmp_path / "out", workers=1, shuffle=False)
    assert manifest.samples == 3
    assert [(e["line"], e["reason"].split(" exceeds ")[1]) for e in manifest.skipped] == [
        (3, "2**63-1, the largest id an int64 tensor holds"), (4, "2**63-1, the largest id an int64 tensor holds")]
    streamed = [tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
                for tokens, _ in StreamingDataset(tmp_path / "out", shuffle=False)]
    assert streamed == [[1, 2], [2**63 - 1, 0], [7]]


# --- D6 and C2: names that are not UTF-8 --------------------------------------------------------------

def test_names_that_are_not_utf8_are_converted_and_recorded_reversibly(tmp_path):
    root = os.fsencode(tmp_path / "tree")
    rng = np.random.default_rng(2)
    names = [b"ok/\xff\xfe.jpg", b"ok/back\\slash.jpg", b"ok/caf\xc3\xa9.jpg", b"c\xfe/a.jpg", b"c\xfe/\\xfe.jpg"]
    for name in names:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(datagen.encode_image("RGB", "JPEG", rng))
    os.makedirs(os.path.join(root, b"c\xfe", b"broken"))
    with open(os.path.join(root, b"c\xfe", b"broken", b"\xe9t\xe9.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    manifest = shardkit.convert(os.fsdecode(root), tmp_path / "out", workers=2)
    theirs = ImageFolder(os.fsdecode(root))
    assert manifest.samples == len(names) == len(theirs.samples) - 1
    text = (tmp_path / "out" / "manifest.json").read_bytes().decode("utf-8")  # valid UTF-8 JSON
    doc = json.loads(text)
    assert [source_bytes(c) for c in doc["classes"]] == [os.fsencode(c) for c in theirs.classes]
    assert doc["classes"] == ["c\\xfe", "ok"]
    assert [(source_bytes(e["path"]), e["reason"]) for e in doc["skipped"]] == [
        (b"c\xfe/broken/\xe9t\xe9.jpg", "not an image PIL can identify")]
    expected = {os.path.relpath(os.fsencode(p), root): (label, open(p, "rb").read()) for p, label in theirs.samples}
    got = {}
    for sample in samples(tmp_path / "out"):
        meta = json.loads(sample[META_EXT])
        got[source_bytes(meta["path"])] = (int(sample["cls"]), sample["jpg"])
        assert source_bytes(meta["class"]) == os.fsencode(theirs.classes[int(sample["cls"])])
    del expected[b"c\xfe/broken/\xe9t\xe9.jpg"]
    assert got == expected


@pytest.mark.parametrize("raw", [b"plain.jpg", b"caf\xc3\xa9", b"\xff\xfe", b"a\\b", b"\\x41", b"\\\\xz", b"\xed\xb2\x80"])
def test_the_name_escape_round_trips(raw):
    name = record_name(raw)
    assert source_bytes(name) == raw
    name.encode("utf-8")  # always valid UTF-8


# --- D7: edits that keep the size -----------------------------------------------------------------

def _fix_line_in_place(path: Path, keep_mtime: bool) -> None:
    st = path.stat()
    text = path.read_text()
    assert '{"tokens": [9, "x"]}' in text
    path.write_text(text.replace('{"tokens": [9, "x"]}', '{"tokens": [9, 99]} '))
    assert path.stat().st_size == st.st_size
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("lines, keep_mtime, checksum", [
    (5, False, False),      # the edit shows in the modification time
    (5, True, False),       # a small file is hashed, so a restored time does not hide it
    (2000, True, True),     # a large one with a restored time: checksum_sources hashes it
], ids=["new-mtime", "small-file-restored-mtime", "large-file-restored-mtime-checksum"])
def test_a_same_size_edit_of_a_source_is_noticed(tmp_path, lines, keep_mtime, checksum):
    path = tmp_path / "src" / "data.jsonl"
    rows = [{"tokens": [i, i + 1]} for i in range(lines)]
    datagen.write_jsonl(path, [])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"tokens": [9, "x"]}\n')
    assert (path.stat().st_size > 4096) == (lines > 100)
    first = shardkit.convert(path, tmp_path / "out", workers=1, checksum_sources=checksum)
    assert first.samples == lines and len(first.skipped) == 1
    _fix_line_in_place(path, keep_mtime)
    with pytest.raises(DestinationError, match="records these options for sources that have changed since"):
        shardkit.convert(path, tmp_path / "out", workers=1, checksum_sources=checksum)
    again = shardkit.convert(path, tmp_path / "out", workers=1, checksum_sources=checksum, overwrite=True)
    assert again.samples == lines + 1 and again.skipped == []


def test_an_edit_between_an_interruption_and_the_resume_is_refused_not_mixed(tmp_path, monkeypatch):
    from shardkit import storage

    src = datagen.make_jpeg_tree(tmp_path / "src", classes=2, per_class=6)
    publish, published = storage.publish, []

    def interrupted(tmp, dest, *args, **kwargs):
        if str(dest).endswith(".tar"):
            published.append(dest)
            if len(published) == 2:
                raise KeyboardInterrupt
        return publish(tmp, dest, *args, **kwargs)

    monkeypatch.setattr(storage, "publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shardkit.convert(src, tmp_path / "out", workers=1, max_shard_samples=2)
    monkeypatch.undo()
    victim = src / "class01" / "img00003.jpg"
    data, st = bytearray(victim.read_bytes()), victim.stat()
    data[-10] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(data))
    with pytest.raises(DestinationError, match="unfinished conversion of these options whose sources have changed"):
        shardkit.convert(src, tmp_path / "out", workers=1, max_shard_samples=2)
    shardkit.convert(src, tmp_path / "out", workers=1, max_shard_samples=2, overwrite=True)
    shardkit.convert(src, tmp_path / "fresh", workers=1, max_shard_samples=2)
    assert dst_files(tmp_path / "out") == dst_files(tmp_path / "fresh")
    assert st.st_size == victim.stat().st_size


def test_a_copy_that_keeps_modification_times_gives_the_same_bytes(tmp_path):
    """The digest covers relative names, sizes and modification times: a copy elsewhere that keeps
    the times gives identical files for any worker count; one that does not differs only there."""
    datagen.make_jpeg_tree(tmp_path / "src", classes=2, per_class=4)
    datagen.write_jsonl(tmp_path / "seq" / "a.jsonl", datagen.random_sequences(40, seed=3))
    for a in ("src", "seq"):
        shutil.copytree(tmp_path / a, tmp_path / "elsewhere" / a)  # copies modification times
        shutil.copytree(tmp_path / a, tmp_path / "new-times" / a, copy_function=shutil.copyfile)
        shardkit.convert(tmp_path / a, tmp_path / f"out-{a}", workers=1)
        shardkit.convert(tmp_path / "elsewhere" / a, tmp_path / f"out-{a}-copy", workers=2)
        assert dst_files(tmp_path / f"out-{a}") == dst_files(tmp_path / f"out-{a}-copy")
        shardkit.convert(tmp_path / "new-times" / a, tmp_path / f"out-{a}-new-times", workers=1)
        ours, theirs = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in (f"out-{a}",
                                                                                           f"out-{a}-new-times"))
        assert ours.pop("source")["digest"] != theirs.pop("source")["digest"] and ours == theirs


# --- D8: directory links ---------------------------------------------------------------------------

def test_directory_links_are_followed_once_and_the_rest_reported(tmp_path):
    root = datagen.make_jpeg_tree(tmp_path / "tree", classes=3, per_class=2)
    outside = datagen.make_jpeg_tree(tmp_path / "outside", classes=1, per_class=1)
    (root / "class00" / "loop").symlink_to("..")                    # the tree itself
    (root / "class00" / "self").symlink_to(".")                     # its own folder
    (root / "class00" / "alias").symlink_to("../class02")           # another class
    (root / "class01" / "ext").symlink_to(outside / "class00")      # outside the tree: followed once
    (root / "class02" / "ext-again").symlink_to(outside / "class00")
    (root / "class03").symlink_to("class01")                        # a class that is another class
    listed = {}
    manifest = shardkit.convert(root, tmp_path / "out", workers=1)
    for sample in samples(tmp_path / "out"):
        meta = json.loads(sample[META_EXT])
        assert meta["path"] not in listed
        listed[meta["path"]] = meta["class"]
    real = {str(p.relative_to(root)): p.parent.name for p in root.glob("class0[012]/*.jpg")}
    assert listed == real | {"class01/ext/img00000.jpg": "class01"}
    assert manifest.classes == ["class00", "class01", "class02", "class03"]
    assert {e["path"]: e["reason"].split(" (")[0] for e in manifest.skipped} == dict.fromkeys(
        ["class00/alias", "class00/loop", "class00/self", "class02/ext-again", "class03"],
        "a link to a directory already listed")


def test_a_link_loop_in_a_directory_of_sequences_adds_nothing(tmp_path):
    datagen.write_jsonl(tmp_path / "seq" / "a" / "x.jsonl", [([1, 2], None)] * 3)
    (tmp_path / "seq" / "a" / "up").symlink_to("..")
    manifest = shardkit.convert(tmp_path / "seq", tmp_path / "out", workers=1)
    assert manifest.samples == 3
    assert [e["path"] for e in manifest.skipped] == ["a/up"]


# --- M5 and the failures that must leave nothing behind ------------------------------------------------

@pytest.mark.parametrize("kind, count", [("images", 5), ("sequences", 1)])
def test_workers_are_capped_at_the_number_of_tasks(tmp_path, monkeypatch, kind, count):
    started = []

    class Counting(api.WorkerPool):
        def __init__(self, workers):
            started.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(api, "WorkerPool", Counting)
    if kind == "images":
        src = datagen.make_jpeg_tree(tmp_path / "src", classes=1, per_class=count)
        manifest = shardkit.convert(src, tmp_path / "out", workers=1000, max_shard_samples=1)
    else:
        src = datagen.write_jsonl(tmp_path / "s.jsonl", [([1, 2], None)] * 30)
        manifest = shardkit.convert(src, tmp_path / "out", workers=1000)
    assert manifest.samples == (count if kind == "images" else 30)
    assert started == [count]


@pytest.mark.parametrize("failure", ["strict", "no sample", "interrupted before a shard"])
def test_a_conversion_that_fails_before_finishing_a_shard_leaves_nothing_behind(tmp_path, monkeypatch, failure):
    from shardkit import storage

    root = datagen.make_jpeg_tree(tmp_path / "src", classes=2, per_class=2)
    (root / "class00" / "bad.jpg").write_bytes(b"" if failure != "no sample" else b"x")
    if failure == "no sample":
        for p in root.glob("*/img*.jpg"):
            p.write_bytes(b"x")
    elif failure == "interrupted before a shard":
        publish = storage.publish

        def interrupted(tmp, dest, *args, **kwargs):
            if str(dest).endswith("shard-000000.json"):  # the first shard's record: nothing finished yet
                raise KeyboardInterrupt
            return publish(tmp, dest, *args, **kwargs)

        monkeypatch.setattr(storage, "publish", interrupted)
    with pytest.raises((SourceError, KeyboardInterrupt)):
        shardkit.convert(root, tmp_path / "out", workers=1, strict=failure == "strict")
    monkeypatch.undo()
    assert not (tmp_path / "out").exists()
    if failure == "no sample":
        datagen.make_jpeg_tree(root, classes=2, per_class=2)  # the corrected source
    manifest = shardkit.convert(root, tmp_path / "out", workers=1, seed=1)  # other options: no --overwrite needed
    assert manifest.samples == 4


def test_a_source_file_that_is_a_fifo_is_an_error_not_a_hang(tmp_path):
    datagen.write_jsonl(tmp_path / "seq" / "a.jsonl", [([1], None)])
    os.mkfifo(tmp_path / "seq" / "b.jsonl")
    with pytest.raises(SourceError, match=r"the sequence file b\.jsonl .* is not a regular file"):
        shardkit.convert(tmp_path / "seq", tmp_path / "out", workers=1)
    assert stat.S_ISFIFO(os.stat(tmp_path / "seq" / "b.jsonl").st_mode)
