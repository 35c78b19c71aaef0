"""The conversion's options: the knobs that decide the output bytes, recorded in the manifest."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
#: The largest size accepted (1 PiB): far above any useful shard, far below where the plan's
#: int64 byte counts would overflow.
MAX_SIZE = 2**50


def parse_size(text: str | int) -> int:
    """``"256MB"`` → 256_000_000, ``"1.5GiB"`` → 1_610_612_736, ``"1000"`` → 1000 (bytes).

    Raises:
        ValueError: not a number with one of the units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, not
            positive, or above :data:`MAX_SIZE`.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        unit = match.group(2).upper() if match else None
        if unit not in _UNITS:
            raise ValueError(f"{text!r} is not a size: use a number of bytes with an optional unit "
                             f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 256MB or 1.5GiB")
        number = float(match.group(1)) * _UNITS[unit]  # inf for hundreds of digits, never an error
        value = int(number) if number <= MAX_SIZE else MAX_SIZE + 1
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    if value > MAX_SIZE:
        raise ValueError(f"{str(text)[:40]!r} is larger than the largest size accepted, 1 PiB ({MAX_SIZE} bytes)")
    return value


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides the bytes of a conversion (and nothing that does not: no paths,
    no worker count). The manifest's ``params`` is this, as a dict.

    seed, shuffle: the global shuffle of the sample order (``numpy.random.default_rng(seed)``).
    max_shard_size (bytes, or a string such as ``"256MB"``), max_shard_samples: where shards are cut.
        Sequence shards are cut on their exact size; image shards on the source files' sizes, which
        is exact for JPEG/PNG/WebP (stored as they are) and an estimate for converted or resized ones.
    resize, quality: cap the longer side of images at ``resize`` pixels, re-encoding them as JPEG.
    validate: ``"full"`` decodes every image once (catches truncated files); ``"header"`` only
        opens it, for data already known good.
    strict: any skipped input is an error instead of an entry in the manifest's ``skipped``.
    tokens_field, label_field: JSONL field names; ``label_field`` is also the label column of a
        table (its integers are stored as ``cls``) or of tabular features.
    image_field: the table column holding image paths or URLs.
    fields: the table columns to keep (default: all), or the feature columns of a tabular CSV or
        Parquet file (default: every numeric column but the label).
    features_field: the array of a ``.npz`` holding the features.
    allow_nan: keep tabular rows holding NaN or infinity (skipped and reported by default).
    """

    seed: int = 0
    shuffle: bool = True
    max_shard_size: int = 256 * 10**6
    max_shard_samples: int | None = None
    resize: int | None = None
    quality: int = 90
    validate: Literal["full", "header"] = "full"
    strict: bool = False
    tokens_field: str = "tokens"
    label_field: str = "label"
    image_field: str | None = None
    fields: tuple[str, ...] | None = None
    features_field: str = "features"
    allow_nan: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_shard_size", parse_size(self.max_shard_size))
        for name in ("seed", "max_shard_samples", "resize", "quality"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), not {self.seed}")
        if self.max_shard_samples is not None and self.max_shard_samples < 1:
            raise ValueError(f"max_shard_samples must be at least 1, not {self.max_shard_samples}")
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"resize must be at least 1 pixel, not {self.resize}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, not {self.quality}")
        if self.validate not in ("full", "header"):
            raise ValueError(f"validate must be 'full' or 'header', not {self.validate!r}")
        for name in ("shuffle", "strict", "allow_nan"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool")
        if self.fields is not None:
            fields = (self.fields.split(",") if isinstance(self.fields, str) else self.fields)
            if not all(isinstance(f, str) for f in fields):
                raise TypeError("fields must be column names (strings)")
            fields = tuple(f.strip() for f in fields)
            if not fields or not all(fields) or len(set(fields)) != len(fields):
                raise ValueError(f"fields must be distinct, non-empty column names, not {self.fields!r}")
            object.__setattr__(self, "fields", fields)
        if self.image_field is not None and (not isinstance(self.image_field, str) or not self.image_field):
            raise ValueError(f"image_field must be a non-empty column name, not {self.image_field!r}")
        for name in ("tokens_field", "label_field", "features_field"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, not {type(getattr(self, name)).__name__}")
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty: it names the JSONL field to read")

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> "ConvertOptions":
        """Build from ``convert(**options)``.

        Raises:
            TypeError: an option that does not exist (named), or of the wrong type.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"convert() got unknown option(s) {', '.join(unknown)}; "
                            f"the options are: {', '.join(sorted(known))}")
        return cls(**options)

    def as_params(self) -> dict[str, Any]:
        """The options as a dict (the manifest's ``params``, what the digest covers). The options
        added with tables and arrays appear only when set: the digests, stamps and manifests of
        the conversions that do not use them stay what earlier versions wrote."""
        params = dataclasses.asdict(self)
        for name in _LATER:
            if params[name] == _DEFAULTS[name]:
                del params[name]
        if params.get("fields") is not None:
            params["fields"] = list(params["fields"])
        return params


#: Options added after the first version (see :meth:`ConvertOptions.as_params`).
_LATER = ("image_field", "fields", "features_field", "allow_nan")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ConvertOptions)}
