"""Several small batches sent from a worker as one tensor.

Each tensor that crosses from a DataLoader worker to the main process costs a shared-memory
segment and a file descriptor passed over a socket (the main process connects to the worker for
each: about 1.3 ms, measured), more than slicing a block of rows or tokens costs. Batches of tiny
samples are therefore packed: the bytes of every tensor of every batch go into one buffer, with
the structure, dtypes and shapes beside it; the main process cuts them back out as views (a few
µs each).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .nested import map_leaves
from .shared import cat

#: Each tensor starts at a multiple of this in the buffer, so that its view is aligned.
_ALIGN = 16


class Bundle(NamedTuple):
    """``buffer``: the bytes, uint8; ``layout``: the batches' structure, tensors replaced by
    ``_Slot(dtype, byte offset, shape)``."""

    buffer: torch.Tensor
    layout: list


class _Slot(NamedTuple):
    dtype: torch.dtype
    offset: int
    shape: tuple[int, ...]


def bundle(batches: list[Any]) -> Bundle:
    """Pack a list of batches (tensors nested in tuples, lists and dicts; other values kept)."""
    parts: list[torch.Tensor] = []
    size = 0

    def put(value: torch.Tensor) -> _Slot:
        nonlocal size
        flat = value.contiguous().reshape(-1).view(torch.uint8)
        pad = -size % _ALIGN
        if pad:
            parts.append(torch.zeros(pad, dtype=torch.uint8))
        offset = size + pad
        parts.append(flat)
        size = offset + flat.numel()
        return _Slot(value.dtype, offset, tuple(value.shape))

    layout = [map_leaves(b, put) for b in batches]
    return Bundle(cat(parts) if parts else torch.empty(0, dtype=torch.uint8), layout)


def unbundle(packed: Bundle) -> list[Any]:
    """The batches of a :class:`Bundle`, their tensors views of its buffer."""
    buffer = packed.buffer

    def view(slot: _Slot) -> torch.Tensor:
        n = math.prod(slot.shape) * slot.dtype.itemsize
        return buffer[slot.offset:slot.offset + n].view(slot.dtype).view(slot.shape)

    return [map_leaves(b, view, _Slot) for b in packed.layout]
