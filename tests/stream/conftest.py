"""Datasets for the streaming tests, built once per session: images converted with
``shardkit.convert``, sequences written directly (see ``stream_helpers``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import datagen
import shardkit
from stream_helpers import SEQ_SHARDS, id_sequences, write_sequence_shards


@pytest.fixture(scope="session")
def seq_root(tmp_path_factory) -> Path:
    """103 labelled sequences (label = id % 5) in 5 shards of uneven size, blocks of 4."""
    root = tmp_path_factory.mktemp("seq") / "dst"
    seqs = id_sequences(sum(SEQ_SHARDS))
    write_sequence_shards(root, seqs, SEQ_SHARDS, labels=[i % 5 for i in range(len(seqs))])
    return root


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """30 JPEGs (3 classes) converted into shards of 7 samples (7, 7, 7, 7, 2)."""
    base = tmp_path_factory.mktemp("img")
    src = datagen.make_jpeg_tree(base / "src", sizes=(32, 48))
    shardkit.convert(src, base / "dst", max_shard_samples=7, workers=1)
    return base / "dst"


@pytest.fixture(scope="session")
def image_ids(image_root) -> dict[str, str]:
    """sha256 of each stored image → its source path (JPEGs are stored byte for byte)."""
    src = image_root.parent / "src"
    return {hashlib.sha256(p.read_bytes()).hexdigest(): str(p.relative_to(src)) for p in src.rglob("*.jpg")}
