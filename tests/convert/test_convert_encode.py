"""Encoding one image: pass-through, lossless conversion, resize, and every kind of bad file."""

import io

import numpy as np
import pytest
from PIL import Image

import datagen
from convert_helpers import png_header
from shardkit.convert.images import SkipImage, encode_image


def _image_bytes(mode, fmt, size=(48, 32), seed=0, **save):
    return datagen.encode_image(mode, fmt, np.random.default_rng(seed), size, **save)


@pytest.mark.parametrize("mode, fmt, ext", [
    ("RGB", "JPEG", "jpg"), ("L", "JPEG", "jpg"), ("CMYK", "JPEG", "jpg"),
    ("RGB", "PNG", "png"), ("RGBA", "PNG", "png"), ("P", "PNG", "png"), ("I;16", "PNG", "png"), ("LA", "PNG", "png"),
    ("RGB", "WEBP", "webp"),
])
def test_jpeg_png_webp_pass_through_byte_for_byte(mode, fmt, ext):
    data = _image_bytes(mode, fmt)
    assert encode_image(data) == (ext, data)


@pytest.mark.parametrize("mode, fmt, save", [
    ("RGB", "BMP", {}), ("P", "BMP", {}), ("L", "BMP", {}), ("1", "BMP", {}),
    ("RGB", "TIFF", {"compression": "tiff_lzw"}), ("CMYK", "TIFF", {}), ("I;16", "TIFF", {}), ("RGBA", "TIFF", {}),
    ("L", "TIFF", {"compression": "tiff_deflate"}), ("1", "TIFF", {}),
    ("P", "GIF", {}), ("L", "GIF", {}),
    ("RGB", "PPM", {}), ("L", "PPM", {}), ("I;16", "PPM", {}),
])
def test_other_formats_keep_their_rgb_pixels(mode, fmt, save):
    data = _image_bytes(mode, fmt, **save)
    ext, stored = encode_image(data)
    assert ext == "png"
    ours = Image.open(io.BytesIO(stored))
    assert ours.format == "PNG"
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(np.asarray(ours.convert("RGB")), expected)


def test_resize_caps_the_longer_side_as_jpeg():
    big = _image_bytes("RGBA", "PNG", size=(72, 40))
    ext, stored = encode_image(big, resize=36, quality=80)
    img = Image.open(io.BytesIO(stored))
    assert ext == "jpg" and img.format == "JPEG" and img.size == (36, 20) and img.mode == "RGB"
    assert len(encode_image(big, resize=36, quality=30)[1]) < len(stored)
    small = _image_bytes("RGB", "JPEG", size=(30, 20))
    assert encode_image(small, resize=36) == ("jpg", small)  # already within the cap: untouched


def _truncated(fmt):
    data = _image_bytes("RGB", fmt, size=(64, 64))
    return data[: len(data) * 2 // 3]


BAD = {
    "empty": (b"", "empty file"),
    "text": (b"this is a text file, not a JPEG\n", "not an image"),
    "truncated JPEG": (_truncated("JPEG"), "cannot decode"),
    "truncated PNG": (_truncated("PNG"), "cannot decode"),
    "truncated TIFF": (_truncated("TIFF"), "cannot decode"),
    "JPEG header only": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "cannot decode"),
    "huge PNG header": (png_header(60_000, 60_000), "decompression bomb"),
    "EPS content": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_images_are_skipped_with_a_reason(case):
    data, reason = BAD[case]
    with pytest.raises(SkipImage, match=reason):
        encode_image(data)


def test_header_validation_does_not_decode():
    truncated = _truncated("JPEG")
    assert encode_image(truncated, validate="header") == ("jpg", truncated)
    with pytest.raises(SkipImage, match="decompression bomb"):
        encode_image(png_header(60_000, 60_000), validate="header")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "GIF", "BMP", "WEBP"])
def test_mutated_files_only_ever_skip(fmt):
    """Bit flips and truncations (the fuzzed files that crash naive decoders) give a pass or a
    SkipImage, never another exception."""
    data = bytearray(_image_bytes("P" if fmt == "GIF" else "RGB", fmt, size=(40, 40)))
    rng = np.random.default_rng(7)
    outcomes = set()
    for _ in range(40):
        mutated = bytearray(data)
        for pos in rng.integers(0, len(mutated), rng.integers(1, 8)):
            mutated[pos] = rng.integers(0, 256)
        mutated = mutated[: rng.integers(len(mutated) // 2, len(mutated) + 1)]
        try:
            encode_image(bytes(mutated))
            outcomes.add("ok")
        except SkipImage:
            outcomes.add("skip")
    assert "skip" in outcomes
