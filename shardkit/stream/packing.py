"""Token packing: documents concatenated into rows of ``block_size`` tokens, planned in token space
so that every rank yields the same number of packed batches and a resume is exact.

**Token space.** For packing, the entries of the plan are tokens, not samples: shard ``s`` holds
``tokens[s]`` entries (plus one per document with ``eos_id``: the end-of-document token after
each document is an entry of its own). Documents keep their stored order within a shard; the
shards are visited in the epoch's shuffled order (``plan.window`` on the shards' token counts,
which the manifest records, or one cached scan finds for older datasets). So what a batch holds
is a pure function of token positions: the state (what was consumed, how far the layout got) is
the same ``EpochState`` as for samples, and a resume on the same layout gives the same blocks.

**Rows.** Each rank's part of the epoch is whole rows of ``block_size`` consecutive tokens of the
epoch's token stream, the same number on every rank (the last rows padded with ``pad_id``, or
dropped with ``drop_last``); a batch is ``batch_size`` consecutive rows, and workers take
contiguous runs of whole batches (``plan.worker_ranges``), so only each rank's last batch is
short (fewer rows).

**A batch** (:class:`Packer`, in the workers, with NumPy on whole blocks): ``input_ids``,
``position_ids`` (the position in the document, continuing when a document goes on from the
previous row or batch), ``document_ids`` and ``cu_seqlens``/``max_seqlen`` over the flattened
batch as FlashAttention's varlen functions take them. A new segment of ``cu_seqlens`` begins at
each document's start, at the batch's start, wherever the tokens that follow are not the next
ones of the stream (rows of different sources of a mix; what an elastic resume left), and at
padding (its own segment in each row, ``document_ids`` -1). Within a row, positions restart
where such a break falls inside a document, so masks built from position ids (torchtitan's,
Hugging Face's) agree with ``cu_seqlens`` row by row.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ShardError
from ..format.blocks import Block
from .plan import EpochPlan, Layout, Segment, split, take, worker_ranges
from .samples import SampleStream


# --- the plan in rows ----------------------------------------------------------------------------

def rank_rows(total: int, layout: Layout, rank: int) -> tuple[int, int]:
    """``[first, end)`` of rank ``rank``'s rows of an epoch of ``total`` tokens: the same number
    on every rank (``"pad"``: the rows of the last ranks padded; ``"drop"``: whole rows only, cut
    to the same number), or (``"split"``) rows spread so counts differ by at most one; then cut
    to whole batches with ``drop_last``."""
    if not 0 <= rank < layout.world_size:
        raise ValueError(f"rank {rank} is outside 0..{layout.world_size - 1}")
    block, w = layout.block, layout.world_size
    if layout.ranks == "split":
        lo, hi = split(-(-total // block), w, rank)
    elif layout.ranks == "drop":
        per = total // block // w
        lo, hi = rank * per, (rank + 1) * per
    else:
        per = -(-(-(-total // block)) // w)
        lo, hi = rank * per, (rank + 1) * per
    if layout.drop_last:
        rows = layout.batch_size // block
        hi = lo + (hi - lo) // rows * rows
    return lo, hi


def batches_per_rank(total: int, layout: Layout, rank: int = 0) -> int:
    """Packed batches rank ``rank`` yields from an epoch of ``total`` tokens."""
    lo, hi = rank_rows(total, layout, rank)
    return -(-(hi - lo) * layout.block // layout.batch_size)


def lay_out_rows(sequence: Sequence[Segment], layout: Layout) -> EpochPlan:
    """Spread a token-space sequence over ``layout``: each rank its rows (positions past the
    sequence's end are padding, marked ``pad``), each worker a contiguous run of whole batches."""
    total = sum(s.count for s in sequence)
    ranks = []
    for r in range(layout.world_size):
        lo, hi = rank_rows(total, layout, r)
        begin, end = lo * layout.block, hi * layout.block
        if total:
            part = take(sequence, begin, end)
        else:  # nothing to read: padding only
            part = [Segment(0, 0, 0, end - begin, None, 0, end - begin, True)] if end > begin else []
        workers = tuple(tuple(take(part, a, b)) if b > a else () for a, b in worker_ranges(end - begin, layout))
        ranks.append(workers)
    return EpochPlan(layout, tuple(ranks))


def epoch_window(total_entries: int, total_samples: int, epoch_samples: int | None) -> int | None:
    """The entries of an epoch of ``epoch_samples`` samples (None: whole passes), in token space:
    the same fraction of the tokens as of the samples (at least one)."""
    if epoch_samples is None or total_samples == 0:
        return None
    return max(1, round(epoch_samples * total_entries / total_samples))


# --- the worker side -----------------------------------------------------------------------------

class _BlockInfo(NamedTuple):
    """A block in token space, made once per block and kept while batches slice it."""

    block: Block
    starts: np.ndarray  # int64, size + 1: where each document starts among the block's entries
    values: np.ndarray  # the entries: the tokens, or (eos) int64 tokens with eos_id after each document


#: Blocks a packer keeps in token space.
HELD_BLOCKS = 2


class Packer:
    """Makes packed batches from token-space segments, reading through ``stream``'s reader.

    ``sources``: for a mix with ``with_source``, each shard's source name (rows say theirs).

    Per batch, each token costs one converting copy (``input_ids``), a cumulative sum
    (``position_ids``) and a repeat (``document_ids``); boundaries come from the blocks' document
    offsets, not from a scan of the tokens.
    """

    def __init__(self, stream: SampleStream, block: int, eos_id: int | None, pad_id: int,
                 sources: Sequence[str] | None = None) -> None:
        self.stream, self.block, self.eos_id, self.pad_id, self.sources = stream, block, eos_id, pad_id, sources
        self.eos = eos_id is not None
        #: per shard, ``(entry, sample)`` at the starts of the blocks met so far: where to seek
        self._marks: dict[int, list[tuple[int, int]]] = {}
        self._infos: OrderedDict[int, _BlockInfo] = OrderedDict()
        #: the last block a batch read: ``(shard, its first entry, its first sample, info)``
        self._last: tuple[int, int, int, _BlockInfo] | None = None

    def _info(self, block: Block) -> _BlockInfo:
        found = self._infos.get(id(block))
        if found is not None and found.block is block:
            self._infos.move_to_end(id(block))
            return found
        offsets, tokens = block.offsets["tokens"], block.arrays["tokens"]
        if self.eos:
            starts = offsets + np.arange(len(offsets))
            values = np.empty(int(starts[-1]), np.int64)
            ends = starts[1:] - 1
            keep = np.ones(len(values), bool)
            keep[ends] = False
            values[keep] = tokens
            values[ends] = self.eos_id
        else:
            starts, values = offsets, tokens
        found = self._infos[id(block)] = _BlockInfo(block, starts, values)
        while len(self._infos) > HELD_BLOCKS:
            self._infos.popitem(last=False)
        return found

    def _pieces(self, shard: int, first: int, last: int) -> list[tuple[int, Any]]:
        """``(entry, (info, lo, hi))`` runs of block entries covering entries ``first..last`` of the
        shard, or ``(entry, count)`` for entries lost to damage (``on_error="skip"``)."""
        reader = self.stream.reader
        ref = self.stream.source.shards[shard]
        marks = self._marks.setdefault(shard, [(0, 0)])
        entry, sample = marks[bisect.bisect_right(marks, (first, float("inf"))) - 1]
        out: list[tuple[int, Any]] = []
        held = self._last[1:] if self._last is not None and self._last[0] == shard else None
        while entry < last:
            if held is not None and held[0] == entry:  # the block the last batch ended in: no read
                base, start_sample, info = held
                end = base + int(info.starts[-1])
                if end > first:
                    out.append((max(entry, first), (info, max(entry, first) - base, min(end, last) - base)))
                entry, sample = end, start_sample + info.block.size
                continue
            item = reader.read(shard, sample, sample + 1)[0] if sample < ref.samples else None
            if item is None:  # damaged (recorded by the reader), or fewer samples than planned
                if sample >= ref.samples:
                    self.stream.errors.damaged(ShardError(f"holds fewer tokens than planned ({entry} of "
                                                          f"{last}): the manifest disagrees with it", shard=ref.name))
                out.append((max(entry, first), last - max(entry, first)))
                return out
            info = self._info(item.block)
            base = entry - int(info.starts[item.index])  # the block's first entry
            start_sample = sample - item.index
            i = bisect.bisect_left(marks, (base, start_sample))
            if i == len(marks) or marks[i] != (base, start_sample):
                marks.insert(i, (base, start_sample))
            end = base + int(info.starts[-1])
            if end > first:
                out.append((max(entry, first), (info, max(entry, first) - base, min(end, last) - base)))
                self._last = (shard, base, start_sample, info)
            entry, sample = end, start_sample + item.block.size
        return out

    def batch(self, segments: Sequence[Segment]) -> dict[str, Any]:
        """One packed batch of the segments' entries (a whole number of rows; see the module)."""
        block = self.block
        n = sum(s.count for s in segments)
        ids = np.empty(n, np.int64)
        pos = np.empty(n, np.int64)
        padding: list[tuple[int, int]] = []  # entries that are padding (or lost to damage)
        bounds: list[Any] = []  # where segments of cu_seqlens start, in order
        restarts: list[int] = []  # breaks inside a row and a document: positions start again there
        shard_of = np.full(-(-n // block), -1, np.int64) if self.sources is not None else None
        at, previous = 0, None
        for seg in segments:
            if seg.pad:
                self._pad(at, at + seg.count, ids, pos, padding, bounds)
                at += seg.count
                previous = None
                continue
            first = seg.start + seg.lo
            for entry, piece in self._pieces(seg.shard, first, seg.start + seg.hi):
                here = at + entry - first
                if isinstance(piece, int):  # lost to damage: padding
                    self._pad(here, here + piece, ids, pos, padding, bounds)
                    previous = None
                    continue
                info, lo, hi = piece
                m, starts = hi - lo, info.starts
                ids[here:here + m] = info.values[lo:hi]
                d0 = int(np.searchsorted(starts, lo, "right")) - 1
                d1 = int(np.searchsorted(starts, hi, "left"))
                inner = starts[d0 + 1:d1]  # documents starting inside the piece
                # positions: a sawtooth made by one cumulative sum (1 per entry, a drop at each start)
                out = pos[here:here + m]
                out.fill(1)
                out[0] = lo - starts[d0]
                out[inner - lo] = 1 - np.diff(starts[d0:d1])
                np.cumsum(out, out=out)
                if previous != (seg.pass_, seg.shard, entry) or out[0] == 0:
                    bounds.append(here)
                    if out[0] and here % block:
                        restarts.append(here)
                bounds.append(inner - lo + here)
                if shard_of is not None:
                    rows = slice(here // block, -(-(here + m) // block))
                    shard_of[rows] = np.where(shard_of[rows] < 0, seg.shard, shard_of[rows])
                previous = (seg.pass_, seg.shard, entry + m)
            at += seg.count
        return self._finish(ids, pos, padding, bounds, restarts, shard_of)

    def _pad(self, a: int, b: int, ids: np.ndarray, pos: np.ndarray, padding: list, bounds: list) -> None:
        """Entries ``a..b`` are padding: pad_id, a segment in each row, positions from 0 in it."""
        ids[a:b] = self.pad_id
        padding.append((a, b))
        c = a
        while c < b:
            c1 = min(b, (c // self.block + 1) * self.block)
            pos[c:c1] = np.arange(c1 - c)
            bounds.append(c)
            c = c1

    def _finish(self, ids: np.ndarray, pos: np.ndarray, padding: list[tuple[int, int]], bounds: list,
                restarts: list[int], shard_of: np.ndarray | None) -> dict[str, Any]:
        n, block = len(ids), self.block
        cu = np.append(np.concatenate([np.atleast_1d(np.asarray(b, np.int64)) for b in bounds]), n)
        for h in restarts:  # positions start again, until the segment ends (see the module)
            end = int(cu[np.searchsorted(cu, h, "right")])
            pos[h:end] -= pos[h]
        lengths = np.diff(cu)
        documents = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        for a, b in padding:
            documents[a:b] = -1
        out: dict[str, Any] = {
            "input_ids": torch.from_numpy(ids.reshape(-1, block)),
            "position_ids": torch.from_numpy(pos.reshape(-1, block)),
            "document_ids": torch.from_numpy(documents.reshape(-1, block)),
            "cu_seqlens": torch.from_numpy(cu.astype(np.int32)),
            "max_seqlen": int(lengths.max(initial=0)),
        }
        if shard_of is not None:
            out["source"] = [self.sources[s] if s >= 0 else None for s in shard_of.tolist()]
        return out
