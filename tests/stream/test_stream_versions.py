"""Datasets written by an earlier shardkit (format version 1, no schema, index or stamps) still
stream, verify and resume (the fixtures in tests/fixtures/v1 were written by shardkit 0.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import shardkit
from stream_helpers import check_resume

V1 = Path(__file__).parents[1] / "fixtures" / "v1"


def test_version_1_sequences_stream_as_they_were_written():
    records = [json.loads(line) for line in (V1 / "sequences.jsonl").read_text().splitlines()]
    ds = shardkit.StreamingDataset(V1 / "sequences", shuffle=False)
    assert ds.kind == "sequences" and ds.manifest.version == 1 and len(ds) == len(records)
    got = sorted((tokens.tolist(), label) for tokens, label in ds)
    assert got == sorted((r["tokens"], r["label"]) for r in records)
    assert shardkit.verify(str(V1 / "sequences")).ok


def test_version_1_images_stream_and_verify():
    ds = shardkit.StreamingDataset(V1 / "images", shuffle=False)
    assert ds.kind == "images" and ds.classes == ["class00", "class01"] and len(ds) == 8
    samples = list(ds)
    assert all(image.dtype == torch.uint8 and image.shape[0] == 3 for image, _ in samples)
    assert sorted(label for _, label in samples) == [0] * 4 + [1] * 4
    assert shardkit.verify(str(V1 / "images")).ok


def test_version_1_datasets_resume_through_the_loader(tmp_path):
    root = shutil.copytree(V1 / "sequences", tmp_path / "seq")  # no index: readers read from the shard start
    make = lambda: shardkit.make_loader(shardkit.StreamingDataset(root, shuffle_buffer=7), 4, num_workers=2)  # noqa: E731
    check_resume(make, 4, 2, tmp_path)
