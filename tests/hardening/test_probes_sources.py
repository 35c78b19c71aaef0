"""Probes of the new input kinds (issue 15's last line, for issue 12's tables, arrays and tars): the
bad inputs a hostile or careless user gives. Each gets a clear error naming the culprit, or a
reported skip naming the file and row (or shard and member); nothing valid is lost, and nothing
outside the table's root is ever read into a shard."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))

import datagen  # noqa: E402
import shardkit  # noqa: E402
from shardkit.convert import table_scan, tables  # noqa: E402
from shardkit.errors import MissingExtraError, SourceError  # noqa: E402
from table_helpers import caption_rows, features, write_table  # noqa: E402


def skipped_reasons(manifest) -> dict:
    return {(e["path"], e.get("line", e.get("row")), e.get("member")): e["reason"] for e in manifest.skipped}


# --- tables: image paths -----------------------------------------------------------------------

@pytest.fixture
def table_root(tmp_path):
    """A table's root with two good images, and a secret image outside it."""
    rows = caption_rows(tmp_path / "root", 2)
    datagen.write_image(tmp_path / "secret.jpg", "RGB", "JPEG", np.random.default_rng(9))
    os.symlink(tmp_path / "secret.jpg", tmp_path / "root" / "imgs" / "link-out.jpg")
    os.symlink(tmp_path / "root" / "imgs" / "000.jpg", tmp_path / "root" / "imgs" / "link-in.jpg")
    (tmp_path / "root" / "imgs" / "dir.jpg").mkdir()
    os.mkfifo(tmp_path / "root" / "imgs" / "fifo.jpg")
    return tmp_path / "root", rows


HOSTILE_PATHS = {
    "absolute path outside": (lambda root: str(root.parent / "secret.jpg"), "an absolute path that leads out of the root"),
    "dot-dot": (lambda root: "../secret.jpg", "a path with '..' that leads out of the root"),
    "deep dot-dot": (lambda root: "imgs/../../secret.jpg", "a path with '..' that leads out of the root"),
    "link out of the tree": (lambda root: "imgs/link-out.jpg", "a link that leads out of the root"),
    "missing": (lambda root: "imgs/none.jpg", "cannot read: No such file or directory"),
    "a directory": (lambda root: "imgs/dir.jpg", "not a regular file"),
    "a fifo": (lambda root: "imgs/fifo.jpg", "not a regular file"),
    "NUL in the path": (lambda root: "imgs/a\0b.jpg", "a path with a NUL character"),
    "unknown protocol": (lambda root: "foo://bucket/x.jpg", "cannot read"),
    "empty": (lambda root: "   ", "no image path in column 'path'"),
}


@pytest.mark.parametrize("case", HOSTILE_PATHS)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_hostile_image_path_is_a_reported_skip_and_nothing_outside_is_read(table_root, case, fmt):
    root, rows = table_root
    path_of, reason = HOSTILE_PATHS[case]
    bad = {"path": path_of(root), "caption": "bad", "label": 1, "score": 0.5}
    ok = {"path": "imgs/link-in.jpg", "caption": "a link inside the root is followed", "label": 0, "score": 0.0}
    table = write_table(root / f"t.{fmt}", rows + [bad, ok], fmt)
    manifest = shardkit.convert(table, root.parent / "out", image_field="path", workers=1)
    assert manifest.samples == 3, manifest.skipped
    (entry,) = manifest.skipped
    assert entry["path"] == f"t.{fmt}" and reason in entry["reason"], entry
    secret = (root.parent / "secret.jpg").read_bytes()
    for shard in manifest.shards:
        assert secret not in (root.parent / "out" / shard.name).read_bytes()


def test_absolute_paths_inside_the_root_and_root_widens_it(table_root):
    root, rows = table_root
    rows = [dict(r, path=str(root / r["path"])) for r in rows]
    rows.append({"path": str(root.parent / "secret.jpg"), "caption": "outside", "label": 0, "score": 0.0})
    table = write_table(root / "abs.csv", rows, "csv")
    assert shardkit.convert(table, root.parent / "out", image_field="path", workers=1).samples == 2
    assert shardkit.convert(table, root.parent / "out2", image_field="path", workers=1, root=root.parent).samples == 3


# --- tables: cells, rows, files ----------------------------------------------------------------

