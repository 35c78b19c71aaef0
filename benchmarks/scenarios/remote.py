"""Images from an HTTP server on 127.0.0.1 that waits ``remote_latency`` (20 ms) before each answer,
like an object store's first byte: the baseline fetches each file with its own GET, shardkit
streams the shards from the same server, without and with its local cache; and the first epoch
of a fresh loader over many small shards (manifest fetch and shard opening on the clock)."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from .. import harness
from ..contenders import baseline, shardkit_peer
from ..http_server import serve
from ..transforms import count_images
from ..workspace import Workspace
from . import ratio_section

BASELINE = "map-style baseline: one GET per image, PIL"
STREAM = "shardkit recommended, streaming the shards"
CACHE_COLD = "shardkit recommended, cache_dir (empty at start)"
CACHE_WARM = "shardkit recommended, cache_dir (filled by an earlier epoch)"
LOCAL = "shardkit recommended, the same shards on local disk (reference)"


def subset(ws: Workspace, folder: str = "remote", n: int | None = None,
           per_shard: int | None = None) -> tuple[Path, list[Path], Path]:
    """The first ``n`` images (default ``remote_images``) as their own ImageFolder (hard links)
    under ``work/folder/images``, and its shards (``per_shard`` images each) in ``work/folder/shards``."""
    root = ws.work / folder / "images"
    files = []
    for src in ws.src.image_files[: ws.cfg.remote_images if n is None else n]:
        dst = root / src.relative_to(ws.src.images)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)
        files.append(dst)
    shards = shardkit_peer.convert_images(root, ws.work / folder / "shards", per_shard or ws.per_shard)
    return root, files, shards


def _fresh(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def remote(ws: Workspace) -> list[dict[str, Any]]:
    cfg = ws.cfg
    root, files, shards = subset(ws)
    cache = ws.work / "remote" / "cache"
    b, w = cfg.batch_size, cfg.num_workers
    with serve(ws.work / "remote", cfg.remote_latency) as url:
        stream = partial(shardkit_peer.recommended_loader, f"{url}/shards", b, w)
        warm_cache = ws.work / "remote" / "cache-warm"
        for _ in stream(cache_dir=str(warm_cache)):  # fills the warm cache, untimed
            pass
        n = len(files)
        contenders = [
            harness.Contender(BASELINE, lambda: baseline.http_image_loader(f"{url}/images", root, files, b, w),
                              count_images, expected=n),
            harness.Contender(STREAM, stream, count_images, expected=n),
            harness.Contender(CACHE_COLD, lambda: stream(cache_dir=str(cache)), count_images, expected=n,
                              prepare=lambda: _fresh(cache)),
            harness.Contender(CACHE_WARM, lambda: stream(cache_dir=str(warm_cache)), count_images, expected=n),
            harness.Contender(LOCAL, lambda: shardkit_peer.recommended_loader(shards, b, w), count_images,
                              expected=n),
        ]
        outcomes = harness.compare(contenders, cfg.rounds)
    notes = [f"{len(files)} images in {len(shardkit_peer.shard_files(shards))} shards, "
             f"{cfg.remote_latency * 1e3:.0f} ms before each HTTP answer, batch {b}, num_workers={w}; "
             f"the server runs in its own process (on the same cores, answering with sendfile); "
             f"median of {cfg.rounds}"]
    return [ratio_section("images_remote", f"Images over HTTP ({cfg.remote_latency * 1e3:.0f} ms per request)",
                          "img/s", outcomes, BASELINE, notes=notes, show_first=True)]


FIRST_BASELINE = "map-style baseline: one GET per image, PIL (fresh loader)"
FIRST_STREAM = "shardkit recommended, a fresh loader streaming the small shards"
FIRST_LOCAL = "shardkit recommended, a fresh loader on the same shards on local disk (reference)"


def first_epoch(ws: Workspace) -> list[dict[str, Any]]:
    """One epoch of a loader built on the clock (dataset construction, manifest fetch, every
    shard's first request), over shards of ``first_epoch_per_shard`` images: the case where
    streaming's per-shard costs are not yet paid back."""
    cfg = ws.cfg
    n, per_shard = min(cfg.first_epoch_images, cfg.images), cfg.first_epoch_per_shard
    root, files, shards = subset(ws, "first-epoch", n, per_shard)
    b, w = cfg.batch_size, cfg.num_workers
    with serve(ws.work / "first-epoch", cfg.remote_latency) as url:
        contenders = [
            harness.Contender(FIRST_BASELINE, lambda: baseline.http_image_loader(f"{url}/images", root, files, b, w),
                              count_images, expected=n),
            harness.Contender(FIRST_STREAM, lambda: shardkit_peer.recommended_loader(f"{url}/shards", b, w),
                              count_images, expected=n),
            harness.Contender(FIRST_LOCAL, lambda: shardkit_peer.recommended_loader(shards, b, w), count_images,
                              expected=n),
        ]
        outcomes = harness.compare(contenders, cfg.rounds)
    count = len(shardkit_peer.shard_files(shards))
    notes = [f"{n} images in {count} shards of {per_shard}, {cfg.remote_latency * 1e3:.0f} ms before each HTTP "
             f"answer, batch {b}, num_workers={w}; each pass builds its loader on the clock (the dataset, the "
             f"manifest fetch, the workers) and runs one epoch; median of {cfg.rounds}",
             "steady epochs against local disk are in the 'Images over HTTP' section"]
    return [ratio_section("images_remote_first_epoch",
                          f"First epoch over HTTP, small shards ({cfg.remote_latency * 1e3:.0f} ms per request)",
                          "img/s", outcomes, FIRST_BASELINE, notes=notes, show_first=True)]
