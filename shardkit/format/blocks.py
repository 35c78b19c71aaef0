"""Blocks: many small samples under one tar key, as columns of NumPy arrays.

Per-member tar overhead (a 512-byte header plus padding) would double the size of a typical
50-token sequence or a 20-float row, so such samples travel in blocks: one key holds the arrays
of a run of samples, one ``.npy`` member per column. A column is

- ``ragged``: a variable-length array per sample (token ids), stored concatenated, with a
  lengths member (one length per sample, the smallest unsigned dtype);
- ``rows``: a fixed-width row per sample (tabular features), stored as one 2-D array;
- ``scalar``: one number per sample (labels), in the smallest dtype that holds the block's values.

A :class:`BlockLayout` lists its columns; the first says how many samples a block holds. Token
sequences are ``tokens.npy`` (ragged, the dataset's unsigned dtype) + ``lengths.npy`` +
optional ``labels.npy``, the layout of every shardkit version so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import ShardError
from .fields import load_npy, npy_bytes, npy_header
from .tar import entry_bytes

#: Target bytes of tokens per block: large enough to amortise headers, small enough to stream.
BLOCK_TOKEN_BYTES = 1 << 20
#: ``np.save``'s header for the 1-D and 2-D arrays of a block (a test checks it).
NPY_HEADER = 128


def smallest_unsigned(largest: int) -> np.dtype:
    """The smallest unsigned dtype holding ``0..largest``; ``ValueError`` if negative or over 64 bits."""
    if largest < 0:
        raise ValueError(f"value {largest} is negative")
    for name in ("uint8", "uint16", "uint32", "uint64"):
        if largest <= np.iinfo(name).max:
            return np.dtype(name)
    raise ValueError(f"value {largest} does not fit in 64 bits")


def smallest_signed(smallest: int, largest: int) -> np.dtype:
    """The smallest signed dtype holding ``smallest..largest``; ``ValueError`` beyond 64 bits."""
    for name in ("int8", "int16", "int32", "int64"):
        info = np.iinfo(name)
        if info.min <= smallest and largest <= info.max:
            return np.dtype(name)
    raise ValueError(f"values {smallest}..{largest} do not fit in 64 bits")


@dataclass(frozen=True)
class Column:
    """One array of a block: the sample ``field`` it carries, its ``member`` extension, its shape
    kind, and its ``dtype`` when fixed for the dataset (None: integers in the smallest dtype per
    block). ``width``: values per row (rows). ``lengths``: the member of a ragged column's lengths."""

    field: str
    member: str
    kind: Literal["ragged", "rows", "scalar"]
    dtype: str | None = None
    width: int | None = None
    lengths: str | None = None
    optional: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None and v is not False}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Column":
        """The column a manifest records.

        Raises:
            ValueError: a value of the wrong type or out of range (the manifest loader names the file).
        """
        column = cls(**{k: doc[k] for k in ("field", "member", "kind", "dtype", "width", "lengths", "optional")
                        if k in doc})
        what = f"block column {column.field!r:.40}"
        if column.kind not in ("ragged", "rows", "scalar"):
            raise ValueError(f"{what} is of an unknown kind")
        names = (column.field, column.member) + ((column.lengths,) if column.kind == "ragged" else ())
        if not all(_is_name(n) for n in names) or column.lengths not in (None, *names[2:]):
            raise ValueError(f"{what} has a name that is not a non-empty string without '/'")
        if not isinstance(column.optional, bool):
            raise ValueError(f"{what} has an 'optional' that is not true or false")
        if column.dtype is not None and not (isinstance(column.dtype, str) and _is_dtype(column.dtype)):
            raise ValueError(f"{what} has an unknown dtype")
        if column.width is not None and not (type(column.width) is int and column.width > 0):
            raise ValueError(f"{what} has a width that is not a positive integer")
        return column


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "/" not in value


def _is_dtype(name: str) -> bool:
    try:
        return np.dtype(name).kind in "biuf"
    except TypeError:
        return False


@dataclass
class Block:
    """A decoded block: ``size`` samples; ``arrays[field]`` the column (ragged: concatenated, with
    ``offsets[field]``, int64 of ``size + 1``: sample ``i`` is ``values[offsets[i]:offsets[i+1]]``)."""

    size: int
    arrays: dict[str, np.ndarray]
    offsets: dict[str, np.ndarray] = field(default_factory=dict)
    _lists: dict[str, list] = field(default_factory=dict, repr=False, compare=False)

    def as_list(self, name: str) -> list:
        """A scalar column as a Python list (or a ragged column's offsets, ``name + "/offsets"``),
        made once: reading one sample at a time from it costs a tenth of indexing NumPy."""
        found = self._lists.get(name)
        if found is None:
            base, _, what = name.partition("/")
            found = self._lists[name] = (self.offsets[base] if what else self.arrays[base]).tolist()
        return found

    def value(self, name: str, i: int) -> Any:
        """Field ``name`` of sample ``i``: an array (ragged, rows) or a Python number (scalar)."""
        array = self.arrays[name]
        if name in self.offsets:
            o = self.offsets[name]
            return array[o[i]:o[i + 1]]
        return array[i] if array.ndim > 1 else array[i].item()


