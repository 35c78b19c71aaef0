"""``convert(src, dst, ...)``: list → plan → write shards → manifest, resumable and locked."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np

from ..errors import DestinationError, ManifestError, SourceError
from ..format.manifest import MANIFEST_NAME, Manifest, ShardInfo
from ..format.schema import Schema
from ..storage import is_url, join, list_files
from . import execute
from .options import ConvertOptions
from .output import ChunkResult, Destination, ShardRecord
from .owned import named_files
from .plan import Plan, digest, plan_images, plan_sequences
from .pool import WorkerPool
from .progress import progress_bar
from .sequences import ScanRange, merge_scans, scan_ranges
from .sources import detect_kind, list_images, list_sequences, skip_sort_key

log = logging.getLogger(__name__)
#: What convert reads: ImageFolder trees, sequence files.
SOURCE_KINDS = ("images", "sequences")
#: How many skipped entries a strict or empty failure lists.
STRICT_SHOWN = 5


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, kind: str | None = None,
            workers: int | None = None, overwrite: bool = False, progress: bool | None = None,
            storage_options: dict[str, Any] | None = None, scheduler: str | None = None, client: Any = None,
            checksum_sources: bool = False, **options: Any) -> Manifest:
    """Convert an ImageFolder tree or sequence files at ``src`` into tar shards and a manifest in ``dst``.

    ``options`` are the fields of :class:`ConvertOptions` (seed, shuffle, max_shard_size,
    max_shard_samples, resize, quality, validate, strict, tokens_field, label_field). The output is
    byte-identical for any ``workers`` (default: the CPU count, and never more than there are
    tasks; 1 runs in this process). Re-running after an interruption resumes; re-running a
    finished conversion returns its manifest. Whether the sources changed since is told by their
    sizes and modification times, and the content of small files; ``checksum_sources`` hashes every
    file too (it reads the whole source once more). ``progress`` shows a tqdm bar (default: when
    stderr is a terminal). ``scheduler`` (a Dask scheduler address, or ``"local"`` for a
    ``LocalCluster`` of ``workers`` processes) or ``client`` (a ``distributed.Client``) writes the
    shards on a Dask cluster, with the same bytes.

    ``src`` and ``dst`` may be fsspec URLs (``s3://...``; a remote ``src`` holds images), opened
    with ``storage_options``; shards are uploaded as they are finished, the manifest last.

    Files of ``src`` that the kind does not read (non-image files of an ImageFolder tree, other
    files beside sequence files) are logged and counted in ``manifest.source["ignored"]``.

    Returns:
        The manifest written to ``dst/manifest.json``; its ``skipped`` lists every input not converted.
    Raises:
        TypeError: an unknown option (named) or one of the wrong type; ValueError: a bad option value.
        SourceError: ``src`` is missing, holds no data, holds both kinds (pass ``kind``), has a part
            that cannot be read, yields no sample at all, or (``strict=True``) had input to skip.
        DestinationError: ``dst`` is not writable, holds another dataset (unless ``overwrite``) or
            files shardkit did not write where it would write (even with ``overwrite``), is being
            written by another conversion, or ran out of space.
        ShardkitError: the worker processes cannot start.
    """
    opts = ConvertOptions.from_kwargs(options)
    src, dst = (_local_if_file_url(os.fspath(p)) for p in (src, dst))
    if kind is not None and kind not in SOURCE_KINDS:
        raise ValueError(f"kind must be one of {SOURCE_KINDS}, not {kind!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    show = sys.stderr.isatty() if progress is None else progress
    started = time.monotonic()

    # A URL is listed once, for both questions: a LIST of a large prefix is thousands of requests.
    remote_files = list_files(src, storage_options) if is_url(src) and kind != "sequences" else None
    kind = kind or detect_kind(src, storage_options, remote_files=remote_files)
    if kind == "sequences" and is_url(src):
        raise SourceError(f"{src}: sequence files are read at random offsets, which remote storage does "
                          f"not serve well; copy them to a local disk first")
    _refuse_dst_inside_src(src, dst, kind)
    with Destination(dst, storage_options) as out:
        source = (list_images(src, storage_options, remote_files=remote_files, checksum=checksum_sources)
                  if kind == "images" else list_sequences(src, checksum=checksum_sources))
        _report_ignored(src, kind, source.ignored)
        listing = source.listing()
        plan_digest = digest(kind, opts, listing)
        done = _check_destination(out, plan_digest, kind, opts, overwrite)
        if done is not None:
            log.info("%s already holds this conversion; nothing to do", dst)
            return done
        out.start(plan_digest, kind, opts.as_params())
        try:
            plan, records = _plan_and_write(src, kind, source, opts, plan_digest, out, workers, show,
                                            scheduler=scheduler, client=client)
        except BaseException:
            if not out.has_records():  # nothing to resume: leave nothing that would refuse a corrected run
                out.clear_partial()
            raise
        manifest = _manifest(plan, records)
        if not manifest.samples:
            _fail_empty(out, src, kind, manifest.skipped)
        # The digest lets a re-run recognise this conversion (and refuse any other) from the
        # manifest alone; file count and bytes tell a reader what was converted.
        manifest.source = {"files": len(listing), "bytes": sum(max(entry[1], 0) for entry in listing),
                           "digest": plan_digest, "ignored": len(source.ignored)}
        out.write_manifest(manifest.to_json())
    log.info("converted %d samples into %d shards (%d bytes, %d skipped) in %.1f s", manifest.samples,
             len(manifest.shards), manifest.bytes, len(manifest.skipped), time.monotonic() - started)
    return manifest


def _plan_and_write(src: str, kind: str, source, opts: ConvertOptions, plan_digest: str, out: Destination,
                    workers: int, show: bool, **cluster: Any) -> tuple[Plan, list[ShardRecord]]:
    """Plan, then write the shards; with at most as many worker processes as there are tasks."""
    on_dask = cluster["scheduler"] is not None or cluster["client"] is not None

    def write(plan: Plan, pool: WorkerPool) -> list[ShardRecord]:
        return _write_on_dask(plan, out, show, workers=workers, **cluster) if on_dask else _write(plan, out, pool, show)

    if kind == "images":
        plan = plan_images(source, opts, plan_digest)
        _check_plan(plan, out, src)
        # On Dask the shards are written by the cluster; locally a worker takes a whole shard,
        # or a chunk of one when there are fewer shards than workers.
        tasks = plan.num_shards if workers <= plan.num_shards else _chunk_count(plan)
        with WorkerPool(1 if on_dask else min(workers, tasks)) as pool:
            return plan, write(plan, pool)
    tasks = scan_ranges(source, opts.tokens_field, opts.label_field, workers)
    with WorkerPool(min(workers, len(tasks))) as pool:
        plan = _plan_sequences(source, tasks, opts, plan_digest, pool, show)
        _check_plan(plan, out, src)
        return plan, write(plan, pool)


def _check_plan(plan: Plan, out: Destination, src: str) -> None:
    if plan.options.strict and plan.skipped:
        _fail_strict(out, plan.skipped)
    if not len(plan.order):
        _fail_empty(out, src, plan.kind, plan.skipped)


def _chunk_count(plan: Plan) -> int:
    return sum(len(execute.shard_tasks(plan, i)) for i in range(plan.num_shards))


def _report_ignored(src: str, kind: str, ignored: list[str]) -> None:
    if ignored:
        what = "no image by their extension" if kind == "images" else "no .jsonl or .txt file"
        shown = ", ".join(ignored[:STRICT_SHOWN]) + (", ..." if len(ignored) > STRICT_SHOWN else "")
        log.warning("%s: ignored %d files that are %s (converting it as %s): %s", src, len(ignored), what, kind, shown)


def _local_if_file_url(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def _refuse_dst_inside_src(src: str, dst: str, kind: str) -> None:
    if kind == "images" and not is_url(src) and not is_url(dst):
        s, d = os.path.realpath(src), os.path.realpath(dst)
        if d == s or d.startswith(s.rstrip(os.sep) + os.sep):
            raise DestinationError(f"the destination {dst} is inside the ImageFolder tree {src}: it would "
                                   f"become a class of the next conversion; choose a directory outside it")


def manifest_digest(text: str) -> str | None:
    """The source digest a manifest written by :func:`convert` records, or None."""
    try:
        source = json.loads(text).get("source")
        return source.get("digest") if isinstance(source, dict) else None
    except (ValueError, AttributeError):
        return None


def _same_options(recorded: dict[str, Any] | None, kind: str, opts: ConvertOptions) -> bool:
    return isinstance(recorded, dict) and recorded.get("kind") == kind and recorded.get("params") == opts.as_params()


def _check_destination(out: Destination, plan_digest: str, kind: str, opts: ConvertOptions,
                       overwrite: bool) -> Manifest | None:
    """The finished manifest if ``out`` already holds this very conversion; otherwise make sure
    ``out`` holds nothing but a resumable run of it (clearing shardkit's files if ``overwrite``)."""
    text, partial = out.manifest_text(), out.partial_plan()
    where = join(out.path, MANIFEST_NAME)
    if overwrite:
        out.clear()
        return None
    if text is not None and named_files(text) is None:
        raise DestinationError(f"{where} is not a shardkit manifest (not JSON, or of another format); shardkit "
                               f"never replaces a file it did not write: move it away, or choose another destination")
    if text is not None and manifest_digest(text) == plan_digest:
        try:
            manifest = Manifest.from_json(text, where)
        except ManifestError:
            manifest = None
        if manifest is not None and all(out.shard_size(i.name) == i.bytes for i in manifest.shards):
            out.clear_partial()
            return manifest
        log.warning("%s holds this conversion with missing or damaged shards; converting it again", out.path)
        out.clear()
        return None
    if text is not None:
        doc = json.loads(text)
        what = ("its manifest.json records these options for sources that have changed since (a file was added, "
                "removed or modified)" if _same_options(doc, kind, opts)
                else "its manifest.json records other sources or parameters")
        raise DestinationError(f"{out.path} holds another dataset ({what}); pass --overwrite (overwrite=True) "
                               f"to replace it")
    if partial is not None and partial["digest"] != plan_digest:
        if _same_options(partial, kind, opts):
            raise DestinationError(f"{out.path} holds an unfinished conversion of these options whose sources have "
                                   f"changed since it started (a file was added, removed or modified): its shards "
                                   f"would mix old and new data; pass --overwrite (overwrite=True) to start over")
        raise DestinationError(f"{out.path} holds an unfinished conversion of other sources or parameters; "
                               f"run that command again to finish it, or pass --overwrite (overwrite=True)")
    if partial is None:
        shards, foreign = out.shard_files(), out.foreign_entries()
        if shards or foreign:
            shown = ", ".join((shards + foreign)[:5])
            raise DestinationError(f"{out.path} is not empty ({shown}{', ...' if len(shards + foreign) > 5 else ''}); "
                                   f"choose an empty destination or pass --overwrite (overwrite=True), "
                                   f"which removes only the files of a shardkit manifest there")
    return None


def _shown(skipped: list[dict[str, Any]]) -> str:
    entries = sorted(skipped, key=skip_sort_key)
    shown = "; ".join(f"{e['path']}{':' + str(e['line']) if e.get('line') else ''}: {e['reason']}"
                      for e in entries[:STRICT_SHOWN])
    return shown + (f" (and {len(entries) - STRICT_SHOWN} more)" if len(entries) > STRICT_SHOWN else "")


def _fail_strict(out: Destination, skipped: list[dict[str, Any]]) -> None:
    out.clear()
    raise SourceError(f"strict: {len(skipped)} input(s) cannot be converted: {_shown(skipped)}")


def _fail_empty(out: Destination, src: str, kind: str, skipped: list[dict[str, Any]]) -> None:
    """A conversion that keeps no sample is an error, not an empty dataset."""
    out.clear()
    reasons = f": {len(skipped)} input(s) skipped: {_shown(skipped)}" if skipped else ""
    raise SourceError(f"found no sample to convert in {src} (read as {kind}){reasons}; no manifest was written")


def _plan_sequences(source, tasks: list[ScanRange], opts: ConvertOptions, plan_digest: str, pool: WorkerPool,
                    show: bool) -> Plan:
    results = []
    with progress_bar(show, sum(f.size for f in source.files), "B", "scanning") as bar:
        for result in pool.map(tasks):
            results.append(result)
            bar.update(tasks[len(results) - 1].end - tasks[len(results) - 1].start)
    table, skipped = merge_scans(source, results)
    return plan_sequences(table, opts, plan_digest, list(source.skipped) + skipped)


def _finished(plan: Plan, out: Destination) -> tuple[list[ShardRecord | None], list[int]]:
    """The records of the shards an earlier run of this plan finished, and the shards left to do."""
    records = [out.finished(i) for i in range(plan.num_shards)]
    out.remove_extra_shards(plan.num_shards)
    return records, [i for i, r in enumerate(records) if r is None]


def _write(plan: Plan, out: Destination, pool: WorkerPool, show: bool) -> list[ShardRecord]:
    records, todo = _finished(plan, out)
    total = int(sum(len(plan.shard_positions(i)) for i in todo))
    with progress_bar(show, total, "sample", "converting") as bar:
        state = {"bytes": 0, "t0": time.monotonic()}

        def on_chunk(chunk: ChunkResult) -> None:
            if plan.options.strict and chunk.skipped:
                _fail_strict(out, chunk.skipped)
            state["bytes"] += chunk.source_bytes
            bar.update(chunk.samples + len(chunk.skipped))
            rate = state["bytes"] / max(time.monotonic() - state["t0"], 1e-6) / 1e6
            bar.set_postfix_str(f"{rate:.1f} MB/s", refresh=False)

        def on_shard(record: ShardRecord) -> None:  # whole-shard tasks: never under strict
            bar.update(record.samples + len(record.skipped))

        for index, record in execute.run_shards(plan, out, todo, pool, on_chunk, on_shard):
            records[index] = record
    return records


def _write_on_dask(plan: Plan, out: Destination, show: bool, **cluster: Any) -> list[ShardRecord]:
    from . import dask

    records, todo = _finished(plan, out)
    for index, record in dask.run_shards(plan, out, todo, show=show, **cluster):
        if plan.options.strict and record.skipped:
            _fail_strict(out, record.skipped)
        records[index] = record
    return records


def _manifest(plan: Plan, records: list[ShardRecord]) -> Manifest:
    skipped = list(plan.skipped) + [e for r in records for e in r.skipped]
    shards = [ShardInfo(r.name, r.samples, r.bytes, r.sha256, r.stamp, r.index) for r in records]
    if plan.kind == "images":
        return Manifest(kind="images", schema=Schema.images(), shards=shards, params=plan.options.as_params(),
                        skipped=sorted(skipped, key=skip_sort_key), classes=list(plan.images.classes))
    table = plan.sequences
    ordered = table.ntokens[plan.order]
    shards = [dataclasses.replace(s, tokens=int(ordered[plan.shard_starts[i]:plan.shard_starts[i + 1]].sum()))
              for i, s in enumerate(shards)]
    manifest = Manifest(kind="sequences", schema=Schema.sequences(table.dtype.name), shards=shards,
                        params=plan.options.as_params(), skipped=sorted(skipped, key=skip_sort_key))
    lengths = table.ntokens
    stats = {"min": 0, "max": 0, "mean": 0.0, "median": 0.0, "p99": 0.0}
    if len(lengths):
        stats = {"min": int(lengths.min()), "max": int(lengths.max()), "mean": round(float(lengths.mean()), 3),
                 "median": round(float(np.median(lengths)), 3), "p99": round(float(np.percentile(lengths, 99)), 3)}
    manifest.sequences = {"dtype": table.dtype.name, "tokens": int(lengths.sum()), "has_labels": table.has_labels,
                          "tokens_field": plan.options.tokens_field, "label_field": plan.options.label_field,
                          "length": stats}
    return manifest
