"""LitData (optional extra ``bench``): ``optimize`` into its chunk format, then its
``StreamingDataset`` and ``StreamingDataLoader``.

Set up fairly (see shared/PEERS.md): ``optimize`` uses the spawn start method (run.py has the
``__main__`` guard) and writes scratch folders under $TMPDIR unless told otherwise, so they are
pointed into the benchmark's scratch folder."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch

from ..transforms import Normalize, PILFromBytes, uint8_train


def available() -> str | None:
    """``None`` when litdata can be used, else why not."""
    try:
        import litdata  # noqa: F401
    except ImportError as err:
        return f"litdata cannot be imported ({err}): pip install litdata, or shardkit's extra 'bench'"
    return None


def _image_record(item: tuple[str, int]) -> dict:
    path, label = item
    return {"image": Path(path).read_bytes(), "label": label}


def _sequence_record(item: tuple[list[int], int]) -> dict:
    tokens, label = item
    return {"tokens": np.asarray(tokens, dtype=np.int32), "label": label}


def _table_rows(item: tuple[str, str, int, int]):
    x_path, y_path, start, stop = item
    x = np.asarray(np.load(x_path, mmap_mode="r")[start:stop])
    y = np.load(y_path, mmap_mode="r")[start:stop].tolist()
    for row, label in zip(x, y):
        yield {"x": row, "y": label}


def _document_tokens(item: tuple[list[int], int]) -> torch.Tensor:
    return torch.tensor(item[0], dtype=torch.int32)


def _optimize(fn, inputs, out: Path, scratch: Path, chunk_bytes: str | None, workers: int, **options) -> Path:
    import litdata

    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = str(scratch / "cache")
    os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = str(scratch / "data-cache")
    # optimize() sets the start method of the whole process (spawn by default: each of its workers
    # would re-import this benchmark); fork is quicker here, and the previous method is restored so
    # every other loader of the run keeps the platform's default.
    method = multiprocessing.get_start_method(allow_none=True)
    try:
        litdata.optimize(fn=fn, inputs=inputs, output_dir=str(out), chunk_bytes=chunk_bytes,
                         num_workers=workers, verbose=False, mode="overwrite", start_method="fork", **options)
    finally:
        multiprocessing.set_start_method(method, force=True)
    return out


def write_images(files: list[Path], labels: list[int], out: Path, scratch: Path, chunk_bytes: str,
                 workers: int) -> Path:
    """Raw JPEG bytes and labels, in chunks of about ``chunk_bytes``."""
    return _optimize(_image_record, [(str(p), label) for p, label in zip(files, labels)], out, scratch,
                     chunk_bytes, workers)


def write_sequences(records, out: Path, scratch: Path, workers: int) -> Path:
    """int32 token arrays and labels."""
    return _optimize(_sequence_record, list(records), out, scratch, "64MB", workers)


def write_table(x_path: Path, y_path: Path, out: Path, scratch: Path, workers: int, span: int = 50_000) -> Path:
    """One item per row, ``{"x": float32 array, "y": int}``, in 64 MB chunks (``fn`` yields the
    rows of a span of the table, as LitData's docs do for many items per input)."""
    rows = len(np.load(y_path, mmap_mode="r"))
    spans = [(str(x_path), str(y_path), i, min(i + span, rows)) for i in range(0, rows, span)]
    return _optimize(_table_rows, spans, out, scratch, "64MB", workers)


def write_tokens(records, out: Path, scratch: Path, workers: int, chunk_tokens: int) -> Path:
    """Every document's tokens (int32) for ``TokensLoader``: concatenated, ``chunk_tokens`` per chunk."""
    import litdata

    return _optimize(_document_tokens, list(records), out, scratch, None, workers, chunk_size=chunk_tokens,
                     item_loader=litdata.TokensLoader())


class _PILSample:
    def __init__(self):
        self.transform = PILFromBytes()

    def __call__(self, sample: dict):
        return self.transform(sample["image"]), sample["label"]


class _Uint8Sample:
    def __init__(self):
        self.transform = uint8_train()

    def __call__(self, sample: dict):
        from torchcodec.decoders import decode_jpeg

        raw = torch.frombuffer(bytearray(sample["image"]), dtype=torch.uint8)
        return self.transform(decode_jpeg(raw)), sample["label"]


def image_loader(data: Path, batch_size: int, num_workers: int, *, uint8: bool = False, device: str = "cpu",
                 pin_memory: bool = False):
    """Shuffled; the PIL transform in the workers, or (``uint8``) torchcodec decoding + v2 crop
    in the workers and normalisation in the main process (on ``device``)."""
    import litdata

    dataset = litdata.StreamingDataset(str(data), shuffle=True, seed=0,
                                       transform=_Uint8Sample() if uint8 else _PILSample())
    loader = litdata.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         pin_memory=pin_memory)
    if not uint8:
        return loader
    normalize = Normalize(device)
    return ((normalize(images.to(device, non_blocking=True)), labels) for images, labels in loader)


class _Int64Tokens:
    def __call__(self, sample: dict):
        return torch.from_numpy(sample["tokens"]).long(), sample["label"]


def sequences(data: Path):
    """In order, one process: ``(int64 tokens, label)`` per sample."""
    import litdata

    return litdata.StreamingDataset(str(data), shuffle=False, transform=_Int64Tokens())


def padded_sequences(data: Path, batch_size: int, collate):
    """In order, one process: ``StreamingDataLoader`` batches made by ``collate`` (the benchmark's pad)."""
    import litdata

    dataset = litdata.StreamingDataset(str(data), shuffle=False, transform=_Int64Tokens())
    return litdata.StreamingDataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=0)


def table_loader(data: Path, batch_size: int, num_workers: int):
    """Shuffled batches ``{"x": float32 B×F, "y": int64 B}`` (LitData's default collate)."""
    import litdata

    dataset = litdata.StreamingDataset(str(data), shuffle=True, seed=0)
    return litdata.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers)


def token_blocks(data: Path, block_size: int):
    """In order, one process: blocks of ``block_size`` tokens (``TokensLoader``), as int64."""
    import litdata

    dataset = litdata.StreamingDataset(str(data), item_loader=litdata.TokensLoader(block_size=block_size),
                                       shuffle=False)
    return (block.long() for block in dataset)
