"""What the stream yields for each kind of dataset, from a raw sample: decoded, transformed, shaped.

=========  ========================================  ==================  ===================
kind       yields                                    ``transform`` gets  default collate
=========  ========================================  ==================  ===================
images     ``(uint8 image 3×H×W, label)``            the image           ``image_collate``
sequences  ``(int64 tokens, label)``                 the tokens          ``pad_collate``
tabular    ``(float32 features [F], int64 label)``   the features        ``row_collate``
samples    ``{field: value}``                        the dict            ``dict_collate``
=========  ========================================  ==================  ===================

With ``fields=(...)`` any kind yields a dict of just those fields (and ``transform`` gets the
dict). ``decode=False`` keeps images as their bytes and arrays as NumPy; ``decode=<callable>``
decodes image fields with it (``callable(data, shard=..., member=...)``, e.g.
``shardkit.RandomResizedCropDecode``), under the sample's seed like the transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ShardError
from ..format.blocks import Block
from ..format.fields import codec_of
from ..format.schema import LABEL_FIELD, Schema
from .collate import dict_collate, image_collate, pad_collate, row_collate
from .reader import BlockItem, Raw

class BlockGroup(NamedTuple):
    """Rows of a batch taken from one block."""

    block: Block
    rows: np.ndarray  #: the batch's rows they fill
    indices: np.ndarray  #: the samples' indices in the block
    in_order: bool = False  #: the indices are consecutive and ascending: the samples are one slice


class View:
    """Decodes raw samples of one dataset the way its kind (and the user's options) say."""

    #: the collate function ``make_loader`` uses by default
    collate: Callable = staticmethod(dict_collate)

    def __init__(self, schema: Schema, classes: Sequence[str] | None, fields: Sequence[str] | None,
                 decode: bool | Callable, transform: Callable | None) -> None:
        self.schema, self.fields, self.decode, self.transform = schema, fields, decode, transform
        self.classes = len(classes) if classes is not None else None
        if decode is False:
            self.image = _raw_bytes
        elif callable(decode):
            self.image = lambda data, shard, member: decode(data, shard=shard, member=member)
        else:
            self.image = None  # the codec's own decoder
        #: whether a sample's value depends on the torch generator (it is then seeded per sample)
        self.random = transform is not None or callable(decode)

    @property
    def image_keys(self) -> tuple:
        """Where image batches sit in a collated batch (positions or field names), for ``DeviceLoader``."""
        return tuple(n for n in self._names() if codec_of(n).image) if self.decode is not False else ()

    def __call__(self, raw: Raw, shard: str) -> Any:
        """The sample ``raw`` (from shard ``shard``) as this view yields it, before ``transform``."""
        if isinstance(raw, BlockItem):
            return {name: self._array(raw.block.value(name, raw.index)) for name in self._names()
                    if name in raw.block.arrays}
        return self.schema.decode_group(raw.fields, shard, raw.key, names=self.fields, image=self.image)

    def many(self, raws: Sequence[Raw], shard: str) -> list:
        """``self(raw, shard)`` of each (before ``transform``); a subclass makes it cheaper."""
        return [self(raw, shard) for raw in raws]

    def fast_collate(self, collate: Callable) -> Callable[[Sequence[BlockGroup]], Any] | None:
        """A function giving what ``collate`` gives for a batch, built straight from its blocks
        (``(block, rows of the batch, indices in the block)``, see ``SampleStream.block_groups``),
        when this view knows one for that collate function; else None."""
        return None

    def _names(self) -> Sequence[str]:
        return self.fields if self.fields is not None else self.schema.names

    def _array(self, value: Any) -> Any:
        if isinstance(value, np.ndarray) and self.decode is not False:
            return torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "iu" else value.copy())
        return value

    def finish(self, sample: Any) -> Any:
        """``transform`` applied (already seeded by the caller)."""
        return self.transform(sample) if self.transform is not None else sample


