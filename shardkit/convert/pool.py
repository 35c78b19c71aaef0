"""Worker processes for a conversion: tasks in, results out in task order, a bounded number in
flight, and a worker that dies (a decoder that segfaults, the OOM killer) isolated to the input
that killed it instead of ending the conversion.

Workers never outlive the conversion: each asks the kernel to kill it when its parent dies
(``PR_SET_PDEATHSIG``), so a main process killed by the OOM killer or ``docker stop`` leaves no
worker behind (and no worker keeps the destination's lock: see ``output.py``); a pool that is
left by an exception (Ctrl-C, SIGTERM, an error) terminates its workers instead of waiting for
the tasks they run."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from ..errors import ShardkitError

log = logging.getLogger(__name__)


class Splittable(Protocol):
    """A task whose inputs can be retried one by one when a worker dies running it."""

    def __call__(self) -> Any: ...
    def split(self) -> list["Splittable"]: ...
    def crashed(self) -> Any: ...      # the result of a one-input task whose worker died, twice
    def merge(self, results: list[Any]) -> Any: ...


_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Looked up here, in the parent: a worker must not search for libc (find_library runs ldconfig)
# in the window where its parent may already be dying.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent(parent: int) -> None:
    """The worker initializer: Ctrl-C and SIGTERM are the main process's to handle (it stops the
    pool and leaves resumable state), and the worker is killed by the kernel as soon as its parent
    dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler, inherited by the fork
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked while the parent forked
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request above was made
        os._exit(1)


def _ready() -> bool:
    return True


def _start_method() -> str:
    # Forking is much cheaper than spawning (no re-import of numpy and PIL per worker, and no
    # `if __name__ == "__main__"` guard needed in the caller's script), but is only safe while
    # this process has a single thread: a fork copies locks that other threads may hold.
    return "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"


class WorkerPool:
    """``workers`` worker processes (forked where that is safe, else spawned), all started by the
    constructor. ``workers=1`` runs every task in this process.

    Raises:
        ShardkitError: the workers cannot start (see :meth:`_start`), within seconds, instead of
            hanging or blaming the inputs.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._processes: list[multiprocessing.process.BaseProcess] = []
        # Chosen once: a restart after a worker died must not switch methods because the dead
        # pool's own manager thread is still winding down.
        self._context = multiprocessing.get_context(_start_method())
        if workers > 1:
            self._start()

    def _start(self) -> None:
        """Start every worker now, so that a pool that cannot start is an error at once.

        Raises:
            ShardkitError: a worker cannot be created (the process limit, ``ulimit -u``, or memory),
                or the workers die at start (a spawned worker re-running a script that lacks an
                ``if __name__ == "__main__":`` guard).
        """
        before = set(multiprocessing.active_children())
        self._executor = ProcessPoolExecutor(self.workers, mp_context=self._context, initializer=_die_with_parent,
                                             initargs=(os.getpid(),))
        try:
            # Forking starts every worker at the first submit; spawning starts one per task
            # submitted while none is idle: as many tasks as workers start them all. Ctrl-C and
            # SIGTERM wait until the forks are done: raised inside an at-fork hook, their
            # KeyboardInterrupt would be printed and dropped, and the conversion would go on.
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                futures = [self._executor.submit(_ready) for _ in range(self.workers)]
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            for future in futures:
                future.result()
        except BaseException as err:  # also Ctrl-C or SIGTERM while they start: none may be left
            self._processes = [p for p in multiprocessing.active_children() if p not in before]
            self._kill()
            if isinstance(err, OSError):  # fork() failing: EAGAIN at the process limit, ENOMEM
                raise ShardkitError(f"cannot start {self.workers} conversion worker processes "
                                    f"({err.strerror or err}): the limit on processes (ulimit -u) or memory is "
                                    f"reached; pass fewer workers (--workers)") from None
            if isinstance(err, BrokenProcessPool):
                raise ShardkitError(
                    "conversion worker processes failed to start. When shardkit.convert(..., workers>1) is "
                    "called from a script on a platform that spawns processes, the call must sit under "
                    "`if __name__ == \"__main__\":`; or pass workers=1") from None
            raise
        self._processes = [p for p in multiprocessing.active_children() if p not in before]

    def _kill(self) -> None:
        """Stop the workers at once (their tasks are abandoned; a killed shard writer leaves only a
        temporary file, which the next run removes), then let the executor wind down."""
        for process in self._processes:
            if process.is_alive():
                process.kill()
        for process in self._processes:
            process.join(10)
        self._processes = []
        if self._executor is not None:
            # Waited for: the executor's thread sees its workers dead and ends at once; left
            # running, it races the interpreter's exit (Python 3.11 then prints an ignored OSError).
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _restart(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._start()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._processes = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self._kill()
        self.close()

    def map(self, tasks: Iterable[Callable[[], Any]], window: int | None = None) -> Iterator[Any]:
        """``task()`` for each task, results in task order, at most ``window`` (default: 4 per
        worker) tasks in flight, so memory stays bounded however many tasks there are.

        Raises:
            ShardkitError: a worker died running a task that cannot be split into single inputs.
        """
        if self._executor is None:
            for task in tasks:
                yield task()
            return
        window = window or 4 * self.workers
        pending: deque[tuple[Callable[[], Any], Future]] = deque()
        # Tasks left in flight when the caller stops early are not cancelled here: the pool's exit
        # kills the workers (an exception) or cancels them (shutdown). Cancelling them here races
        # with the executor marking them broken after a kill (Python 3.11 raises InvalidStateError
        # in its manager thread).
        for task in tasks:
            pending.append((task, self._executor.submit(task)))
            if len(pending) >= window:
                yield self._next(pending)
        while pending:
            yield self._next(pending)

    def _next(self, pending: deque) -> Any:
        task, future = pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool:
            pass
        # A worker died; every task in flight failed with it. Find the input that did it, then
        # give the others to a fresh pool.
        self._restart()
        result = self._isolate(task)
        for i, (other, _) in enumerate(pending):
            pending[i] = (other, self._executor.submit(other))
        return result

    def _run_alone(self, task) -> tuple[bool, Any]:
        try:
            return True, self._executor.submit(task).result()
        except BrokenProcessPool:
            self._restart()
            return False, None

    def _isolate(self, task) -> Any:
        if not hasattr(task, "split"):
            ok, result = self._run_alone(task)
            if ok:
                return result
            raise ShardkitError(f"a conversion worker process died while running {task!r:.200} (out of memory, "
                                f"or killed); run the same command again to resume")
        results = []
        for part in task.split():
            for _attempt in range(2):  # once more alone, so a death from outside is not blamed on it
                ok, result = self._run_alone(part)
                if ok:
                    break
            if not ok:
                log.warning("a worker died twice on one input; skipping it: %r", part)
                result = part.crashed()
            results.append(result)
        return task.merge(results)
