"""RandomResizedCrop decoded a batch at a time on the training device (nvJPEG on CUDA), for
machines whose CPUs cannot keep up with JPEG decoding.

The work is split in three steps, so that the DataLoader workers only read headers:

* :class:`DeferredCropDecode` (per sample, in a worker): reads the image's size from its header,
  draws the crop box (and a horizontal flip) with torch's default generator exactly as
  :class:`~shardkit.stream.crop.RandomResizedCropDecode` does, and returns an
  :class:`EncodedCrop`: the encoded bytes plus the box;
* :func:`collate_crops` (per batch, in a worker): packs the batch into an
  :class:`EncodedCropBatch`, two tensors whatever the batch size, cheap to send between processes;
* :func:`decode_crop_batch` (per batch, in the main process): decodes every JPEG of the batch with
  one ``torchcodec.decoders.decode_jpeg(list, device=...)`` call on CUDA (nvJPEG; on the CPU one
  image at a time, libjpeg-turbo), other formats (and JPEGs the device's decoder refuses) with
  :func:`~shardkit.stream.decode.decode_image` on the CPU, then resizes each crop with
  torchvision's ``resized_crop`` (antialiased) into one B×3×H×W uint8 tensor on the device.

Each crop is resized by its own ``resized_crop`` call rather than one ``roi_align`` over the
batch: the images come out of the decoder in different sizes, so a batched kernel needs them
copied into one padded float tensor first (B × 3 × the largest H × the largest W × 4 bytes,
about 7.9 GB for 256 photos of 1600 px), and ``roi_align`` averages a box of samples per output
pixel where torchvision's antialiasing uses a triangle filter (0.1-0.4 grey level apart on
average, measured on the CPU). Per-image calls keep the memory at one image and the pixels
those of ``RandomResizedCrop`` (bit for bit on the CPU). Their cost on a GPU is a handful of
kernel launches an image; ``benchmarks/crop_decode.py --device cuda`` measures both ways.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import ShardError
from .crop import Box, RandomResizedCropDecode
from .decode import _check_pixels, decode_image, image_size, jpeg_frame

try:  # torchcodec 0.17 (beside torch 2.14); older stacks have torchvision's, which takes lists too
    from torchcodec.decoders import decode_jpeg as _decode_jpeg
except ImportError:  # pragma: no cover
    from torchvision.io import decode_jpeg as _decode_jpeg

#: Columns of ``EncodedCropBatch.meta``.
_START, _END, _TOP, _LEFT, _HEIGHT, _WIDTH, _IMAGE_H, _IMAGE_W, _FLIP, _JPEG = range(10)


@dataclass(frozen=True)
class EncodedCrop:
    """One sample's encoded image and the crop drawn for it (what :class:`DeferredCropDecode`
    returns). Picklable; ``data`` is a 1-D uint8 tensor of the stored bytes."""

    data: torch.Tensor
    box: Box                     #: (top, left, height, width) in the full-size image
    image_size: tuple[int, int]  #: (height, width) the image's header announces
    size: tuple[int, int]        #: output (height, width)
    flip: bool                   #: flip horizontally after the resize
    jpeg: bool                   #: a JPEG (decoded on the device); others are decoded on the CPU
    shard: str | None = None
    member: str | None = None


@dataclass(frozen=True)
class EncodedCropBatch:
    """A batch of :class:`EncodedCrop`, packed into two tensors (``data``: every image's bytes end
    to end, uint8; ``meta``: one int64 row per image: start and end of its bytes, box, image
    size, flip, JPEG) plus the output size and the samples' (shard, member) names."""

    data: torch.Tensor
    meta: torch.Tensor
    size: tuple[int, int]
    names: tuple[tuple[str | None, str | None], ...]

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def boxes(self) -> torch.Tensor:
        """int64 B×4: (top, left, height, width) of each crop."""
        return self.meta[:, _TOP:_WIDTH + 1]

    @property
    def flips(self) -> torch.Tensor:
        """bool B: which crops are flipped horizontally."""
        return self.meta[:, _FLIP].bool()


