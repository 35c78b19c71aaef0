"""Who reads (rank, world size, worker) and how far (the one state object a checkpoint saves).

This module is the one place that reads the environment (``torch.distributed``, DataLoader
worker info). Generators keep nothing a checkpoint needs: :class:`EpochState` does, and every
reader (the dataset's own iteration, the loader, ``DeviceLoader``) reads and advances it through
its methods.

A saved state names the epoch, what of it had been consumed before its current layout started,
the layout, and how far that layout got (batches handed out per rank, all ranks in step), plus
what identifies the dataset (its digest), the seed and the shuffle setting. It is the same on
every rank at the same step, and means the same on any other layout: restoring it elsewhere lays
out what is left of the epoch anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import get_worker_info

STATE_FORMAT = "shardkit.stream"
STATE_VERSION = 2


def resolve_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: as given, else ``torch.distributed``'s when it is initialised, else ``(0, 1)``.

    Raises:
        ValueError: only one of the two given while torch.distributed is not initialised, or a rank
            outside ``0..world_size - 1``.
    """
    dist = torch.distributed
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        elif rank is None and world_size is None:
            rank, world_size = 0, 1
        else:
            raise ValueError("pass both rank and world_size, or neither (torch.distributed is not initialised)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    return rank, world_size


def current_worker() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the DataLoader worker running this, ``(0, 1)`` outside one."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def in_worker() -> bool:
    return get_worker_info() is not None


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts``, the same in every process and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Identity:
    """What a state must agree with to be restored: the dataset, the seed, shuffling, the epoch size."""

    dataset: str
    seed: int
    shuffle: bool
    epoch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EpochState:
    """The epoch a stream is in and how far it got.

    ``epoch``: the epoch read (or to be read next). ``consumed``: segments
    (:class:`~.plan.Segment` as lists) of the epoch consumed before ``layout`` began (empty for an
    epoch that began on its layout). ``layout``: the layout the epoch runs on (None until it
    starts, or when a restored state must be laid out anew). ``position``: batches per rank
    handed out on that layout (for a dataset iterated directly: samples). ``worker``: set in a
    state one DataLoader worker saved of its own iteration (torchdata's StatefulDataLoader).
    """

    epoch: int = 0
    consumed: tuple = ()
    layout: dict[str, Any] | None = None
    position: int = 0
    worker: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def started(self) -> bool:
        return self.layout is not None or bool(self.consumed)

    def at_epoch(self, epoch: int) -> "EpochState":
        """A fresh state at ``epoch``, or this one if it is already there (a restored position is kept)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, not {epoch}")
        return self if epoch == self.epoch else EpochState(epoch)

    def next_epoch(self) -> "EpochState":
        """The state at the start of the next epoch (what mixers keep across epochs stays)."""
        return EpochState(self.epoch + 1, extra={k: v for k, v in self.extra.items() if k != "into"})

    # -- saving and restoring -----------------------------------------------------------------
    def to_dict(self, identity: Identity) -> dict[str, Any]:
        """Plain ints, strings, bools and lists (``torch.load(weights_only=True)`` and JSON both work)."""
        doc = {"format": STATE_FORMAT, "version": STATE_VERSION, **identity.to_dict(), "epoch": self.epoch,
               "consumed": [list(c) for c in self.consumed], "layout": dict(self.layout) if self.layout else None,
               "position": self.position}
        if self.worker is not None:
            doc["worker"] = self.worker
        if self.extra:
            doc["extra"] = self.extra
        return doc

    @classmethod
    def from_dict(cls, state: Any, identity: Identity) -> "EpochState":
        """The state saved by :meth:`to_dict`, checked against this stream's ``identity``.

        Raises:
            ValueError: not a shardkit stream state, a newer state format, or one saved for another
                dataset, seed, shuffle setting or epoch size (the message says which).
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a shardkit stream state: {state!r:.200}")
        version = state.get("version")
        if not isinstance(version, int) or version > STATE_VERSION:
            raise ValueError(f"the state has format version {version!r}; this shardkit reads up to "
                             f"{STATE_VERSION}: upgrade shardkit")
        mine = identity.to_dict()
        for key, value in mine.items():
            if state.get(key) != value:
                what = {"dataset": "another dataset (its digest differs: a train state in a val loader?)",
                        "seed": "another seed", "shuffle": f"shuffle={state.get(key)!r}",
                        "epoch_size": "another epoch_size"}[key]
                raise ValueError(f"the state was saved for {what}; this stream has {key}={value!r}: "
                                 f"load it into a stream over the same data with the same settings")
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
            consumed = tuple(tuple(c) for c in state["consumed"])
            layout = state["layout"]
            worker = state.get("worker")
            if layout is not None and not isinstance(layout, dict):
                raise TypeError("layout is not a dict")
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a shardkit stream state ({err!r}): {state!r:.200}") from None
        if epoch < 0 or position < 0:
            raise ValueError(f"not a shardkit stream state (negative epoch or position): {state!r:.200}")
        return cls(epoch, consumed, layout, position, None if worker is None else int(worker),
                   dict(state.get("extra") or {}))