class PairView(View):
    """A kind whose samples are ``(value, label)`` pairs (images, sequences, tabular rows): the
    transform applies to the value."""

    @property
    def image_keys(self) -> tuple:
        return ()

    def finish(self, sample: Any) -> Any:
        if self.transform is None:
            return sample
        value, label = sample
        return self.transform(value), label


class ImagesView(PairView):
    collate = staticmethod(image_collate)

    @property
    def image_keys(self) -> tuple:
        return (0,) if self.decode is not False else ()

    def __call__(self, raw: Raw, shard: str) -> Any:
        schema = self.schema
        schema.check_group(raw.fields, shard, raw.key)
        ext = next(name for name in schema.one_of if name in raw.fields)
        member = f"{raw.key}.{ext}"
        data = raw.fields[ext]
        image = self.image(data, shard, member) if self.image is not None else codec_of(ext).decode(data, shard, member)
        label = -1
        if LABEL_FIELD in raw.fields:
            label = codec_of(LABEL_FIELD).decode(raw.fields[LABEL_FIELD], shard, f"{raw.key}.{LABEL_FIELD}")
            if self.classes is not None and not 0 <= label < self.classes:
                raise ShardError(f"label {label} is not a class index (0..{self.classes - 1})", shard=shard,
                                 member=f"{raw.key}.{LABEL_FIELD}")
        return image, label


