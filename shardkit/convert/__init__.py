"""``shardkit.convert``: ImageFolder trees, sequence files, tables, tabular arrays and webdataset
tars into tar shards plus a manifest (each input kind one module of :mod:`.kinds`).

The package is itself callable, so ``shardkit.convert(src, dst)`` works even after a submodule
such as ``shardkit.convert.plan`` was imported (which makes ``shardkit.convert`` this module).
"""

from __future__ import annotations

import sys
import types

from .api import convert
from .options import ConvertOptions, parse_size

__all__ = ["ConvertOptions", "convert", "parse_size"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
