"""Image decoding against PIL's ``.convert("RGB")`` (what torchvision's ImageFolder gives)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import datagen
import shardkit
from shardkit import ShardError
from shardkit.stream import decode as decode_module
from shardkit.stream.decode import decode_image, jpeg_size
from shardkit.stream.dataset import StreamingDataset


def encode(mode: str, fmt: str, size=(45, 31), **save) -> bytes:
    return datagen.encode_image(mode, fmt, np.random.default_rng(1), size, **save)


def pil_rgb(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


EXACT = {  # formats decoded by torchcodec (PNG, WebP) or PIL itself: the pixels must be PIL's exactly
    "png-rgb": ("RGB", "PNG", {}), "png-rgba": ("RGBA", "PNG", {}), "png-gray": ("L", "PNG", {}),
    "png-gray-alpha": ("LA", "PNG", {}), "png-palette": ("P", "PNG", {}),
    "png-palette-transparency": ("P", "PNG", {"transparency": 0}), "png-1bit": ("1", "PNG", {}),
    "png-16bit": ("I;16", "PNG", {}), "webp-lossless": ("RGB", "WEBP", {"lossless": True}),
    "webp-lossy": ("RGB", "WEBP", {"quality": 80}), "webp-rgba": ("RGBA", "WEBP", {"lossless": True}),
    "gif": ("P", "GIF", {}), "bmp": ("RGB", "BMP", {}), "tiff": ("RGB", "TIFF", {}),
}
JPEG = {
    "jpeg-rgb": ("RGB", "JPEG", {"quality": 90}), "jpeg-444": ("RGB", "JPEG", {"subsampling": 0}),
    "jpeg-progressive": ("RGB", "JPEG", {"progressive": True}), "jpeg-gray": ("L", "JPEG", {}),
    "jpeg-cmyk": ("CMYK", "JPEG", {}),
}


@pytest.mark.parametrize("case", list(EXACT), ids=str)
def test_exactly_pils_pixels(case):
    mode, fmt, save = EXACT[case]
    data = encode(mode, fmt, **save)
    image = decode_image(data)
    assert image.dtype == torch.uint8 and image.shape == (3, 31, 45)
    assert torch.equal(image, pil_rgb(data))


@pytest.mark.parametrize("case", list(JPEG), ids=str)
def test_jpeg_matches_pil(case):
    """libjpeg-turbo in torchcodec and in Pillow: identical with torchcodec 0.17 and Pillow 13 (the
    pinned versions); other builds may round differently, so the bound allowed is ±1 on <1% of values."""
    mode, fmt, save = JPEG[case]
    data = encode(mode, fmt, **save)
    image, reference = decode_image(data), pil_rgb(data)
    assert image.shape == (3, 31, 45) and image.dtype == torch.uint8
    diff = (image.int() - reference.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_jpeg_size_reads_the_frame_header():
    assert jpeg_size(encode("RGB", "JPEG", size=(123, 45))) == (123, 45)
    assert jpeg_size(encode("RGB", "JPEG", size=(70, 20), progressive=True)) == (70, 20)
    assert jpeg_size(b"\xff\xd8garbage") is None and jpeg_size(b"PNG") is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_decompression_bombs_are_refused_before_decoding(monkeypatch, fmt):
    data = encode("RGB", fmt, size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 63)

    def must_not_run(*args, **kwargs):
        raise AssertionError("decoded before the size check")
    monkeypatch.setattr(decode_module, "_native_jpeg", must_not_run)
    monkeypatch.setattr(decode_module, "_native_image", must_not_run)
    with pytest.raises(ShardError, match="4096 pixels exceeds the decompression-bomb limit"):
        decode_image(data, shard="s.tar", member="k.img")


WEBP_KINDS = {"lossy": ("RGB", {"quality": 80}), "lossless": ("RGB", {"lossless": True}),
              "alpha": ("RGBA", {"quality": 80}), "animated": ("RGB", {"save_all": True, "frames": 2})}


@pytest.mark.parametrize("mode, options", WEBP_KINDS.values(), ids=WEBP_KINDS.keys())
def test_webp_size_is_read_from_the_header(mode, options):
    """The size checked before decoding, from each kind of first chunk (VP8, VP8L, VP8X)."""
    options = dict(options)
    frames = [Image.new(mode, (123, 45)) for _ in range(options.pop("frames", 1))]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", append_images=frames[1:], **options)
    assert decode_module._webp_size(buf.getvalue()) == (123, 45)
    assert decode_module._webp_size(encode("RGB", "PNG")) is None


@pytest.mark.parametrize("data", [b"", b"not an image", encode("RGB", "PNG")[:60]], ids=["empty", "text", "truncated-png"])
def test_undecodable_bytes_raise_shard_error(data):
    with pytest.raises(ShardError, match="shard s.tar, member 'k.jpg': cannot decode image"):
        decode_image(data, shard="s.tar", member="k.jpg")


@pytest.fixture(scope="module")
def every_format(tmp_path_factory):
    """The converted image tree with one file per format and mode (datagen.IMAGE_CASES)."""
    base = tmp_path_factory.mktemp("formats")
    src = datagen.make_image_tree(base / "src")
    manifest = shardkit.convert(src, base / "dst", max_shard_samples=4, workers=1)
    assert not manifest.skipped and manifest.samples >= 10  # ImageFolder's extensions (no .gif)
    return base / "dst"


def test_dataset_decodes_every_stored_format_as_pil(every_format):
    raw = list(StreamingDataset(every_format, shuffle=False, decode=False))
    decoded = list(StreamingDataset(every_format, shuffle=False))
    assert len(raw) == len(decoded) == StreamingDataset(every_format).manifest.samples
    kinds = set()
    for (data, label), (image, label2) in zip(raw, decoded):
        assert label == label2
        kinds.add(Image.open(io.BytesIO(data)).format)
        diff = (image.int() - pil_rgb(data).int()).abs()
        assert diff.max() <= (1 if data[:2] == b"\xff\xd8" else 0)
    assert kinds == {"JPEG", "PNG", "WEBP"}
