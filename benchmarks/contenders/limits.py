"""The physical limits beside the loaders: decode + augment of in-memory bytes on every core with
no loader at all (full decode + crop, or the crop fused into decoding), the all-core PIL decode rate of the files (the work a validating converter
cannot skip), and the raw sequential read bandwidth of the shards."""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

import torch
from PIL import Image

from ..transforms import SIZE, pil_train, uint8_train

_BLOBS: list[bytes] = []  # set before the pool forks, so workers inherit it without any IPC


def _pil_augment(span: tuple[int, int]) -> int:
    torch.set_num_threads(1)
    transform = pil_train()
    for data in _BLOBS[span[0]:span[1]]:
        transform(Image.open(io.BytesIO(data)).convert("RGB"))
    return span[1] - span[0]


def _torchcodec_augment(span: tuple[int, int]) -> int:
    from torchcodec.decoders import decode_jpeg

    torch.set_num_threads(1)
    transform = uint8_train()
    for data in _BLOBS[span[0]:span[1]]:
        transform(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)))
    return span[1] - span[0]


def _crop_decode_augment(span: tuple[int, int]) -> int:
    from torchvision.transforms import v2

    from shardkit import RandomResizedCropDecode

    torch.set_num_threads(1)
    decode, flip = RandomResizedCropDecode(SIZE), v2.RandomHorizontalFlip()
    for data in _BLOBS[span[0]:span[1]]:
        flip(decode(data))
    return span[1] - span[0]


def _pil_decode_files(paths: list[str]) -> int:
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return len(paths)


KERNELS = {"pil": _pil_augment, "torchcodec": _torchcodec_augment, "crop_decode": _crop_decode_augment}


def augment_in_memory(blobs: list[bytes], kernel: str, processes: int, chunk: int = 32):
    """Yields images done per chunk; ``processes`` forked workers, one torch thread each."""
    global _BLOBS
    _BLOBS = blobs
    spans = [(i, min(i + chunk, len(blobs))) for i in range(0, len(blobs), chunk)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        yield from pool.imap_unordered(KERNELS[kernel], spans)
        pool.close()
        pool.join()


def decode_files(paths: list[Path], processes: int, chunk: int = 32):
    """Yields images decoded per chunk: each file opened and fully decoded with PIL, on every core."""
    names = [str(p) for p in paths]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        yield from pool.imap_unordered(_pil_decode_files, [names[i:i + chunk] for i in range(0, len(names), chunk)])
        pool.close()
        pool.join()


def read_sequentially(paths: list[Path], block: int = 1 << 20):
    """Yields the bytes read, 1 MiB at a time, file after file (count them as items)."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(block):
                yield len(chunk)
