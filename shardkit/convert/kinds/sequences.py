"""Token sequences in ``.jsonl``/``.txt`` files: two passes (:mod:`..sequences`), token blocks of the
dataset's smallest unsigned dtype, the length statistics in the manifest."""

from __future__ import annotations

import dataclasses

import numpy as np

from ...errors import SourceError
from ...format.manifest import Manifest
from ...format.schema import Schema
from ...storage import is_url
from ..plan import plan_sequences
from ..sequences import BlockChunk, merge_scans, scan_ranges
from ..sources import list_sequences
from .base import InputKind, Request, all_skipped, shard_infos


class SequencesKind(InputKind):
    name = "sequences"
    reads = "no .jsonl or .txt file"
    empty_hint = "; if these lines are the rows of a table, pass --kind table"
    reads_remote = False

    def check(self, src, dst, opts) -> None:
        if is_url(src):
            raise SourceError(f"{src}: sequence files are read at random offsets, which remote storage does "
                              f"not serve well; copy them to a local disk first")

    def list(self, src, request: Request):
        return list_sequences(src, checksum=request.checksum)

    def scan_tasks(self, listed, opts, workers, scratch):
        return scan_ranges(listed, opts.tokens_field, opts.label_field, workers)

    def plan(self, listed, scans, opts, digest):
        table, skipped = merge_scans(listed, scans)
        return plan_sequences(table, opts, digest, list(listed.skipped) + skipped)

    def shard_tasks(self, plan, index):
        table, opts = plan.source, plan.options
        tasks = []
        for start, end in plan.shard_blocks(index):
            rows = plan.order[start:end]
            used, local = np.unique(table.file[rows], return_inverse=True)  # send only the files it reads
            files = tuple((table.source.files[i].path, table.source.files[i].fmt) for i in used)
            block = (start, local.astype(np.int32), table.offset[rows], table.nbytes[rows], table.ntokens[rows],
                     table.labels[rows] if table.has_labels else None)
            tasks.append(BlockChunk(table.source.root, files, (block,), table.dtype.name, opts.tokens_field,
                                    opts.label_field))
        return tasks

    def manifest(self, plan, records):
        table = plan.source
        ordered = table.ntokens[plan.order]
        shards = [dataclasses.replace(s, tokens=int(ordered[plan.shard_starts[i]:plan.shard_starts[i + 1]].sum()))
                  for i, s in enumerate(shard_infos(records))]
        manifest = Manifest(kind="sequences", schema=Schema.sequences(table.dtype.name), shards=shards,
                            params=plan.options.as_params(), skipped=all_skipped(plan, records))
        lengths = table.ntokens
        stats = {"min": 0, "max": 0, "mean": 0.0, "median": 0.0, "p99": 0.0}
        if len(lengths):
            stats = {"min": int(lengths.min()), "max": int(lengths.max()), "mean": round(float(lengths.mean()), 3),
                     "median": round(float(np.median(lengths)), 3),
                     "p99": round(float(np.percentile(lengths, 99)), 3)}
        manifest.sequences = {"dtype": table.dtype.name, "tokens": int(lengths.sum()),
                              "has_labels": table.has_labels, "tokens_field": plan.options.tokens_field,
                              "label_field": plan.options.label_field, "length": stats}
        return manifest