def test_huge_cells_and_lines_are_reported_never_held(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "LINE_LIMIT", 1000)
    monkeypatch.setattr(table_scan, "LINE_LIMIT", 1000)
    (tmp_path / "t.csv").write_text("caption,n\nshort,1\n" + "x" * 5000 + ",2\n\"a \"\"quoted\"\"\nword\",3\nlast,4\n")
    (tmp_path / "u.csv").write_text("caption,n\nshort,1\n\"" + "y\n" * 600 + "\",3\nlast,4\n")
    (tmp_path / "t.jsonl").write_text('{"caption": "a"}\n{"caption": "' + "z" * 5000 + '"}\n{"caption": "b"}\n')
    manifest = shardkit.convert(tmp_path / "t.csv", tmp_path / "out", kind="table", workers=1)
    reasons = skipped_reasons(manifest)
    assert manifest.samples == 3 and list(reasons) == [("t.csv", 3, None)]
    assert "longer than 1000 bytes" in reasons[("t.csv", 3, None)]
    with pytest.raises(SourceError, match=r"u\.csv:3: a cell of more than 1000 bytes \(over several lines\)"):
        shardkit.convert(tmp_path / "u.csv", tmp_path / "out3", kind="table", workers=1)
    (tmp_path / "v.csv").write_text('caption,n\nok,1\n"open quote,2\nlast,3\n')
    manifest = shardkit.convert(tmp_path / "v.csv", tmp_path / "out4", kind="table", workers=1)
    assert manifest.samples == 1 and "unexpected end of data" in manifest.skipped[0]["reason"]  # reported, not lost
    manifest = shardkit.convert(tmp_path / "t.jsonl", tmp_path / "out2", kind="table", workers=1)
    assert manifest.samples == 2 and "longer than 1000 bytes" in skipped_reasons(manifest)[("t.jsonl", 2, None)]


def test_text_that_is_not_utf8_and_columns_that_cannot_be_fields(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"caption,n\nfine,1\nbad \xff\xfe,2\n")
    manifest = shardkit.convert(tmp_path / "t.csv", tmp_path / "out", kind="table", workers=1)
    assert manifest.samples == 1 and "column 'caption' is not UTF-8 text" in skipped_reasons(manifest)[("t.csv", 3, None)]
    (tmp_path / "u.csv").write_text("a/b,c\n1,2\n")
    with pytest.raises(SourceError, match=r"column 'a/b' cannot be a field name.*--fields"):
        shardkit.convert(tmp_path / "u.csv", tmp_path / "out2", kind="table", workers=1)
    assert shardkit.convert(tmp_path / "u.csv", tmp_path / "out2", kind="table", workers=1, fields="c").samples == 1
    (tmp_path / "v.csv").write_text("a,a\n1,2\n")
    with pytest.raises(SourceError, match="must name every column once"):
        shardkit.convert(tmp_path / "v.csv", tmp_path / "out3", kind="table", workers=1)


EMPTY = {
    "empty csv (table)": ("t.csv", b"", "table", "empty"),
    "header only (table)": ("t.csv", b"a,b\n", "table", "found no sample"),
    "empty csv (tabular)": ("t.csv", b"", "tabular", "empty CSV file"),
    "header only (tabular)": ("t.csv", b"a,label\n", "tabular", "found no sample"),
    "empty jsonl": ("t.jsonl", b"\n\n", "table", "found no sample"),
    "not a zip": ("d.npz", b"PK\x03\x04 not a zip", "tabular", "cannot read the .npz file"),
    "not a tar": ("a.tar", b"not a tar at all" * 100, "webdataset", "found no sample"),
    "an empty tar": ("a.tar", bytes(1024), "webdataset", "found no sample"),
}


@pytest.mark.parametrize("case", EMPTY)
def test_empty_and_unreadable_files_are_clear_errors(tmp_path, case):
    name, data, kind, message = EMPTY[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(SourceError, match=message):
        shardkit.convert(tmp_path / name, tmp_path / "out", kind=kind, workers=1)
    assert not (tmp_path / "out").exists()


def test_empty_arrays_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    np.savez(tmp_path / "d.npz", features=np.zeros((0, 3), np.float32), label=np.zeros(0, np.int64))
    pq.write_table(pa.table({"a": pa.array([], pa.string())}), tmp_path / "t.parquet")
    for src, kind in ((tmp_path / "d.npz", "tabular"), (tmp_path / "t.parquet", "table")):
        with pytest.raises(SourceError, match="found no sample"):
            shardkit.convert(src, tmp_path / "out", kind=kind, workers=1)


def test_a_table_file_that_is_a_fifo_is_an_error_naming_it(tmp_path):
    write_table(tmp_path / "src" / "a.csv", [{"caption": "x"}], "csv")
    os.mkfifo(tmp_path / "src" / "b.csv")
    with pytest.raises(SourceError, match=r"the table file b\.csv .* is not a regular file"):
        shardkit.convert(tmp_path / "src", tmp_path / "out", kind="table", workers=1)


def test_unreadable_tables_and_images_as_an_unprivileged_user(open_tmp, as_nobody):
    rows = caption_rows(open_tmp / "src", 3)
    write_table(open_tmp / "src" / "t.csv", rows, "csv")
    os.chmod(open_tmp / "src" / rows[1]["path"], 0o000)
    for folder, dirs, files in os.walk(open_tmp):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777)
    proc = as_nobody("convert", open_tmp / "src" / "t.csv", open_tmp / "out", "--image-field", "path")
    assert proc.returncode == 0, proc.stderr
    assert "2 samples" in proc.stdout and "1 skipped" in proc.stdout
    import json

    (entry,) = json.loads((open_tmp / "out" / "manifest.json").read_text())["skipped"]
    assert entry["path"] == "t.csv" and "Permission denied" in entry["reason"]
    os.chmod(open_tmp / "src" / "t.csv", 0o000)
    proc = as_nobody("convert", open_tmp / "src" / "t.csv", open_tmp / "out2", "--image-field", "path")
    assert proc.returncode == 2 and "is not readable" in proc.stderr and "Traceback" not in proc.stderr  # click's check
    proc = as_nobody("convert", open_tmp / "src", open_tmp / "out2", "--image-field", "path", "--kind", "table")
    assert proc.returncode == 1 and "cannot read the table file t.csv" in proc.stderr and "Traceback" not in proc.stderr


