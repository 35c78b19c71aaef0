"""Helpers for the converter's tests: reading a DST back, running the CLI, crafted files."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import datagen

from shardkit.format.manifest import MANIFEST_NAME
from shardkit.format.records import split_name
from shardkit.format.tar import read_members

REPO = Path(__file__).resolve().parents[2]


def manifest_doc(dst) -> dict:
    return json.loads((Path(dst) / MANIFEST_NAME).read_text())


def samples_by_key(dst) -> dict[str, dict[str, bytes]]:
    """Every sample of every shard in manifest order: ``{key: {ext: bytes}}`` (keys are unique)."""
    out = {}
    for shard in manifest_doc(dst)["shards"]:
        for m in read_members((Path(dst) / shard["name"]).read_bytes(), shard["name"]):
            key, ext = split_name(m.name)
            out.setdefault(key, {})[ext] = m.data
    return out


def read_sequences(dst) -> list[tuple[list[int], int]]:
    """Every sequence in output order as ``(tokens, label)`` (label -1 when the dataset has none)."""
    seqs = []
    for key, group in samples_by_key(dst).items():
        tokens, offsets, labels = datagen.decode_token_block(group, "test", key)
        for i in range(len(offsets) - 1):
            seqs.append((tokens[offsets[i]:offsets[i + 1]].tolist(), -1 if labels is None else int(labels[i])))
    return seqs


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width × height`` (a decompression-bomb header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def make_bad_tree(root):
    """A small tree with one valid image per class and one of every kind of bad file.

    Unreadable files: the tests run as root, which ignores ``chmod 000``; a broken symbolic link is
    a file ImageFolder lists and nobody can read, and a FIFO one that must not be opened blocking."""
    rng = np.random.default_rng(0)
    datagen.write_image(root / "a" / "good.jpg", "RGB", "JPEG", rng)
    datagen.write_image(root / "b" / "good.bmp", "RGB", "BMP", rng)
    jpeg, png = io.BytesIO(), io.BytesIO()  # large enough that the cut falls in the pixel data
    Image.fromarray(datagen.natural_image(rng, 96, 96)).save(jpeg, format="JPEG")
    Image.fromarray(datagen.natural_image(rng, 64, 64)).save(png, format="PNG")
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3])
    (root / "a" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "b" / "text.jpg").write_text("just some text\n")
    (root / "b" / "bomb.png").write_bytes(png_header(50_000, 50_000))
    os.symlink(root / "nowhere.jpg", root / "b" / "broken link.jpg")
    os.mkfifo(root / "b" / "fifo.png")
    return {"a/empty.jpg": "empty file", "a/truncated.jpg": "cannot decode", "a/truncated.png": "cannot decode",
            "b/text.jpg": "not an image", "b/bomb.png": "decompression bomb", "b/broken link.jpg": "cannot read",
            "b/fifo.png": "not a regular file"}
