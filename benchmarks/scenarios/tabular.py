"""Tabular rows: a NumPy table of float32 features and int64 labels, read as shuffled batches of
64 with the same num_workers: the classic tutorial's map-style ``TabularDataset`` against LitData
storing the same rows."""

from __future__ import annotations

from typing import Any

import torch

from .. import harness
from ..contenders import baseline, litdata_peer
from ..workspace import Workspace
from . import ratio_section

BASELINE = "map-style TabularDataset (torch.tensor per row) + DataLoader(shuffle=True)"
LITDATA = "litdata optimize (one item per row) + StreamingDataLoader, shuffled"
TABLE_BATCH = 64  # the tutorials' batch, whatever the image batch of the run

# shardkit's contender (named-field samples: the rows written as shards of float32 / int64 fields,
# e.g. shardkit.ShardWriter(dst, max_shard_samples=N) with w.write({"x.npy": row, "y.cls": label})
# or a tabular converter, then shardkit.StreamingDataset(dst, shuffle=True) + make_loader(ds, 64,
# num_workers=w)) is added here by the lead once those exist; it must deliver the batches count_rows checks.


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
                                 "LitData holds one item per row, as a user optimizes a table row by row: each "
                                 "item is deserialised on its own in the workers",
                                 "shardkit is not measured yet (its contender comes with named-field samples)"])]
