"""Sample decoding: image bytes to uint8 RGB C×H×W tensors, token arrays to int64 tensors.

JPEG, PNG and WebP go through torchcodec (libjpeg-turbo, libpng, libwebp), which gives the same
pixels as PIL's ``.convert("RGB")`` for them (grayscale, CMYK, palette, alpha included; checked
by the tests). 16-bit PNGs, other formats and whatever torchcodec refuses go through PIL, so the
pixels are those torchvision's ``ImageFolder`` would give (PIL saturates 16-bit values to 255).
Only image decoders run: nothing is unpickled, whatever a member's extension says.

An image is refused before it is decoded when its header announces more pixels than
``PIL.Image.MAX_IMAGE_PIXELS`` (the decompression-bomb limit; ``None`` disables the check).
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

try:  # torchcodec 0.17 (beside torch 2.14): torchvision 0.29 deprecates its own decoders for these
    from torchcodec.decoders import decode_image as _native_image
    from torchcodec.decoders import decode_jpeg as _native_jpeg
except ImportError:  # older stacks (torchcodec without image decoders): torchvision's, not deprecated there
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as _tv_image
    from torchvision.io import decode_jpeg as _tv_jpeg

    def _native_jpeg(data: bytes) -> torch.Tensor:
        return _tv_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def _native_image(data: bytes, mode: str = "RGB") -> torch.Tensor:
        return _tv_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)

from ..errors import ShardError

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers, not DHT/JPG/DAC
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header, None if none is found (not a JPEG, damaged)."""
    frame = jpeg_frame(data)
    return None if frame is None else (frame.width, frame.height)


class JpegFrame(NamedTuple):
    """A JPEG's frame header: where it starts in the bytes and what it announces."""

    offset: int  #: index of the SOF marker's 0xFF byte
    width: int
    height: int
    mcu_height: int  #: rows of one MCU row: 8 × the largest vertical sampling factor


def jpeg_frame(data: bytes) -> JpegFrame | None:
    """The JPEG's frame header: its offset, size and MCU height, found by walking the markers;
    None if there is none (not a JPEG, damaged)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in _SOF_MARKERS:
            components = data[i + 9]
            factors = data[i + 11:i + 11 + 3 * components:3]  # each component: id, H<<4 | V, table
            if len(factors) != components:
                return None
            vmax = max((f & 0x0F for f in factors), default=1)
            return JpegFrame(i, (data[i + 7] << 8) | data[i + 8], (data[i + 5] << 8) | data[i + 6], 8 * max(vmax, 1))
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's, PNG's or WebP's header without decoding; None for other
    formats (or a header that cannot be read)."""
    size = jpeg_size(data)
    if size is not None:
        return size
    png = _png_header(data)
    return png[:2] if png is not None else _webp_size(data)


def _png_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, bit depth)`` from a PNG's IHDR chunk, None if it is not a PNG."""
    if data[:8] != _PNG_MAGIC or data[12:16] != b"IHDR" or len(data) < 25:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), data[24]


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a WebP's first chunk (VP8X canvas, VP8 frame or VP8L header), None
    if it is not a WebP or the chunk is not one of those."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended (alpha, animation): the canvas, 24-bit fields minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit fields minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _check_pixels(width: int, height: int, shard: str | None, member: str | None) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ShardError(f"image of {width}×{height} = {width * height} pixels exceeds the decompression-bomb "
                         f"limit PIL.Image.MAX_IMAGE_PIXELS = {limit}; raise it if the image is genuine",
                         shard=shard, member=member)


def decode_image(data: bytes, *, shard: str | None = None, member: str | None = None) -> torch.Tensor:
    """Decode image bytes into a uint8 RGB tensor of shape 3×H×W.

    Its memory is H×W×3 (channels last), as both decoders produce it; transforms and
    ``torch.stack`` take it as it is, so no copy is made to reorder it.

    The format is recognised from the bytes, not the extension. ``shard`` and ``member`` only
    name the sample in errors.

    Raises:
        ShardError: the image exceeds the pixel limit, or no decoder can read it.
    """
    size = jpeg_size(data)
    if size is not None:
        _check_pixels(*size, shard, member)
        try:
            return _native_jpeg(data)
        except RuntimeError:
            return _decode_with_pil(data, shard, member)  # PIL may still read it, or says why not
    png, webp = _png_header(data), _webp_size(data)
    if png is not None:
        _check_pixels(png[0], png[1], shard, member)
        if png[2] == 16:  # PIL's pixels for 16 bits differ from torchcodec's; keep ImageFolder's
            return _decode_with_pil(data, shard, member)
    elif webp is not None:
        _check_pixels(*webp, shard, member)
    else:
        return _decode_with_pil(data, shard, member)  # PIL checks the size before it decodes
    try:
        image = _native_image(data, mode="RGB")
    except RuntimeError:
        return _decode_with_pil(data, shard, member)
    return image[0] if image.ndim == 4 else image  # an animated WebP: its first frame


def _decode_with_pil(data: bytes, shard: str | None, member: str | None) -> torch.Tensor:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check follows
            img = Image.open(io.BytesIO(data))
        _check_pixels(*img.size, shard, member)
        array = np.array(img.convert("RGB"))
    except ShardError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, TypeError) as err:
        raise ShardError(f"cannot decode image ({type(err).__name__}: {err})", shard=shard, member=member) from None
    return torch.from_numpy(array).permute(2, 0, 1)


def decode_tokens(tokens: np.ndarray) -> torch.Tensor:
    """A 1-D int64 tensor of the tokens (a copy: the block they come from is not kept alive)."""
    return torch.from_numpy(tokens.astype(np.int64))
