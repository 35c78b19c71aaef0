"""The data of one run: the generated sources and every contender's own format of them, each built
the first time a scenario asks for it (untimed) under the run's scratch folder."""

from __future__ import annotations

import math
import shutil
from functools import cached_property
from pathlib import Path

from . import data
from .config import Config
from .contenders import litdata_peer, shardkit_peer, webdataset_peer


class Workspace:
    def __init__(self, cfg: Config, scratch: Path):
        self.cfg, self.scratch = cfg, scratch
        self.src = data.sources(scratch, cfg.images, cfg.classes, cfg.sequences, cfg.seed)
        self.work = scratch / f"run-{cfg.mode}"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)

    @cached_property
    def labels(self) -> list[int]:
        classes = sorted({p.parent.name for p in self.src.image_files})
        return [classes.index(p.parent.name) for p in self.src.image_files]

    @property
    def per_shard(self) -> int:
        return math.ceil(self.cfg.images / self.cfg.shards)

    @cached_property
    def records(self) -> list[tuple[list[int], int]]:
        return data.read_jsonl(self.src.jsonl)

    @cached_property
    def shardkit_images(self) -> Path:
        return shardkit_peer.convert_images(self.src.images, self.work / "shardkit-images", self.per_shard)

    @property
    def shardkit_image_shards(self) -> list[Path]:
        return shardkit_peer.shard_files(self.shardkit_images)

    @cached_property
    def shardkit_sequences(self) -> Path:
        return shardkit_peer.convert_sequences(self.src.jsonl, self.work / "shardkit-sequences")

    @cached_property
    def webdataset_sequences(self) -> list[Path]:
        return webdataset_peer.write_sequences(self.records, self.work / "wds-sequences" / "seq-%06d.tar",
                                               math.ceil(len(self.records) / 4))

    @cached_property
    def litdata_images(self) -> Path:
        return litdata_peer.write_images(self.src.image_files, self.labels, self.work / "litdata-images",
                                         self.work / "litdata-scratch", f"{self.per_shard * 50}KB",
                                         self.cfg.cores)

    @cached_property
    def litdata_sequences(self) -> Path:
        return litdata_peer.write_sequences(self.records, self.work / "litdata-sequences",
                                            self.work / "litdata-scratch", self.cfg.cores)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())
