"""The one timing harness: run contenders alternated and repeated, measuring wall time, CPU time
(main process and reaped children, i.e. DataLoader workers) and peak RSS (main + children, sampled)."""

from __future__ import annotations

import gc
import logging
import os
import resource
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import psutil

log = logging.getLogger("benchmarks")


def rss_tree(proc: psutil.Process) -> int:
    """RSS of a process and all its descendants, in bytes (what `top` would add up)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a worker that exited between listing and reading
            pass
    return total


class RSSSampler:
    """Samples :func:`rss_tree` of this process in a background thread: ``peak``, and ``cpu``, the
    thread's own CPU seconds (taken out of the main process's figure)."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak, self.cpu = interval, 0, 0.0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _run(self) -> None:
        start = time.thread_time()
        while not self._stop.is_set():
            rss = rss_tree(self._proc)
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)
        self.cpu = time.thread_time() - start

    def __enter__(self) -> "RSSSampler":
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _cpu() -> tuple[float, float]:
    """(main process, reaped children) CPU seconds, user + system."""
    main = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return main.ru_utime + main.ru_stime, kids.ru_utime + kids.ru_stime


@dataclass
class Measurement:
    seconds: float
    items: int
    first_seconds: float  # until the first item (a loader's start-up: workers, first requests)
    cpu_main: float
    cpu_children: float
    peak_rss: int

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


def measure(run: Callable[[], Iterable], count: Callable[[Any], int]) -> Measurement:
    """Time one pass: ``run()`` builds an iterable (a loader, a list of results...), the clock runs
    from its creation to its last item; ``count(item)`` says how many samples each item holds.

    The iterable is dropped before the CPU is read, so DataLoader workers are joined and their
    CPU time is counted as the children's."""
    gc.collect()
    cpu0 = _cpu()
    with RSSSampler() as rss:
        start = time.perf_counter()
        iterable = run()
        items, item, first = 0, None, None
        for item in iterable:
            if first is None:
                first = time.perf_counter() - start
            items += count(item)
        seconds = time.perf_counter() - start
        del iterable, item  # joins the workers of a DataLoader iterator
    cpu1 = _cpu()
    return Measurement(seconds, items, seconds if first is None else first, cpu1[0] - cpu0[0] - rss.cpu,
                       cpu1[1] - cpu0[1], rss.peak)


@dataclass
class Contender:
    """Something to time: ``run()`` returns an iterable to exhaust; ``prepare()`` runs before each
    timed pass, untimed (e.g. evict the page cache); ``expected``, when set, is the sample count
    a pass must deliver (a contender that loses or repeats samples is an error, not a fast one).

    ``measured``, instead of ``run``, times a pass elsewhere and returns its :class:`Measurement`:
    a peer that lives in its own virtual environment runs :func:`measure` in that process and
    reports back, so its interpreter start and imports are not on the clock."""

    name: str
    run: Callable[[], Iterable] | None = None
    count: Callable[[Any], int] = lambda item: 1
    prepare: Callable[[], None] | None = None
    expected: int | None = None
    measured: Callable[[], Measurement] | None = None


def failing(name: str, why: str) -> Contender:
    """A contender that cannot run in this run (a peer that is not installed...): its passes
    raise ``why``, so it shows as failed in the table and in the run's errors, never as absent."""
    def run():
        raise RuntimeError(why)
    return Contender(name, run)


@dataclass
class Outcome:
    name: str
    runs: list[Measurement] = field(default_factory=list)
    error: str | None = None

    def rates(self) -> list[float]:
        return [m.rate for m in self.runs]

    def summary(self, baseline: "Outcome | None", per: int = 1000) -> dict[str, Any]:
        """min/median/max of the rate, ratio of medians against the baseline, CPU-s per ``per``
        items (main and children), peak RSS in MB."""
        row: dict[str, Any] = {"contender": self.name}
        if self.error or not self.runs:
            row["error"] = self.error or "no run"
            return row
        rates = self.rates()
        items = sum(m.items for m in self.runs)
        row.update(rates=rates, min=min(rates), median=statistics.median(rates), max=max(rates),
                   first_item_s=statistics.median(m.first_seconds for m in self.runs),
                   cpu_main_per=per * sum(m.cpu_main for m in self.runs) / items,
                   cpu_children_per=per * sum(m.cpu_children for m in self.runs) / items,
                   peak_rss_mb=max(m.peak_rss for m in self.runs) / 2**20,
                   items=self.runs[0].items)
        if baseline is not None and baseline.runs:
            row["ratio"] = row["median"] / statistics.median(baseline.rates())
        return row


def compare(contenders: list[Contender], rounds: int) -> dict[str, Outcome]:
    """Run every contender ``rounds`` times, alternating (the order reverses every other round so
    no contender always follows the same one). A contender that raises is recorded with its error
    and not run again; the others go on."""
    outcomes = {c.name: Outcome(c.name) for c in contenders}
    for r in range(rounds):
        for c in (contenders if r % 2 == 0 else contenders[::-1]):
            outcome = outcomes[c.name]
            if outcome.error:
                continue
            try:
                if c.prepare:
                    c.prepare()
                m = c.measured() if c.measured else measure(c.run, c.count)
                if c.expected is not None and m.items != c.expected:
                    raise RuntimeError(f"delivered {m.items} samples in a pass, expected {c.expected}")
            except Exception as err:  # noqa: BLE001 - recorded in the results, shown in the table
                outcome.error = f"{type(err).__name__}: {err}"
                log.error("%s failed:\n%s", c.name, traceback.format_exc())
                continue
            outcome.runs.append(m)
            log.info("  %-58s %9.1f /s  (%.2f s, cpu %.2f + %.2f, rss %.0f MB)", c.name, m.rate,
                     m.seconds, m.cpu_main, m.cpu_children, m.peak_rss / 2**20)
    return outcomes


def summarise(outcomes: dict[str, Outcome], baseline: str | None, per: int = 1000) -> list[dict[str, Any]]:
    base = outcomes.get(baseline) if baseline else None
    return [o.summary(base, per) for o in outcomes.values()]


def evict(paths: Iterable[os.PathLike]) -> None:
    """Drop the files' pages from the page cache (cold-cache runs). Dirty pages are flushed first,
    since DONTNEED leaves them in memory."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
