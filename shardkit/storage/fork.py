"""fsspec's event loop across ``os.fork`` (DataLoader workers are forked children on Linux).

fsspec runs every async filesystem (HTTP, S3, GCS) on one event-loop thread per process. A
forked child inherits the loop object but not its thread, and shares the loop's epoll instance
with the parent: an epoll descriptor names one kernel object, whichever process holds it. At its
first fsspec call the child drops the filesystems it inherited from the parent's instance cache.
When they are collected, their finalizers (``HTTPFileSystem.close_session`` and the like) first
wait a second for the absent loop thread, then close the parent's pooled connections through the
inherited loop. That unregisters those sockets from the *shared* epoll, so the parent's next
request on one of them never wakes up, and it fails only at its per-try timeout (30 s by
default). ``tests/storage/test_fork.py`` reproduces it with a plain ``os.fork`` and with
DataLoader workers.

In the child the inherited loop is therefore marked stopped and closed before anything runs.
fsspec's finalizers and aiohttp's connector check exactly that (``is_running``, ``is_closed``)
and then leave the kernel objects alone. The child's fsspec starts a loop of its own, as it
already does.
"""

from __future__ import annotations

import asyncio
import os

import fsspec.asyn

_at_fork: list[asyncio.AbstractEventLoop | None] = [None]


def _remember_loop() -> None:
    _at_fork[0] = getattr(fsspec.asyn, "loop", [None])[0]


def _forget_loop() -> None:
    _at_fork[0] = None


def _retire_inherited_loop() -> None:
    loop, _at_fork[0] = _at_fork[0], None
    if isinstance(loop, asyncio.BaseEventLoop):
        # Private attributes, because asyncio's public loop.close() would itself unregister the
        # loop's wake-up pipe from the shared epoll, which would break the parent's loop in turn.
        loop._thread_id = None  # not running: its thread did not survive the fork
        loop._closed = True


os.register_at_fork(before=_remember_loop, after_in_parent=_forget_loop, after_in_child=_retire_inherited_loop)
