"""RandomResizedCrop fused into decoding: the crop is drawn from the image's header, and a JPEG is
decoded only as far, and only as finely, as the crop needs.

For a JPEG, the box is drawn from the frame header (no pixels decoded), then libjpeg-turbo
(Pillow's) decodes

* at the coarsest DCT scale (1/2, 1/4 or 1/8, ``PIL.Image.draft``) that keeps the box at least
  the output size on both sides: the inverse DCT, upsampling and colour conversion shrink with
  the square of the scale;
* only down to the crop's last MCU row (plus one, so that chroma upsampling sees the rows it
  would see in a full decode): the frame header's height is lowered in a copy of the bytes, so
  the entropy decoder stops there and the rest of the data is skipped as it looks for the EOI.
  The rows kept are bit for bit those of a full decode (tests check it).

Rows above the crop and columns beside it are decoded too: Pillow reads every scanline and
offers no cropping, and libjpeg-turbo's ``jpeg_skip_scanlines``/``jpeg_crop_scanline`` (in the
library Pillow ships) are only reachable through its struct API, whose error handler must
``longjmp`` (not possible from Python). The entropy decoding they would not save anyway is
most of the cost once the DCT is scaled.

On one core (benchmarks/crop_decode.py) that is 1.66× the rate of torchcodec's full decode +
``RandomResizedCrop(224)`` for 1200-1600 px photos of 225 KB, 1.51× for noisier ones of 414 KB
(entropy decoding, which no scale saves, is 56-64 % of a full decode there) and 1.02× for
300-500 px ones (at scale 1 only the rows below the crop are saved).

Anything else (PNG, WebP, anything PIL reads) is decoded in full by
:func:`~shardkit.stream.decode.decode_image` and cropped with torchvision's ``resized_crop``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..errors import ShardError
from .decode import JpegFrame, _check_pixels, decode_image, jpeg_frame

if TYPE_CHECKING:  # pragma: no cover
    from .batch_decode import DeferredCropDecode

# _torchvision_later: torchvision is imported where it resizes, not with this module: importing
# it takes 1.9 s (it loads torch._dynamo), which datasets of tokens or rows, whose loaders import
# this module through the collate functions, would pay for nothing.

Box = tuple[int, int, int, int]  #: (top, left, height, width) in the full-size image, as torchvision's

#: Undivided, Pillow decodes a JPEG slower than torchcodec (0.79 against 0.62 ms for a 300-500 px
#: photo, 7.2 against 6.9 ms for 1400 px; its time grows with the rows decoded, 0.14 + 0.65 × the
#: share of rows for 300-500 px): a crop at scale 1 that needs more rows than this share is
#: decoded whole by torchcodec.
_PARTIAL_ROWS = 0.75
_DCT_SCALES = (8, 4, 2)
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, TypeError, Image.DecompressionBombError)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        pair = (size, size)
    elif isinstance(size, Sequence) and len(size) in (1, 2) and all(isinstance(s, int) for s in size):
        pair = (size[0], size[-1])
    else:
        raise ValueError(f"size must be an int or a sequence (height, width) of ints, not {size!r}")
    if min(pair) < 1:
        raise ValueError(f"size must be positive, not {size!r}")
    return pair


def log_ratio_bounds(ratio: tuple[float, float]) -> tuple[float, float]:
    """``torch.log(torch.tensor(ratio))`` as floats: the bounds torchvision draws the log aspect
    ratio between (float32 logs, in the default dtype), computed once per transform as it does."""
    low, high = torch.log(torch.tensor(ratio)).tolist()
    return low, high


def random_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                    log_ratio: tuple[float, float] | None = None) -> Box:
    """torchvision's ``RandomResizedCrop`` box ``(top, left, height, width)`` for a
    ``height``×``width`` image, drawn with torch's default generator in exactly the calls
    torchvision makes (same state, same box, same state after): up to ten tries of an area share
    and a log-uniform aspect ratio, then a centre crop. ``log_ratio`` is
    ``log_ratio_bounds(ratio)``, passed by callers that draw often (it costs 20 µs)."""
    area = height * width
    log_ratio = log_ratio_bounds(ratio) if log_ratio is None else log_ratio
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height  # fallback: the centre crop of the ratio range's nearest end
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def dct_scale(box: Box, size: tuple[int, int]) -> int:
    """The largest JPEG DCT scale denominator (8, 4, 2 or 1) that keeps the ``box`` at least ``size``
    = (height, width) on both sides once scaled."""
    _, _, h, w = box
    return next((s for s in _DCT_SCALES if h >= s * size[0] and w >= s * size[1]), 1)


class RandomResizedCropDecode:
    """Image bytes → uint8 3×H×W tensor: ``torchvision.transforms.v2.RandomResizedCrop(size, scale,
    ratio, antialias=True)`` fused into decoding, for ``StreamingDataset(decode=...)``.

    Called as ``decoder(data, shard=..., member=...)`` with torch's default generator seeded per
    sample, it draws the same box as the torchvision transform applied to the decoded image
    (same generator calls), and returns pixels within about 0.5 grey level (mean) of it: a JPEG
    is decoded at a reduced DCT scale and only down to the crop (see the module's docstring),
    other formats in full. ``size`` is an int or ``(height, width)``.

    Raises (when called):
        ShardError: the image exceeds ``PIL.Image.MAX_IMAGE_PIXELS`` (checked before decoding),
            or cannot be decoded; the message names ``shard`` and ``member``.
    """

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        self.size = _pair(size)
        if len(scale) != 2 or not 0 <= scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 <= min <= max, not {scale!r}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, not {ratio!r}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self._log_ratio = log_ratio_bounds(self.ratio)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio})"

    def box(self, height: int, width: int) -> Box:
        """Draws a ``(top, left, height, width)`` box for a ``height``×``width`` image with torch's
        default generator, as ``RandomResizedCrop`` does."""
        return random_crop_box(height, width, self.scale, self.ratio, self._log_ratio)

    def deferred(self, *, hflip: float = 0.0) -> DeferredCropDecode:
        """The same crop, drawn the same way, with the decoding left to the batch: see
        :class:`shardkit.stream.batch_decode.DeferredCropDecode`."""
        from .batch_decode import DeferredCropDecode
        return DeferredCropDecode(self.size, self.scale, self.ratio, hflip=hflip)

    def __call__(self, data: bytes, *, shard: str | None = None, member: str | None = None) -> torch.Tensor:
        frame = jpeg_frame(data)
        if frame is None or frame.width == 0 or frame.height == 0:  # not a JPEG (or a hopeless one)
            image = decode_image(data, shard=shard, member=member)
            return self.resized_crop(image, self.box(image.shape[-2], image.shape[-1]))
        _check_pixels(frame.width, frame.height, shard, member)
        box = self.box(frame.height, frame.width)
        out = decode_jpeg_crop(data, frame, box, self.size)
        if out is not None:
            return out
        # Pillow refused it or torchcodec is faster for this box: decode_image says why not, if it cannot
        image = decode_image(data, shard=shard, member=member)
        if tuple(image.shape[-2:]) != (frame.height, frame.width):
            raise ShardError(f"JPEG decoded to {image.shape[-1]}×{image.shape[-2]} pixels, its header says "
                             f"{frame.width}×{frame.height}", shard=shard, member=member)
        return self.resized_crop(image, box)

    def resized_crop(self, image: torch.Tensor, box: Box) -> torch.Tensor:
        """``box`` of a decoded ``image`` resized to ``size`` (bilinear, antialiased), as the
        torchvision transform does."""
        from torchvision.transforms.v2 import functional as F  # (see _torchvision_later)

        return F.resized_crop(image, *box, list(self.size), antialias=True)


def rows_needed(frame: JpegFrame, box: Box) -> int:
    """Rows of the JPEG to decode for ``box``: down to its last MCU row, plus one MCU row so that
    chroma upsampling sees below the box what a full decode would (the rows kept are then exactly
    those of a full decode)."""
    mcu = frame.mcu_height
    return min(frame.height, -(-(box[0] + box[2]) // mcu) * mcu + mcu)


def open_jpeg_rows(data: bytes, frame: JpegFrame, rows: int, scale: int) -> Image.Image:
    """The JPEG's first ``rows`` rows as a lazily decoded PIL image at DCT scale 1/``scale``
    (``ceil(width / scale)`` × ``ceil(rows / scale)`` pixels): the frame header's height is
    lowered to ``rows`` in a copy of the bytes, so libjpeg-turbo stops entropy decoding there.

    Raises:
        OSError, ValueError, SyntaxError: what Pillow raises on bytes it cannot read, or
            ValueError if the plugin did not take the scale.
    """
    if rows < frame.height:
        at = frame.offset + 5
        data = b"".join((data[:at], rows.to_bytes(2, "big"), data[at + 2:]))
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (frame.width // scale, rows // scale))
    if image.size != (-(-frame.width // scale), -(-rows // scale)):
        raise ValueError(f"{image.format} image of {image.size} pixels where 1/{scale} of "
                         f"{frame.width}×{rows} was expected")
    return image


def decode_jpeg_crop(data: bytes, frame: JpegFrame, box: Box, size: tuple[int, int]) -> torch.Tensor | None:
    """``box`` of the JPEG ``data`` resized to ``size`` (antialiased), decoded at the coarsest DCT
    scale the box allows and down to its last rows only; None when Pillow cannot read it (the
    caller decodes it the usual way, which says why) or when torchcodec decoding it whole is
    faster."""
    top, left, h, w = box
    s = dct_scale(box, size)
    rows = rows_needed(frame, box)
    if s == 1 and rows > _PARTIAL_ROWS * frame.height:
        return None
    try:
        image = open_jpeg_rows(data, frame, rows, s)
        # each edge to the nearest pixel of the scaled image (a float box, which Pillow's resize
        # takes, is 0.1 grey level closer on average, measured, but Pillow resizes 4× slower than torch)
        x0, y0 = round(left / s), round(top / s)
        x1, y1 = min(round((left + w) / s), image.size[0]), min(round((top + h) / s), image.size[1])
        crop = image.crop((x0, y0, x1, y1))
        if crop.mode != "RGB":
            crop = crop.convert("RGB")
        pixels = np.array(crop)  # a writable copy: torch warns about read-only arrays
    except _PIL_ERRORS:
        return None
    from torchvision.transforms.v2 import functional as F  # (see _torchvision_later)

    return F.resize(torch.from_numpy(pixels).permute(2, 0, 1), list(size), antialias=True)
