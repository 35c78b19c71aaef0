"""The conversion's tqdm bars (planning, writing locally, shards done on Dask)."""

from __future__ import annotations

from typing import Any


def progress_bar(show: bool, total: int, unit: str, desc: str, *, scale: bool = True) -> Any:
    """A tqdm bar over ``total`` ``unit``s (shown as k/M/G with ``scale``), hidden unless ``show``;
    use it as a context manager."""
    from tqdm import tqdm  # imported here: ``shardkit --help`` does not pay for it

    class Bar(tqdm):
        # tqdm's monitor thread would outlive the bar, and a process with a second thread no
        # longer forks its conversion workers (see pool.py): a later convert() would spawn them
        monitor_interval = 0

    return Bar(total=total, unit=unit, unit_scale=scale, desc=desc, disable=not show,
               dynamic_ncols=True, leave=False)
