"""Several small batches sent from a worker as one tensor per dtype.

Each tensor that crosses from a DataLoader worker to the main process costs a shared-memory file
and a file descriptor passed over a socket (tens of µs), more than slicing a block of rows or
tokens costs. Batches of tiny samples are therefore packed: every tensor of every batch is
flattened into one buffer per dtype, with the structure and shapes beside it; the main process
cuts them back out as views (a few µs each).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .shared import cat


class Bundle(NamedTuple):
    """``buffers[dtype name]``: the flat tensor; ``layout``: the batches' structure, tensors
    replaced by ``(dtype name, offset, shape)``."""

    buffers: dict[str, torch.Tensor]
    layout: list


class _Slot(NamedTuple):
    dtype: str
    offset: int
    shape: tuple[int, ...]


def bundle(batches: list[Any]) -> Bundle:
    """Pack a list of batches (tensors nested in tuples, lists and dicts; other values kept)."""
    parts: dict[str, list[torch.Tensor]] = {}
    sizes: dict[str, int] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = str(value.dtype).removeprefix("torch.")
            offset = sizes.get(name, 0)
            parts.setdefault(name, []).append(value.reshape(-1))
            sizes[name] = offset + value.numel()
            return _Slot(name, offset, tuple(value.shape))
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(walk(v) for v in value))
        if isinstance(value, (tuple, list)):
            return type(value)(walk(v) for v in value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    layout = [walk(b) for b in batches]
    return Bundle({name: cat(ts) for name, ts in parts.items()}, layout)


def unbundle(packed: Bundle) -> list[Any]:
    """The batches of a :class:`Bundle`, their tensors views of its buffers."""
    buffers = packed.buffers

    def walk(value: Any) -> Any:
        if isinstance(value, _Slot):
            n = 1
            for d in value.shape:
                n *= d
            return buffers[value.dtype][value.offset:value.offset + n].view(value.shape)
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(walk(v) for v in value))
        if isinstance(value, (tuple, list)):
            return type(value)(walk(v) for v in value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return [walk(b) for b in packed.layout]
