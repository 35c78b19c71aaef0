"""Executing a plan: shards split into chunk tasks, run by a process pool, written in plan order.

A chunk task is a picklable callable (:class:`~.images.ImageChunk`, :class:`~.sequences.BlockChunk`,
each kind's, from :meth:`~.kinds.base.InputKind.shard_tasks`) that returns the tar members of some consecutive positions of one shard; a shard's members are
its chunks' members in order, whoever runs them, so the bytes written never depend on how many
workers there are. Two ways to run them:

- whole shards, one :class:`ShardTask` per worker process, which writes and publishes its shard
  and sends back only the record (used for kinds of large independent inputs, images, when there
  are at least as many shards as workers: no image bytes cross processes and the main process stays idle, which measured
  0.50 → 0.7x of the all-core decode rate on 2 cores);
- chunks spread over the pool, written by this process in order (a dataset of fewer shards than
  workers still uses every core).

:func:`write_shard` is the unit a distributed scheduler runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..format.manifest import shard_stamp
from . import kinds
from .images import ImageChunk
from .output import ChunkResult, Destination, ShardRecord, ShardWriter
from .plan import Plan
from .pool import WorkerPool

def shard_tasks(plan: Plan, index: int) -> list[Callable[[], ChunkResult]]:
    """The chunk tasks of shard ``index``, in order (its kind's); their members concatenated are the shard."""
    return kinds.get(plan.kind).shard_tasks(plan, index)


def write_shard(plan: Plan, index: int, dst: Destination) -> ShardRecord:
    """Write shard ``index`` of ``plan`` into ``dst``, in this process; returns its record.

    Raises:
        DestinationError: the shard cannot be written (disk full, ...); no file is left under its name.
        SourceError: a source record changed since it was planned.
    """
    return _write(dst, index, shard_stamp(plan.stamps, index), (task() for task in shard_tasks(plan, index)))


def _write(dst: Destination, index: int, stamp: str, results: Iterable[ChunkResult]) -> ShardRecord:
    with ShardWriter(dst, index, stamp) as writer:
        for result in results:  # computed one at a time, so one chunk's members are held at once
            writer.add(result)
        return writer.finish()


@dataclass(frozen=True)
class ShardTask:
    """Shard ``index`` written and published in a worker process; returns its :class:`ShardRecord`.

    When its worker dies (a decoder crash), the pool splits it into single images, skips the one
    that kills a worker twice, and :meth:`merge` writes the shard here from the rest."""

    dst_path: str
    storage_options: dict[str, Any] | None
    index: int
    stamp: str
    chunks: tuple[ImageChunk, ...]

    def __call__(self) -> ShardRecord:
        return _write(self._dst(), self.index, self.stamp, (chunk() for chunk in self.chunks))

    def split(self) -> list[ImageChunk]:
        return [part for chunk in self.chunks for part in chunk.split()]

    def merge(self, results: list[ChunkResult]) -> ShardRecord:
        return _write(self._dst(), self.index, self.stamp, results)

    def _dst(self) -> Destination:
        # rebuilt in the worker: a Destination made without entering takes no lock (see output.py)
        return Destination(self.dst_path, self.storage_options)


def run_shards(plan: Plan, dst: Destination, todo: list[int], pool: WorkerPool,
               on_chunk: Callable[[ChunkResult], None],
               on_shard: Callable[[ShardRecord], None]) -> Iterator[tuple[int, ShardRecord]]:
    """Write the shards ``todo`` (ascending) with ``pool``; yields ``(index, record)`` as each
    shard is published.

    ``on_chunk`` sees every chunk result written here (progress, strict checks) before it is
    written; ``on_shard`` sees the record of each shard written whole by a worker.
    """
    if kinds.get(plan.kind).whole_shards and not plan.options.strict and 1 < pool.workers <= len(todo):
        tasks = (ShardTask(dst.path, dst.storage_options, index, shard_stamp(plan.stamps, index),
                           tuple(shard_tasks(plan, index))) for index in todo)
        for index, record in zip(todo, pool.map(tasks, window=2 * pool.workers)):
            on_shard(record)
            yield index, record
        return
    def tasks():
        for index in todo:
            chunks = shard_tasks(plan, index)
            for n, task in enumerate(chunks):
                yield index, n == len(chunks) - 1, task

    plan_of = deque()  # (shard, last chunk?) of each task, in the order results come back

    def submitted():
        for index, last, task in tasks():
            plan_of.append((index, last))
            yield task

    writer = None
    try:
        for result in pool.map(submitted()):
            index, last = plan_of.popleft()
            on_chunk(result)
            if writer is None:
                writer = ShardWriter(dst, index, shard_stamp(plan.stamps, index))
            writer.add(result)
            if last:
                record = writer.finish()
                writer.__exit__(None, None, None)
                writer = None
                yield index, record
    finally:
        if writer is not None:
            writer.__exit__(None, None, None)
