"""Writing a conversion's shards on a Dask distributed cluster: one task per shard.

The plan is made once, in the calling process, and sent once to every worker; each task runs
:func:`~.execute.write_shard` for one shard index, so the bytes are those of a local run. A
shard is published by atomic rename (or upload) only when complete, so a task that Dask reruns
after its worker died, or that runs twice, leaves the same file. The workers must see SRC and DST
at the same paths or URLs (a ``LocalCluster``, a shared filesystem, or object storage).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

from ..errors import DestinationError, MissingExtraError
from .output import Destination, ShardRecord
from .plan import Plan
from .progress import progress_bar

log = logging.getLogger(__name__)

#: How often a shard task that raised is run again (a worker that died is handled by Dask itself,
#: up to its ``distributed.scheduler.allowed-failures``).
TASK_RETRIES = 2


def _distributed():
    try:
        import distributed
    except ImportError:
        raise MissingExtraError("converting on a Dask cluster needs the 'distributed' package: "
                                "pip install 'shardkit[dask]'") from None
    return distributed


@contextlib.contextmanager
def open_client(scheduler: str | None = None, client: Any = None, workers: int | None = None) -> Iterator[Any]:
    """The ``distributed.Client`` to run on: ``client`` itself (left open), a ``LocalCluster`` of
    ``workers`` single-threaded processes for ``scheduler="local"`` (closed afterwards), or a
    connection to the scheduler at ``scheduler`` (``"tcp://host:8786"``).

    Raises:
        MissingExtraError: ``distributed`` is not installed.
        ValueError: neither ``scheduler`` nor ``client`` given.
        DestinationError: the scheduler cannot be reached.
    """
    if client is not None:
        yield client
        return
    if not scheduler:
        raise ValueError("give a scheduler address, 'local', or a distributed.Client")
    distributed = _distributed()
    if scheduler == "local":
        n = workers or os.cpu_count() or 1
        with distributed.LocalCluster(n_workers=n, processes=True, threads_per_worker=1, dashboard_address=None,
                                      silence_logs=logging.WARNING) as cluster, distributed.Client(cluster) as local:
            yield local
        return
    try:
        remote = distributed.Client(scheduler, timeout="30s")
    except OSError as err:
        raise DestinationError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
    with remote:
        yield remote


def _write_shard(plan: Plan, index: int, dst_path: str, storage_options: dict[str, Any] | None) -> ShardRecord:
    """The task: shard ``index`` of ``plan`` into ``dst_path`` (whose partial directory exists)."""
    from . import execute  # looked up at run time, in the worker

    return execute.write_shard(plan, index, Destination(dst_path, storage_options))


def run_shards(plan: Plan, dst: Destination, todo: list[int], *, scheduler: str | None = None,
               client: Any = None, workers: int | None = None,
               show: bool = False) -> Iterator[tuple[int, ShardRecord]]:
    """Write the shards ``todo`` of ``plan`` into ``dst`` on a Dask cluster (see :func:`open_client`);
    yields ``(index, record)`` as each shard is finished, in completion order, with a tqdm bar over
    shards when ``show``.

    Raises:
        MissingExtraError: ``distributed`` is not installed.
        DestinationError: a shard could not be written (the task's own error), or its workers kept dying.
        SourceError: a source record changed since it was planned.
    """
    distributed = _distributed()
    if not todo:
        return
    with open_client(scheduler, client, workers) as c:
        run = uuid.uuid4().hex[:8]
        [plan_data] = c.scatter([plan], broadcast=True, hash=False)
        futures = {c.submit(_write_shard, plan_data, index, dst.path, dst.storage_options, key=f"shardkit-shard-{index:06d}-{run}",
                            retries=TASK_RETRIES, pure=False): index for index in todo}
        bar = progress_bar(show, len(todo), "shard", "converting", scale=False)
        try:
            for future in distributed.as_completed(futures):
                index = futures[future]
                try:
                    record = future.result()
                except distributed.KilledWorker:
                    raise DestinationError(f"shard {index}: the Dask workers running it died "
                                           f"repeatedly; see the workers' logs") from None
                bar.update(1)
                yield index, record
        finally:
            bar.close()
            c.cancel(list(futures))
            c.cancel([plan_data])
