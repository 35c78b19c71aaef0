"""Sequence files end to end: exact round trip, size bound, dtype, bad lines, parallel scanning."""

import json

import numpy as np
import pytest

import datagen
from datagen import dst_files
import shardkit
from convert_helpers import read_sequences, samples_by_key
from shardkit.convert import sequences as seq_module
from shardkit.errors import SourceError


def _expected(sequences, shuffle=True, seed=0, no_label=-1):
    rows = [(tokens, no_label if label is None else label) for tokens, label in sequences]
    if shuffle:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    return rows


@pytest.mark.parametrize("shuffle", [True, False])
def test_jsonl_round_trips_exactly(jsonl_file, sequences, tmp_path, shuffle):
    manifest = shardkit.convert(jsonl_file, tmp_path / "out", workers=1, shuffle=shuffle, max_shard_samples=120)
    assert read_sequences(tmp_path / "out") == _expected(sequences, shuffle)
    assert [s.samples for s in manifest.shards] == [120, 120, 120, 120, 20]
    lengths = [len(t) for t, _ in sequences]
    seq = manifest.sequences
    assert seq["dtype"] == "uint16" and seq["has_labels"] is True and seq["tokens"] == sum(lengths)
    assert seq["length"]["min"] == min(lengths) and seq["length"]["max"] == max(lengths)
    assert seq["length"]["median"] == float(np.median(lengths))
    assert (seq["tokens_field"], seq["label_field"]) == ("tokens", "label")


def test_txt_has_no_labels(sequences, tmp_path):
    path = datagen.write_txt(tmp_path / "seq.txt", sequences)
    manifest = shardkit.convert(path, tmp_path / "out", workers=1)
    assert manifest.sequences["has_labels"] is False
    assert read_sequences(tmp_path / "out") == _expected([(t, None) for t, _ in sequences])
    assert not any("labels.npy" in group for group in samples_by_key(tmp_path / "out").values())


def test_custom_fields_and_mixed_files(sequences, tmp_path):
    datagen.write_jsonl(tmp_path / "src" / "a.jsonl", sequences[:50], tokens_field="ids", label_field="y")
    datagen.write_txt(tmp_path / "src" / "b.txt", sequences[50:80])
    manifest = shardkit.convert(tmp_path / "src", tmp_path / "out", workers=1, shuffle=False,
                                tokens_field="ids", label_field="y")
    assert manifest.sequences["has_labels"] is True
    assert read_sequences(tmp_path / "out") == _expected(sequences[:50], False) + _expected(
        [(t, None) for t, _ in sequences[50:80]], False)


@pytest.mark.parametrize("max_id, dtype", [(255, "uint8"), (256, "uint16"), (65_535, "uint16"),
                                           (65_536, "uint32"), (2**32, "uint64"), (2**63 - 1, "uint64")])
def test_dtype_is_the_smallest_that_holds_the_largest_id(tmp_path, max_id, dtype):
    rows = [([0, 1, 2], 1), ([max_id, 5], 2), ([7], None)]
    path = datagen.write_jsonl(tmp_path / "s.jsonl", rows)
    manifest = shardkit.convert(path, tmp_path / "out", workers=1, shuffle=False)
    assert manifest.sequences["dtype"] == dtype
    assert read_sequences(tmp_path / "out") == [([0, 1, 2], 1), ([max_id, 5], 2), ([7], -1)]


@pytest.mark.parametrize("max_shard_size", ["256MB", "150KB"])
def test_shard_bytes_within_ten_percent_of_raw_tokens(tmp_path, max_shard_size):
    rows = datagen.random_sequences(3000, seed=2)
    path = datagen.write_jsonl(tmp_path / "s.jsonl", rows)
    manifest = shardkit.convert(path, tmp_path / "out", workers=2, max_shard_size=max_shard_size)
    raw = sum(len(t) for t, _ in rows) * np.dtype(manifest.sequences["dtype"]).itemsize
    assert manifest.bytes <= 1.10 * raw
    assert all(s.bytes <= manifest.params["max_shard_size"] for s in manifest.shards)
    assert read_sequences(tmp_path / "out") == _expected(rows)


BAD_LINES = [
    ('{"tokens": [1, 2, 3], "label": 0}', None),
    ('{"tokens": [1, 2', "not valid JSON"),
    ('', None),  # blank lines are not records
    ('{"ids": [1, 2]}', "missing field 'tokens'"),
    ('{"tokens": [4, -1]}', "negative token id -1"),
    ('   ', None),
    ('{"tokens": [1, 2.5]}', "non-integer"),
    ('{"tokens": []}', "is empty"),
    ('{"tokens": "1 2"}', "is a string"),
    ('{"tokens": [1], "label": "x"}', "'label' is a string"),
    ('[1, 2, 3]', "not a JSON object"),
    ('{"tokens": [9, 8]}', None),
]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_lines_are_reported_with_their_line(tmp_path, workers, monkeypatch):
    monkeypatch.setattr(seq_module, "SCAN_RANGE_BYTES", 40)  # many ranges: line numbers must still add up
    good = [json.dumps({"tokens": list(range(i, i + 5)), "label": i}) for i in range(20)]
    lines = good[:10] + [line for line, _ in BAD_LINES] + good[10:]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "src" / "empty.jsonl").write_text("")
    manifest = shardkit.convert(tmp_path / "src", tmp_path / "out", workers=workers, shuffle=False)
    expected = [(11 + i, reason) for i, (_, reason) in enumerate(BAD_LINES) if reason]
    assert [(e["path"], e["line"]) for e in manifest.skipped] == [("data.jsonl", line) for line, _ in expected]
    for entry, (_, reason) in zip(manifest.skipped, expected):
        assert reason in entry["reason"]
    valid = [json.loads(line) for line in lines if line.strip() and not any(
        line == bad and reason for bad, reason in BAD_LINES)]
    assert read_sequences(tmp_path / "out") == [(r["tokens"], r.get("label", -1)) for r in valid]


def test_strict_sequences(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("1 2 3\n4 five 6\n7\n")
    with pytest.raises(SourceError, match=r"s\.txt:2: not a non-negative integer: 'five'"):
        shardkit.convert(path, tmp_path / "out", workers=1, strict=True)
    assert not (tmp_path / "out").exists()


def test_nothing_valid_is_an_error_naming_the_reasons(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"tokens": []}\nnot json\n')
    with pytest.raises(SourceError, match=r"found no sample .*2 input\(s\) skipped: s\.jsonl:1: field 'tokens' is "
                                          r"empty; s\.jsonl:2: not valid JSON"):
        shardkit.convert(path, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


def test_same_bytes_for_any_worker_count_and_range_size(sequences, tmp_path, monkeypatch):
    src = tmp_path / "src"
    datagen.write_jsonl(src / "a.jsonl", sequences[:300])
    datagen.write_txt(src / "b.txt", sequences[300:])
    shardkit.convert(src, tmp_path / "w1", workers=1, max_shard_size="40KB")
    monkeypatch.setattr(seq_module, "SCAN_RANGE_BYTES", 1000)
    shardkit.convert(src, tmp_path / "w3", workers=3, max_shard_size="40KB")
    assert dst_files(tmp_path / "w1") == dst_files(tmp_path / "w3")
    assert len([n for n in dst_files(tmp_path / "w1") if n.endswith(".tar")]) > 2
