"""The input kinds ``convert`` reads, one module each, all behind :class:`~.base.InputKind`."""

from __future__ import annotations

from .base import InputKind, Listed, Request
from .images import ImagesKind
from .sequences import SequencesKind
from .table import TableKind
from .tabular import TabularKind
from .webdataset import WebdatasetKind

#: kind name → its implementation (the order is the one ``--kind`` lists them in)
KINDS: dict[str, InputKind] = {k.name: k for k in (ImagesKind(), SequencesKind(), TableKind(), TabularKind(), WebdatasetKind())}


def get(name: str) -> InputKind:
    """The kind called ``name``.

    Raises:
        ValueError: no such kind (the message lists them).
    """
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be one of {tuple(KINDS)}, not {name!r}") from None


__all__ = ["KINDS", "InputKind", "Listed", "Request", "get"]
