"""shardkit: convert datasets into tar shards and stream them into PyTorch training.

The public API is listed in ``__all__``. Names are imported lazily so that ``shardkit --help``
and the converter's workers do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "BucketBatchSampler": "shardkit.stream.collate",
    "DestinationError": "shardkit.errors",
    "DeviceLoader": "shardkit.stream.device",
    "IndexedDataset": "shardkit.stream.indexed",
    "Manifest": "shardkit.format.manifest",
    "ManifestError": "shardkit.errors",
    "MissingExtraError": "shardkit.errors",
    "Mix": "shardkit.stream.mix",
    "RandomResizedCropDecode": "shardkit.stream.crop",
    "ShardError": "shardkit.errors",
    "ShardWriter": "shardkit.writer",
    "ShardkitError": "shardkit.errors",
    "SourceError": "shardkit.errors",
    "StorageError": "shardkit.errors",
    "StreamOptions": "shardkit.stream.dataset",
    "StreamingDataset": "shardkit.stream.dataset",
    "convert": "shardkit.convert",
    "dict_collate": "shardkit.stream.collate",
    "image_collate": "shardkit.stream.collate",
    "load_manifest": "shardkit.inspect",
    "make_loader": "shardkit.stream.loader",
    "pad_collate": "shardkit.stream.collate",
    "row_collate": "shardkit.stream.collate",
    "verify": "shardkit.inspect",
}
__all__ = sorted(_EXPORTS)
assert list(_EXPORTS) == __all__, "keep _EXPORTS sorted"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shardkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .convert import convert
    from .errors import (DestinationError, ManifestError, MissingExtraError, ShardError, ShardkitError,
                         SourceError, StorageError)
    from .format.manifest import Manifest
    from .inspect import load_manifest, verify
    from .stream.collate import BucketBatchSampler, dict_collate, image_collate, pad_collate, row_collate
    from .stream.crop import RandomResizedCropDecode
    from .stream.dataset import StreamingDataset, StreamOptions
    from .stream.device import DeviceLoader
    from .stream.indexed import IndexedDataset
    from .stream.loader import make_loader
    from .stream.mix import Mix
    from .writer import ShardWriter
