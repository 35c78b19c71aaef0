"""Images from an HTTP server on 127.0.0.1 that waits ``remote_latency`` (20 ms) before each answer,
like an object store's first byte: the baseline fetches each file with its own GET, shardkit
streams the shards from the same server, without and with its local cache."""

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


def subset(ws: Workspace) -> tuple[Path, list[Path], Path]:
    """The first ``remote_images`` images as their own ImageFolder (hard links) and its shards."""
    root = ws.work / "remote" / "images"
    files = []
    for src in ws.src.image_files[: ws.cfg.remote_images]:
        dst = root / src.relative_to(ws.src.images)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)
        files.append(dst)
    shards = shardkit_peer.convert_images(root, ws.work / "remote" / "shards", ws.per_shard)
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
