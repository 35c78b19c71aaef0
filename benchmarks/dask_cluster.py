"""A Dask ``LocalCluster`` of N single-threaded worker processes, in its own process (see
``background.py``), so ``shardkit convert --scheduler ADDRESS`` is timed without the cluster's
start-up, as on a cluster that is already running.

``python -m benchmarks.dask_cluster N`` prints the scheduler's address and runs until stdin closes."""

from __future__ import annotations

import contextlib
import sys

from benchmarks.background import running, until_stdin_closes


def cluster(workers: int) -> contextlib.AbstractContextManager[str]:
    """A running cluster of ``workers`` processes; yields the scheduler address."""
    return running("benchmarks.dask_cluster", str(workers))


def main(workers: str) -> None:
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as local:
        print(local.scheduler_address, flush=True)
        until_stdin_closes()


if __name__ == "__main__":
    main(sys.argv[1])