@dataclass(frozen=True)
class BlockLayout:
    """The columns of a block layout; the first is always present and counts the samples."""

    columns: tuple[Column, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(c.field for c in self.columns)

    def fixed_sample_bytes(self) -> int | None:
        """Bytes of one sample in a batch (rows as float32, scalars as int64), or None when a
        ragged column makes it vary."""
        total = 0
        for column in self.columns:
            if column.kind == "ragged":
                return None
            total += 4 * (column.width or 1) if column.kind == "rows" else 8
        return total

    # -- writing ----------------------------------------------------------------------------
    def members(self, key: str, values: dict[str, np.ndarray], lengths: np.ndarray | None = None) -> list[tuple[str, bytes]]:
        """The ``(name, bytes)`` members of one block. ``values[field]`` holds each column (ragged:
        concatenated, with ``lengths``; rows: 2-D; scalar: 1-D); an optional column may be absent
        or None. Fixed dtypes must already be applied by the caller (it knows the dataset's)."""
        out = []
        for column in self.columns:
            array = values.get(column.field)
            if array is None:
                if not column.optional:
                    raise ValueError(f"block {key} lacks column {column.field!r}")
                continue
            if column.dtype is None:
                array = array.astype(_smallest(array))
            out.append((f"{key}.{column.member}", npy_bytes(array)))
            if column.kind == "ragged":
                out.append((f"{key}.{column.lengths}",
                            npy_bytes(lengths.astype(smallest_unsigned(int(lengths.max(initial=0)))))))
        return out

    def block_bytes(self, sizes: dict[str, int], count: int, longest: int = 0) -> int:
        """Exact tar bytes of a block of ``count`` samples whose columns hold ``sizes[field]`` bytes
        of values (optional columns absent from ``sizes`` are left out); ``longest``: the longest
        ragged length (it decides the lengths member's dtype)."""
        total = 0
        for column in self.columns:
            if column.field not in sizes:
                continue
            total += entry_bytes(NPY_HEADER + sizes[column.field])
            if column.kind == "ragged":
                total += entry_bytes(NPY_HEADER + count * smallest_unsigned(longest).itemsize)
        return total

    # -- reading ----------------------------------------------------------------------------
    def count(self, group: dict[str, bytes], shard: str | None, key: str) -> int:
        """Samples in a block, from its first column's header alone (lengths for a ragged one).

        Raises:
            ShardError: the counting member is missing or not a valid array.
        """
        first = self.columns[0]
        name = first.lengths if first.kind == "ragged" else first.member
        if name not in group:
            raise ShardError(f"block has no {name} member", shard=shard, member=key)
        shape, *_ = npy_header(group[name], shard, f"{key}.{name}", kinds="iu" if first.kind == "ragged" else "biufc")
        if not shape:
            raise ShardError("expected an array, found a scalar", shard=shard, member=f"{key}.{name}")
        return shape[0]

    def decode(self, group: dict[str, bytes], shard: str | None, key: str) -> Block:
        """Every column of a block, checked against each other.

        Raises:
            ShardError: a member missing or malformed, a dtype other than the layout's, lengths
                that disagree with the values, or columns of different lengths.
        """
        arrays, offsets, size = {}, {}, None
        for column in self.columns:
            member = f"{key}.{column.member}"
            if column.member not in group:
                if column.optional:
                    continue
                raise ShardError(f"block lacks member {member}", shard=shard)
            kinds = "u" if column.kind == "ragged" else "iu" if column.dtype is None else "biufc"
            array = load_npy(group[column.member], shard, member, kinds=kinds, ndim=2 if column.kind == "rows" else 1)
            if column.dtype is not None and array.dtype != np.dtype(column.dtype):
                raise ShardError(f"values are {array.dtype}, the manifest says {column.dtype}", shard=shard, member=member)
            if column.kind == "rows" and column.width is not None and array.shape[1] != column.width:
                raise ShardError(f"rows of {array.shape[1]} values, the manifest says {column.width}",
                                 shard=shard, member=member)
            n = len(array)
            if column.kind == "ragged":
                offsets[column.field] = self._offsets(group, shard, key, column, len(array))
                n = len(offsets[column.field]) - 1
            if size is not None and n != size:
                raise ShardError(f"{n} values for {size} samples", shard=shard, member=member)
            size = n
            arrays[column.field] = array
        return Block(size or 0, arrays, offsets)

    @staticmethod
    def _offsets(group: dict[str, bytes], shard: str | None, key: str, column: Column, total: int) -> np.ndarray:
        member = f"{key}.{column.lengths}"
        if column.lengths not in group:
            raise ShardError(f"block lacks member {member}", shard=shard)
        lengths = load_npy(group[column.lengths], shard, member, kinds="u", ndim=1)
        # each length is checked before summing, so the int64 sum cannot overflow
        if len(lengths) and int(lengths.max()) > total:
            raise ShardError(f"a length of {int(lengths.max())} exceeds the block's {total} values",
                             shard=shard, member=member)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths.astype(np.int64), out=offsets[1:])
        if offsets[-1] != total:
            raise ShardError(f"block lengths sum to {offsets[-1]} but it holds {total} values", shard=shard, member=member)
        return offsets

    # -- the manifest -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"layout": "blocks", "columns": [c.to_json() for c in self.columns]}


def _smallest(array: np.ndarray) -> np.dtype:
    """The smallest integer dtype for an integer column whose dtype is not fixed."""
    if array.dtype.kind not in "iu":
        return array.dtype
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    return smallest_signed(low, high) if array.dtype.kind == "i" else smallest_unsigned(high)


def token_layout(dtype: str | None) -> BlockLayout:
    """Token sequences: ragged ``tokens`` of ``dtype`` (None: any unsigned) and an optional ``label``."""
    return BlockLayout((Column("tokens", "tokens.npy", "ragged", dtype=dtype, lengths="lengths.npy"),
                        Column("label", "labels.npy", "scalar", optional=True)))


def row_layout(width: int, dtype: str = "float32") -> BlockLayout:
    """Tabular rows: ``features`` (``width`` values of ``dtype`` per sample) and an int ``label``."""
    return BlockLayout((Column("features", "features.npy", "rows", dtype=dtype, width=width),
                        Column("label", "labels.npy", "scalar")))
