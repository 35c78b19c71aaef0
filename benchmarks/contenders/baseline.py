"""The map-style baselines, written as the classic tutorials write them: torchvision's ImageFolder
with PIL transforms in a shuffled DataLoader; one file per HTTP request for the remote scenario;
a JSONL file read line by line for sequences (and cut into fixed blocks, as Hugging Face's
``group_texts`` does, for packing); a NumPy table behind a map-style ``TabularDataset``; the same
ImageFolder read in a random order for random access."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
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
    """The same dataset with every image fetched by its own GET (one keep-alive session per
    process); with ``decode=False`` items are ``(raw bytes, label)``."""

    def __init__(self, urls: list[str], labels: list[int], decode: bool = True):
        self.urls, self.labels, self.transform, self.decode = urls, labels, pil_train(), decode
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
        data = self._get(self.urls[i])
        if not self.decode:
            return data, self.labels[i]
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB")), self.labels[i]


def http_image_folder(base_url: str, root: Path, files: list[Path], decode: bool = True) -> HTTPImageFolder:
    """``files`` (under ``root``, laid out as an ImageFolder) fetched from ``base_url``."""
    classes = sorted({p.parent.name for p in files})
    urls = [f"{base_url}/{p.relative_to(root).as_posix()}" for p in files]
    labels = [classes.index(p.parent.name) for p in files]
    return HTTPImageFolder(urls, labels, decode)


def http_image_loader(base_url: str, root: Path, files: list[Path], batch_size: int,
                      num_workers: int) -> DataLoader:
    """Shuffled training batches of :func:`http_image_folder`."""
    return DataLoader(http_image_folder(base_url, root, files), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def image_folder(root: Path, decode: bool) -> datasets.ImageFolder:
    """torchvision's ImageFolder with no transform: ``(PIL RGB image, label)`` (its default loader
    decodes the file) or, ``decode=False``, ``(raw bytes, label)``."""
    return datasets.ImageFolder(root) if decode else datasets.ImageFolder(root, loader=read_bytes)


def as_list(samples):
    return samples


def random_reads(dataset: Dataset, order: list[int], num_workers: int, batch_size: int):
    """``dataset[i]`` for ``i`` in ``order``: in this process (``num_workers=0``, items are
    samples) or through a DataLoader whose sampler is ``order`` (items are lists of samples)."""
    if num_workers == 0:
        return (dataset[i] for i in order)
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=num_workers, collate_fn=as_list)


class TabularDataset(Dataset):
    """The classic tutorial's table dataset: NumPy arrays in memory, one row per item."""

    def __init__(self, x_path: Path, y_path: Path):
        self.X, self.y = np.load(x_path), np.load(y_path)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return torch.tensor(self.X[i], dtype=torch.float32), torch.tensor(self.y[i], dtype=torch.long)


def tabular_loader(x_path: Path, y_path: Path, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(TabularDataset(x_path, y_path), batch_size=batch_size, shuffle=True, num_workers=num_workers)


def group_texts(path: Path, block_size: int):
    """Fixed blocks of ``block_size`` int64 tokens, documents concatenated in file order and the
    remainder dropped: Hugging Face's ``run_clm`` ``group_texts``, read from the JSONL file."""
    buffer: list[int] = []
    with open(path) as lines:
        for record in map(json.loads, lines):
            buffer.extend(record["tokens"])
            while len(buffer) >= block_size:
                yield torch.tensor(buffer[:block_size], dtype=torch.int64)
                del buffer[:block_size]


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


def padded_loader(path: Path, batch_size: int, num_workers: int, shuffle: bool = True) -> DataLoader:
    """Batches of the JSONL dataset, padded to their longest sequence (shuffled by default)."""
    return DataLoader(JsonlSequences(path), batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=pad_batch)
