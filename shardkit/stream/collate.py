"""Making batches: images stacked, sequences padded, and sequences grouped by length.

All of it runs in the DataLoader workers (``make_loader`` batches there), so the main process
only receives finished batches.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from ..format.fields import codec_of
from .batch_decode import EncodedCrop, collate_crops
from .shared import stack

log = logging.getLogger(__name__)


def image_collate(batch: Sequence[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
    """``[(image, label), ...]`` → ``(images, labels)``: images uint8 B×C×H×W (stacked in shared
    memory when in a worker), labels int64 B. Undecoded images (bytes) stay a list; images whose
    decoding was deferred to the device (``RandomResizedCropDecode(...).deferred()``) become one
    ``EncodedCropBatch``, which ``DeviceLoader`` decodes.

    Raises:
        ValueError: images of different sizes (add a transform that crops or resizes to one size).
    """
    images, labels = zip(*batch)
    if isinstance(images[0], EncodedCrop):
        images = collate_crops(images)
    elif isinstance(images[0], torch.Tensor):
        shape = images[0].shape
        odd = next((im.shape for im in images if im.shape != shape), None)
        if odd is not None:
            raise ValueError(f"images in a batch differ in size ({tuple(shape)} and {tuple(odd)}): give "
                             f"StreamingDataset a transform that crops or resizes them to one size, e.g. "
                             f"torchvision.transforms.v2.RandomResizedCrop(224)")
        images = stack(images)
    else:
        images = list(images)
    return images, torch.tensor(labels, dtype=torch.int64)


def row_collate(batch: Sequence[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(features, label), ...]`` → ``(features B×F, labels int64 B)`` (tabular rows)."""
    features, labels = zip(*batch)
    return stack(list(features)), torch.tensor(labels, dtype=torch.int64)


