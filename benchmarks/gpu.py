"""GPU benchmark: a ResNet-50 training step (torchvision ``resnet50``, random init, bf16 autocast,
channels_last, SGD) fed by each image contender; reports images/s and the fraction of step time
the GPU waits for data.

    python benchmarks/gpu.py --out DIR        # needs a CUDA device; about 6 min on 16 cores + H100 (5.7 measured)

The data set is large enough (32,768 JPEGs) that every worker has many batches to make: the
timed steps sit well inside the epoch, never in its start-up or in the tail where loaders that
split by shard have only some workers left busy.

Every contender runs at num_workers = the CPU count and at a quarter of it (a GPU sharing its
host with others). Writes ``DIR/gpu.json`` and ``DIR/gpu.md``. It refuses to start (exit 2),
naming what is missing, when CUDA or a required package is absent, and exits 1 if any contender
failed. litdata runs when it can be imported; it is listed under "not run" otherwise.

On a machine whose torch is older than shardkit's pin (e.g. torch 2.11), torchcodec 0.12-0.16
works (its ABI is stable from torch 2.11 on); with no package index there, carry wheels for
torchcodec, webdataset, braceexpand and, for litdata, litdata, obstore, boto3, botocore,
s3transfer and jmespath, install them with ``pip install --no-deps --target DIR`` and put DIR on
PYTHONPATH. Run it from the repository root (shardkit is imported from the source tree).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HERE = Path(__file__).resolve().parent
log = logging.getLogger("benchmarks")
REQUIRED = ("torch", "torchvision", "torchcodec", "webdataset", "psutil", "requests", "shardkit.stream.dataset")


def preflight(device: str) -> list[str]:
    """What prevents the run (empty when nothing does)."""
    problems = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any import failure is reported by name
            problems.append(f"cannot import {name}: {type(err).__name__}: {err}")
    if not problems:
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            problems.append(f"no CUDA device: torch {torch.__version__} reports torch.cuda.is_available() == False")
        else:
            try:
                from torchcodec.decoders import decode_jpeg

                decode_jpeg(torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8))
            except Exception as err:  # noqa: BLE001
                problems.append(f"torchcodec cannot decode a JPEG: {type(err).__name__}: {err}")
    return problems


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


class Trainer:
    """ResNet-50, bf16 autocast, channels_last, SGD with momentum; one ``step`` per batch."""

    def __init__(self, device: str):
        import torch
        import torchvision

        torch.backends.cudnn.benchmark = True
        self.torch, self.device = torch, device
        self.model = torchvision.models.resnet50(weights=None).to(device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def step(self, images, labels) -> None:
        torch = self.torch
        with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def to_device(self, batch):
        images, labels = batch[0], batch[1]
        torch = self.torch
        labels = torch.as_tensor(labels)
        return (images.to(self.device, non_blocking=True, memory_format=torch.channels_last),
                labels.to(self.device, non_blocking=True))

    def run(self, batches, warmup: int, steps: int, seconds: float, train: bool = True) -> dict:
        """``warmup`` untimed steps, then up to ``steps`` timed ones (or ``seconds``), each synchronised:
        the time blocked waiting for the next batch is time the GPU sits idle. ``train=False``
        only moves the batches to the device (the loader's own speed on this machine)."""
        it = iter(batches)
        for _ in range(warmup):
            self.step(*self.to_device(next(it)))
        self.sync()
        waited = total = 0.0
        images = done = 0
        deadline = time.perf_counter() + seconds
        for _ in range(steps):
            t0 = time.perf_counter()
            try:
                batch = self.to_device(next(it))
            except StopIteration:
                break
            t1 = time.perf_counter()
            if train:
                self.step(*batch)
            self.sync()
            t2 = time.perf_counter()
            waited, total, images, done = waited + t1 - t0, total + t2 - t0, images + len(batch[1]), done + 1
            if t2 > deadline:
                break
        del it
        if not done:
            return {}
        return {"img_s": images / total, "wait_fraction": waited / total, "steps": done,
                "step_ms": 1e3 * total / done, "data_wait_ms": 1e3 * waited / done}


def synthetic(trainer: Trainer, batch_size: int, count: int):
    """The same random batch, already on the device: the GPU's own speed, no loader at all."""
    torch = trainer.torch
    images = torch.randn(batch_size, 3, 224, 224, device=trainer.device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch_size,), device=trainer.device)
    return ((images, labels) for _ in range(count))


