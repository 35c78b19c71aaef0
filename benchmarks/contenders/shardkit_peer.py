"""shardkit itself, used as its README shows: the ``shardkit convert`` command, then
``StreamingDataset`` + ``make_loader`` (+ ``DeviceLoader``), locally or from a URL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torchvision.transforms import v2

import shardkit

from ..transforms import MEAN, SIZE, STD, PILFromBytes, uint8_train


def _cli(*args: str) -> None:
    """``shardkit convert ...`` in its own process, as a user runs it. (Through the Python API, its
    spawned workers would re-import this benchmark's ``__main__`` and all it imports.)"""
    subprocess.run([sys.executable, "-m", "shardkit", "convert", *args, "--no-progress"], check=True)


def convert_images(src: Path, dst: Path, per_shard: int, *, workers: int | None = None,
                   validate: str = "full", scheduler: str | None = None) -> Path:
    _cli(str(src), str(dst), "--kind", "images", "--max-shard-samples", str(per_shard), "--validate", validate,
         *(["--workers", str(workers)] if workers else []), *(["--scheduler", scheduler] if scheduler else []))
    return dst


def convert_sequences(src: Path, dst: Path, *, workers: int | None = None) -> Path:
    _cli(str(src), str(dst), "--kind", "sequences", *(["--workers", str(workers)] if workers else []))
    return dst


def shard_files(dst: Path) -> list[Path]:
    return [Path(dst) / s.name for s in shardkit.load_manifest(str(dst)).shards]


class _PILCollate:
    """[(raw bytes, label), ...] → (normalised float32 batch, labels), in the worker."""

    def __init__(self):
        self.transform = PILFromBytes()

    def __call__(self, samples):
        return (torch.stack([self.transform(data) for data, _ in samples]),
                torch.tensor([label for _, label in samples]))


def pil_loader(source: str | Path, batch_size: int, num_workers: int, seed: int = 0):
    """shardkit's shards with the baseline's PIL transforms: the format's effect alone (raw bytes
    out of the dataset, decoded by PIL in the workers' collate)."""
    dataset = shardkit.StreamingDataset(str(source), shuffle=True, seed=seed, decode=False)
    return shardkit.make_loader(dataset, batch_size, num_workers=num_workers, collate_fn=_PILCollate())


def recommended_loader(source: str | Path, batch_size: int, num_workers: int, *, device="cpu",
                       seed: int = 0, **dataset_options):
    """The recommended pipeline: torchcodec decoding and uint8 v2 crop/flip in the workers,
    float conversion and normalisation in ``DeviceLoader``."""
    dataset = shardkit.StreamingDataset(str(source), shuffle=True, seed=seed, transform=uint8_train(),
                                        **dataset_options)
    return _on_device(shardkit.make_loader(dataset, batch_size, num_workers=num_workers), device)


def _on_device(loader, device) -> shardkit.DeviceLoader:
    return shardkit.DeviceLoader(loader, device, mean=MEAN, std=STD, channels_last=str(device).startswith("cuda"))


def crop_aware_loader(source: str | Path, batch_size: int, num_workers: int, *, device="cpu", seed: int = 0):
    """The recommended pipeline with the crop fused into decoding: ``RandomResizedCropDecode(224)``
    (the same crop distribution as ``uint8_train``'s), then the flip, in the workers."""
    dataset = shardkit.StreamingDataset(str(source), shuffle=True, seed=seed,
                                        decode=shardkit.RandomResizedCropDecode(SIZE),
                                        transform=v2.RandomHorizontalFlip())
    return _on_device(shardkit.make_loader(dataset, batch_size, num_workers=num_workers), device)


def gpu_decode_loader(source: str | Path, batch_size: int, num_workers: int, *, device="cpu", seed: int = 0):
    """The CPU-starved switch: workers read headers and draw crops and flips; ``DeviceLoader``
    decodes each batch on ``device`` (nvJPEG on CUDA), crops, resizes and normalises it."""
    dataset = shardkit.StreamingDataset(str(source), shuffle=True, seed=seed,
                                        decode=shardkit.RandomResizedCropDecode(SIZE).deferred(hflip=0.5))
    return _on_device(shardkit.make_loader(dataset, batch_size, num_workers=num_workers), device)


def sequences(source: str | Path):
    """In order, one process: ``(int64 tokens, label)`` per sample."""
    return shardkit.StreamingDataset(str(source), shuffle=False)


def padded_loader(source: str | Path, batch_size: int, num_workers: int, *, bucketing: bool = False,
                  max_tokens: int | None = None, shuffle: bool = True):
    """Shuffled ``pad_collate`` batches; with ``bucketing`` similar lengths go together; with
    ``max_tokens`` batches are cut by padded tokens instead of by count (bucketing implied)."""
    dataset = shardkit.StreamingDataset(str(source), shuffle=shuffle)
    if max_tokens:
        return shardkit.make_loader(dataset, max_tokens=max_tokens, bucketing=True, num_workers=num_workers)
    return shardkit.make_loader(dataset, batch_size, bucketing=bucketing, num_workers=num_workers)


def write_samples(samples: list[dict], out: Path, per_shard: int) -> Path:
    """``shardkit.ShardWriter`` fed the same dicts as webdataset's writer (its ``__key__`` dropped:
    shardkit keys samples by position)."""
    with shardkit.ShardWriter(out, max_shard_samples=per_shard) as writer:
        for sample in samples:
            writer.write({"jpg": sample["jpg"], "txt": sample["txt"], "json": sample["json"]})
    return out


class _PairsCrop:
    """``{"jpg", "txt", "json"}`` → the same dict with the image cropped and flipped (uint8 v2)."""

    def __init__(self):
        self.transform = uint8_train()

    def __call__(self, sample):
        return {**sample, "jpg": self.transform(sample["jpg"])}


def _pairs_collate(samples):
    """The same batches as webdataset's contender: ``(uint8 B×3×224×224, [caption], [metadata])``."""
    return torch.stack([s["jpg"] for s in samples]), [s["txt"] for s in samples], [s["json"] for s in samples]


def pairs_loader(source: str | Path, batch_size: int, num_workers: int, seed: int = 0):
    """Shuffled dict samples, torchcodec decoding + uint8 crop/flip in the workers."""
    dataset = shardkit.StreamingDataset(str(source), shuffle=True, seed=seed, transform=_PairsCrop())
    return shardkit.make_loader(dataset, batch_size, num_workers=num_workers, collate_fn=_pairs_collate)
