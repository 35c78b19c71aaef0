"""Several small batches sent from a worker as one tensor.

Each tensor that crosses from a DataLoader worker to the main process costs a shared-memory
segment and a file descriptor passed over a socket (the main process connects to the worker for
each: about 1.3 ms, measured), more than slicing a block of rows or tokens costs. Batches of tiny
samples are therefore packed: the bytes of every tensor of every batch go into one buffer, with
the structure, dtypes and shapes beside it; the main process cuts them back out as views (a few
µs each).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

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

    def walk(value: Any) -> Any:
        nonlocal size
        if isinstance(value, torch.Tensor):
            flat = value.contiguous().reshape(-1).view(torch.uint8)
            pad = -size % _ALIGN
            if pad:
                parts.append(torch.zeros(pad, dtype=torch.uint8))
            offset = size + pad
            parts.append(flat)
            size = offset + flat.numel()
            return _Slot(value.dtype, offset, tuple(value.shape))
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(walk(v) for v in value))
        if isinstance(value, (tuple, list)):
            return type(value)(walk(v) for v in value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    layout = [walk(b) for b in batches]
    return Bundle(cat(parts) if parts else torch.empty(0, dtype=torch.uint8), layout)


def unbundle(packed: Bundle) -> list[Any]:
    """The batches of a :class:`Bundle`, their tensors views of its buffer."""
    buffer = packed.buffer

    def walk(value: Any) -> Any:
        if isinstance(value, _Slot):
            n = value.dtype.itemsize
            for d in value.shape:
                n *= d
            return buffer[value.offset:value.offset + n].view(value.dtype).view(value.shape)
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(walk(v) for v in value))
        if isinstance(value, (tuple, list)):
            return type(value)(walk(v) for v in value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return [walk(b) for b in packed.layout]
