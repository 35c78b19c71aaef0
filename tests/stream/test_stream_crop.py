"""``RandomResizedCropDecode`` against torchvision's ``RandomResizedCrop`` on the fully decoded
image: the same boxes from the same generator state (header only, many seeds), pixels within
1 % of it on real photo-like JPEGs, the partly decoded rows bit for bit those of a full decode,
other formats exactly torchvision's, and bad bytes refused as ``ShardError``."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import datagen
import shardkit
from shardkit import ShardError
from shardkit.stream import crop as crop_module
from shardkit.stream.crop import RandomResizedCropDecode, dct_scale, open_jpeg_rows, rows_needed
from shardkit.stream.decode import decode_image, image_size, jpeg_frame, jpeg_size

#: (width, height, PIL mode, save kwargs) of the photos: large ones reach every DCT scale
PHOTOS = {
    "1400x1250": (1400, 1250, "RGB", {}),
    "1600x1200-444": (1600, 1200, "RGB", {"subsampling": 0}),
    "1230x1580-progressive": (1230, 1580, "RGB", {"progressive": True}),
    "1300x1300-gray": (1300, 1300, "L", {}),
    "900x700-cmyk": (900, 700, "CMYK", {}),
    "450x330": (450, 330, "RGB", {}),
}


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """Photo-like JPEGs at quality 90 (natural_image: gradients, blobs, pixel noise)."""
    rng = np.random.default_rng(14)
    out = {}
    for name, (width, height, mode, save) in PHOTOS.items():
        buffer = io.BytesIO()
        Image.fromarray(datagen.natural_image(rng, width, height)).convert(mode).save(
            buffer, format="JPEG", quality=90, **save)
        out[name] = buffer.getvalue()
    return out


def reference(data: bytes, seed: int, size, scale=(0.08, 1.0),
              ratio=(3 / 4, 4 / 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's transform on the full decode, and the generator state after it."""
    torch.manual_seed(seed)
    out = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)(decode_image(data))
    return out, torch.get_rng_state()


def fused(decoder, data: bytes, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    out = decoder(data, shard="s.tar", member="k.jpg")
    return out, torch.get_rng_state()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


@pytest.mark.parametrize("save,mcu", [({}, 16), ({"subsampling": 0}, 8), ({"subsampling": 1}, 8),
                                       ({"progressive": True}, 16)], ids=str)
def test_jpeg_frame_reads_the_frame_header(save, mcu):
    for mode in ("RGB", "L") if not save else ("RGB",):
        data = datagen.encode_image(mode, "JPEG", np.random.default_rng(0), (123, 45), **save)
        frame = jpeg_frame(data)
        assert (frame.width, frame.height) == jpeg_size(data) == (123, 45)
        assert data[frame.offset] == 0xFF and data[frame.offset + 1] in (0xC0, 0xC2)
        assert frame.mcu_height == (mcu if mode == "RGB" else 8)
    assert jpeg_frame(b"\xff\xd8garbage") is None and jpeg_frame(b"PNG") is None
    assert jpeg_frame(data[:frame.offset + 11]) is None  # cut inside the component list


@pytest.mark.parametrize("fmt,expected", [("JPEG", (61, 40)), ("PNG", (61, 40)), ("WEBP", (61, 40)), ("GIF", None),
                                          ("BMP", None)])
def test_image_size_reads_jpeg_png_and_webp_headers(fmt, expected):
    mode = "P" if fmt == "GIF" else "RGB"
    assert image_size(datagen.encode_image(mode, fmt, np.random.default_rng(0), (61, 40))) == expected


# (height, width) of images × (scale, ratio): ordinary, extreme aspects (where get_params falls back
# to a centre crop after ten tries), impossible scales (always the fallback), tiny images
IMAGE_SIZES = [(1250, 1400), (1600, 1200), (333, 500), (224, 224), (40, 1000), (1000, 40), (1, 1), (3, 7000)]
DRAWS = [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (2.0, 3.0)), ((1.5, 2.0), (3 / 4, 4 / 3)),
         ((0.0, 0.3), (0.2, 5.0))]


