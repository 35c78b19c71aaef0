"""The small values that say where a stream is: who reads (rank, world size, worker) and how far
(epoch, per-worker positions). Generators keep nothing that a checkpoint needs; this does.

This module is the one place that reads the environment (``torch.distributed``, DataLoader
worker info).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import get_worker_info


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
class StreamState:
    """Where the next iteration of a stream starts.

    ``epoch``: the epoch it reads. ``positions[w]``: items worker ``w`` already yielded in that
    epoch, ``finished[w]``: whether it had yielded its last one (both None: from the start).
    ``first_worker``: the worker that DataLoader worker 0 plays, so that a restored loader's
    round robin over workers continues where the saved one stopped.
    """

    epoch: int = 0
    positions: tuple[int, ...] | None = None
    finished: tuple[bool, ...] | None = None
    first_worker: int = 0

    @property
    def resuming(self) -> bool:
        return self.positions is not None

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "positions": list(self.positions or ()),
                "finished": list(self.finished or ()), "next_worker": self.first_worker}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> StreamState:
        """Raises ``ValueError`` for a state that is not one of ours."""
        try:
            epoch, positions = int(state["epoch"]), [int(p) for p in state["positions"]]
            finished = [bool(f) for f in state.get("finished") or [False] * len(positions)]
            first = int(state.get("next_worker", 0))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a shardkit stream state ({err!r}): {state!r:.200}") from None
        if epoch < 0 or any(p < 0 for p in positions) or len(finished) != len(positions):
            raise ValueError(f"not a shardkit stream state: {state!r:.200}")
        if not any(positions) and not any(finished):
            return cls(epoch)
        return cls(epoch, tuple(positions), tuple(finished), first % len(positions))
