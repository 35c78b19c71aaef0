"""``DeviceLoader``: batches moved to the training device one ahead of the consumer, images turned
into normalised floats there."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .batch_decode import EncodedCropBatch, decode_crop_batch
from .nested import map_leaves

#: Host output buffers kept for reuse (a consumer rarely holds more batches than this at once).
_POOL_SIZE = 4
#: Bytes of floats normalised at a time on the CPU (within a core's L2 cache).
_CHUNK_BYTES = 1 << 20


class DeviceLoader:
    """Iterates ``loader`` and yields its batches on ``device``.

    Every tensor of a batch (tuples, lists and dicts are walked) is copied with
    ``non_blocking=True``; on CUDA the copy of the next batch runs on a side stream while the
    consumer works on the current one, and the consumer's stream waits for it before the batch is
    handed out. Image batches (uint8 B×C×H×W) become ``dtype`` on the device: divided by 255 and,
    with ``mean`` and ``std`` (per channel, in the 0-1 scale of torchvision's ``Normalize``, e.g.
    ImageNet's ``(0.485, 0.456, 0.406)``), normalised, in one multiply-add over a fresh tensor
    (``channels_last`` gives it that memory format). Which entries are image batches:
    ``image_keys`` (positions in a tuple batch, or field names of a dict batch), by default the
    loader's own (``make_loader`` knows them from the dataset's schema: a uint8 mask or token
    batch is only moved); for another loader, every uint8 tensor of 4 dimensions. Other tensors
    (tokens, lengths, labels, masks) are moved as they are. On a CPU device the same conversion
    runs in the calling process, so CPU-only code takes the same path.

    Decoding on the device: with ``StreamingDataset(..., decode=RandomResizedCropDecode(224)
    .deferred(hflip=0.5))`` the workers only read image headers and draw the crops; their batches
    hold the encoded images (``EncodedCropBatch``), which this loader decodes all at once on its
    device (nvJPEG on CUDA), crops, resizes and then normalises as above. That is the switch for
    machines whose CPUs cannot keep up with JPEG decoding.

    ``len()``, ``state_dict()`` and ``load_state_dict()`` are the loader's; the state is that
    after the batch last handed out (not the one prefetched).
    """

    def __init__(self, loader: Iterable[Any], device: str | torch.device, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, *, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, image_keys: Sequence[int | str] | None = None) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.loader, self.device, self.dtype = loader, torch.device(device), dtype
        self.channels_last = channels_last
        keys = image_keys if image_keys is not None else getattr(loader, "image_keys", None)
        #: where image batches sit (None: any uint8 4-D tensor)
        self.image_keys = None if keys is None else frozenset(keys)
        if mean is None:
            scale, shift = torch.tensor([1 / 255]), torch.tensor([0.0])
        else:
            mean_t, std_t = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
            if mean_t.shape != std_t.shape or mean_t.ndim != 1 or (std_t <= 0).any():
                raise ValueError(f"mean and std must be sequences of the same length, std > 0: {mean}, {std}")
            scale, shift = 1 / (255 * std_t), -mean_t / std_t
        self._scale = scale.view(1, -1, 1, 1).to(self.device, dtype)
        self._shift = shift.view(1, -1, 1, 1).to(self.device, dtype)
        self._state: dict[str, Any] | None = None
        self._pool = _HostBuffers() if self.device.type == "cpu" else None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self._state = None
        if self.device.type == "cuda":
            return self._prefetching()
        return self._direct()

    def _direct(self) -> Iterator[Any]:
        for batch in self.loader:
            self._state = self._loader_state()
            yield self._convert(batch)

    def _prefetching(self) -> Iterator[Any]:
        side = torch.cuda.Stream(self.device)
        consumer = torch.cuda.current_stream(self.device)
        batches = iter(self.loader)

        def start_next():
            batch = next(batches, None)
            if batch is None:
                return None
            state = self._loader_state()
            with torch.cuda.stream(side):
                return self._convert(batch), state

        ahead = start_next()
        while ahead is not None:
            consumer.wait_stream(side)
            batch, state = ahead
            # made on the side stream, used on the consumer's: keep the memory until it is done
            map_leaves(batch, lambda t: t.record_stream(consumer))
            ahead = start_next()
            self._state = state
            yield batch

    def _convert(self, value: Any, image: bool | None = None) -> Any:
        """``value`` on the device; ``image``: whether it is an image batch (None: not known yet,
        decided below the batch's top level by ``image_keys``)."""
        if isinstance(value, EncodedCropBatch):
            return self._normalise(decode_crop_batch(value, self.device))
        if isinstance(value, torch.Tensor):
            moved = value.to(self.device, non_blocking=True)
            if image is None:
                image = self.image_keys is None
            return self._normalise(moved) if image and moved.dtype == torch.uint8 and moved.ndim == 4 else moved
        if image is None and self.image_keys is not None:
            keys = self.image_keys
            if isinstance(value, dict):
                return {k: self._convert(v, k in keys) for k, v in value.items()}
            if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
                return type(value)(*(self._convert(v, i in keys) for i, v in enumerate(value)))
            if isinstance(value, (tuple, list)):
                return type(value)(self._convert(v, i in keys) for i, v in enumerate(value))
        return map_leaves(value, lambda v: self._convert(v, image), (torch.Tensor, EncodedCropBatch))

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if self._scale.shape[1] not in (1, images.shape[1]):
            raise ValueError(f"mean and std have {self._scale.shape[1]} channels, the images {images.shape[1]}")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if self._pool is None:
            out = torch.empty(images.shape, dtype=self.dtype, device=images.device, memory_format=fmt)
            return out.copy_(images).mul_(self._scale).add_(self._shift)
        # On the CPU, one thread: a second one would spin-wait on the core the DataLoader
        # workers decode on (OpenMP keeps the setting per calling thread).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out = self._pool.take(images.shape, self.dtype, fmt)
            # A few images at a time, so each chunk's floats are still in the cache for the
            # multiply and the add (the whole batch at once is 3 passes through memory): 64×3×224×224
            # on one thread 5.5-6.4 -> 4.1 ms; in the main process beside 2 workers, 2000 images
            # 294 -> 239 ms.
            step = max(1, _CHUNK_BYTES // max(1, out[0].numel() * out.element_size())) if len(out) else 1
            for i in range(0, len(out), step):
                out[i:i + step].copy_(images[i:i + step]).mul_(self._scale).add_(self._shift)
            return out
        finally:
            torch.set_num_threads(threads)

    def _loader_state(self) -> dict[str, Any] | None:
        state_dict = getattr(self.loader, "state_dict", None)
        return state_dict() if state_dict is not None else None

    def state_dict(self) -> dict[str, Any]:
        """The loader's state after the batch last handed out."""
        return self._state if self._state is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._state = None


class _HostBuffers:
    """Reused host memory for the float batches of a CPU device.

    A fresh 38 MB tensor per batch costs more than the conversion itself: the kernel maps and
    zeroes every page (about 20 ms per 64×3×224×224 batch). So batches are written into a few
    kept NumPy buffers, each handed out as a tensor with a storage of its own; a weak reference to
    that storage tells when the consumer has dropped the batch and every view of it, and only
    then is the buffer written again. Batches the consumer keeps are never overwritten.
    """

    def __init__(self) -> None:
        self._buffers: list[tuple[np.ndarray, Any]] = []  # (memory, weakref to the storage using it)

    def take(self, shape: torch.Size, dtype: torch.dtype, fmt: torch.memory_format) -> torch.Tensor:
        nbytes = shape.numel() * dtype.itemsize
        for i, (memory, in_use) in enumerate(self._buffers):
            if in_use() is None and memory.nbytes >= nbytes:
                return self._lend(i, memory, shape, dtype, fmt)
        if len(self._buffers) >= _POOL_SIZE:  # all held by the consumer: no reuse
            free = [i for i, (_, in_use) in enumerate(self._buffers) if in_use() is None]
            if not free:
                return torch.empty(shape, dtype=dtype, memory_format=fmt)
            self._buffers.pop(free[0])
        self._buffers.append((np.empty(nbytes, np.uint8), None))
        return self._lend(len(self._buffers) - 1, self._buffers[-1][0], shape, dtype, fmt)

    def _lend(self, i: int, memory: np.ndarray, shape, dtype, fmt) -> torch.Tensor:
        flat = torch.frombuffer(memory, dtype=dtype, count=shape.numel())
        if fmt == torch.channels_last:
            b, c, h, w = shape
            out = flat.view(b, h, w, c).permute(0, 3, 1, 2)
        else:
            out = flat.view(shape)
        self._buffers[i] = (memory, weakref.ref(out.untyped_storage()))
        return out
