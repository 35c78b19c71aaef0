"""Tabular features end to end: .npz, .npy + labels, CSV and Parquet round trip bit-exact into row
blocks; bad rows reported with file and row; the size bound; bounded memory; the same bytes for any
worker count."""

import tracemalloc

import numpy as np
import pytest

import shardkit
from datagen import dst_files
from shardkit.convert import tables, tabular_scan
from shardkit.convert.kinds import tabular as tabular_kind
from shardkit.errors import SourceError
from table_helpers import TABULAR_FORMATS, features, write_tabular


def read_rows(dst):
    """Every (features, label) in stored order, through StreamingDataset."""
    rows = list(shardkit.StreamingDataset(dst, shuffle=False))
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.stack([f.numpy() for f, _ in rows]), np.array([int(label) for _, label in rows])


@pytest.mark.parametrize("fmt", TABULAR_FORMATS)
def test_every_row_round_trips_bit_exact(tmp_path, fmt):
    x, y = features(3000, width=7)
    src, kwargs = write_tabular(tmp_path / "src", x, y, fmt, row_group_size=700)
    manifest = shardkit.convert(src, tmp_path / "out", workers=2, shuffle=False, max_shard_size="30KB", **kwargs)
    assert manifest.kind == "tabular" and manifest.samples == 3000 and len(manifest.shards) > 2
    got_x, got_y = read_rows(tmp_path / "out")
    assert got_x.dtype == np.float32 and got_x.tobytes() == x.tobytes()  # bit-exact
    assert np.array_equal(got_y, y)
    assert manifest.stats["features"] == 7 and manifest.stats["has_labels"] is True
    assert all(s.bytes <= 30_000 for s in manifest.shards)
    if fmt in ("csv", "parquet"):
        assert manifest.stats["feature_names"] == [f"f{j}" for j in range(7)]


@pytest.mark.parametrize("fmt", TABULAR_FORMATS)
def test_shuffled_output_holds_every_row_once(tmp_path, fmt):
    x, y = features(500)
    src, kwargs = write_tabular(tmp_path / "src", x, y, fmt)
    manifest = shardkit.convert(src, tmp_path / "out", workers=1, seed=3, **kwargs)
    got_x, got_y = read_rows(tmp_path / "out")
    order = np.random.default_rng(3).permutation(500)
    assert got_x.tobytes() == x[order].tobytes() and np.array_equal(got_y, y[order])
    assert manifest.params["seed"] == 3


def test_shard_bytes_within_five_percent_of_the_raw_arrays(tmp_path):
    x, y = features(40_000, width=20)
    src, kwargs = write_tabular(tmp_path / "src", x, y, "npy")
    manifest = shardkit.convert(src, tmp_path / "out", workers=2, max_shard_size="1MB", **kwargs)
    assert len(manifest.shards) > 3
    assert manifest.bytes <= 1.05 * (x.nbytes + y.nbytes)
    assert all(s.bytes <= 1_000_000 for s in manifest.shards)


BAD_CSV = [
    ("1.5,2,3", None),
    ("nan,2,3", "NaN or infinite"),
    ("inf,2,3", "NaN or infinite"),
    ("1e39,2,3", "does not fit in float32"),
    ("abc,2,3", "holds 'abc', not a number"),
    (",2,3", "is empty"),
    ("1,2", "the row has 2 cells, the header 3"),
    ("1,2,3,4", "the row has 4 cells, the header 3"),
    ("1,2,2.5", "label 2.5 is not an integer"),
    ("1,2,x", "label 'x' (column 'label') is not an integer"),
    ("4,5,6", None),
    ('"7",8,9', None),
]


@pytest.mark.parametrize("allow_nan", [False, True])
def test_bad_csv_rows_are_reported_with_their_line(tmp_path, allow_nan):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n" + "\n".join(line for line, _ in BAD_CSV) + "\n")
    manifest = shardkit.convert(path, tmp_path / "out", workers=1, shuffle=False, allow_nan=allow_nan)
    expected = [(i + 2, reason) for i, (_, reason) in enumerate(BAD_CSV)
                if reason and not (allow_nan and "NaN" in reason)]
    assert [(e["path"], e["line"]) for e in manifest.skipped] == [("t.csv", line) for line, _ in expected]
    for entry, (_, reason) in zip(manifest.skipped, expected):
        assert reason in entry["reason"]
    got_x, got_y = read_rows(tmp_path / "out")
    kept = [[1.5, 2], [4, 5], [7, 8]] if not allow_nan else [[1.5, 2], [np.nan, 2], [np.inf, 2], [4, 5], [7, 8]]
    assert np.array_equal(got_x, np.array(kept, np.float32), equal_nan=True)
    assert got_y.tolist() == ([3, 6, 9] if not allow_nan else [3, 3, 3, 6, 9])


@pytest.mark.parametrize("case", ["nan", "overflow", "float labels", "uint64 labels"])
def test_bad_array_rows_are_reported_with_their_row(tmp_path, case):
    x, y = features(20)
    x = x.astype(np.float64)
    if case == "nan":
        x[3, 1], x[7, 0] = np.nan, -np.inf
        bad = {3: "NaN or infinite", 7: "NaN or infinite"}
    elif case == "overflow":
        x[5, 2] = 1e300
        bad = {5: "does not fit in float32"}
    elif case == "float labels":
        y = y.astype(np.float64)
        y[2], y[9] = 2.5, np.nan
        bad = {2: "not an integer", 9: "not an integer"}
    else:
        y = y.astype(np.uint64)
        y[4] = 2**64 - 1
        bad = {4: "not an integer of 64 bits"}
    np.savez(tmp_path / "d.npz", features=x, label=y)
    manifest = shardkit.convert(tmp_path / "d.npz", tmp_path / "out", workers=1, shuffle=False)
    assert [(e["path"], e["row"]) for e in manifest.skipped] == [("d.npz", r) for r in sorted(bad)]
    for entry in manifest.skipped:
        assert bad[entry["row"]] in entry["reason"]
    keep = [i for i in range(20) if i not in bad]
    got_x, got_y = read_rows(tmp_path / "out")
    assert got_x.tobytes() == x[keep].astype(np.float32).tobytes()
    assert got_y.tolist() == [int(v) for v in y[keep]]


