"""Random access: ``dataset[i]`` for a random permutation of the indices, in one process and
through a DataLoader with the run's num_workers (the permutation as its sampler), on local disk
and over the 20 ms HTTP server: the map-style ImageFolder baseline, as the reference for an
indexed reader of shards."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import harness
from ..contenders import baseline
from ..http_server import serve
from ..workspace import Workspace
from . import ratio_section
from .remote import subset

LOCAL_ONE = "ImageFolder, raw bytes, one process"
LOCAL_WORKERS = "ImageFolder, raw bytes, DataLoader(sampler=permutation)"
LOCAL_DECODED = "ImageFolder, PIL decode (its default loader), DataLoader(sampler=permutation)"
HTTP_ONE = "one GET per image, raw bytes, one process"
HTTP_WORKERS = "one GET per image, raw bytes, DataLoader(sampler=permutation)"

SHARDKIT_ONE = "shardkit IndexedDataset, raw bytes, one process"
SHARDKIT_WORKERS = "shardkit IndexedDataset, raw bytes, DataLoader(sampler=permutation)"
SHARDKIT_DECODED = "shardkit IndexedDataset, decoded (uint8 tensors), DataLoader(sampler=permutation)"
SHARDKIT_HTTP_ONE = "shardkit IndexedDataset over HTTP, one range request per read, one process"
SHARDKIT_HTTP_WORKERS = "shardkit IndexedDataset over HTTP, DataLoader(sampler=permutation)"


def _indexed(source: str, **options):
    import shardkit

    return shardkit.IndexedDataset(source, **options)


def count_reads(item) -> int:
    """A sample ``(data, label)`` counts one; a DataLoader's list of samples counts its length."""
    return len(item) if isinstance(item, list) else 1


def permutation(n: int, seed: int) -> list[int]:
    return np.random.default_rng([seed, 3]).permutation(n).tolist()


def _setting(ws: Workspace, reads: int, extra: str) -> str:
    return (f"{reads} reads in a random permutation of the indices (seed {ws.cfg.seed}); num_workers="
            f"{ws.cfg.num_workers}, {ws.cfg.batch_size} samples per DataLoader item (collate_fn=list); "
            f"median of {ws.cfg.rounds}; {extra}")


def local(ws: Workspace) -> list[dict[str, Any]]:
    w, b, n = ws.cfg.num_workers, ws.cfg.batch_size, ws.cfg.images
    raw, decoded = baseline.image_folder(ws.src.images, False), baseline.image_folder(ws.src.images, True)
    order = permutation(len(raw), ws.cfg.seed)
    contenders = [
        harness.Contender(LOCAL_ONE, lambda: baseline.random_reads(raw, order, 0, b), count_reads, expected=n),
        harness.Contender(LOCAL_WORKERS, lambda: baseline.random_reads(raw, order, w, b), count_reads, expected=n),
        harness.Contender(LOCAL_DECODED, lambda: baseline.random_reads(decoded, order, w, b), count_reads,
                          expected=n),
    ]
    mine, mine_decoded = _indexed(str(ws.shardkit_images), decode=False), _indexed(str(ws.shardkit_images))
    mine_order = permutation(len(mine), ws.cfg.seed)
    contenders += [
        harness.Contender(SHARDKIT_ONE, lambda: baseline.random_reads(mine, mine_order, 0, b), count_reads,
                          expected=n),
        harness.Contender(SHARDKIT_WORKERS, lambda: baseline.random_reads(mine, mine_order, w, b), count_reads,
                          expected=n),
        harness.Contender(SHARDKIT_DECODED, lambda: baseline.random_reads(mine_decoded, mine_order, w, b),
                          count_reads, expected=n),
    ]
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    return [ratio_section("random_access_local", "Random access, local disk (page cache warm)", "reads/s",
                          outcomes, LOCAL_ONE, per_unit="1000 reads",
                          notes=[_setting(ws, n, f"the {n} images of the images scenario"),
                                 "shardkit: the same images in the images scenario's shards, dataset[i] = one "
                                 "pread of the sample's bytes, found in the shard's index"])]


def remote(ws: Workspace) -> list[dict[str, Any]]:
    cfg = ws.cfg
    root, files, _shards = subset(ws, "random-access")
    order = permutation(len(files), cfg.seed)[: cfg.random_reads_remote]
    reads, w, b = len(order), cfg.num_workers, cfg.batch_size
    with serve(ws.work / "random-access", cfg.remote_latency) as url:
        dataset = baseline.http_image_folder(f"{url}/images", root, files, decode=False)
        mine = _indexed(f"{url}/shards", decode=False)
        contenders = [
            harness.Contender(HTTP_ONE, lambda: baseline.random_reads(dataset, order, 0, b), count_reads,
                              expected=reads),
            harness.Contender(HTTP_WORKERS, lambda: baseline.random_reads(dataset, order, w, b), count_reads,
                              expected=reads),
            harness.Contender(SHARDKIT_HTTP_ONE, lambda: baseline.random_reads(mine, order, 0, b), count_reads,
                              expected=reads),
            harness.Contender(SHARDKIT_HTTP_WORKERS, lambda: baseline.random_reads(mine, order, w, b),
                              count_reads, expected=reads),
        ]
        outcomes = harness.compare(contenders, cfg.rounds)
    return [ratio_section("random_access_http", f"Random access over HTTP ({cfg.remote_latency * 1e3:.0f} ms "
                          f"per request)", "reads/s", outcomes, HTTP_ONE, per_unit="1000 reads",
                          notes=[_setting(ws, reads, f"out of the {len(files)} images of the remote scenario, "
                                 f"one keep-alive session per process"),
                                 "shardkit: the same images as shards on the same server; dataset[i] = one range "
                                 "request (each shard's index is fetched once per process, on its first read)"])]
