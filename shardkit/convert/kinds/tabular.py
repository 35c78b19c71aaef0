"""Tabular features and labels (the tutorial's ``TabularDataset``): a ``.npz`` of named arrays, a
``.npy`` of features with a ``.npy`` of labels, or the numeric columns of CSV and Parquet files.

Rows are stored in fixed-width blocks (``blocks.row_layout``: ``features.npy`` B×F float32 and
``labels.npy``), so a shard holds the raw array bytes plus a few hundred bytes per block of about
1 MiB, and the stream yields ``(float32 features [F], int64 label)``. Pass 1 is
:mod:`..tabular_scan`; pass 2 (:class:`RowChunk`) gathers each block's rows in plan order from
pass 1's scratch files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import SourceError
from ...format.blocks import NPY_HEADER, row_layout
from ...format.manifest import Manifest
from ...format.records import sample_key
from ...format.schema import Schema
from ...format.tar import END_OF_ARCHIVE, entry_bytes
from ...storage import is_url
from ..names import relative, source_path
from ..output import ChunkResult
from ..plan import Plan, sample_order
from ..sources import file_stamp, list_data_files
from ..tables import GROUPS_PER_PART, parquet_file
from ..tabular_scan import Part, TabularScan
from .base import InputKind, Listed, Request, all_skipped, shard_infos

#: What the tabular kind reads from a directory or glob (a ``.npy`` only as SRC itself).
FORMATS = {".csv": "csv", ".parquet": "parquet", ".npz": "npz"}
#: Target bytes of features per block: large enough that headers cost nothing (≤ 0.2 %), small
#: enough that a reader's shuffle span holds a few.
BLOCK_ROW_BYTES = 1 << 20
#: Rows of a ``.npy`` per pass-1 task.
PART_ROWS = 1 << 20
#: The bytes a label takes at most in a block (int64; a block stores the smallest dtype that holds it).
_LABEL_BYTES = 8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rows:
    """Pass 1's result: the valid rows, ``count`` per scratch part ``(features, labels, count)``."""

    parts: tuple[tuple[str, str, int], ...]
    width: int
    names: tuple[str, ...] | None
    has_labels: bool
    label_range: tuple[int, int] = (0, 0)
    #: columns that are no features (not numeric) and no label: reported, never converted
    ignored_columns: tuple[str, ...] = ()

    def __len__(self) -> int:
        return sum(n for *_, n in self.parts)