class SequencesView(PairView):
    collate = staticmethod(pad_collate)

    def __call__(self, raw: BlockItem, shard: str) -> Any:
        block, i = raw.block, raw.index
        o = block.as_list("tokens/offsets")
        tokens = block.arrays["tokens"][o[i]:o[i + 1]]
        label = block.as_list("label")[i] if "label" in block.arrays else -1
        # a copy, so a sample does not keep its block alive (1.0 µs; torch slicing of a block converted once costs the same)
        return (torch.from_numpy(tokens.astype(np.int64)) if self.decode is not False else tokens), label

    def many(self, raws: Sequence[BlockItem], shard: str) -> list:
        if self.decode is False:
            return [self(raw, shard) for raw in raws]
        out, last, from_numpy, int64 = [], None, torch.from_numpy, np.int64
        for block, i, _ in raws:
            if block is not last:
                last, tokens, o = block, block.arrays["tokens"], block.as_list("tokens/offsets")
                labels = block.as_list("label") if "label" in block.arrays else None
            out.append((from_numpy(tokens[o[i]:o[i + 1]].astype(int64)), -1 if labels is None else labels[i]))
        return out

    def fast_collate(self, collate: Callable) -> Callable[[Sequence[BlockGroup]], Any] | None:
        return self._padded if collate is pad_collate and self.decode is not False and not self.random else None

    @staticmethod
    def _padded(groups: Sequence[BlockGroup]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``pad_collate``'s ``(padded, lengths, labels)``, scattered with NumPy from the blocks into
        the zeroed batch (one fancy-indexing copy per block the batch touches, in the tokens there
        are, not the padded cells; samples in stored order are one slice of the tokens): 47 µs per
        batch of 64 long-tailed sequences, against 62 µs with a mask of the cells and 150 µs
        through per-sample tensors (measured); in stored order 74 -> 58 ms for 50,000 sequences."""
        n = sum(len(g.rows) for g in groups)
        lengths = np.empty(n, np.int64)
        labels = np.full(n, -1, np.int64)
        parts = []  # per block: (rows of the batch, token offsets where they start, the tokens)
        for block, rows, indices, in_order in groups:
            offsets = block.offsets["tokens"]
            starts = offsets[indices]
            lengths[rows] = offsets[indices + 1] - starts
            if "label" in block.arrays:
                labels[rows] = block.arrays["label"][indices]
            parts.append((rows, starts, block.arrays["tokens"], in_order))
        width = int(lengths.max(initial=0))
        padded = np.zeros((n, width), np.int64)
        cells = padded.reshape(-1)
        for rows, starts, tokens, in_order in parts:
            counts = lengths[rows]
            # the k-th token of the part goes to cell k + (its row's cell - the part's tokens before its row)
            before = np.cumsum(counts) - counts
            k = np.arange(int(before[-1] + counts[-1]))
            cells[k + np.repeat(rows * width - before, counts)] = (
                tokens[starts[0]:starts[0] + len(k)] if in_order  # samples in stored order: one slice
                else tokens[k + np.repeat(starts - before, counts)])
        return torch.from_numpy(padded), torch.from_numpy(lengths), torch.from_numpy(labels)


class TabularView(PairView):
    collate = staticmethod(row_collate)

    def __call__(self, raw: BlockItem, shard: str) -> Any:
        block, i = raw.block, raw.index
        row = block.arrays["features"][i]
        if self.decode is False:
            return row.copy(), block.as_list("label")[i]
        # the tutorial's TabularDataset returns torch.tensor(X[i], dtype=torch.float32),
        # torch.tensor(y[i], dtype=torch.long): a 0-d int64 tensor, which default_collate stacks
        return torch.from_numpy(row.astype(np.float32)), torch.tensor(block.as_list("label")[i], dtype=torch.int64)

    def many(self, raws: Sequence[BlockItem], shard: str) -> list:
        if self.decode is False:
            return [self(raw, shard) for raw in raws]
        out, last, from_numpy, tensor, int64 = [], None, torch.from_numpy, torch.tensor, torch.int64
        for block, i, _ in raws:
            if block is not last:  # the block's float32 rows (the layout fixes the dtype), a copy per sample
                last, features, labels = block, from_numpy(block.arrays["features"]), \
                    block.as_list("label")
            out.append((features[i].clone(), tensor(labels[i], dtype=int64)))
        return out

    def fast_collate(self, collate: Callable) -> Callable[[Sequence[BlockGroup]], Any] | None:
        return self._rows if collate is row_collate and self.decode is not False and not self.random else None

    @staticmethod
    def _rows(groups: Sequence[BlockGroup]) -> tuple[torch.Tensor, torch.Tensor]:
        """``row_collate``'s ``(features B×F, labels B)``, gathered from the blocks with NumPy
        fancy indexing: one copy per batch, not one tensor per row."""
        if len(groups) == 1:  # the usual case: a batch inside one block
            block, _, indices, _ = groups[0]
            return (torch.from_numpy(block.arrays["features"][indices]),
                    torch.from_numpy(block.arrays["label"][indices].astype(np.int64)))
        n = sum(len(g.rows) for g in groups)
        features = np.empty((n, groups[0].block.arrays["features"].shape[1]), np.float32)
        labels = np.empty(n, np.int64)
        for block, rows, indices, _ in groups:
            features[rows] = block.arrays["features"][indices]
            labels[rows] = block.arrays["label"][indices]
        return torch.from_numpy(features), torch.from_numpy(labels)


#: kind → its view; a dataset read with ``fields=...`` uses the generic :class:`View`.
VIEWS: dict[str, type[View]] = {"images": ImagesView, "sequences": SequencesView, "tabular": TabularView,
                                "samples": View}


def make_view(schema: Schema, classes: Sequence[str] | None, fields: Sequence[str] | None,
              decode: bool | Callable, transform: Callable | None) -> View:
    """The view of a dataset: its kind's, or the generic dict view when ``fields`` are chosen.

    Raises:
        ValueError: a transform with image decoding deferred to the device (it would get no image).
    """
    from .batch_decode import DeferredCropDecode

    if isinstance(decode, DeferredCropDecode) and transform is not None:
        raise ValueError("a transform cannot run on images whose decoding is deferred to the device "
                         "(DeviceLoader decodes them); fold a flip into RandomResizedCropDecode(...).deferred(hflip=0.5)")
    cls = View if fields is not None else VIEWS[schema.kind]
    return cls(schema, classes, fields, decode, transform)


def _raw_bytes(data: bytes, shard: str | None, member: str | None) -> bytes:
    return data
