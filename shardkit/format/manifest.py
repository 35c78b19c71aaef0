"""``manifest.json``: the one description of a converted dataset, written last by the converter.

Both sides import this module: the converter builds a :class:`Manifest`, the reader loads one
and trusts nothing in it that it has not checked.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NoReturn

from ..errors import ManifestError

FORMAT_NAME = "shardkit"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{index:06d}.tar"
_SHARD_NAME = re.compile(r"shard-([0-9]{6,})\.tar\Z")
Kind = Literal["images", "sequences"]
KINDS = ("images", "sequences")


def shard_name(index: int) -> str:
    """The file name of shard ``index``: ``shard-000012.tar``."""
    return SHARD_PATTERN.format(index=index)


def shard_index(name: str) -> int | None:
    """The index in a shard's file name (``shard-000012.tar`` → 12), None for any other name."""
    match = _SHARD_NAME.match(name)
    return int(match[1]) if match else None


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
    are present) for sequences. ``source`` (file count, bytes, digest of the plan) lets a re-run of
    ``convert`` recognise its own output without any absolute path or time in the manifest.
    """

    kind: Kind
    shards: list[ShardInfo]
    params: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    classes: list[str] | None = None
    sequences: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> str:
        doc = {"format": self.format, "version": self.version, "kind": self.kind}
        if self.source is not None:
            doc["source"] = self.source
        doc |= {"samples": self.samples, "bytes": self.bytes,
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
        """Parse and validate a manifest; ``where`` (its path or URL) prefixes every message.

        Raises:
            ManifestError: not JSON, another format or a newer version, a missing field or one of
                the wrong type, an unsafe or repeated shard name, or totals that disagree.
        """
        try:
            doc = json.loads(text)
        except RecursionError:
            raise ManifestError(f"{where}: not valid JSON (nested too deeply)") from None
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, integer digit limits
            raise ManifestError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ManifestError(f"{where}: not a shardkit manifest (format is {found!r:.80})")
        version = doc.get("version")
        if not _is_count(version) or not 1 <= version <= FORMAT_VERSION:
            raise ManifestError(f"{where}: format version {version!r:.80} is not supported "
                                f"(this shardkit reads 1 to {FORMAT_VERSION}); upgrade shardkit")
        if doc.get("kind") not in KINDS:
            raise ManifestError(f"{where}: kind {doc.get('kind')!r:.80} is not one of {KINDS}")
        shards = [_shard_info(entry, i, where) for i, entry in enumerate(_field(doc, "shards", list, where))]
        repeated = sorted(name for name, count in Counter(s.name for s in shards).items() if count > 1)
        if repeated:
            raise ManifestError(f"{where}: shard names repeated: {', '.join(repeated[:5])}")
        for total, value in (("samples", sum(s.samples for s in shards)), ("bytes", sum(s.bytes for s in shards))):
            if total in doc and (not _is_count(doc[total]) or doc[total] != value):
                raise ManifestError(f"{where}: {total} total {doc[total]!r:.80} disagrees with its shards ({value})")
        classes = doc.get("classes")
        if doc["kind"] == "images" or classes is not None:
            classes = _field(doc, "classes", list, where)
            if not all(isinstance(c, str) for c in classes):
                _bad(where, "classes")
        sequences = doc.get("sequences")
        if doc["kind"] == "sequences":
            sequences = _field(doc, "sequences", dict, where)
            if sequences.get("dtype") not in TOKEN_DTYPES:
                raise ManifestError(f"{where}: sequences.dtype {sequences.get('dtype')!r:.80} is not one of {TOKEN_DTYPES}")
            if not isinstance(sequences.get("has_labels"), bool):
                _bad(where, "sequences.has_labels")
        params = _field(doc, "params", dict, where) if "params" in doc else {}
        skipped = _field(doc, "skipped", list, where) if "skipped" in doc else []
        if not all(isinstance(e, dict) for e in skipped):
            _bad(where, "skipped")
        source = _field(doc, "source", dict, where) if "source" in doc else None
        return cls(kind=doc["kind"], shards=shards, params=params, skipped=skipped, classes=classes,
                   sequences=sequences, source=source, format=doc["format"], version=version)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _field(doc: dict, key: str, kind: type, where: str):
    value = doc.get(key)
    if not isinstance(value, kind):
        _bad(where, key)
    return value


def _shard_info(entry: Any, i: int, where: str) -> ShardInfo:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: shard entry {i} is a {type(entry).__name__}, not an object")
    missing = [k for k in ("name", "samples", "bytes", "sha256") if k not in entry]
    if missing:
        raise ManifestError(f"{where}: shard entry {i} lacks {', '.join(missing)}")
    info = ShardInfo(name=entry["name"], samples=entry["samples"], bytes=entry["bytes"], sha256=entry["sha256"])
    if not (isinstance(info.name, str) and _SHARD_NAME.match(info.name)):
        raise ManifestError(f"{where}: shard entry {i} has an unsafe or unexpected name {info.name!r:.80} "
                            f"(expected shard-NNNNNN.tar)")
    for key in ("samples", "bytes"):
        if not _is_count(getattr(info, key)):
            raise ManifestError(f"{where}: shard {info.name} has invalid {key} {getattr(info, key)!r:.80}")
    if not (isinstance(info.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", info.sha256)):
        raise ManifestError(f"{where}: shard {info.name} has invalid sha256 {info.sha256!r:.80}")
    return info


#: Token dtypes, smallest first: the converter picks the first that holds the largest id.
TOKEN_DTYPES = ("uint8", "uint16", "uint32", "uint64")


def _bad(where: str, what: str) -> NoReturn:
    raise ManifestError(f"{where}: field {what!r} is missing or of the wrong type")
