"""``manifest.json``: the one description of a converted dataset, written last by the converter.

Both sides import this module: the converter builds a :class:`Manifest`, the reader loads one
and trusts nothing in it that it has not checked.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import ManifestError

FORMAT_NAME = "shardkit"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{index:06d}.tar"
_SHARD_NAME = re.compile(r"^shard-\d{6,}\.tar$")
Kind = Literal["images", "sequences"]
KINDS = ("images", "sequences")


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index=index)


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest records it."""

    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """What ``shardkit convert`` wrote: kind, shards, sample total, parameters and what it skipped.

    ``classes`` is set for images; ``sequences`` (dtype, tokens, length statistics, whether labels
    are present) for sequences.
    """

    kind: Kind
    shards: list[ShardInfo]
    params: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    classes: list[str] | None = None
    sequences: dict[str, Any] | None = None
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> str:
        doc = {"format": self.format, "version": self.version, "kind": self.kind,
               "samples": self.samples, "bytes": self.bytes,
               "shards": [asdict(s) for s in self.shards]}
        if self.classes is not None:
            doc["classes"] = self.classes
        if self.sequences is not None:
            doc["sequences"] = self.sequences
        doc["params"] = self.params
        doc["skipped"] = self.skipped
        return json.dumps(doc, indent=1, sort_keys=False, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = MANIFEST_NAME) -> "Manifest":
        """Parse and validate a manifest.

        Raises:
            ManifestError: not JSON, another format or a newer version, or fields of the wrong type.
        """
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise ManifestError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise ManifestError(f"{where}: not a shardkit manifest (format is {doc.get('format') if isinstance(doc, dict) else None!r})")
        if not isinstance(doc.get("version"), int) or doc["version"] > FORMAT_VERSION:
            raise ManifestError(f"{where}: format version {doc.get('version')!r} is not supported "
                                f"(this shardkit reads up to {FORMAT_VERSION}); upgrade shardkit")
        if doc.get("kind") not in KINDS:
            raise ManifestError(f"{where}: kind {doc.get('kind')!r} is not one of {KINDS}")
        shards = []
        for i, s in enumerate(doc.get("shards") if isinstance(doc.get("shards"), list) else _bad(where, "shards")):
            try:
                info = ShardInfo(name=s["name"], samples=s["samples"], bytes=s["bytes"], sha256=s["sha256"])
            except (TypeError, KeyError) as err:
                raise ManifestError(f"{where}: shard entry {i} lacks {err}") from None
            if not (isinstance(info.name, str) and _SHARD_NAME.match(info.name)):
                raise ManifestError(f"{where}: shard entry {i} has an unsafe or unexpected name {info.name!r}")
            for key in ("samples", "bytes"):
                value = getattr(info, key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ManifestError(f"{where}: shard {info.name} has invalid {key} {value!r}")
            if not (isinstance(info.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", info.sha256)):
                raise ManifestError(f"{where}: shard {info.name} has invalid sha256 {info.sha256!r}")
            shards.append(info)
        if "samples" in doc and doc["samples"] != sum(s.samples for s in shards):
            raise ManifestError(f"{where}: sample total {doc['samples']!r} disagrees with its shards "
                                f"({sum(s.samples for s in shards)})")
        classes = doc.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            _bad(where, "classes")
        sequences = doc.get("sequences")
        if doc["kind"] == "sequences":
            if not isinstance(sequences, dict) or sequences.get("dtype") not in TOKEN_DTYPES:
                _bad(where, "sequences.dtype")
        return cls(kind=doc["kind"], shards=shards, params=dict(doc.get("params") or {}),
                   skipped=list(doc.get("skipped") or []), classes=classes, sequences=sequences,
                   format=doc["format"], version=doc["version"])


#: Token dtypes, smallest first: the converter picks the first that holds the largest id.
TOKEN_DTYPES = ("uint8", "uint16", "uint32", "uint64")


def _bad(where: str, what: str):
    raise ManifestError(f"{where}: field {what!r} is missing or of the wrong type")
