"""The map-style baselines, written as the classic tutorials write them: torchvision's ImageFolder
with PIL transforms in a shuffled DataLoader; one file per HTTP request for the remote scenario;
a JSONL file read line by line for sequences."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import requests
import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets

from ..transforms import pil_train


def image_loader(root: Path, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """ImageFolder + RandomResizedCrop(224)/flip/ToTensor/Normalize, shuffled: the reference."""
    return DataLoader(datasets.ImageFolder(root, pil_train()), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers, pin_memory=pin_memory)


class HTTPImageFolder(Dataset):
    """The same dataset with every image fetched by its own GET (one keep-alive session per process)."""

    def __init__(self, urls: list[str], labels: list[int]):
        self.urls, self.labels, self.transform = urls, labels, pil_train()
        self._session, self._pid = None, None

    def _get(self, url: str) -> bytes:
        if self._pid != os.getpid():  # a session must not cross a fork into the workers
            self._session, self._pid = requests.Session(), os.getpid()
        answer = self._session.get(url, timeout=30)
        answer.raise_for_status()
        return answer.content

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int):
        image = Image.open(io.BytesIO(self._get(self.urls[i]))).convert("RGB")
        return self.transform(image), self.labels[i]


def http_image_loader(base_url: str, root: Path, files: list[Path], batch_size: int,
                      num_workers: int) -> DataLoader:
    """``files`` (under ``root``, laid out as an ImageFolder) fetched from ``base_url``."""
    classes = sorted({p.parent.name for p in files})
    urls = [f"{base_url}/{p.relative_to(root).as_posix()}" for p in files]
    labels = [classes.index(p.parent.name) for p in files]
    return DataLoader(HTTPImageFolder(urls, labels), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers)


class JsonlSequences(Dataset):
    """Map-style JSONL: lines held in memory, ``json.loads`` per item → (int64 tokens, label)."""

    def __init__(self, path: Path):
        self.lines = Path(path).read_text().splitlines()

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int):
        record = json.loads(self.lines[i])
        return torch.tensor(record["tokens"], dtype=torch.int64), record["label"]


def iterate(dataset: Dataset):
    """A map-style dataset read in order, sample by sample (no loader, one process)."""
    return (dataset[i] for i in range(len(dataset)))


def pad_batch(samples):
    """The collate a tutorial writes: ``pad_sequence`` → (padded B×T, lengths B, labels B)."""
    tokens = [t for t, _ in samples]
    return (pad_sequence(tokens, batch_first=True), torch.tensor([len(t) for t in tokens]),
            torch.tensor([label for _, label in samples]))


def padded_loader(path: Path, batch_size: int, num_workers: int) -> DataLoader:
    """Shuffled batches of the JSONL dataset, padded to their longest sequence."""
    return DataLoader(JsonlSequences(path), batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      collate_fn=pad_batch)