@pytest.mark.parametrize("height,width", IMAGE_SIZES, ids=str)
@pytest.mark.parametrize("scale,ratio", DRAWS, ids=str)
def test_boxes_are_torchvisions_for_the_same_generator_state(height, width, scale, ratio):
    ours = RandomResizedCropDecode((160, 256), scale, ratio)
    theirs = v2.RandomResizedCrop((160, 256), scale=scale, ratio=ratio)
    image = torch.empty((3, height, width), dtype=torch.uint8)
    fallbacks = 0
    for seed in range(300):
        torch.manual_seed(seed)
        params = theirs.make_params([image])
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        box = ours.box(height, width)
        assert box == (params["top"], params["left"], params["height"], params["width"]), seed
        assert torch.equal(torch.get_rng_state(), state), f"seed {seed}: a different number of draws"
        fallbacks += box[0] == (height - box[2]) // 2 and box[1] == (width - box[3]) // 2
    if scale[0] > 1 or min(height, width) * 10 < max(height, width):  # the fallback's cases are covered
        assert fallbacks > 0


@pytest.mark.parametrize("box,size,expected", [
    ((0, 0, 1800, 1800), (224, 224), 8), ((0, 0, 1791, 1800), (224, 224), 4), ((0, 0, 896, 900), (224, 224), 4),
    ((0, 0, 895, 2000), (224, 224), 2), ((5, 9, 448, 448), (224, 224), 2), ((0, 0, 447, 1000), (224, 224), 1),
    ((0, 0, 640, 1024), (160, 256), 4), ((0, 0, 640, 1023), (160, 256), 2), ((0, 0, 100, 100), (224, 224), 1),
])
def test_dct_scale_is_the_largest_that_keeps_the_output_size(box, size, expected):
    assert dct_scale(box, size) == expected


