"""Camera-sized photos (1200-1600 px), where a 224 crop needs a fraction of the pixels: the crop
fused into decoding (``RandomResizedCropDecode``) against full decoding + ``RandomResizedCrop``,
both as loaders and as limits (the same work on in-memory bytes, all cores, no loader)."""

from __future__ import annotations

from typing import Any

from .. import harness
from ..contenders import baseline, limits, shardkit_peer
from ..transforms import count_images
from ..workspace import Workspace
from . import ratio_section
from .images import BASELINE, CROP_AWARE, LIMIT_UINT8, RECOMMENDED

LIMIT_CROP = "limit: RandomResizedCropDecode + flip of in-memory bytes, all cores"


def _identity(n: int) -> int:
    return n


def large(ws: Workspace) -> list[dict[str, Any]]:
    root, files = ws.large_photos
    b, w, n = ws.cfg.batch_size, ws.cfg.num_workers, len(files)
    shards = ws.shardkit_large
    blobs = [p.read_bytes() for p in files]
    cores = ws.cfg.cores

    def loader(name, make):
        return harness.Contender(name, make, count_images, expected=n)

    contenders = [
        loader(BASELINE, lambda: baseline.image_loader(root, b, w)),
        loader(RECOMMENDED, lambda: shardkit_peer.recommended_loader(shards, b, w)),
        loader(CROP_AWARE, lambda: shardkit_peer.crop_aware_loader(shards, b, w)),
        harness.Contender(LIMIT_UINT8, lambda: limits.augment_in_memory(blobs, "torchcodec", cores), _identity,
                          expected=n),
        harness.Contender(LIMIT_CROP, lambda: limits.augment_in_memory(blobs, "crop_decode", cores), _identity,
                          expected=n),
    ]
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    kb = sum(map(len, blobs)) / n / 1e3
    return [ratio_section("images_large", "Camera-sized photos: crop-aware decoding", "img/s", outcomes, BASELINE,
                          notes=[f"{n} JPEGs of 1200-1600 px (q90, lightly blurred, {kb:.0f} KB avg), "
                                 f"{ws.cfg.classes} classes, batch {b}, num_workers={w}, shuffled, "
                                 f"{len(shardkit_peer.shard_files(shards))} shards; median of {ws.cfg.rounds}",
                                 "every contender delivers normalised float32 224×224 batches; the crop-aware "
                                 "rows draw their boxes from torchvision's RandomResizedCrop distribution"])]
