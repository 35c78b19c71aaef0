"""The sizes of a run: ``smoke`` (the test, seconds), ``quick`` (about two minutes), ``full`` (the
default, about 15 minutes on 2 cores)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    mode: str
    images: int                 # JPEGs in the ImageFolder tree
    classes: int
    sequences: int              # token sequences in the JSONL file
    rounds: int                 # repeats of every timed contender (alternated)
    batch_size: int
    num_workers: int            # the same for every loader
    shards: int                 # shards the images are cut into (>= 4 per worker, as at scale)
    remote_images: int          # subset streamed over HTTP (each file costs the baseline the latency once)
    remote_latency: float       # seconds added before each HTTP answer
    sweep_workers: tuple[int, ...]
    sweep_rounds: int
    memory_epochs: int
    conversion_rounds: int
    seed: int = 0
    # The rows the later issues need (defaults: the full run's sizes, so gpu.py's Config stays valid).
    side_venvs: bool = True     # peers that need their own virtual environment (MosaicML Streaming)
    tree_files: int = 20_000    # small JPEGs in the many-files conversion tree (per-file cost)
    first_epoch_images: int = 1000   # streamed over HTTP in small shards, the epoch timed from construction
    first_epoch_per_shard: int = 50
    tabular_rows: int = 1_000_000    # float32 rows of tabular_features columns + an int64 label
    tabular_features: int = 20
    tabular_rounds: int = 1          # a full pass is 15,625 batches (about a minute for LitData on 2 cores)
    block_sizes: tuple[int, ...] = (2048, 512)  # token packing: tokens per block
    random_reads_remote: int = 200   # random reads per pass over HTTP (each costs the baseline one latency)
    large_images: int = 600          # 1200-1600 px photos (crop-aware decoding)

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_config(mode: str) -> Config:
    cores = os.cpu_count() or 1
    sweep = tuple(range(0, 2 * cores + 1))
    if mode == "smoke":
        return Config(mode, images=48, classes=4, sequences=800, rounds=1, batch_size=8, num_workers=1,
                      shards=4, remote_images=16, remote_latency=0.005, sweep_workers=(0, 1),
                      sweep_rounds=1, memory_epochs=3, conversion_rounds=1, side_venvs=False, tree_files=200,
                      first_epoch_images=32, first_epoch_per_shard=8, tabular_rows=4000,
                      random_reads_remote=16, large_images=16)
    if mode == "quick":
        return Config(mode, images=384, classes=10, sequences=10_000, rounds=1, batch_size=64,
                      num_workers=cores, shards=4 * cores, remote_images=192, remote_latency=0.02,
                      sweep_workers=(1, cores, 2 * cores), sweep_rounds=1, memory_epochs=5, conversion_rounds=1,
                      tree_files=5000, first_epoch_images=300, tabular_rows=100_000, random_reads_remote=96,
                      large_images=192)
    if mode == "full":
        return Config(mode, images=2000, classes=10, sequences=50_000, rounds=3, batch_size=64,
                      num_workers=cores, shards=8 * cores, remote_images=2000, remote_latency=0.02,
                      sweep_workers=sweep, sweep_rounds=1, memory_epochs=20, conversion_rounds=2)
    raise ValueError(f"unknown mode {mode!r}: use smoke, quick or full")
