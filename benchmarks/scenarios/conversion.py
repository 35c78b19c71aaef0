"""Conversion throughput: ``shardkit convert`` at 1 … cores workers with full and header-only
validation, against ``tar cf`` of the same tree, a webdataset ShardWriter loop, and the all-core
PIL decode rate of the same files (the work a validating converter cannot skip); and the same
against ``tar cf`` on a tree of many small files, where the per-file cost is all there is."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from .. import convert_timing, harness
from ..contenders import limits, shardkit_peer, webdataset_peer
from ..dask_cluster import cluster
from ..workspace import Workspace
from . import ratio_section, row

DECODE = "PIL decode of the files, all cores (reference)"
TAR = "tar cf of the tree"
WEBDATASET = "webdataset ShardWriter loop (one process)"


def shardkit_name(workers: int, validate: str) -> str:
    return f"shardkit convert, {workers} worker{'s' if workers > 1 else ''}, validate={validate}"


def dask_name(workers: int) -> str:
    return f"shardkit convert on a running Dask cluster, {workers} worker{'s' if workers > 1 else ''}, validate=full"


def _once(n: int, job: Callable[[], Any]):
    """A conversion as a timed pass: do it, then report ``n`` images done."""
    job()
    yield n


def conversion(ws: Workspace) -> list[dict[str, Any]]:
    n, out = ws.cfg.images, ws.work / "conversion"

    def fresh(name: str) -> Callable[[], None]:
        return lambda: shutil.rmtree(out / name, ignore_errors=True)

    def tar():
        (out / "tar").mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "cf", str(out / "tar" / "tree.tar"), "-C", str(ws.src.images), "."], check=True)

    contenders = [
        harness.Contender(DECODE, lambda: limits.decode_files(ws.src.image_files, ws.cfg.cores), lambda k: k),
        harness.Contender(TAR, lambda: _once(n, tar), lambda k: k, prepare=fresh("tar")),
        harness.Contender(WEBDATASET, lambda: _once(n, lambda: webdataset_peer.write_images(
            ws.src.image_files, ws.labels, out / "wds", ws.cfg.shards)), lambda k: k, prepare=fresh("wds")),
    ]
    def shardkit(label: str, folder: str, **options) -> harness.Contender:
        return harness.Contender(label, lambda: _once(n, lambda: shardkit_peer.convert_images(
            ws.src.images, out / folder, ws.per_shard, **options)), lambda k: k, prepare=fresh(folder))

    for validate in ("full", "header"):
        for workers in range(1, ws.cfg.cores + 1):
            contenders.append(shardkit(shardkit_name(workers, validate), f"shardkit-{workers}-{validate}",
                                       workers=workers, validate=validate))
    has_dask = importlib.util.find_spec("distributed") is not None
    with contextlib.ExitStack() as clusters:
        for workers in (1, 2) if has_dask else ():
            address = clusters.enter_context(cluster(workers))
            contenders.append(shardkit(dask_name(workers), f"dask-{workers}", scheduler=address))
        outcomes = harness.compare(contenders, ws.cfg.conversion_rounds)
    mb_per_image = ws.src.image_bytes / n / 1e6
    section = ratio_section("conversion", "Conversion of the ImageFolder tree", "img/s", outcomes, DECODE,
                            notes=[f"{n} JPEGs, {ws.src.image_bytes / 1e6:.0f} MB, page cache warm, output on "
                                   f"the same disk; {ws.per_shard} images per shard; median of "
                                   f"{ws.cfg.conversion_rounds}; × = against the all-core PIL decode rate",
                                   "shardkit runs as the `shardkit convert` command (its start-up included); "
                                   "the Dask clusters (single-threaded worker processes) are started before "
                                   "the clock, as a running cluster would be"],
                            skipped=[] if has_dask else ["Dask: distributed is not installed (shardkit[dask])"])
    for r in section["rows"]:
        if "median" in r:
            r["mb_per_s"] = r["median"] * mb_per_image
    return [section]


def tar_time_ratio(section: dict[str, Any], workers: int) -> float | None:
    """How many times longer shardkit (header-only validation) takes than ``tar cf``."""
    rows = {r["contender"]: r for r in section["rows"]}
    tar, shardkit = rows.get(TAR, {}).get("median"), rows.get(shardkit_name(workers, "header"), {}).get("median")
    return tar / shardkit if tar and shardkit else None


LISTING = "listing: os.walk + stat of the tree, one process (reference)"


def _walk(root: Path):
    for folder, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(folder, name))
            yield 1


def many_files(ws: Workspace) -> list[dict[str, Any]]:
    """``tar cf`` and ``shardkit convert`` (all cores, header-only and full validation) of the
    tree of small JPEGs; then one more header-only conversion with timers around its phases."""
    root, files = ws.small_tree
    n, out, cores = len(files), ws.work / "conversion-many", ws.cfg.cores
    per_shard = math.ceil(n / ws.cfg.shards)

    def fresh(name: str) -> Callable[[], None]:
        return lambda: shutil.rmtree(out / name, ignore_errors=True)

    def tar():
        (out / "tar").mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "cf", str(out / "tar" / "tree.tar"), "-C", str(root), "."], check=True)

    def shardkit(validate: str) -> harness.Contender:
        folder = f"shardkit-{validate}"
        return harness.Contender(shardkit_name(cores, validate), lambda: _once(n, lambda: shardkit_peer.convert_images(
            root, out / folder, per_shard, workers=cores, validate=validate)), lambda k: k, prepare=fresh(folder))

    contenders = [harness.Contender(TAR, lambda: _once(n, tar), lambda k: k, prepare=fresh("tar")),
                  shardkit("header"), shardkit("full"),
                  harness.Contender(LISTING, lambda: _walk(root), lambda k: k, expected=n)]
    outcomes = harness.compare(contenders, ws.cfg.conversion_rounds)
    tree_bytes = sum(p.stat().st_size for p in files)
    section = ratio_section("conversion_many_files", f"Conversion of a tree of {n:,} small files", "files/s",
                            outcomes, TAR, per_unit="1000 files",
                            notes=[f"{n:,} JPEGs of 48-128 px ({tree_bytes / n / 1e3:.1f} KB avg, "
                                   f"{tree_bytes / 1e6:.0f} MB) in {ws.cfg.classes} folders, page cache warm; "
                                   f"{per_shard} files per shard; median of {ws.cfg.conversion_rounds}; "
                                   f"× = against tar cf's rate; 'time × tar cf' = its time over tar cf's (the target's figure)"])
    tar_rate = (row(section, TAR) or {}).get("median")
    for r in section["rows"]:
        if tar_rate and "median" in r:
            r["time_vs_tar"] = tar_rate / r["median"]
    try:
        shutil.rmtree(out / "timed", ignore_errors=True)
        phases = convert_timing.run(["convert", str(root), str(out / "timed"), "--kind", "images",
                                     "--max-shard-samples", str(per_shard), "--workers", str(cores),
                                     "--validate", "header", "--no-progress"])
        section["phases"] = phases
        section["notes"].append("one more header-only conversion, timed by phase from outside shardkit: " +
                                ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    except Exception as err:  # noqa: BLE001 - the split is extra information; the rows above stand
        section["notes"].append(f"the phase split could not be taken: {type(err).__name__}: {err}")
    return [section]

