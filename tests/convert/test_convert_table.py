"""Image + caption tables end to end (CSV, JSONL, Parquet): every row round-trips (images byte for
byte, captions, labels, other values), bad rows and images reported with file and row, --fields,
--root, the all-skipped error, the same bytes for any worker count."""

import io
import json
import os

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import datagen
import shardkit
from convert_helpers import manifest_doc, samples_by_key
from datagen import dst_files
from shardkit.errors import SourceError
from table_helpers import TABLE_FORMATS, caption_rows, write_table


def by_caption(dst):
    """Every sample read back by StreamingDataset (decode=False: image bytes), keyed by caption."""
    return {s["caption.txt"]: s for s in shardkit.StreamingDataset(dst, shuffle=False, decode=False)}


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_every_row_round_trips(tmp_path, fmt):
    rows = caption_rows(tmp_path / "src", 12)
    table = write_table(tmp_path / "src" / f"pairs.{fmt}", rows, fmt)
    manifest = shardkit.convert(table, tmp_path / "out", workers=2, image_field="path", max_shard_samples=5)
    assert manifest.kind == "samples" and manifest.samples == 12 and len(manifest.shards) == 3
    assert not manifest.skipped
    got = by_caption(tmp_path / "out")
    assert len(got) == 12
    for row in rows:
        sample = got[row["caption"]]
        ext = "png" if row["path"].endswith(".png") else "jpg"
        assert sample[f"path.{ext}"] == (tmp_path / "src" / row["path"]).read_bytes()  # byte for byte
        assert sample["label.cls"] == row["label"] and sample["score.json"] == row["score"]
    names = {f["name"]: f for f in manifest_doc(tmp_path / "out")["schema"]["fields"]}
    assert names["caption.txt"]["codec"] == "txt" and names["label.cls"]["codec"] == "cls"
    assert names["score.json"]["codec"] == "json" and names["path.jpg"]["codec"] == "image"
    assert manifest.stats["columns"] == {"caption": "caption.txt", "label": "label.cls", "score": "score.json"}
    # webdataset reads the same shards: one sample per row, its fields as members
    samples = list(wds.WebDataset([str(tmp_path / "out" / s.name) for s in manifest.shards], shardshuffle=False))
    assert sorted(s["caption.txt"].decode() for s in samples) == sorted(r["caption"] for r in rows)


def test_stream_decodes_images_and_collates(tmp_path):
    rows = caption_rows(tmp_path / "src", 8)
    write_table(tmp_path / "src" / "t.csv", rows, "csv")
    shardkit.convert(tmp_path / "src" / "t.csv", tmp_path / "out", workers=1, image_field="path")
    dataset = shardkit.StreamingDataset(tmp_path / "out", shuffle=False)
    for sample in dataset:
        image = sample.get("path.jpg", sample.get("path.png"))
        row = next(r for r in rows if r["caption"] == sample["caption.txt"])
        reference = np.asarray(Image.open(tmp_path / "src" / row["path"]).convert("RGB"))
        assert tuple(image.shape) == (3, *reference.shape[:2])


def test_values_by_type_in_parquet_and_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [1, 2, 3], "tags": [["a"], [], ["b", "c"]], "meta": [{"w": 1}, {"w": 2}, {"w": 3}],
                      "blob": [b"\x00\x01", b"", b"\xff"], "flag": [True, False, None], "note": ["x", None, "z"]})
    pq.write_table(table, tmp_path / "t.parquet")
    manifest = shardkit.convert(tmp_path / "t.parquet", tmp_path / "out", kind="table", workers=1, shuffle=False)
    assert manifest.stats["columns"] == {"id": "id.json", "tags": "tags.json", "meta": "meta.json", "blob": "blob.bin",
                                         "flag": "flag.json", "note": "note.txt"}
    fields = {f.name: f for f in manifest.schema.fields}
    assert fields["flag.json"].optional and fields["note.txt"].optional and not fields["id.json"].optional
    got = list(shardkit.StreamingDataset(tmp_path / "out", shuffle=False))
    assert [s["id.json"] for s in got] == [1, 2, 3] and [s["tags.json"] for s in got] == [["a"], [], ["b", "c"]]
    assert [s["blob.bin"] for s in got] == [b"\x00\x01", b"", b"\xff"]
    assert [s.get("note.txt") for s in got] == ["x", None, "z"] and [s.get("flag.json") for s in got] == [True, False, None]


def test_fields_and_root(tmp_path):
    rows = caption_rows(tmp_path / "data", 6)
    write_table(tmp_path / "tables" / "t.jsonl", rows, "jsonl")
    with pytest.raises(SourceError, match=r"found no sample .*6 input\(s\) skipped.*cannot read"):
        shardkit.convert(tmp_path / "tables" / "t.jsonl", tmp_path / "out", image_field="path", workers=1)
    manifest = shardkit.convert(tmp_path / "tables" / "t.jsonl", tmp_path / "out", image_field="path", workers=1,
                                root=tmp_path / "data", fields="caption")
    assert manifest.samples == 6 and manifest.stats["columns"] == {"caption": "caption.txt"}
    assert {f.name for f in manifest.schema.fields} == {"path.jpg", "path.jpeg", "path.png", "path.webp", "caption.txt"}
    with pytest.raises(SourceError, match="no column 'nope'"):
        shardkit.convert(tmp_path / "tables" / "t.jsonl", tmp_path / "out2", image_field="path", workers=1,
                         root=tmp_path / "data", fields="caption,nope")