# --- arrays --------------------------------------------------------------------------------------

ARRAYS = {
    "labels of another length": (lambda d: (np.save(d / "X.npy", np.zeros((5, 2))), np.save(d / "y.npy", np.zeros(4))),
                                 "the labels are a float64 array of shape (4,)"),
    "3-D features": (lambda d: (np.save(d / "X.npy", np.zeros((5, 2, 2))), np.save(d / "y.npy", np.zeros(5))),
                     "shape (5, 2, 2); expected numbers, rows × features"),
    "objects": (lambda d: (np.save(d / "X.npy", np.array([[1, "a"]], object), allow_pickle=True),
                           np.save(d / "y.npy", np.zeros(1))), "cannot read the array X.npy"),
    "strings": (lambda d: (np.save(d / "X.npy", np.array([["a", "b"]])), np.save(d / "y.npy", np.zeros(1))),
                "the features are a <U1 array"),
}


@pytest.mark.parametrize("case", ARRAYS)
def test_arrays_that_cannot_be_features_are_errors_naming_them(tmp_path, case):
    make, message = ARRAYS[case]
    make(tmp_path)
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shardkit.convert(tmp_path / "X.npy", tmp_path / "out", labels=tmp_path / "y.npy", workers=1)


def test_labels_option_only_with_a_npy(tmp_path):
    x, y = features(4)
    np.savez(tmp_path / "d.npz", features=x, label=y)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(SourceError, match="--labels goes with a .npy of features"):
        shardkit.convert(tmp_path / "d.npz", tmp_path / "out", labels=tmp_path / "y.npy", workers=1)


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    write_table(tmp_path / "t.parquet", [{"caption": "x"}], "parquet")
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'shardkit\[parquet\]'"):
        shardkit.convert(tmp_path / "t.parquet", tmp_path / "out", kind="table", workers=1)


# --- tars ----------------------------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[str, bytes]], extra=None) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tf)


def test_a_truncated_tar_keeps_what_came_before(tmp_path):
    members = [(f"k{i}.txt", f"text {i}".encode()) for i in range(10)] + [(f"k{i}.cls", b"1") for i in range(0)]
    _tar(tmp_path / "a.tar", members)
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(data[:512 * 12 + 100])  # cut in the seventh member's header
    manifest = shardkit.convert(tmp_path / "a.tar", tmp_path / "out", workers=1, shuffle=False)
    assert manifest.samples == 6
    assert any(e["path"] == "a.tar" and "truncated" in e["reason"] for e in manifest.skipped), manifest.skipped


@pytest.mark.parametrize("hostile", ["symlink", "dotdot", "absolute"])
def test_hostile_tar_members_are_refused_and_reported(tmp_path, hostile):
    def extra(tf):
        if hostile == "symlink":
            info = tarfile.TarInfo("evil.txt")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        else:
            name = "../evil.txt" if hostile == "dotdot" else "/tmp/evil.txt"
            info = tarfile.TarInfo(name)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
    _tar(tmp_path / "a.tar", [("k0.txt", b"good"), ("k1.txt", b"fine")], extra)
    manifest = shardkit.convert(tmp_path / "a.tar", tmp_path / "out", workers=1)
    assert manifest.samples == 2 and manifest.skipped and all(e["path"] == "a.tar" for e in manifest.skipped)
    assert not (tmp_path / "evil.txt").exists()


def test_mixed_inputs_need_kind(tmp_path):
    _tar(tmp_path / "src" / "a.tar", [("k0.txt", b"x")]) if (tmp_path / "src").mkdir() is None else None
    write_table(tmp_path / "src" / "t.csv", [{"caption": "x"}], "csv")
    x, y = features(3)
    np.savez(tmp_path / "src" / "d.npz", features=x, label=y)
    with pytest.raises(SourceError, match=r"several kinds: 1 files read as table \(t\.csv\); 1 files read as tabular "
                                          r"\(d\.npz\); 1 files read as webdataset \(a\.tar\); pass --kind"):
        shardkit.convert(tmp_path / "src", tmp_path / "out", workers=1)
    manifest = shardkit.convert(tmp_path / "src", tmp_path / "out", kind="webdataset", workers=1)
    assert manifest.samples == 1 and manifest.source["ignored"] == 2  # the others: counted, reported
