"""The sizes of a run: ``smoke`` (the test, seconds), ``quick`` (about a minute), ``full`` (the default)."""

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
                      sweep_rounds=1, memory_epochs=3, conversion_rounds=1)
    if mode == "quick":
        return Config(mode, images=384, classes=10, sequences=10_000, rounds=1, batch_size=64,
                      num_workers=cores, shards=4 * cores, remote_images=192, remote_latency=0.02,
                      sweep_workers=(1, cores, 2 * cores), sweep_rounds=1, memory_epochs=5, conversion_rounds=1)
    if mode == "full":
        return Config(mode, images=2000, classes=10, sequences=50_000, rounds=3, batch_size=64,
                      num_workers=cores, shards=8 * cores, remote_images=2000, remote_latency=0.02,
                      sweep_workers=sweep, sweep_rounds=1, memory_epochs=20, conversion_rounds=2)
    raise ValueError(f"unknown mode {mode!r}: use smoke, quick or full")