def dict_collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``[{field: value}, ...]`` → ``{field: batched}``, as ``torch.utils.data.default_collate``
    does: tensors of one shape stacked (in shared memory in a worker), numbers to a tensor,
    strings, bytes, JSON values and tensors of different shapes to lists. A field some samples
    lack is a list with None for them.

    Raises:
        ValueError: images (uint8 3-D tensors of an image field) of different sizes, with what to do.
    """
    names = list(dict.fromkeys(k for sample in batch for k in sample))
    out = {}
    for name in names:
        values = [sample.get(name) for sample in batch]
        out[name] = _collate_field(name, values)
    return out


def _collate_field(name: str, values: list) -> Any:
    first = values[0]
    if any(v is None for v in values):
        return values
    if isinstance(first, EncodedCrop):
        return collate_crops(values)
    if isinstance(first, torch.Tensor) and all(isinstance(v, torch.Tensor) for v in values):
        if all(v.shape == first.shape and v.dtype == first.dtype for v in values):
            return stack(values)
        if codec_of(name).image:
            odd = next(v.shape for v in values if v.shape != first.shape)
            raise ValueError(f"images of field {name!r} in a batch differ in size ({tuple(first.shape)} and "
                             f"{tuple(odd)}): give StreamingDataset a transform that crops or resizes them to "
                             f"one size, e.g. torchvision.transforms.v2.RandomResizedCrop(224)")
        return values
    if all(type(v) is int for v in values):
        return torch.tensor(values, dtype=torch.int64)
    if all(type(v) is float for v in values):
        return torch.tensor(values, dtype=torch.float64)
    if all(type(v) is bool for v in values):
        return torch.tensor(values)
    return values


def pad_collate(batch: Sequence[tuple[Any, int]], *, padding_value: int = 0, sort_by_length: bool = False,
                return_mask: bool = False) -> tuple[torch.Tensor, ...]:
    """``[(tokens, label), ...]`` → ``(padded, lengths, labels)`` or, with ``return_mask``,
    ``(padded, lengths, labels, mask)``.

    ``padded`` is int64 B×T, T the longest length in the batch, padded with ``padding_value``;
    ``lengths`` and ``labels`` int64 B; ``mask`` bool B×T, True on real tokens. With
    ``sort_by_length`` the batch is ordered by decreasing length (stable), as
    ``torch.nn.utils.rnn.pack_padded_sequence`` wants. Tokens may be tensors or NumPy arrays.
    """
    if sort_by_length:
        batch = sorted(batch, key=lambda sample: -len(sample[0]))
    tokens = [t if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t, dtype=np.int64))
              for t, _ in batch]
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.int64)
    labels = torch.tensor([label for _, label in batch], dtype=torch.int64)
    padded = pad_sequence(tokens, batch_first=True, padding_value=padding_value).to(torch.int64)
    if not return_mask:
        return padded, lengths, labels
    mask = torch.arange(padded.shape[1]) < lengths[:, None]
    return padded, lengths, labels, mask


def sample_length(sample: tuple[Any, int]) -> int:
    """The length of a ``(tokens, label)`` sample."""
    return len(sample[0])


class BucketBatchSampler:
    """Groups a stream of ``(tokens, label)`` samples into batches of similar length.

    The iterable-dataset form of a bucketing batch sampler: it reads ``window`` samples, sorts
    them by length, cuts them into batches, shuffles those batches and hands them out, so batches
    hold sequences of similar length (little padding) in a random order. Batches have
    ``batch_size`` samples, or as many as fit ``max_tokens`` padded tokens (batch size × longest
    length), or both limits. Every sample lands in exactly one batch; all batches are full except
    the last (dropped with ``drop_last``, when ``batch_size`` is set). A single sequence longer
    than ``max_tokens`` makes a batch of its own (and a warning). ``window=1`` keeps the stream's
    order (batches by token budget, no bucketing).

    ``make_loader(..., bucketing=True)`` or ``max_tokens=...`` builds one; pass your own for
    other settings. It runs inside the DataLoader workers on undecoded samples, and is
    deterministic given its ``rng``, so a resumed stream replays it exactly.
    """

    def __init__(self, batch_size: int | None = None, *, max_tokens: int | None = None,
                 window: int | None = None, shuffle: bool = True, drop_last: bool = False) -> None:
        if batch_size is None and max_tokens is None:
            raise ValueError("give batch_size, max_tokens or both")
        for name, value in (("batch_size", batch_size), ("max_tokens", max_tokens), ("window", window)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        self.batch_size, self.max_tokens, self.shuffle, self.drop_last = batch_size, max_tokens, shuffle, drop_last
        if window is None:
            window = 64 * batch_size if batch_size else 4096
            if batch_size:  # a multiple of the batch size: every window ends on a full batch
                window -= window % batch_size
        self.window = window

    def num_batches(self, samples: int) -> int | None:
        """Batches made from ``samples`` samples; None with ``max_tokens`` (it depends on the lengths)."""
        if self.max_tokens is not None:
            return None
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    def __call__(self, samples: Iterable[Any], rng: random.Random) -> Iterator[list]:
        if self.window <= 1:
            yield from self._finish(self._greedy(samples))
            return
        pending: list[Any] = []
        for sample in samples:
            pending.append(sample)
            if len(pending) >= self.window:
                pending.sort(key=sample_length)
                *batches, pending = self._greedy(pending)  # the last may be incomplete: carry it on
                yield from self._order(batches, rng)
        pending.sort(key=sample_length)
        yield from self._order(list(self._finish(self._greedy(pending))), rng)

    def _order(self, batches: list[list], rng: random.Random) -> list[list]:
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _greedy(self, samples: Iterable[Any]) -> Iterator[list]:
        """Batches of consecutive samples, each as large as the limits allow; the last may be short."""
        current, longest = [], 0
        for sample in samples:
            n = sample_length(sample)
            if current and ((self.batch_size is not None and len(current) >= self.batch_size) or
                            (self.max_tokens is not None and max(longest, n) * (len(current) + 1) > self.max_tokens)):
                yield current
                current, longest = [], 0
            if self.max_tokens is not None and n > self.max_tokens:
                log.warning("a sequence of %d tokens exceeds max_tokens=%d: it makes a batch of its own",
                            n, self.max_tokens)
            current.append(sample)
            longest = max(longest, n)
        if current:
            yield current

    def _finish(self, batches: Iterable[list]) -> Iterator[list]:
        """The batches, less an incomplete last one under ``drop_last`` (with a ``batch_size``)."""
        previous = None
        for batch in batches:
            if previous is not None:
                yield previous
            previous = batch
        if previous and not (self.drop_last and self.batch_size is not None and len(previous) < self.batch_size):
            yield previous
