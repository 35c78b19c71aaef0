"""webdataset 1.x as its documentation uses it: on shardkit's image shards (the same tar layout),
on its own one-sample-per-key sequence shards, its ShardWriter as a conversion loop and as the
writer of image + caption + json samples, which it then streams.

Set up fairly (see shared/PEERS.md): an explicit int ``shardshuffle``, at least as many shards as
workers, and an integer ``mtime`` so its tar writer emits no 1 KB PAX header per member."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from ..transforms import pil_train, uint8_train

MTIME = 0


def image_loader(shards: list[Path], batch_size: int, num_workers: int, seed: int = 0,
                 shuffle_buffer: int = 1000, pin_memory: bool = False) -> wds.WebLoader:
    """Shuffled shards and samples, ``decode("pil")`` and the PIL training transform, batched in
    the workers."""
    urls = [str(p) for p in shards]
    dataset = (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False)
               .shuffle(shuffle_buffer).decode("pil").to_tuple("jpg", "cls")
               .map_tuple(pil_train(), int).batched(batch_size, partial=True))
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)


def write_sequences(records, pattern: Path, per_shard: int) -> list[Path]:
    """One sample per key: ``KEY.npy`` (int32 tokens) and ``KEY.cls``, as a webdataset user writes them."""
    pattern.parent.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(pattern), maxcount=per_shard, verbose=0, mtime=MTIME) as sink:
        for i, (tokens, label) in enumerate(records):
            sink.write({"__key__": f"{i:09d}", "npy": np.asarray(tokens, dtype=np.int32), "cls": label})
    return sorted(pattern.parent.glob("*.tar"))


def sequences(shards: list[Path]):
    """In order, one process: ``(int64 tokens, label)`` per sample."""
    return (wds.WebDataset([str(p) for p in shards], shardshuffle=False, empty_check=False)
            .decode().to_tuple("npy", "cls").map_tuple(lambda a: torch.from_numpy(a).long(), int))


def padded_sequences(shards: list[Path], batch_size: int, collate):
    """The same, batched by webdataset's own ``.batched`` with ``collate`` (the benchmark's pad)."""
    return sequences(shards).batched(batch_size, collation_fn=collate, partial=True)


def write_images(files: list[Path], labels: list[int], out: Path, shards: int) -> list[Path]:
    """The conversion loop a webdataset user writes: read each file, write ``jpg`` + ``cls``."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=math.ceil(len(files) / shards),
                         verbose=0, mtime=MTIME) as sink:
        for i, (path, label) in enumerate(zip(files, labels)):
            sink.write({"__key__": f"{i:09d}", "jpg": path.read_bytes(), "cls": label})
    return sorted(out.glob("*.tar"))



def write_samples(samples: list[dict], out: Path, per_shard: int) -> list[Path]:
    """``ShardWriter(...).write(sample)`` for each ``{"__key__", "jpg", "txt", "json"}`` dict
    (bytes, str and a dict: webdataset encodes each by its extension)."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "pairs-%06d.tar"), maxcount=per_shard, verbose=0, mtime=MTIME) as sink:
        for sample in samples:
            sink.write(sample)
    return sorted(out.glob("*.tar"))


def _decode_jpeg(data: bytes) -> torch.Tensor:
    from torchcodec.decoders import decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def _pairs_batch(samples):
    """[(uint8 3×224×224, caption, metadata), ...] → (uint8 B×3×224×224, [str], [dict])."""
    images, captions, metadata = zip(*samples)
    return torch.stack(images), list(captions), list(metadata)


def pairs_loader(shards: list[Path], batch_size: int, num_workers: int, seed: int = 0,
                 shuffle_buffer: int = 1000) -> wds.WebLoader:
    """Shuffled; bytes → torchcodec decoding + uint8 crop/flip, the caption as ``str`` and the
    json as a dict, batched in the workers: ``(uint8 B×3×224×224, [caption], [metadata])``."""
    urls, transform = [str(p) for p in shards], uint8_train()
    dataset = (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False)
               .shuffle(shuffle_buffer).decode().to_tuple("jpg", "txt", "json")
               .map_tuple(lambda data: transform(_decode_jpeg(data)), str, dict)
               .batched(batch_size, collation_fn=_pairs_batch, partial=True))
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers)