def test_missing_and_broken_images_and_bad_rows_are_reported_with_file_and_line(tmp_path):
    rows = caption_rows(tmp_path / "src", 4)
    (tmp_path / "src" / "imgs" / "broken.jpg").write_bytes((tmp_path / "src" / rows[0]["path"]).read_bytes()[:300])
    (tmp_path / "src" / "imgs" / "text.jpg").write_text("not an image")
    bad = [{"path": "imgs/missing.jpg", "caption": "m", "label": 1, "score": 0.0},
           {"path": "imgs/broken.jpg", "caption": "b", "label": 1, "score": 0.0},
           {"path": "imgs/text.jpg", "caption": "t", "label": 1, "score": 0.0},
           {"path": "", "caption": "e", "label": 1, "score": 0.0},
           {"path": rows[0]["path"], "caption": "l", "label": "cat", "score": 0.0}]
    write_table(tmp_path / "src" / "t.csv", rows + bad, "csv")
    with open(tmp_path / "src" / "t.csv", "a") as f:
        f.write("imgs/000.jpg,ragged\n")
    manifest = shardkit.convert(tmp_path / "src" / "t.csv", tmp_path / "out", image_field="path", workers=2)
    # the good rows' captions hold a newline (two lines each, lines 2-9); a row's line is where it starts
    reasons = {(e["path"], e["line"]): e["reason"] for e in manifest.skipped}
    assert set(reasons) == {("t.csv", line) for line in range(10, 16)}
    assert "imgs/missing.jpg: cannot read: No such file" in reasons[("t.csv", 10)]
    assert "imgs/broken.jpg: cannot decode" in reasons[("t.csv", 11)]
    assert "imgs/text.jpg: not an image" in reasons[("t.csv", 12)]
    assert "no image path in column 'path'" in reasons[("t.csv", 13)]
    assert "label 'cat' (column 'label') is not an integer" in reasons[("t.csv", 14)]
    assert "the row has 2 cells, the header 4" in reasons[("t.csv", 15)]
    assert manifest.samples == 4


def test_strict_and_nothing_valid(tmp_path):
    rows = caption_rows(tmp_path / "src", 3)
    write_table(tmp_path / "src" / "t.jsonl", rows + [{"path": "imgs/none.jpg", "caption": "x", "label": 0,
                                                       "score": 0.0}], "jsonl")
    with pytest.raises(SourceError, match=r"strict: 1 input\(s\) cannot be converted: t\.jsonl:4: image imgs/none"):
        shardkit.convert(tmp_path / "src" / "t.jsonl", tmp_path / "out", image_field="path", workers=1, strict=True)
    write_table(tmp_path / "src" / "bad.jsonl", [{"path": "imgs/none.jpg", "caption": "x"}], "jsonl")
    with pytest.raises(SourceError, match=r"found no sample .*read as table.*bad\.jsonl:1: image imgs/none"):
        shardkit.convert(tmp_path / "src" / "bad.jsonl", tmp_path / "out", image_field="path", workers=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_same_bytes_for_any_worker_count(tmp_path, fmt):
    rows = caption_rows(tmp_path / "src", 20)
    table = write_table(tmp_path / "src" / f"t.{fmt}", rows, fmt, row_group_size=3)
    shardkit.convert(table, tmp_path / "w1", image_field="path", workers=1, max_shard_samples=3)
    shardkit.convert(table, tmp_path / "w2", image_field="path", workers=2, max_shard_samples=3)
    assert dst_files(tmp_path / "w1") == dst_files(tmp_path / "w2")


def test_a_directory_of_tables_with_resized_images(tmp_path):
    rng = np.random.default_rng(1)
    for part in ("a", "b"):
        rows = []
        for i in range(3):
            datagen.write_image(tmp_path / "src" / part / f"{i}.png", "RGB", "PNG", rng, size=(80, 60))
            rows.append({"image": f"{i}.png", "caption": f"{part}{i}"})
        write_table(tmp_path / "src" / part / "t.csv", rows, "csv")
    manifest = shardkit.convert(tmp_path / "src", tmp_path / "out", image_field="image", resize=40, workers=1)
    assert manifest.samples == 6
    for group in samples_by_key(tmp_path / "out").values():
        assert max(Image.open(io.BytesIO(group["image.jpg"])).size) == 40
    assert json.loads(json.dumps(manifest.params))["image_field"] == "image"


def test_remote_table_and_images(tmp_path):
    """fsspec's in-memory filesystem as the store: the table and its images at a URL."""
    import fsspec

    rows = caption_rows(tmp_path / "src", 5)
    write_table(tmp_path / "src" / "t.parquet", rows, "parquet")
    fs = fsspec.filesystem("memory")
    url = f"memory://shardkit-table-{os.getpid()}"
    for path in (tmp_path / "src").rglob("*.*"):
        fs.pipe_file(f"{url}/{path.relative_to(tmp_path / 'src').as_posix()}", path.read_bytes())
    try:
        manifest = shardkit.convert(f"{url}/t.parquet", tmp_path / "out", image_field="path", workers=1)
        assert manifest.samples == 5 and not manifest.skipped
        got = by_caption(tmp_path / "out")
        for row in rows:
            ext = "png" if row["path"].endswith(".png") else "jpg"
            assert got[row["caption"]][f"path.{ext}"] == (tmp_path / "src" / row["path"]).read_bytes()
    finally:
        fs.rm(url, recursive=True)


def test_a_table_in_a_folder_whose_name_needs_escaping_finds_its_images(tmp_path):
    # the table's folder is where its image paths lead from: its real name, not the recorded escape
    folder = tmp_path / "src" / "x\\y"
    rows = caption_rows(folder, 4)
    manifest = shardkit.convert(write_table(folder / "pairs.csv", rows, "csv"), tmp_path / "out", image_field="path")
    assert manifest.samples == 4 and not manifest.skipped
