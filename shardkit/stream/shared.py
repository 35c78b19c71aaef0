"""Shared memory reused for the large tensors of batches sent from DataLoader workers.

A tensor a worker sends goes through shared memory: by default a new segment per batch, whose
pages the kernel maps and zeroes in the worker and maps again in the main process. For a uint8
64×3×224×224 batch of images that costs the worker about 8 ms, 125 µs per image, an eighth of
what decoding and cropping the image costs (measured: 170 against 46 µs per image for the
collation and the send alone, with and without reuse). So each worker keeps a few segments and
writes its large batch tensors into one the main process no longer uses.

Which are free is kept in a small table of shared integers, one per (worker, slot), made by the
main process: a worker *leases* a free slot by writing a stamp of its own into it (unique per
worker process: its pid in the high bits) and sends the lease with the batch; the main process
clears the stamp when the last tensor using the segment is freed (a ``weakref.finalize`` on its
storage), or at once when the batch was copied into pinned memory. Only a worker writes a stamp,
only into a free slot, and only the main process frees one, so a segment is written again only
after every tensor read from it is gone: a batch the consumer keeps is never overwritten. When
every slot of a worker is held, it falls back to a new segment, as ``default_collate`` does.
Leases lost with batches DataLoader discards (an epoch abandoned halfway) are freed when the next
epoch starts (:meth:`SharedBatches.sweep`), before any of its requests is sent.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import default_collate

#: Segments each worker keeps: the requests DataLoader keeps in flight per worker (its
#: ``prefetch_factor``, 2 by default), the batch the consumer holds, and the one ``DeviceLoader``
#: prepares ahead. (Kept small: they stay in /dev/shm, which containers often limit to 64 MB.)
SLOTS = 4
#: Smaller tensors are not worth a lease (the saving is in the pages of large ones), larger ones
#: would hold too much of /dev/shm.
MIN_BYTES, MAX_BYTES = 1 << 20, 64 << 20


class Lease(NamedTuple):
    """Slot ``slot`` of the table, stamped ``stamp``, holds ``tensor`` (a view of its segment)."""

    tensor: torch.Tensor
    slot: int
    stamp: int


class SharedBatches:
    """The table of slots, made in the main process and shared with the workers (it pickles, for
    the ``spawn`` start method); the workers' segments and the current collection of leases."""

    def __init__(self, workers: int, slots: int = SLOTS) -> None:
        self.slots = slots
        self.table = torch.zeros(workers * slots, dtype=torch.int64).share_memory_()
        self._held: dict[int, int] = {}  # in the main process: slot → stamp of the lease it holds
        self._worker_state()

    def _worker_state(self) -> None:
        self._segments: list[torch.Tensor | None] = []  # this worker's, by slot
        self._base = self._serial = self._pid = 0
        self._collected: list[Lease] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"slots": self.slots, "table": self.table}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.slots, self.table, self._held = state["slots"], state["table"], {}
        self._worker_state()

    # -- in a worker --------------------------------------------------------------------------
    def collect(self, worker: int) -> None:
        """Lease slots for the tensors made from now on (by :func:`stack` and :func:`cat`) in worker
        ``worker``, until :meth:`take_leases`."""
        if self._pid != os.getpid():  # a new worker process: its segments are its own
            self._pid, self._serial, self._base = os.getpid(), 0, worker * self.slots
            self._segments = [None] * self.slots
        self._collected = []
        _active.pool = self

    def take_leases(self) -> tuple[Lease, ...]:
        """The leases made since :meth:`collect` (sent with the batches), and stop collecting."""
        leases, self._collected = tuple(self._collected or ()), None
        _active.pool = None
        return leases

    def lease(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor | None:
        """An uninitialised tensor in a free segment of this worker, or None when none is free."""
        if self._collected is None:
            return None
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_BYTES:
            return None
        table = self.table
        for j, segment in enumerate(self._segments):
            slot = self._base + j
            if int(table[slot]) != 0:
                continue
            if segment is None or segment.numel() < nbytes:
                segment = self._segments[j] = torch.empty(nbytes, dtype=torch.uint8).share_memory_()
            self._serial += 1
            stamp = (self._pid << 24) | (self._serial & 0xFFFFFF) or 1
            table[slot] = stamp
            tensor = segment[:nbytes].view(dtype).view(tuple(shape))
            self._collected.append(Lease(tensor, slot, stamp))
            return tensor
        return None

    # -- in the main process ------------------------------------------------------------------
    def hold(self, leases: Sequence[Lease]) -> None:
        """Free each lease's slot when the last tensor using its segment is freed here."""
        for lease in leases:
            self._held[lease.slot] = lease.stamp
            weakref.finalize(lease.tensor.untyped_storage(), self.release, lease.slot, lease.stamp)

    def release(self, slot: int, stamp: int) -> None:
        """Free ``slot`` if it still holds the lease ``stamp``."""
        if self._held.get(slot) == stamp:
            del self._held[slot]
        if int(self.table[slot]) == stamp:
            self.table[slot] = 0

    def sweep(self) -> None:
        """Free the slots whose batches never reached the consumer (call it when no request of the
        coming epoch has been sent yet: what is in flight then is discarded by DataLoader)."""
        for slot in self.table.nonzero().flatten().tolist():
            stamp = int(self.table[slot])
            if self._held.get(slot) != stamp:
                self.table[slot] = 0


class _Active:
    pool: SharedBatches | None = None


_active = _Active()


def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``, into a leased segment when a worker collects leases and the result
    is large; else as ``default_collate`` stacks (into shared memory in a worker)."""
    pool, first = _active.pool, tensors[0]
    if pool is not None and first.numel() * first.element_size() * len(tensors) >= MIN_BYTES:
        out = pool.lease((len(tensors), *first.shape), first.dtype)
        if out is not None:
            return torch.stack(list(tensors), out=out)
    return default_collate(list(tensors))


def cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` of 1-D tensors, into a leased segment when a worker collects leases and the
    result is large."""
    pool = _active.pool
    numel = sum(t.numel() for t in tensors)
    if pool is not None and numel * tensors[0].element_size() >= MIN_BYTES:
        out = pool.lease((numel,), tensors[0].dtype)
        if out is not None:
            return torch.cat(list(tensors), out=out)
    return torch.cat(list(tensors))
