"""Helpers of the streaming tests: sequence shards written directly with ``shardkit.format`` (so
that shards hold several small token blocks and uneven counts), sample identities, and the one
resumption contract every stateful component is checked with."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shardkit.format.manifest import MANIFEST_NAME, Manifest, ShardInfo, shard_name
import datagen
from shardkit.format.records import sample_key
from shardkit.format.tar import TarWriter

#: Uneven shard sizes (103 sequences); the one-sample shard and blocks of 4 exercise the reader.
SEQ_SHARDS = [17, 30, 1, 25, 30]


def id_sequences(n: int, seed: int = 0, max_len: int = 40) -> list[list[int]]:
    """Sequence ``i`` starts with token ``i``, so a sample names itself; lengths 1..max_len."""
    rng = np.random.default_rng(seed)
    return [[i] + rng.integers(0, 1000, int(rng.integers(0, max_len))).tolist() for i in range(n)]


def write_sequence_shards(dst: Path, sequences: list[list[int]], shard_sizes: list[int], *,
                          labels: list[int] | None = None, block: int = 4, dtype: str = "uint16") -> Manifest:
    """Shards of token blocks of at most ``block`` sequences, exactly as the converter lays them out."""
    assert sum(shard_sizes) == len(sequences)
    dst.mkdir(parents=True, exist_ok=True)
    infos, position = [], 0
    for s, size in enumerate(shard_sizes):
        path = dst / shard_name(s)
        with open(path, "wb") as f:
            writer = TarWriter(f)
            for first in range(position, position + size, block):
                chunk = sequences[first:min(first + block, position + size)]
                tokens = np.concatenate([np.asarray(t, dtype=dtype) for t in chunk])
                lengths = np.array([len(t) for t in chunk], dtype=np.int64)
                block_labels = None if labels is None else np.array(labels[first:first + len(chunk)], np.int64)
                for name, data in datagen.token_block_members(sample_key(first), tokens, lengths, block_labels):
                    writer.add(name, data)
            writer.close()
        data = path.read_bytes()
        infos.append(ShardInfo(path.name, size, len(data), hashlib.sha256(data).hexdigest()))
        position += size
    manifest = Manifest("sequences", infos, sequences={"dtype": dtype, "has_labels": labels is not None})
    (dst / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def seq_id(tokens) -> int:
    return int(tokens[0])


def sample_ids(samples, kind: str = "sequences") -> list:
    """The identities of ``(data, label)`` samples: sequence ids, or image byte hashes (decode=False)."""
    if kind == "sequences":
        return [seq_id(t) for t, _ in samples]
    return [hashlib.sha256(data).hexdigest() for data, _ in samples]


def batch_ids(batch) -> list[int]:
    """Sequence ids in a ``pad_collate`` batch."""
    return batch[0][:, 0].tolist()


def leaves(value) -> list:
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in leaves(v)]
    return [value]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b), f"{len(a)} batches against {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        flat_x, flat_y = leaves(x), leaves(y)
        assert len(flat_x) == len(flat_y)
        for u, v in zip(flat_x, flat_y):
            if isinstance(u, torch.Tensor):
                assert torch.equal(u, v), f"batch {i} differs"
            else:
                assert u == v, f"batch {i} differs"


def check_resume(make: Callable[[], object], stop_after: int, epochs: int, tmp_path: Path) -> None:
    """The resumption contract, for anything with ``state_dict``/``load_state_dict`` that iterates
    (a loader, a dataset): run ``epochs`` epochs uninterrupted; run again and stop after
    ``stop_after`` items, save the state with ``torch.save``, load it with ``weights_only=True``
    into a fresh object, and check that it yields exactly the rest."""
    uninterrupted = make()
    reference = [item for _ in range(epochs) for item in uninterrupted]
    assert len(reference) > stop_after

    first = make()
    taken, state = [], None
    for _ in range(epochs):
        for item in first:
            taken.append(item)
            if len(taken) == stop_after:
                state = first.state_dict()
                break
        if state is not None:
            break
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    second = make()
    second.load_state_dict(loaded)
    rest = []
    while len(taken) + len(rest) < len(reference):
        before = len(rest)
        rest += list(second)
        assert len(rest) > before or len(taken) + len(rest) == len(reference), "an empty epoch after resuming"
    assert_same_batches(taken + rest, reference)
