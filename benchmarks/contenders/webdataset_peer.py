"""webdataset 1.x as its documentation uses it: on shardkit's image shards (the same tar layout),
on its own one-sample-per-key sequence shards, and its ShardWriter as a conversion loop.

Set up fairly (see shared/PEERS.md): an explicit int ``shardshuffle``, at least as many shards as
workers, and an integer ``mtime`` so its tar writer emits no 1 KB PAX header per member."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from ..transforms import pil_train

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


def write_images(files: list[Path], labels: list[int], out: Path, shards: int) -> list[Path]:
    """The conversion loop a webdataset user writes: read each file, write ``jpg`` + ``cls``."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=math.ceil(len(files) / shards),
                         verbose=0, mtime=MTIME) as sink:
        for i, (path, label) in enumerate(zip(files, labels)):
            sink.write({"__key__": f"{i:09d}", "jpg": path.read_bytes(), "cls": label})
    return sorted(out.glob("*.tar"))

