"""MosaicML Streaming's side of the benchmark, run by ``mosaic_peer`` in the side virtual
environment (``python -m benchmarks.contenders.mosaic_side``): it writes MDS shards with
``MDSWriter`` and times passes of ``StreamingDataset`` with the harness's own :func:`measure`, so
the figures are taken exactly as in the main process, without this process's start and imports.

Protocol: one JSON request per line on stdin, ``{"op": ..., "args": {...}}``; one JSON answer per
line on the original stdout, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
Anything the libraries print goes to stderr.

Set up fairly (see shared/PEERS.md): ``batch_size`` is given (it refuses to iterate without),
``predownload`` covers the whole pass (its default, 8 × batch, throttles per-sample reads with
7 ms sleeps), and ``clean_stale_shared_memory()`` runs before each pass."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from streaming import MDSWriter, StreamingDataLoader, StreamingDataset
from streaming.base.util import clean_stale_shared_memory

from benchmarks import harness
from benchmarks.transforms import Normalize, count_images, pil_train, uint8_train


def write_images(files: list[str], labels: list[int], out: str, encoding: str, size_limit: int) -> str:
    """``jpeg``: MDS's JPEG column (the file's own bytes are stored, read back as a PIL image);
    ``bytes``: the raw bytes, decoded by the reader."""
    with MDSWriter(out=out, columns={"image": encoding, "label": "int"}, size_limit=size_limit) as writer:
        for path, label in zip(files, labels):
            image = Image.open(path) if encoding == "jpeg" else Path(path).read_bytes()
            writer.write({"image": image, "label": label})
    return out


def write_sequences(jsonl: str, out: str) -> str:
    """int32 token arrays and labels, as the main process's JSONL holds them."""
    with MDSWriter(out=out, columns={"tokens": "ndarray:int32", "label": "int"}, size_limit=64 << 20) as writer, \
            open(jsonl) as lines:
        for record in map(json.loads, lines):
            writer.write({"tokens": np.asarray(record["tokens"], dtype=np.int32), "label": record["label"]})
    return out


class PILImages(StreamingDataset):
    """MDS ``jpeg`` column → the baseline's PIL training transform, in the workers."""

    def __init__(self, **options):
        super().__init__(**options)
        self.transform = pil_train()

    def __getitem__(self, index: int):
        sample = super().__getitem__(index)
        return self.transform(sample["image"].convert("RGB")), sample["label"]


class Uint8Images(StreamingDataset):
    """Raw bytes → torchcodec decoding + uint8 v2 crop/flip in the workers."""

    def __init__(self, **options):
        super().__init__(**options)
        self.transform = uint8_train()

    def __getitem__(self, index: int):
        from torchcodec.decoders import decode_jpeg

        sample = super().__getitem__(index)
        raw = torch.frombuffer(bytearray(sample["image"]), dtype=torch.uint8)
        return self.transform(decode_jpeg(raw)), sample["label"]


def _images(data: str, batch_size: int, num_workers: int, variant: str, seed: int, predownload: int):
    kind = Uint8Images if variant == "uint8" else PILImages
    dataset = kind(local=data, shuffle=True, shuffle_seed=seed, batch_size=batch_size, predownload=predownload)
    loader = StreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    if variant != "uint8":
        return loader
    normalize = Normalize()
    return ((normalize(images), labels) for images, labels in loader)


def _sequences(data: str, predownload: int):
    dataset = StreamingDataset(local=data, shuffle=False, batch_size=1, predownload=predownload)
    return ((torch.from_numpy(s["tokens"].astype(np.int64)), s["label"]) for s in dataset)


def _pad(samples):
    """The benchmark's pad collate (``baseline.pad_batch``) over MDS samples."""
    from torch.nn.utils.rnn import pad_sequence

    tokens = [torch.from_numpy(s["tokens"].astype(np.int64)) for s in samples]
    return (pad_sequence(tokens, batch_first=True), torch.tensor([len(t) for t in tokens]),
            torch.tensor([s["label"] for s in samples]))


def _padded(data: str, batch_size: int, predownload: int):
    dataset = StreamingDataset(local=data, shuffle=False, batch_size=batch_size, predownload=predownload)
    return StreamingDataLoader(dataset, batch_size=batch_size, collate_fn=_pad, num_workers=0)


def measure(kind: str, **spec) -> dict:
    """One timed pass (the dataset built on the clock, as every contender's loader is)."""
    clean_stale_shared_memory()
    if kind == "images":
        m = harness.measure(lambda: _images(**spec), count_images)
    elif kind == "sequences":
        m = harness.measure(lambda: _sequences(**spec), lambda item: 1)
    elif kind == "padded":
        m = harness.measure(lambda: _padded(**spec), lambda batch: len(batch[1]))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return dataclasses.asdict(m)


def versions() -> dict:
    import streaming

    return {"mosaicml-streaming": streaming.__version__, "numpy": np.__version__, "torch": torch.__version__}


OPS = {"write_images": write_images, "write_sequences": write_sequences, "measure": measure, "versions": versions}


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the libraries print must not mix with the answers
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"ok": True, "result": OPS[request["op"]](**request.get("args", {}))}
        except Exception as err:  # noqa: BLE001 - sent back to the main process, which records it
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
