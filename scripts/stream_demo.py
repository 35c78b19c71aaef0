"""Stream one epoch of each demo dataset through shardkit's loader, as a training loop would."""

import sys
import time

import torch
from torchvision.transforms import v2

import shardkit


def main(image_shards: str, sequence_shards: str) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    augment = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])
    images = shardkit.StreamingDataset(image_shards, transform=augment, seed=0)
    loader = shardkit.DeviceLoader(shardkit.make_loader(images, batch_size=32, num_workers=2), device,
                                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    start, seen = time.perf_counter(), 0
    for batch, labels in loader:
        seen += len(labels)
    print(f"[demo] images: one epoch, {seen} samples in batches of {tuple(batch.shape[1:])} {batch.dtype} "
          f"on {device}, {seen / (time.perf_counter() - start):.0f} samples/s (first epoch, workers starting)")

    sequences = shardkit.StreamingDataset(sequence_shards, seed=0)
    loader = shardkit.make_loader(sequences, batch_size=64, num_workers=2)
    start, seen, tokens = time.perf_counter(), 0, 0
    for padded, lengths, labels in loader:
        seen += len(lengths)
        tokens += int(lengths.sum())
    print(f"[demo] sequences: one epoch, {seen} sequences, {tokens} tokens, "
          f"{seen / (time.perf_counter() - start):.0f} sequences/s")


if __name__ == "__main__":
    main(*sys.argv[1:3])
