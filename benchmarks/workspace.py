"""The data of one run: the generated sources and every contender's own format of them, each built
the first time a scenario asks for it (untimed) under the run's scratch folder."""

from __future__ import annotations

import math
import shutil
from functools import cached_property
from pathlib import Path

from . import data
from .config import Config
from .contenders import litdata_peer, mosaic_peer, shardkit_peer, webdataset_peer


class Workspace:
    def __init__(self, cfg: Config, scratch: Path):
        self.cfg, self.scratch = cfg, scratch
        self.src = data.sources(scratch, cfg.images, cfg.classes, cfg.sequences, cfg.seed)
        self.work = scratch / f"run-{cfg.mode}"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)

    def close(self) -> None:
        """Stop what the run started (the MosaicML side process)."""
        if "mosaic" in self.__dict__:
            self.mosaic.close()

    def side_environments(self) -> dict[str, dict]:
        """What the side virtual environments used in this run hold (versions, build time)."""
        return {"mosaicml": self.mosaic.info} if "mosaic" in self.__dict__ and self.mosaic.info else {}

    @cached_property
    def mosaic(self) -> mosaic_peer.MosaicPeer:
        """MosaicML Streaming's side process (its virtual environment is built at first use)."""
        return mosaic_peer.MosaicPeer(self.scratch)

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

    @cached_property
    def mosaic_images(self) -> Path:
        """MDS shards, the images as MDS's ``jpeg`` column, about as many as shardkit's."""
        return self.mosaic.write_images(self.src.image_files, self.labels, self.work / "mds-images-jpeg", "jpeg",
                                        self.per_shard * 50_000)

    @cached_property
    def mosaic_image_bytes(self) -> Path:
        """The same with a ``bytes`` column (decoded by the reader with torchcodec)."""
        return self.mosaic.write_images(self.src.image_files, self.labels, self.work / "mds-images-bytes", "bytes",
                                        self.per_shard * 50_000)

    @cached_property
    def mosaic_sequences(self) -> Path:
        return self.mosaic.write_sequences(self.src.jsonl, self.work / "mds-sequences")

    @cached_property
    def large_photos(self) -> tuple[Path, list[Path]]:
        """The tree of camera-sized photos: (root, files)."""
        return data.large_photos(self.scratch, self.cfg.large_images, self.cfg.classes, self.cfg.seed)

    @cached_property
    def shardkit_large(self) -> Path:
        root, files = self.large_photos
        per_shard = math.ceil(len(files) / self.cfg.shards)
        return shardkit_peer.convert_images(root, self.work / "shardkit-large", per_shard)

    @cached_property
    def small_tree(self) -> tuple[Path, list[Path]]:
        """The many-small-files ImageFolder tree: (root, files)."""
        return data.small_tree(self.scratch, self.cfg.tree_files, self.cfg.classes, self.cfg.seed)

    @cached_property
    def table(self) -> tuple[Path, Path]:
        """The tabular source: (X.npy, y.npy)."""
        return data.tabular(self.scratch, self.cfg.tabular_rows, self.cfg.tabular_features, self.cfg.seed)

    @cached_property
    def litdata_table(self) -> Path:
        return litdata_peer.write_table(*self.table, self.work / "litdata-table", self.work / "litdata-scratch",
                                        self.cfg.cores)

    @cached_property
    def litdata_tokens(self) -> Path:
        """Every document's tokens for ``TokensLoader``; chunks hold a whole number of every block size."""
        return litdata_peer.write_tokens(self.records, self.work / "litdata-tokens", self.work / "litdata-scratch",
                                         self.cfg.cores, chunk_tokens=math.lcm(*self.cfg.block_sizes) * 512)

    @cached_property
    def pairs(self) -> list[dict]:
        """Image + caption + json samples, in memory (what a writer is handed)."""
        return data.caption_samples(self.src.image_files, self.cfg.seed)

    @cached_property
    def webdataset_pairs(self) -> list[Path]:
        """The pairs as webdataset's ShardWriter writes them (the streaming scenario's shards)."""
        return webdataset_peer.write_samples(self.pairs, self.work / "wds-pairs", self.per_shard)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())
