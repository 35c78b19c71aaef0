"""Tabular rows: a NumPy table of float32 features and int64 labels, read as shuffled batches of
64 with the same num_workers: the classic tutorial's map-style ``TabularDataset`` against shardkit
(the ``.npy`` converted with ``shardkit convert --kind tabular``, as a user would) and LitData
storing the same rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .. import harness
from ..contenders import baseline, litdata_peer
from ..workspace import Workspace
from . import ratio_section

BASELINE = "map-style TabularDataset (torch.tensor per row) + DataLoader(shuffle=True)"
SHARDKIT = "shardkit convert --kind tabular + StreamingDataset + make_loader(64), shuffled"
LITDATA = "litdata optimize (one item per row) + StreamingDataLoader, shuffled"
TABLE_BATCH = 64  # the tutorials' batch, whatever the image batch of the run


def convert_table(x_path: Path, y_path: Path, dst: Path) -> Path:
    """``shardkit convert --kind tabular X.npy DST --labels y.npy``, in its own process as a user
    runs it (untimed; a finished conversion is recognised and kept)."""
    if not (dst / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "shardkit", "convert", "--kind", "tabular", str(x_path), str(dst),
                        "--labels", str(y_path), "--no-progress"], check=True, capture_output=True)
    return dst


def shardkit_loader(dst: Path, batch_size: int, num_workers: int):
    import shardkit

    dataset = shardkit.StreamingDataset(dst, shuffle=True, seed=0)
    return shardkit.make_loader(dataset, batch_size, num_workers=num_workers)


def count_rows(batch) -> int:
    """Rows in a batch, after checking it holds float32 B×F features and B int64 labels
    (``(x, y)`` or ``{"x": ..., "y": ...}``)."""
    x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
    if x.dtype != torch.float32 or x.ndim != 2 or y.dtype != torch.int64 or len(y) != len(x):
        raise TypeError(f"expected float32 B×F rows and B int64 labels, got {x.dtype} {tuple(x.shape)}, "
                        f"{y.dtype} {tuple(y.shape)}")
    return len(y)


def tabular(ws: Workspace) -> list[dict[str, Any]]:
    x_path, y_path = ws.table
    rows, w = ws.cfg.tabular_rows, ws.cfg.num_workers
    why = litdata_peer.available()
    contenders = [harness.Contender(BASELINE, lambda: baseline.tabular_loader(x_path, y_path, TABLE_BATCH, w),
                                    count_rows, expected=rows)]
    converted = convert_table(x_path, y_path, ws.work / "shardkit-table")  # built before anything is timed
    contenders.append(harness.Contender(SHARDKIT, lambda: shardkit_loader(converted, TABLE_BATCH, w), count_rows,
                                        expected=rows))
    if why:
        contenders.append(harness.failing(LITDATA, why))
    else:
        ws.litdata_table  # built before anything is timed
        contenders.append(harness.Contender(LITDATA, lambda: litdata_peer.table_loader(ws.litdata_table, TABLE_BATCH, w),
                                            count_rows, expected=rows))
    outcomes = harness.compare(contenders, ws.cfg.tabular_rounds)
    return [ratio_section("tabular", "Tabular rows, shuffled batches", "rows/s", outcomes, BASELINE,
                          per=100_000, per_unit="100,000 rows",
                          notes=[f"{rows:,} rows × {ws.cfg.tabular_features} float32 + an int64 label (NumPy "
                                 f".npy, {rows * ws.cfg.tabular_features * 4 / 1e6:.1f} MB, in memory for the "
                                 f"baseline), batch {TABLE_BATCH}, num_workers={w}; median of {ws.cfg.tabular_rounds}",
                                 "shardkit: the .npy converted by `shardkit convert --kind tabular X.npy DST "
                                 "--labels y.npy` (row blocks of about 1 MiB), batches gathered from the blocks",
                                 "LitData holds one item per row, as a user optimizes a table row by row: each "
                                 "item is deserialised on its own in the workers"])]