@pytest.mark.parametrize("name", [n for n in PHOTOS if int(n.split("x")[0]) >= 900], ids=str)
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_the_rows_decoded_are_those_of_a_full_decode(photos, name, scale):
    """A lowered frame height stops the decoder early without changing one pixel of the rows kept."""
    data = photos[name]
    frame = jpeg_frame(data)
    full = open_jpeg_rows(data, frame, frame.height, scale)
    full_pixels = np.asarray(full)
    for bottom in (frame.height // 3, frame.height // 2 + 5, frame.height - 3 * frame.mcu_height):
        rows = rows_needed(frame, (0, 0, bottom, frame.width))
        assert bottom < rows < frame.height
        partial = np.asarray(open_jpeg_rows(data, frame, rows, scale))
        assert partial.shape[0] == -(-rows // scale) < full_pixels.shape[0]
        keep = -(-bottom // scale)
        np.testing.assert_array_equal(partial[:keep], full_pixels[:keep])


@pytest.mark.parametrize("name", list(PHOTOS), ids=str)
@pytest.mark.parametrize("size", [(224, 224), (160, 256)], ids=str)
def test_jpeg_pixels_are_within_one_percent_of_the_full_decode(photos, name, size):
    data = photos[name]
    decoder = RandomResizedCropDecode(size)
    frame = jpeg_frame(data)
    scales = set()
    for seed in range(8):
        out, state = fused(decoder, data, seed)
        expected, expected_state = reference(data, seed, size)
        assert out.shape == (3, *size) and out.dtype == torch.uint8
        assert torch.equal(state, expected_state)
        mae = (out.float() - expected.float()).abs().mean().item()
        assert mae < 2.55 and psnr(out, expected) > 30, (seed, mae, psnr(out, expected))
        torch.manual_seed(seed)
        scales.add(dct_scale(decoder.box(frame.height, frame.width), decoder.size))
    if frame.height >= 1200:
        assert scales & {2, 4}, "the photos must exercise scaled decoding"


def test_small_jpegs_match_the_full_decode_to_a_grey_level(photos):
    """At scale 1 a partial decode crops the very rows of a full one (Pillow's libjpeg-turbo and
    torchcodec's agree, ±1 on other builds)."""
    data, decoder = photos["450x330"], RandomResizedCropDecode(224)
    for seed in range(30):
        out, _ = fused(decoder, data, seed)
        expected, _ = reference(data, seed, 224)
        assert (out.int() - expected.int()).abs().max() <= 1


OTHER_FORMATS = {
    "png": ("RGB", "PNG", {}), "png-rgba": ("RGBA", "PNG", {}), "png-16bit": ("I;16", "PNG", {}),
    "webp": ("RGB", "WEBP", {"quality": 80}), "gif": ("P", "GIF", {}), "bmp": ("RGB", "BMP", {}),
}


@pytest.mark.parametrize("case", list(OTHER_FORMATS), ids=str)
def test_other_formats_are_exactly_torchvisions(case):
    mode, fmt, save = OTHER_FORMATS[case]
    data = datagen.encode_image(mode, fmt, np.random.default_rng(3), (333, 250), **save)
    decoder = RandomResizedCropDecode((100, 120), scale=(0.2, 1.0))
    for seed in range(5):
        out, state = fused(decoder, data, seed)
        expected, expected_state = reference(data, seed, (100, 120), scale=(0.2, 1.0))
        assert torch.equal(out, expected) and torch.equal(state, expected_state)


def test_decompression_bombs_are_refused_before_decoding(photos, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000 * 1000)

    def must_not_run(*args, **kwargs):
        raise AssertionError("decoded before the size check")
    monkeypatch.setattr(crop_module, "decode_image", must_not_run)
    monkeypatch.setattr(crop_module, "open_jpeg_rows", must_not_run)
    with pytest.raises(ShardError, match=r"shard s\.tar, member 'k\.jpg': .*1750000 pixels exceeds"):
        RandomResizedCropDecode(224)(photos["1400x1250"], shard="s.tar", member="k.jpg")


def damaged(photos) -> dict[str, bytes]:
    jpeg = photos["1400x1250"]
    frame = jpeg_frame(jpeg)
    return {
        "truncated": jpeg[:len(jpeg) // 2],
        "truncated-in-the-headers": jpeg[:frame.offset + 12],
        "height-zero": jpeg[:frame.offset + 5] + b"\x00\x00" + jpeg[frame.offset + 7:],  # a DNL marker's job
        "garbage-after-soi": b"\xff\xd8" + bytes(range(256)) * 4,
        "not-an-image": b"just some text, no image",
        "empty": b"",
    }


@pytest.mark.parametrize("case", ["truncated", "truncated-in-the-headers", "height-zero", "garbage-after-soi",
                                  "not-an-image", "empty"])
def test_bad_bytes_are_a_shard_error_naming_the_member(photos, case):
    decoder = RandomResizedCropDecode(224)
    for seed in range(3):  # whatever the box (the truncation may lie above or below it)
        torch.manual_seed(seed)
        with pytest.raises(ShardError, match=r"shard s\.tar, member 'k\.jpg': "):
            decoder(damaged(photos)[case], shard="s.tar", member="k.jpg")


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 0}, "size must be positive"), ({"size": (224, 224, 3)}, "size must be an int or a sequence"),
    ({"size": 2.5}, "size must be an int"), ({"size": 224, "scale": (1.0, 0.5)}, "scale must be"),
    ({"size": 224, "ratio": (0.0, 1.0)}, "ratio must be"), ({"size": 224, "ratio": (2.0, 1.0)}, "ratio must be"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomResizedCropDecode(**kwargs)


def test_exported_and_picklable_for_workers(photos):
    assert shardkit.RandomResizedCropDecode is RandomResizedCropDecode
    assert "RandomResizedCropDecode" in shardkit.__all__
    decoder = RandomResizedCropDecode([192], scale=(0.3, 0.9))
    copy = pickle.loads(pickle.dumps(decoder))
    assert copy.size == (192, 192) and repr(copy) == repr(decoder)
    assert torch.equal(fused(copy, photos["1400x1250"], 5)[0], fused(decoder, photos["1400x1250"], 5)[0])
