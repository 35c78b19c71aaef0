"""Crop-aware decoding against full decoding + RandomResizedCrop, one process, one torch thread.

    python benchmarks/crop_decode.py [--images 200] [--repeats 3] [--device cuda]

Measures images per second of
  (a) torchcodec full decode + ``v2.RandomResizedCrop(224, antialias=True)`` (the full-decode limit),
  (b) PIL full decode (shardkit's PIL fallback) + the same,
  (c) ``shardkit.RandomResizedCropDecode(224)``,
  (d) the deferred path: worker side (header + box + collate) and ``decode_crop_batch`` on
      ``--device`` (batches of 64), and on CUDA (e) one ``roi_align`` over a padded batch
      instead of per-image resizes, for comparison,
on three generated sets (kept under benchmarks/scratch/crop_decode/): 1200-1600 px photos at
quality 90 lightly blurred (about 200-250 KB, like camera photos), the same unblurred (pixel
noise: about 450 KB, entropy decoding dominates), and 300-500 px photos (the main benchmark's
set). Each figure is the median of ``--repeats`` passes, per second of the process's CPU time
(see ``rates``); every pipeline sees the same seeds, so the same boxes. The mean absolute
difference of (c) from (a) is printed as a sanity check.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torchcodec.decoders import decode_jpeg  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from shardkit.stream.batch_decode import collate_crops, decode_crop_batch  # noqa: E402
from shardkit.stream.crop import RandomResizedCropDecode  # noqa: E402
from shardkit.stream.decode import _decode_with_pil  # noqa: E402
from tests.datagen import natural_image  # noqa: E402

SIZE = 224
BATCH = 64
#: name → (smallest side, largest side, Gaussian blur radius or 0)
SETS = {"large 1200-1600 px": (1200, 1600, 0.8), "large, noisy": (1200, 1600, 0.0), "small 300-500 px": (300, 500, 0.0)}


def _photo(job: tuple[int, int, int, float]) -> bytes:
    index, low, high, blur = job
    rng = np.random.default_rng([7, index])
    width, height = rng.integers(low, high + 1, 2).tolist()
    image = Image.fromarray(natural_image(rng, width, height))
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def photos(folder: Path, n: int, low: int, high: int, blur: float) -> list[bytes]:
    """``n`` JPEGs generated once into ``folder`` (reused while it holds them all)."""
    paths = [folder / f"{i:05d}.jpg" for i in range(n)]
    if not all(p.exists() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        with multiprocessing.get_context("fork").Pool() as pool:
            for path, data in zip(paths, pool.imap(_photo, [(i, low, high, blur) for i in range(n)], chunksize=4)):
                path.write_bytes(data)
    return [p.read_bytes() for p in paths]


def rates(runs: dict[str, Callable[[], object]], images: int, repeats: int) -> dict[str, float]:
    """Median images per second of this process's CPU time (one thread: on an idle machine the
    wall-clock rate; on a shared one, what a core delivers when it runs) of each run over
    ``repeats`` passes, the runs taking turns within a pass, after one warm-up pass."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats + 1):
        for name, run in runs.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    return {name: images / statistics.median(t[1:]) for name, t in times.items()}


def seeded(one: Callable[[bytes], object], images: list[bytes]) -> Callable[[], None]:
    # the generator's own manual_seed, as StreamingDataset seeds it (torch.manual_seed costs 120 µs more)
    def run() -> None:
        for k, data in enumerate(images):
            torch.default_generator.manual_seed(k)
            one(data)
    return run


def pil_tensor(data: bytes) -> torch.Tensor:
    """shardkit's own PIL path (decode_image's fallback)."""
    return _decode_with_pil(data, None, None)


def roi_align_batch(batch, device) -> torch.Tensor:
    """(e): the batch decoded with nvJPEG, padded into one float tensor, cropped and resized by one
    ``roi_align`` (adaptive sampling: a box average per output pixel)."""
    from torchvision.ops import roi_align
    meta = batch.meta.tolist()
    images = decode_jpeg([batch.data[r[0]:r[1]] for r in meta], device=device)
    height, width = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
    padded = torch.zeros((len(images), 3, height, width), dtype=torch.float32, device=device)
    for k, im in enumerate(images):
        padded[k, :, :im.shape[1], :im.shape[2]] = im
    boxes = torch.tensor([[k, r[3], r[2], r[3] + r[5], r[2] + r[4]] for k, r in enumerate(meta)],
                         dtype=torch.float32, device=device)
    out = roi_align(padded, boxes, (SIZE, SIZE), aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scratch", type=Path, default=ROOT / "benchmarks" / "scratch" / "crop_decode")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    rrc = v2.RandomResizedCrop(SIZE, antialias=True)
    fused = RandomResizedCropDecode(SIZE)
    deferred = fused.deferred()
    print(f"# crop-aware decoding, {platform.processor() or platform.machine()}, {args.images} images, "
          f"median of {args.repeats}, 1 torch thread, images per CPU second")
    import PIL
    import torchcodec
    import torchvision
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, torchcodec {torchcodec.__version__}, "
          f"Pillow {PIL.__version__}\n")
    print("| set | KB/image | (a) torchcodec + RRC | (b) PIL + RRC | (c) RandomResizedCropDecode | (c)/(a) "
          "| (d) worker side | (d) decode_crop_batch " + ("| (e) roi_align " if device.type == "cuda" else "")
          + "| mean abs diff (c)-(a) |")
    print("|---" * (10 if device.type == "cuda" else 9) + "|")
    for name, (low, high, blur) in SETS.items():
        images = photos(args.scratch / f"{low}-{high}-blur{blur}", args.images, low, high, blur)
        kb = sum(map(len, images)) / len(images) / 1000

        def worker_side(images=images) -> list:
            samples = []
            for k, data in enumerate(images):
                torch.default_generator.manual_seed(k)
                samples.append(deferred(data))
            return [collate_crops(samples[i:i + BATCH]) for i in range(0, len(samples), BATCH)]
        batches = worker_side()

        def on_device(decode, batches=batches) -> Callable[[], None]:
            def run() -> None:
                for batch in batches:
                    decode(batch, device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            return run
        runs = {"a": seeded(lambda d: rrc(decode_jpeg(d)), images), "b": seeded(lambda d: rrc(pil_tensor(d)), images),
                "c": seeded(fused, images), "d worker": worker_side, "d batch": on_device(decode_crop_batch)}
        if device.type == "cuda":
            runs["e"] = on_device(roi_align_batch)
        r = rates(runs, len(images), args.repeats)
        diffs = []
        for k, data in enumerate(images[:20]):
            torch.default_generator.manual_seed(k)
            reference = rrc(decode_jpeg(data))
            torch.default_generator.manual_seed(k)
            diffs.append((fused(data).float() - reference.float()).abs().mean().item())
        row = [name, f"{kb:.0f}", *(f"{r[k]:.0f}" for k in "abc"), f"{r['c'] / r['a']:.2f}×",
               f"{r['d worker']:.0f}", f"{r['d batch']:.0f}", *([f"{r['e']:.0f}"] if "e" in r else []),
               f"{statistics.mean(diffs):.2f}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