def markdown(doc: dict) -> str:
    from benchmarks.machine import one_line

    lines = ["# shardkit GPU benchmark: ResNet-50 training step", "",
             f"Machine: {one_line(doc['machine'])}.  ",
             f"Run {doc['started']}, {doc['duration_s'] / 60:.1f} min; {doc['config']['images']} JPEGs, "
             f"batch {doc['config']['batch_size']}, bf16 autocast, channels_last, one run per row.", "",
             f"GPU alone (the same batch already on the device): **{doc['gpu_only']['img_s']:,.0f} img/s**, "
             f"{doc['gpu_only']['step_ms']:.1f} ms per step.", ""]
    if doc["errors"]:
        lines += ["**Errors:**", ""] + [f"- {e}" for e in doc["errors"]] + [""]
    for workers, rows in doc["results"].items():
        base = rows.get(doc["baseline"], {}).get("img_s")
        lines += [f"## num_workers = {workers}", "",
                  "| contender | img/s training | × baseline | GPU waits for data | step ms | data wait ms "
                  "| loader alone, img/s |", "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error'][:150]} | | | | | |")
                continue
            ratio = f"{r['img_s'] / base:.2f}" if base else "–"
            lines.append(f"| {name} | {r['img_s']:,.0f} | {ratio} | {100 * r['wait_fraction']:.0f} % | "
                         f"{r['step_ms']:.1f} | {r['data_wait_ms']:.1f} | {r['loader_alone_img_s']:,.0f} |")
        lines.append("")
    lines += ["- Each step is synchronised: 'GPU waits' = time blocked on the next batch (and its copy "
              "to the device) / step time. 'loader alone' = the same batches moved to the device with "
              "no training step. Batches are pinned where the loader offers it (pin_memory=True for "
              "the DataLoaders, DeviceLoader's own copy for shardkit)."]
    lines += [f"- not run: {s}" for s in doc["skipped"]]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu.json and gpu.md go")
    parser.add_argument("--scratch", type=Path, default=HERE / "scratch", help="where data is generated")
    parser.add_argument("--images", type=int, default=32_768)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({cores, max(1, cores // 4)}, reverse=True))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0, help="cap on the timed part of one run")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only for a dry run of the script")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    problems = preflight(args.device)
    if problems:
        print("benchmarks/gpu.py cannot run:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    from benchmarks import machine
    from benchmarks.config import Config
    from benchmarks.scenarios.images import BASELINE, image_loaders
    from benchmarks.workspace import Workspace

    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    cores = os.cpu_count() or 1
    cfg = Config("gpu", images=args.images, classes=max(1, min(100, args.images // 50)), sequences=1000, rounds=1, batch_size=args.batch_size,
                 num_workers=max(args.workers), shards=8 * cores, remote_images=0, remote_latency=0.0,
                 sweep_workers=tuple(args.workers), sweep_rounds=1, memory_epochs=0, conversion_rounds=0)
    log.info("data: %d images under %s", cfg.images, args.scratch)
    ws = Workspace(cfg, args.scratch)
    trainer = Trainer(args.device)
    log.info("GPU alone")
    trainer.run(synthetic(trainer, cfg.batch_size, 20), 10, 0, 0)  # cudnn autotuning, untimed
    gpu_only = trainer.run(synthetic(trainer, cfg.batch_size, args.steps), 0, args.steps, args.seconds)
    log.info("  %.0f img/s, %.1f ms per step", gpu_only["img_s"], gpu_only["step_ms"])
    results, errors, skipped = {}, [], []
    for workers in args.workers:
        loaders, skipped = image_loaders(ws, num_workers=workers, device=args.device,
                                         pin_memory=args.device.startswith("cuda"))
        rows = results[str(workers)] = {}
        for loader in loaders:
            try:
                loader.files()  # build its format, untimed
                alone = trainer.run(loader.run(), args.warmup, args.steps, args.seconds, train=False)
                r = rows[loader.name] = trainer.run(loader.run(), args.warmup, args.steps, args.seconds)
                r["loader_alone_img_s"] = alone["img_s"]
                log.info("  %d workers, %-66s %6.0f img/s, GPU waits %3.0f %% (loader alone %.0f img/s)",
                         workers, loader.name, r["img_s"], 100 * r["wait_fraction"], alone["img_s"])
            except Exception as err:  # noqa: BLE001 - recorded, reported, and the exit status says so
                log.error("%s failed:\n%s", loader.name, traceback.format_exc())
                rows[loader.name] = {"error": f"{type(err).__name__}: {err}"}
                errors.append(f"{workers} workers, {loader.name}: {type(err).__name__}: {err}")
    doc = {"name": "gpu", "started": started, "duration_s": time.monotonic() - t0, "machine": machine.describe(),
           "config": {**cfg.as_dict(), "warmup": args.warmup, "steps": args.steps, "seconds": args.seconds},
           "baseline": BASELINE, "gpu_only": gpu_only, "results": results, "errors": errors, "skipped": skipped}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "gpu.md").write_text(markdown(doc))
    print(markdown(doc))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