def test_npz_fields_and_no_labels(tmp_path):
    x, y = features(50)
    np.savez_compressed(tmp_path / "d.npz", X=x, target=y)
    manifest = shardkit.convert(tmp_path / "d.npz", tmp_path / "out", workers=1, shuffle=False,
                                features_field="X", label_field="target")
    assert np.array_equal(read_rows(tmp_path / "out")[1], y) and manifest.params["features_field"] == "X"
    np.save(tmp_path / "X.npy", x)  # features alone: labels are -1, as unlabelled sequences
    manifest = shardkit.convert(tmp_path / "X.npy", tmp_path / "out2", workers=1, shuffle=False)
    assert manifest.stats["has_labels"] is False and read_rows(tmp_path / "out2")[1].tolist() == [-1] * 50
    with pytest.raises(SourceError, match=r"no array named 'features' .*X, target.*--features-field"):
        shardkit.convert(tmp_path / "d.npz", tmp_path / "out3", workers=1)


def test_csv_fields_choose_the_feature_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,a,b,label\nx1,1,2,0\nx2,3,4,1\n")
    with pytest.raises(SourceError, match=r"found no sample .*column 'id' holds 'x1', not a number"):
        shardkit.convert(path, tmp_path / "out", workers=1, kind="tabular")
    manifest = shardkit.convert(path, tmp_path / "out", workers=1, kind="tabular", shuffle=False, fields="a,b")
    assert manifest.stats["feature_names"] == ["a", "b"]
    assert read_rows(tmp_path / "out")[0].tolist() == [[1, 2], [3, 4]]


def test_parquet_leaves_out_columns_that_are_not_numbers_and_says_so(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": ["a", "b"], "x": [1.0, 2.0], "n": [3, 4], "label": [1, 0]}), tmp_path / "t.parquet")
    manifest = shardkit.convert(tmp_path / "t.parquet", tmp_path / "out", kind="tabular", workers=1, shuffle=False)
    assert manifest.stats["feature_names"] == ["x", "n"]
    assert manifest.stats["ignored_columns"] == ["name"] and "not numeric: name" in caplog.text
    assert read_rows(tmp_path / "out")[0].tolist() == [[1, 3], [2, 4]]


def test_nothing_valid_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,label\nnan,1\n,2\n")
    with pytest.raises(SourceError, match=r"found no sample .*read as tabular.*2 input\(s\) skipped: t\.csv:2: .*NaN"):
        shardkit.convert(path, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", TABULAR_FORMATS)
def test_same_bytes_for_any_worker_count(tmp_path, fmt, monkeypatch):
    x, y = features(4000)
    src, kwargs = write_tabular(tmp_path / "src", x, y, fmt, row_group_size=300)
    shardkit.convert(src, tmp_path / "w1", workers=1, max_shard_size="20KB", **kwargs)
    monkeypatch.setattr(tabular_kind, "PART_ROWS", 700)  # more parts: the bytes must not change
    monkeypatch.setattr(tabular_scan, "CHUNK_ROWS", 333)
    shardkit.convert(src, tmp_path / "w2", workers=2, max_shard_size="20KB", **kwargs)
    assert dst_files(tmp_path / "w1") == dst_files(tmp_path / "w2")


def _peak(src, dst) -> int:
    tracemalloc.start()
    try:
        shardkit.convert(src, dst, workers=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_memory_stays_bounded_by_a_chunk_whatever_the_table_size(tmp_path, fmt, monkeypatch):
    """Conversions in this process of a table and of one eight times larger (both many chunks
    long): the peak of traced memory follows a chunk and a block, never the table; what grows is
    the plan's 8 bytes of order per row (the global shuffle), nothing of the rows themselves."""
    monkeypatch.setattr(tabular_scan, "CHUNK_ROWS", 1000)
    monkeypatch.setattr(tables, "BATCH_ROWS", 1000)
    peaks, sizes = [], []
    for n in (25_000, 200_000):
        x, y = features(n, width=20, seed=n)
        src, _ = write_tabular(tmp_path / f"src{n}", x, y, fmt, row_group_size=4000)
        peaks.append(_peak(src, tmp_path / f"out{n}"))
        sizes.append(x.nbytes + y.nbytes)
    assert peaks[1] < peaks[0] + 2 * 8 * 175_000 + (512 << 10), peaks
    assert peaks[1] < sizes[1] / 2, (peaks, sizes)  # a block of rows (1 MiB) and its encodings, not the table


def test_csv_through_pyarrow_or_the_standard_library_gives_the_same_bytes(tmp_path, monkeypatch):
    """A clean numeric CSV is parsed by pyarrow when it is installed (faster), else by ``csv``."""
    import sys

    x, y = features(3000)
    src, _ = write_tabular(tmp_path / "src", x, y, "csv")
    shardkit.convert(src, tmp_path / "arrow", workers=1)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
    shardkit.convert(src, tmp_path / "stdlib", workers=1)
    assert dst_files(tmp_path / "arrow") == dst_files(tmp_path / "stdlib")
    assert read_rows(tmp_path / "arrow")[0].shape == (3000, 6)
