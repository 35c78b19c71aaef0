"""``convert(src, dst, ...)``: list → plan → write shards → manifest, resumable and locked."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..errors import DestinationError, ManifestError, SourceError
from ..format.manifest import MANIFEST_NAME, Manifest
from ..storage import is_url, join, list_files
from . import execute, kinds
from .kinds.base import InputKind, Listed, Request
from .options import ConvertOptions
from .output import ChunkResult, Destination, ShardRecord
from .owned import named_files
from .plan import Plan, content_digest, digest
from .pool import WorkerPool
from .progress import progress_bar
from .sources import detect_kind, has_file_extension, skip_sort_key

log = logging.getLogger(__name__)
#: What convert reads (see :mod:`.kinds`).
#: How many skipped entries a strict or empty failure lists.
STRICT_SHOWN = 5


def convert(src: str | os.PathLike | Sequence[str | os.PathLike], dst: str | os.PathLike, *,
            kind: str | None = None, workers: int | None = None, overwrite: bool = False,
            progress: bool | None = None, storage_options: dict[str, Any] | None = None,
            scheduler: str | None = None, client: Any = None, checksum_sources: bool = False,
            labels: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
            **options: Any) -> Manifest:
    """Convert the dataset at ``src`` into tar shards and a manifest in ``dst``.

    ``src`` is an ImageFolder tree, sequence files (``.jsonl``/``.txt``), a table (``.csv``,
    ``.jsonl``, ``.parquet``: rows of image paths, captions, labels...), tabular features
    (``.npz``; ``.npy`` with ``labels``, a ``.npy`` of labels; numeric ``.csv``/``.parquet``) or
    webdataset tars (a brace pattern, a list of ``.tar`` paths or a directory of them); a
    directory or glob of such files. ``kind`` (``"images"``, ``"sequences"``, ``"table"``,
    ``"tabular"``, ``"webdataset"``) overrides the detection. ``root``: where a table's relative
    image paths start (default: the table's directory).

    ``options`` are the fields of :class:`ConvertOptions` (seed, shuffle, max_shard_size,
    max_shard_samples, resize, quality, validate, strict, tokens_field, label_field, image_field,
    fields, features_field, allow_nan). The output is byte-identical for any ``workers``
    (default: the CPU count, and never more than there are tasks; 1 runs in this process).
    Re-running after an interruption resumes; re-running a finished conversion returns its
    manifest. Whether the sources changed since is told by their sizes and modification times,
    and the content of small files; ``checksum_sources`` hashes every file too (it reads the whole
    source once more). ``progress`` shows a tqdm bar (default: when stderr is a terminal).
    ``scheduler`` (a Dask scheduler address, or ``"local"`` for a ``LocalCluster`` of ``workers``
    processes) or ``client`` (a ``distributed.Client``) writes the shards on a Dask cluster, with
    the same bytes.

    ``src`` and ``dst`` may be fsspec URLs (``s3://...``; a remote ``src`` holds images, a table or
    tars), opened with ``storage_options``; shards are uploaded as they are finished, the manifest last.

    Files of ``src`` that the kind does not read (non-image files of an ImageFolder tree, other
    files beside sequence files) are logged and counted in ``manifest.source["ignored"]``.

    Returns:
        The manifest written to ``dst/manifest.json``; its ``skipped`` lists every input not converted.
    Raises:
        TypeError: an unknown option (named) or one of the wrong type; ValueError: a bad option value.
        SourceError: ``src`` is missing, holds no data, holds several kinds (pass ``kind``), has a
            part that cannot be read, yields no sample at all, or (``strict=True``) had input to skip.
        DestinationError: ``dst`` is not writable, holds another dataset (unless ``overwrite``) or
            files shardkit did not write where it would write (even with ``overwrite``), is being
            written by another conversion, or ran out of space.
        ShardkitError: the worker processes cannot start.
    """
    opts = ConvertOptions.from_kwargs(options)
    src = _source_argument(src)
    dst = _local_if_file_url(os.fspath(dst))
    if kind is not None:
        kinds.get(kind)  # a ValueError naming the kinds
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    show = sys.stderr.isatty() if progress is None else progress
    started = time.monotonic()
    labels = _local_if_file_url(os.fspath(labels)) if labels is not None else None
    root = _local_if_file_url(os.fspath(root)) if root is not None else None

    # A URL is listed once, for both questions: a LIST of a large prefix is thousands of requests.
    listed_remotely = (isinstance(src, str) and is_url(src) and not has_file_extension(src)
                       and (kind is None or kinds.get(kind).reads_remote))
    remote_files = list_files(src, storage_options) if listed_remotely else None
    input_kind = kinds.get(kind or detect_kind(src, storage_options, remote_files=remote_files, options=opts,
                                               labels=labels))
    if isinstance(src, list) and not input_kind.takes_lists:
        raise SourceError(f"a list of sources is read as webdataset tars only, not as {input_kind.name}: "
                          f"give one file, directory or glob")
    input_kind.check(src, dst, opts)
    request = Request(storage_options, remote_files, checksum_sources, labels, root)
    with Destination(dst, storage_options) as out:
        listed = input_kind.list(src, request)
        _report_ignored(src, input_kind, listed.ignored)
        listing = listed.listing()
        plan_digest = digest(input_kind.name, opts, listing)
        done = _check_destination(out, plan_digest, input_kind.name, opts, overwrite)
        if done is not None:
            log.info("%s already holds this conversion; nothing to do", dst)
            return done
        out.start(plan_digest, input_kind.name, opts.as_params())
        try:
            plan, records = _plan_and_write(src, input_kind, listed, opts, plan_digest, out, workers, show,
                                            scheduler=scheduler, client=client)
        except BaseException:
            if not out.has_records():  # nothing to resume: leave nothing that would refuse a corrected run
                out.clear_partial()
            raise
        manifest = input_kind.manifest(plan, records)
        if not manifest.samples:
            _fail_empty(out, src, input_kind, manifest.skipped)
        # The digest lets a re-run recognise this conversion (and refuse any other) from the
        # manifest alone; file count and bytes tell a reader what was converted.
        manifest.source = {"files": len(listing), "bytes": sum(max(entry[1], 0) for entry in listing),
                           "digest": plan_digest, "ignored": len(listed.ignored)}
        out.write_manifest(manifest.to_json())
    log.info("converted %d samples into %d shards (%d bytes, %d skipped) in %.1f s", manifest.samples,
             len(manifest.shards), manifest.bytes, len(manifest.skipped), time.monotonic() - started)
    return manifest


def _source_argument(src: Any) -> str | list[str]:
    """One path or URL (``file://`` made local), or a list of them (webdataset tars)."""
    if isinstance(src, (list, tuple)):
        paths = [_local_if_file_url(os.fspath(p)) for p in src]
        if not paths:
            raise SourceError("no source given: the list is empty")
        return paths[0] if len(paths) == 1 else paths
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"src is a path, a URL or a list of .tar paths, not {type(src).__name__}")
    return _local_if_file_url(os.fspath(src))


def _plan_and_write(src, kind: InputKind, listed: Listed, opts: ConvertOptions, plan_digest: str,
                    out: Destination, workers: int, show: bool, **cluster: Any) -> tuple[Plan, list[ShardRecord]]:
    """Scan (pass 1), plan, then write the shards; with at most as many worker processes as there
    are tasks (the scan's pool is kept for writing when it is large enough)."""
    on_dask = cluster["scheduler"] is not None or cluster["client"] is not None
    scans = kind.scan_tasks(listed, opts, workers, out.staging)
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(WorkerPool(min(workers, len(scans)))) if scans else None
        plan = _make_plan(kind, listed, scans, opts, plan_digest, pool, show)
        _check_plan(plan, out, src, kind)
        # On Dask the shards are written by the cluster; locally a worker takes a whole shard (for
        # kinds written so), or a chunk of one when there are fewer shards than workers.
        whole = kind.whole_shards and workers <= plan.num_shards
        wanted = 1 if on_dask else min(workers, plan.num_shards if whole else _chunk_count(plan, workers))
        if pool is None or (not on_dask and pool.workers < wanted):
            if pool is not None:
                pool.close()
            pool = stack.enter_context(WorkerPool(max(wanted, 1)))
        if on_dask:
            return plan, _write_on_dask(plan, out, show, workers=workers, **cluster)
        return plan, _write(plan, out, pool, show)


def _make_plan(kind: InputKind, listed: Listed, scans: list, opts: ConvertOptions, plan_digest: str,
               pool: WorkerPool | None, show: bool) -> Plan:
    """Pass 1's tasks run by ``pool`` (a bar over the bytes they read), then the kind's plan."""
    results = []
    if scans:
        with progress_bar(show, sum(t.nbytes for t in scans), "B", "scanning") as bar:
            for result in pool.map(scans):
                results.append(result)
                bar.update(scans[len(results) - 1].nbytes)
    plan = kind.plan(listed, results, opts, plan_digest)
    plan.stamps = content_digest(kind.name, opts, listed.listing())  # names and sizes: the same for a copy
    return plan


def _check_plan(plan: Plan, out: Destination, src, kind: InputKind) -> None:
    if plan.options.strict and plan.skipped:
        _fail_strict(out, plan.skipped)
    if not len(plan.order):
        _fail_empty(out, src, kind, plan.skipped)


def _chunk_count(plan: Plan, at_most: int) -> int:
    """How many chunk tasks the shards make, counted up to ``at_most`` (the workers wanted)."""
    count = 0
    for i in range(plan.num_shards):
        count += len(execute.shard_tasks(plan, i))
        if count >= at_most:
            break
    return count


def _report_ignored(src, kind: InputKind, ignored: list[str]) -> None:
    if ignored:
        shown = ", ".join(ignored[:STRICT_SHOWN]) + (", ..." if len(ignored) > STRICT_SHOWN else "")
        log.warning("%s: ignored %d files that are %s (converting it as %s): %s", _name(src), len(ignored),
                    kind.reads, kind.name, shown)


def _name(src) -> str:
    return src if isinstance(src, str) else f"{src[0]} (and {len(src) - 1} more)"


def _local_if_file_url(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


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


def where(entry: dict[str, Any]) -> str:
    """Where a skipped entry is, for a message: ``file:line``, ``file row N``, ``shard member X``."""
    text = str(entry["path"])
    if entry.get("line"):
        text += f":{entry['line']}"
    if entry.get("row") is not None:
        text += f" row {entry['row']}"
    if entry.get("member"):
        text += f" member {entry['member']}"
    return text


def _shown(skipped: list[dict[str, Any]]) -> str:
    entries = sorted(skipped, key=skip_sort_key)
    shown = "; ".join(f"{where(e)}: {e['reason']}" for e in entries[:STRICT_SHOWN])
    return shown + (f" (and {len(entries) - STRICT_SHOWN} more)" if len(entries) > STRICT_SHOWN else "")


def _fail_strict(out: Destination, skipped: list[dict[str, Any]]) -> None:
    out.clear()
    raise SourceError(f"strict: {len(skipped)} input(s) cannot be converted: {_shown(skipped)}")


def _fail_empty(out: Destination, src, kind: InputKind, skipped: list[dict[str, Any]]) -> None:
    """A conversion that keeps no sample is an error, not an empty dataset."""
    out.clear()
    reasons = f": {len(skipped)} input(s) skipped: {_shown(skipped)}" if skipped else ""
    raise SourceError(f"found no sample to convert in {_name(src)} (read as {kind.name}){reasons}; no manifest "
                      f"was written{kind.empty_hint}")


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
