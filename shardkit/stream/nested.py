"""Batches as nested structures: one walk over the tensors (or other leaves) inside tuples, named
tuples, lists and dicts, used by the worker's bundles, pinning and the device copy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def map_leaves(value: Any, fn: Callable[[Any], Any], leaf: type | tuple[type, ...] = torch.Tensor) -> Any:
    """``value`` rebuilt with ``fn(x)`` for each ``leaf`` inside it (in order, depth first);
    other values are kept as they are. Named tuples stay named tuples."""
    if isinstance(value, leaf):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_leaves(v, fn, leaf) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_leaves(v, fn, leaf) for v in value)
    if isinstance(value, dict):
        return {k: map_leaves(v, fn, leaf) for k, v in value.items()}
    return value