class DeferredCropDecode:
    """Image bytes → :class:`EncodedCrop`: the header-only half of
    :class:`~shardkit.stream.crop.RandomResizedCropDecode` (usually made by its ``deferred()``),
    for ``StreamingDataset(decode=...)`` when :func:`decode_crop_batch` decodes on the device.

    Draws the box with the same generator calls as ``RandomResizedCropDecode`` (so the same box
    for the same seed), then, if ``hflip`` > 0, a flip as
    ``torchvision.transforms.v2.RandomHorizontalFlip(hflip)`` would after the crop: the batch
    equals ``RandomResizedCrop`` followed by that flip. Only the header is read.

    Raises (when called):
        ShardError: the header is unreadable or announces more than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), *, hflip: float = 0.0) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], not {hflip!r}")
        self._crop = RandomResizedCropDecode(size, scale, ratio)  # the same validation, the same draws
        self.size, self.scale, self.ratio, self.hflip = self._crop.size, self._crop.scale, self._crop.ratio, hflip

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip})")

    def __call__(self, data: bytes, *, shard: str | None = None, member: str | None = None) -> EncodedCrop:
        frame = jpeg_frame(data)
        jpeg = frame is not None and frame.width > 0 and frame.height > 0
        width, height = (frame.width, frame.height) if jpeg else _header_size(data, shard, member)
        _check_pixels(width, height, shard, member)
        box = self._crop.box(height, width)
        flip = self.hflip > 0 and bool(torch.rand(1) < self.hflip)  # RandomHorizontalFlip's draw
        return EncodedCrop(torch.frombuffer(bytearray(data), dtype=torch.uint8), box, (height, width), self.size,
                           flip, jpeg, shard, member)


def _header_size(data: bytes, shard: str | None, member: str | None) -> tuple[int, int]:
    size = image_size(data)
    if size is not None and size[0] > 0 and size[1] > 0:
        return size
    try:  # other formats: PIL reads the header only, until the pixels are asked for
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # _check_pixels follows
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
    except Image.DecompressionBombError as err:  # PIL refuses at open beyond twice the limit
        raise ShardError(f"image exceeds the decompression-bomb limit PIL.Image.MAX_IMAGE_PIXELS = "
                         f"{Image.MAX_IMAGE_PIXELS} ({err}); raise it if the image is genuine",
                         shard=shard, member=member) from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as err:
        raise ShardError(f"cannot read the image's header ({type(err).__name__}: {err})",
                         shard=shard, member=member) from None
    if min(size) < 1:  # e.g. a JPEG whose height comes later, in a DNL marker (libjpeg refuses those)
        raise ShardError(f"the image's header announces an empty image of {size[0]}×{size[1]} pixels",
                         shard=shard, member=member)
    return size


def collate_crops(samples: Sequence[EncodedCrop]) -> EncodedCropBatch:
    """Packs :class:`EncodedCrop` samples into one :class:`EncodedCropBatch` (one copy of the bytes).

    Raises:
        ValueError: no samples, or samples of different output sizes.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch of crops")
    size = samples[0].size
    odd = next((s.size for s in samples if s.size != size), None)
    if odd is not None:
        raise ValueError(f"crops in a batch differ in output size ({size} and {odd}): use one decoder")
    ends = torch.tensor([len(s.data) for s in samples], dtype=torch.int64).cumsum(0)
    meta = torch.tensor([[0, 0, *s.box, *s.image_size, s.flip, s.jpeg] for s in samples], dtype=torch.int64)
    meta[:, _END] = ends
    meta[1:, _START] = ends[:-1]
    return EncodedCropBatch(torch.cat([s.data for s in samples]), meta, size,
                            tuple((s.shard, s.member) for s in samples))


def decode_crop_batch(batch: EncodedCropBatch, device: str | torch.device) -> torch.Tensor:
    """Decodes and crops a batch: uint8 B×3×H×W on ``device`` (H×W the decoder's size), in the
    batch's order. Normalisation is left to the caller (``DeviceLoader``).

    JPEGs are decoded together by ``torchcodec.decoders.decode_jpeg(list, device=device)``; if
    that fails, each is retried alone and those the device's decoder refuses (CMYK on nvJPEG,
    damaged data) go, with the other formats, through ``decode_image`` on the CPU (PIL as the
    last resort), as in the worker-side path.

    Raises:
        ShardError: an image cannot be decoded, or decodes to a size other than its header's;
            the message names its shard and member.
    """
    from torchvision.transforms.v2 import functional as F  # (see crop._torchvision_later)

    device = torch.device(device)
    meta = batch.meta.tolist()
    items = [batch.data[row[_START]:row[_END]] for row in meta]
    out = torch.empty((len(items), 3, *batch.size), dtype=torch.uint8, device=device)
    for k, (row, image) in enumerate(zip(meta, _decoded(items, [bool(row[_JPEG]) for row in meta], device))):
        shard, member = batch.names[k]
        if image is None:
            image = decode_image(items[k].numpy().tobytes(), shard=shard, member=member).to(device)
        if tuple(image.shape[-2:]) != (row[_IMAGE_H], row[_IMAGE_W]):
            raise ShardError(f"image decoded to {image.shape[-1]}×{image.shape[-2]} pixels, its header says "
                             f"{row[_IMAGE_W]}×{row[_IMAGE_H]}", shard=shard, member=member)
        crop = F.resized_crop(image, row[_TOP], row[_LEFT], row[_HEIGHT], row[_WIDTH], list(batch.size),
                              antialias=True)
        out[k] = F.horizontal_flip(crop) if row[_FLIP] else crop
    return out


def _decoded(items: list[torch.Tensor], jpeg: list[bool], device: torch.device) -> Iterator[torch.Tensor | None]:
    """Each item decoded (3×H×W uint8 on ``device``), None where it is not a JPEG or the device's
    decoder refused it. On CUDA all JPEGs go to nvJPEG in one call; on the CPU one at a time, as
    they are cropped: holding a batch of full-size images costs more than it saves (64 photos of
    1400 px decoded first, then cropped: 138 images/s against 169 one by one, measured)."""
    if device.type == "cpu":
        yield from (_decode_jpegs([item], device)[0] if is_jpeg else None for item, is_jpeg in zip(items, jpeg))
        return
    decoded = iter(_decode_jpegs([item for item, is_jpeg in zip(items, jpeg) if is_jpeg], device))
    yield from (next(decoded) if is_jpeg else None for is_jpeg in jpeg)


def _decode_jpegs(items: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decoded images (3×H×W uint8 on ``device``), None where the decoder refused one."""
    if not items:
        return []
    try:
        return list(_decode_jpeg(items, device=device))
    except (RuntimeError, ValueError):  # one bad image fails the whole call: find which, keep the others
        pass
    out: list[torch.Tensor | None] = []
    for item in items:
        try:
            out.append(_decode_jpeg(item, device=device))
        except (RuntimeError, ValueError):
            out.append(None)
    return out

