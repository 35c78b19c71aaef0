"""Image loaders side by side: warm and cold page cache, the physical limits beside them, raw read
bandwidth, a num_workers sweep and shardkit's RSS over many epochs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .. import harness
from ..contenders import baseline, limits, litdata_peer, mosaic_peer, shardkit_peer, webdataset_peer
from ..transforms import count_images
from ..workspace import Workspace, files_under
from . import ratio_section

log = logging.getLogger("benchmarks")

BASELINE = "map-style baseline: ImageFolder + PIL (the tutorial)"
WEBDATASET = "webdataset on shardkit's shards, PIL transforms"
SHARDKIT_PIL = "shardkit, PIL transforms (the format alone)"
RECOMMENDED = "shardkit recommended: torchcodec + uint8 v2, normalise in DeviceLoader"
CROP_AWARE = "shardkit crop-aware: RandomResizedCropDecode + flip, normalise in DeviceLoader"
GPU_DECODE = "shardkit GPU decode: crops drawn in workers, DeviceLoader decodes each batch (nvJPEG)"
LITDATA_PIL = "litdata, raw bytes, PIL transforms"
LITDATA_UINT8 = "litdata, torchcodec + uint8 v2, normalise in main"
LIMIT_PIL = "limit: PIL decode + augment of in-memory bytes, all cores"
LIMIT_UINT8 = "limit: torchcodec decode + uint8 crop of in-memory bytes, all cores"
MOSAIC_PIL = "mosaicml streaming, MDS jpeg, PIL transforms"
MOSAIC_UINT8 = "mosaicml streaming, MDS bytes, torchcodec + uint8 v2, normalise in main"
MOSAIC_NOT_FED = ("mosaicml-streaming: runs in its own virtual environment (a subprocess that times "
                  "itself), so it cannot feed this process's consumer")


@dataclass
class ImageLoader:
    name: str
    run: Callable[[], Iterable] | None
    files: Callable[[], list]   # what a cold run evicts from the page cache
    measured: Callable[[], harness.Measurement] | None = None  # a pass timed in another process

    def contender(self, ws: Workspace, cold: bool = False) -> harness.Contender:
        return harness.Contender(self.name, self.run, count_images, expected=ws.cfg.images, measured=self.measured,
                                 prepare=(lambda: harness.evict(self.files())) if cold else None)


def _missing(name: str, why: str) -> ImageLoader:
    def fail():
        raise RuntimeError(why)
    return ImageLoader(name, fail, fail)


def image_loaders(ws: Workspace, *, num_workers: int | None = None, device: str = "cpu",
                  pin_memory: bool = False, all_peers: bool = False) -> tuple[list[ImageLoader], list[str]]:
    """Every image contender on the same data and settings; and the peers left out, with why.

    With ``all_peers`` (the main benchmark) a peer that cannot be imported is a failing contender,
    and MosaicML Streaming is included (its passes run in its side process; in smoke mode it is
    left out, and said so). Without (the GPU benchmark, which feeds a trainer in this process),
    litdata is left out when it cannot be imported and MosaicML always."""
    b, w = ws.cfg.batch_size, ws.cfg.num_workers if num_workers is None else num_workers
    loaders = [
        ImageLoader(BASELINE, lambda: baseline.image_loader(ws.src.images, b, w, pin_memory),
                    lambda: ws.src.image_files),
        ImageLoader(WEBDATASET, lambda: webdataset_peer.image_loader(ws.shardkit_image_shards, b, w,
                                                                     pin_memory=pin_memory),
                    lambda: ws.shardkit_image_shards),
        ImageLoader(SHARDKIT_PIL, lambda: shardkit_peer.pil_loader(ws.shardkit_images, b, w),
                    lambda: ws.shardkit_image_shards),
        ImageLoader(RECOMMENDED, lambda: shardkit_peer.recommended_loader(ws.shardkit_images, b, w, device=device),
                    lambda: ws.shardkit_image_shards),
        ImageLoader(CROP_AWARE, lambda: shardkit_peer.crop_aware_loader(ws.shardkit_images, b, w, device=device),
                    lambda: ws.shardkit_image_shards),
    ]
    if device != "cpu":  # on a CPU the main process would decode every batch alone: not the point
        loaders.append(ImageLoader(GPU_DECODE, lambda: shardkit_peer.gpu_decode_loader(ws.shardkit_images, b, w,
                                                                                        device=device),
                                   lambda: ws.shardkit_image_shards))
    skipped = []
    why = litdata_peer.available()
    if why and all_peers:
        loaders += [_missing(LITDATA_PIL, why), _missing(LITDATA_UINT8, why)]
    elif why:
        skipped.append(f"litdata: {why}")
    else:
        loaders += [
            ImageLoader(LITDATA_PIL, lambda: litdata_peer.image_loader(ws.litdata_images, b, w,
                                                                       pin_memory=pin_memory),
                        lambda: files_under(ws.litdata_images)),
            ImageLoader(LITDATA_UINT8, lambda: litdata_peer.image_loader(ws.litdata_images, b, w, uint8=True,
                                                                         device=device, pin_memory=pin_memory),
                        lambda: files_under(ws.litdata_images)),
        ]
    if not all_peers:
        skipped.append(MOSAIC_NOT_FED)
    elif not ws.cfg.side_venvs:
        skipped.append(mosaic_peer.SMOKE_SKIPPED)
    else:
        loaders += [
            ImageLoader(MOSAIC_PIL, None, lambda: files_under(ws.mosaic_images),
                        lambda: ws.mosaic.image_pass(ws.mosaic_images, b, w)),
            ImageLoader(MOSAIC_UINT8, None, lambda: files_under(ws.mosaic_image_bytes),
                        lambda: ws.mosaic.image_pass(ws.mosaic_image_bytes, b, w, uint8=True)),
        ]
    return loaders, skipped


def build_all(loaders: list[ImageLoader]) -> None:
    """Build every format before timing anything; one that fails is left to fail its passes."""
    for loader in loaders:
        try:
            loader.files()
        except Exception as err:  # noqa: BLE001 - the contender's first pass records it
            log.error("%s: building its data failed: %s", loader.name, err)


def mosaic_notes(ws: Workspace) -> list[str]:
    return [ws.mosaic.version_note()] if "mosaic" in ws.__dict__ and ws.mosaic.info else []


def _identity(n: int) -> int:
    return n


def limit_contenders(ws: Workspace) -> list[harness.Contender]:
    blobs = [p.read_bytes() for p in ws.src.image_files]
    return [harness.Contender(LIMIT_PIL, lambda: limits.augment_in_memory(blobs, "pil", ws.cfg.cores), _identity,
                              expected=len(blobs)),
            harness.Contender(LIMIT_UINT8, lambda: limits.augment_in_memory(blobs, "torchcodec", ws.cfg.cores),
                              _identity, expected=len(blobs))]


def _setting(ws: Workspace, extra: str = "") -> str:
    c = ws.cfg
    return (f"{c.images} JPEGs (300-500 px, q90, {ws.src.image_bytes / c.images / 1e3:.0f} KB avg), "
            f"{c.classes} classes, batch {c.batch_size}, num_workers={c.num_workers}, shuffled, "
            f"{len(ws.shardkit_image_shards)} shards; median of {c.rounds}{extra}")


def warm(ws: Workspace) -> list[dict[str, Any]]:
    loaders, skipped = image_loaders(ws, all_peers=True)
    build_all(loaders)
    contenders = [l.contender(ws) for l in loaders] + limit_contenders(ws)
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    return [ratio_section("images_warm", "Images, warm page cache", "img/s", outcomes, BASELINE,
                          notes=[_setting(ws), f"Every contender delivers normalised float32 "
                                 f"{ws.cfg.batch_size}×3×224×224 batches; limits run the same per-image work with no loader, one "
                                 "torch thread per core. RSS adds main and workers (shared pages "
                                 "counted in each)."] + mosaic_notes(ws),
                          skipped=skipped)]


def cold(ws: Workspace) -> list[dict[str, Any]]:
    loaders, skipped = image_loaders(ws, all_peers=True)
    build_all(loaders)
    outcomes = harness.compare([l.contender(ws, cold=True) for l in loaders], ws.cfg.rounds)
    return [ratio_section("images_cold", "Images, cold page cache", "img/s", outcomes, BASELINE,
                          notes=[_setting(ws, "; each contender's files evicted with "
                                          "posix_fadvise(DONTNEED) before each run")] + mosaic_notes(ws),
                          skipped=skipped)]


def bandwidth(ws: Workspace) -> list[dict[str, Any]]:
    """Sequential read of the shards and of the ImageFolder files, warm and evicted (MB/s)."""
    def reader(name, files, cold):
        return harness.Contender(name, lambda: limits.read_sequentially(files()), lambda n: n / 1e6,
                                 prepare=(lambda: harness.evict(files())) if cold else None)

    shards, tree = (lambda: ws.shardkit_image_shards), (lambda: ws.src.image_files)
    shards()  # converted before anything is timed
    contenders = [reader("shards, warm", shards, False), reader("shards, cold", shards, True),
                  reader("ImageFolder files, warm", tree, False), reader("ImageFolder files, cold", tree, True)]
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    return [ratio_section("read_bandwidth", "Raw read bandwidth (one reader, 1 MiB reads)", "MB/s", outcomes,
                          None, per=1, per_unit="MB")]


def sweep(ws: Workspace) -> list[dict[str, Any]]:
    """The baseline and the recommended pipeline at num_workers 0 … 2 × cores."""
    names = [BASELINE, RECOMMENDED]
    contenders = []
    for workers in ws.cfg.sweep_workers:
        loaders = {l.name: l for l in image_loaders(ws, num_workers=workers)[0]}
        contenders += [harness.Contender(f"{name} @ {workers}", loaders[name].run, count_images,
                                         expected=ws.cfg.images) for name in names]
    outcomes = harness.compare(contenders, ws.cfg.sweep_rounds)
    rows = []
    for name in names:
        summaries = [outcomes[f"{name} @ {w}"].summary(None) for w in ws.cfg.sweep_workers]
        rows.append({"contender": name, "values": [s.get("median") for s in summaries],
                     "errors": [s.get("error") for s in summaries]})
    return [{"id": "workers_sweep", "kind": "matrix", "title": "num_workers sweep (img/s, warm)",
             "unit": "img/s", "columns": [f"{w} worker{'' if w == 1 else 's'}" for w in ws.cfg.sweep_workers],
             "x": list(ws.cfg.sweep_workers), "rows": rows,
             "notes": [f"{ws.cfg.images} images, batch {ws.cfg.batch_size}; median of {ws.cfg.sweep_rounds}",
                       "at 0 workers everything runs in the main process with torch's default intra-op "
                       "threads (one per core), which contend with any other load on the machine"]}]


def memory(ws: Workspace) -> list[dict[str, Any]]:
    """Peak RSS (main + workers) of each epoch of one persistent-worker recommended loader."""
    loader = shardkit_peer.recommended_loader(ws.shardkit_images, ws.cfg.batch_size, ws.cfg.num_workers)
    peaks, seen = [], 0
    for _ in range(ws.cfg.memory_epochs):
        with harness.RSSSampler() as sampler:
            for batch in loader:
                seen += count_images(batch)
        peaks.append(sampler.peak / 2**20)
        log.info("  epoch %d: peak RSS %.0f MB", len(peaks), peaks[-1])
    del loader
    expected = ws.cfg.memory_epochs * ws.cfg.images
    growth = peaks[-1] - min(peaks[: max(1, len(peaks) // 4)])
    return [{"id": "memory_epochs", "kind": "series", "title": f"shardkit RSS over {len(peaks)} epochs",
             "unit": "MB", "contender": RECOMMENDED, "values": peaks,
             "summary": {"first": peaks[0], "last": peaks[-1], "max": max(peaks), "growth_mb": growth,
                         "samples": seen, "expected_samples": expected},
             "notes": [f"persistent workers, num_workers={ws.cfg.num_workers}, batch {ws.cfg.batch_size}; "
                       f"RSS of main + workers sampled every 0.1 s; growth = last epoch's peak minus the "
                       f"lowest peak of the first quarter"]}]


RESUME_FRESH = "shardkit recommended, a fresh epoch: the loader's first batches"
RESUME_HALF = "the same, resumed halfway through the epoch: load_state_dict, then the first batches"


def resume(ws: Workspace) -> list[dict[str, Any]]:
    """What a resume costs: the time from ``load_state_dict`` to the first batches, halfway through
    an epoch, against a fresh start (workers start in both)."""
    b, w = ws.cfg.batch_size, ws.cfg.num_workers

    def loader():
        return shardkit_peer.recommended_loader(ws.shardkit_images, b, w)

    half = loader()
    take = min(4, len(half) - len(half) // 2)  # batches timed after the start
    it = iter(half)
    for _ in range(len(half) // 2):
        next(it)
    state = half.state_dict()
    del it, half

    def first(restore: bool):
        device_loader = loader()
        if restore:
            device_loader.load_state_dict(state)
        it = iter(device_loader)
        for _ in range(take):
            yield next(it)

    contenders = [harness.Contender(RESUME_FRESH, lambda: first(False), count_images, expected=take * b),
                  harness.Contender(RESUME_HALF, lambda: first(True), count_images, expected=take * b)]
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    return [ratio_section("images_resume", "Resuming mid-epoch: time to the first batches", "img/s", outcomes,
                          RESUME_FRESH, show_first=True,
                          notes=[_setting(ws), f"each pass builds the loader (workers start), optionally loads the "
                                 f"state saved after {ws.cfg.images // b // 2} of the epoch's batches, and takes "
                                 f"{take} batches; the rate is over those {take * b} images"])]
