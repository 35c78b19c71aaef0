"""Real test data built with Pillow and numpy: image folders in every format the converter meets,
and sequence files. Shared by the tests (through conftest fixtures) and the demo script."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

#: (relative path, PIL mode, save format, extra save kwargs): one of each kind the converter must handle.
IMAGE_CASES = [
    ("cat/rgb.jpg", "RGB", "JPEG", {"quality": 90}),
    ("cat/gray.JPG", "L", "JPEG", {}),
    ("cat/cmyk.jpeg", "CMYK", "JPEG", {}),
    ("cat/a.b c.png", "RGB", "PNG", {}),
    ("cat/sub/dir/nested.png", "RGBA", "PNG", {}),
    ("dog/palette.png", "P", "PNG", {}),
    ("dog/sixteen.png", "I;16", "PNG", {}),
    ("dog/anim.gif", "P", "GIF", {}),
    ("dog/bitmap.bmp", "RGB", "BMP", {}),
    ("dog/scan.tif", "RGB", "TIFF", {"compression": "tiff_lzw"}),
    ("dog/gray.pgm", "L", "PPM", {}),
    ("dog/photo.webp", "RGB", "WEBP", {"lossless": True}),
    ("ému/ünïcode ñame.jpg", "RGB", "JPEG", {}),
]


def natural_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth, photo-like RGB image (gradients plus blurred blobs plus mild noise), uint8 H×W×3.

    Flat colour compresses too well and pure noise too badly; this sits near real photos (~0.2-0.3
    bytes per pixel at JPEG quality 90)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 128 + 60 * np.sin(x / width * fx * 3.14 + phase) * np.cos(y / height * fy * 3.14)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, max(width, height) / 3)
        mask = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += mask[..., None] * rng.uniform(-90, 90, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_image(mode: str, fmt: str, rng: np.random.Generator, size=(48, 32), **save) -> bytes:
    """A natural-looking image in PIL ``mode`` (incl. ``I;16`` and ``P``), encoded as ``fmt``."""
    rgb = Image.fromarray(natural_image(rng, *size))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
    elif mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    else:
        img = rgb.convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def write_image(path: Path, mode: str, fmt: str, rng: np.random.Generator, size=(48, 32), **save) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(mode, fmt, rng, size, **save))


def make_image_tree(root: str | os.PathLike, cases=IMAGE_CASES, seed: int = 0, empty_classes=("empty",)) -> Path:
    """An ImageFolder tree with one file per case, plus empty class folders (they keep their index)."""
    root, rng = Path(root), np.random.default_rng(seed)
    for rel, mode, fmt, save in cases:
        write_image(root / rel, mode, fmt, rng, **save)
    for name in empty_classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def make_jpeg_tree(root: str | os.PathLike, classes: int = 3, per_class: int = 10, seed: int = 0,
                   sizes=(40, 72), quality: int = 90) -> Path:
    """A JPEG-only ImageFolder tree of ``classes × per_class`` images with sides in ``sizes``."""
    root, rng = Path(root), np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            w, h = rng.integers(sizes[0], sizes[1] + 1, 2).tolist()
            write_image(root / f"class{c:02d}" / f"img{i:05d}.jpg", "RGB", "JPEG", rng, size=(w, h), quality=quality)
    return root


def random_sequences(n: int, seed: int = 0, vocab: int = 50_000, max_len: int = 2048, labels: int | None = 5):
    """``n`` ``(tokens, label)`` pairs with long-tailed lengths (lognormal, clipped to [1, max_len])."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(4.0, 0.9, n).astype(int), 1, max_len)
    return [(rng.integers(0, vocab, int(length)).tolist(), int(rng.integers(0, labels)) if labels else None)
            for length in lengths]


def write_jsonl(path: str | os.PathLike, sequences, tokens_field="tokens", label_field="label") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for tokens, label in sequences:
            record = {tokens_field: tokens}
            if label is not None:
                record[label_field] = label
            f.write(json.dumps(record) + "\n")
    return path


def write_txt(path: str | os.PathLike, sequences) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(map(str, tokens)) + "\n" for tokens, _ in sequences))
    return path


def dst_files(dst: str | os.PathLike) -> dict[str, bytes]:
    """Every file under ``dst`` (hidden ones included, so a leftover temporary file shows), by
    relative path, with its bytes: what tests compare to prove two conversions byte-identical."""
    dst = Path(dst)
    return {str(p.relative_to(dst)): p.read_bytes() for p in sorted(dst.rglob("*")) if p.is_file()}


def token_block_members(key: str, tokens, lengths, labels=None) -> list[tuple[str, bytes]]:
    """The members of one token block as the converter writes them (``tokens`` already in the
    dataset's dtype)."""
    from shardkit.format.blocks import token_layout

    values = {"tokens": np.asarray(tokens), "label": None if labels is None else np.asarray(labels, np.int64)}
    return token_layout(np.asarray(tokens).dtype.name).members(key, values, lengths=np.asarray(lengths))


def decode_token_block(group: dict[str, bytes], shard: str, key: str):
    """``(tokens, offsets, labels or None)`` of a token block's members, as the reader decodes them."""
    from shardkit.format.blocks import token_layout

    block = token_layout(None).decode(group, shard, key)
    return block.arrays["tokens"], block.offsets["tokens"], block.arrays.get("label")