class TabularKind(InputKind):
    name = "tabular"
    reads = "no .csv, .parquet or .npz file"
    reads_remote = False

    def check(self, src, dst, opts) -> None:
        if is_url(src):
            raise SourceError(f"{src}: tabular files are read from a local disk; copy them there first")

    def list(self, src, request: Request) -> Listed:
        labels = request.labels
        if os.path.isfile(src) and src.lower().endswith(".npy"):
            source = list_data_files(src, {".npy": "npy"}, "array", checksum=request.checksum)
            entries = source.listing()
            if labels is not None:
                try:
                    st = os.stat(labels)
                except OSError as err:
                    raise SourceError(f"cannot read the labels {labels}: {err.strerror or err}") from None
                # recorded by name (a path outside SRC plays no part in the digest)
                entries.append((f"labels={relative(labels, source.root)}", st.st_size,
                                file_stamp(labels, st, request.checksum)))
        elif labels is not None:
            raise SourceError(f"--labels goes with a .npy of features; {src} is not one (a .npz names its labels "
                              f"with --label-field, a CSV or Parquet file has a label column)")
        else:
            source = list_data_files(src, FORMATS, "tabular", checksum=request.checksum)
            entries = source.listing()
        return Listed(source.root, entries, data=(source, labels), skipped=source.skipped, ignored=source.ignored)

    def scan_tasks(self, listed, opts, workers, scratch):
        source, labels = listed.data
        tasks = []
        for i, f in enumerate(source.files):
            where = source_path(source.root, f.path)
            if f.fmt == "npy":
                rows = _rows_of(where, f.path)
                for start in range(0, max(rows, 1), PART_ROWS):
                    stop = min(start + PART_ROWS, rows)
                    tasks.append(Part(where, f.path, "npy", i, start, stop, labels, f.size * (stop - start) // max(rows, 1)))
            elif f.fmt == "parquet":
                groups = parquet_file(where, f.path).metadata.num_row_groups
                for start in range(0, max(groups, 1), GROUPS_PER_PART):
                    stop = min(start + GROUPS_PER_PART, groups)
                    tasks.append(Part(where, f.path, "parquet", i, start, stop, None,
                                      f.size * (stop - start) // max(groups, 1)))
            else:
                tasks.append(Part(where, f.path, f.fmt, i, nbytes=f.size))
        return [TabularScan(part, scratch, opts.features_field, opts.label_field, opts.fields, opts.allow_nan)
                for part in tasks]

    def plan(self, listed, scans, opts, digest):
        skipped = list(listed.skipped) + [e for s in scans for e in s.skipped]
        kept = [s for s in scans if s.count]
        widths = {(s.width, tuple(s.names) if s.names is not None else None) for s in kept}
        if len({w for w, _ in widths}) > 1:
            raise SourceError(f"the files of {listed.root} have different numbers of features "
                              f"({', '.join(str(w) for w in sorted({w for w, _ in widths}))}); convert them apart")
        if len({s.has_labels for s in kept}) > 1:
            raise SourceError(f"some files of {listed.root} have labels ({opts.label_field!r}) and some do not")
        width = kept[0].width if kept else 0
        if kept and width == 0:
            raise SourceError(f"{listed.root}: no feature column (every column but the label is a feature, or "
                              f"those named by --fields)")
        names = next((n for _, n in widths if n is not None), None)
        rows = Rows(tuple((s.features, s.labels, s.count) for s in kept), width, names,
                    bool(kept) and kept[0].has_labels,
                    (min((s.label_range[0] for s in kept), default=0), max((s.label_range[1] for s in kept), default=0)),
                    tuple(sorted({c for s in scans for c in s.ignored_columns})))
        if rows.ignored_columns:
            log.warning("%s: ignored the columns that are not numeric: %s (name the features with --fields)",
                        listed.root, ", ".join(rows.ignored_columns))
        order = sample_order(len(rows), opts)
        shard_starts, block_starts = cut_rows(len(rows), width, opts.max_shard_size, opts.max_shard_samples)
        return Plan("tabular", opts, digest, order, shard_starts, skipped, source=rows, block_starts=block_starts)

    def shard_tasks(self, plan, index):
        rows = plan.source
        return [RowChunk(rows.parts, rows.width, start, plan.order[start:end])
                for start, end in plan.shard_blocks(index)]

    def manifest(self, plan, records):
        rows = plan.source
        stats: dict[str, Any] = {"rows": len(rows), "features": rows.width, "dtype": "float32",
                                 "feature_names": list(rows.names) if rows.names is not None else None,
                                 "has_labels": rows.has_labels, "label_field": plan.options.label_field,
                                 "ignored_columns": list(rows.ignored_columns)}
        if rows.has_labels and len(rows):
            stats["labels"] = {"min": rows.label_range[0], "max": rows.label_range[1]}
        return Manifest(kind="tabular", schema=Schema.tabular(rows.width), shards=shard_infos(records),
                        params=plan.options.as_params(), skipped=all_skipped(plan, records), stats=stats)


def _rows_of(path, name: str) -> int:
    try:
        return int(np.load(os.fsdecode(path), mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError, IndexError) as err:
        raise SourceError(f"cannot read the array {name}: {err}") from None


def block_cost(rows: int, width: int) -> int:
    """Tar bytes of a block of ``rows`` rows, at most (the labels counted as int64)."""
    return entry_bytes(NPY_HEADER + rows * width * 4) + entry_bytes(NPY_HEADER + rows * _LABEL_BYTES)


def cut_rows(n: int, width: int, max_bytes: int, max_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(shard starts plus the end, block starts)`` for ``n`` rows of ``width`` float32 features:
    blocks of about :data:`BLOCK_ROW_BYTES`, shards closed before a block would take them over
    ``max_bytes`` or ``max_samples`` (a single row larger than ``max_bytes`` gets a shard of its own)."""
    per_block = max(1, BLOCK_ROW_BYTES // max(width * 4, 1))
    shard_starts, block_starts, s = [0], [], 0
    while s < n:
        budget = max_bytes - len(END_OF_ARCHIVE)
        limit = n if max_samples is None else min(n, s + max_samples)
        first = True
        while s < limit:
            k = min(per_block, limit - s)
            if block_cost(k, width) > budget:
                lo, hi = 0, k  # the most rows that fit: block_cost grows with the rows
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if block_cost(mid, width) <= budget else (lo, mid - 1)
                k = lo or (1 if first else 0)
                if not k:
                    break
            block_starts.append(s)
            budget -= block_cost(k, width)
            s, first = s + k, False
        shard_starts.append(s)
    return np.array(shard_starts if n else [0], np.int64), np.array(block_starts, np.int64)


@dataclass(frozen=True)
class RowChunk:
    """A pass-2 task: the block at ``position``, whose rows are ``indices`` (in plan order) of
    the concatenation of the scratch ``parts``."""

    parts: tuple[tuple[str, str, int], ...]
    width: int
    position: int
    indices: np.ndarray

    def __call__(self) -> ChunkResult:
        ends = np.cumsum([n for *_, n in self.parts])
        part = np.searchsorted(ends, self.indices, side="right")
        local = self.indices - np.concatenate([[0], ends])[part]
        features = np.empty((len(self.indices), self.width), np.float32)
        labels = np.empty(len(self.indices), np.int64)
        for p in np.unique(part):
            features_path, labels_path, count = self.parts[p]
            mine = part == p
            rows = local[mine]
            features[mine] = np.memmap(features_path, np.float32, "r", shape=(count, self.width))[rows]
            labels[mine] = np.memmap(labels_path, np.int64, "r", shape=(count,))[rows]
        members = row_layout(self.width).members(sample_key(self.position), {"features": features, "label": labels})
        return ChunkResult(members, len(labels), [], features.nbytes, [len(labels)])


__all__ = ["RowChunk", "TabularKind", "cut_rows"]
