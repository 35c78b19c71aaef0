"""``manifest.json``: the one description of a converted dataset, written last by the converter
(and by ``ShardWriter``).

Both sides import this module: the writers build a :class:`Manifest`, the reader loads one and
trusts nothing in it that it has not checked.

Version 2 (this one) records the :class:`~.schema.Schema` (the kind, every field and its codec,
or the block columns), and per shard its stamp (carried in every tar header, so a reader notices
a shard replaced under it) and its index sidecar. Version 1 manifests (images and sequences,
written by shardkit 0.1) are still read: their schema follows from their kind.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NoReturn

import hashlib

from ..errors import ManifestError
from .index import index_name
from .schema import KINDS, Schema

FORMAT_NAME = "shardkit"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{index:06d}.tar"
_SHARD_NAME = re.compile(r"shard-([0-9]{6,})\.tar\Z")
_STAMP = re.compile(r"[0-9a-f]{1,31}\Z")
Kind = Literal["images", "sequences", "tabular", "samples"]


def shard_name(index: int) -> str:
    """The file name of shard ``index``: ``shard-000012.tar``."""
    return SHARD_PATTERN.format(index=index)


def shard_stamp(*parts: object) -> str:
    """The stamp of a shard (16 hex digits): derived from what decides its content, so a shard of
    another dataset (or another version of it) carries another one."""
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def shard_index(name: str) -> int | None:
    """The index in a shard's file name (``shard-000012.tar`` → 12), None for any other name."""
    match = _SHARD_NAME.match(name)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest records it. ``stamp``: what its tar headers carry (None in
    version 1). ``index``: ``{"name", "bytes", "sha256"}`` of its index sidecar, when it has one.
    ``tokens``: the tokens its sequences hold (token datasets written by this version)."""

    name: str
    samples: int
    bytes: int
    sha256: str
    stamp: str | None = None
    index: dict[str, Any] | None = None
    tokens: int | None = None

    @property
    def index_name(self) -> str | None:
        """The file name of its index sidecar, if it has one."""
        return index_name(self.name) if self.index is not None else None

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of this shard in the dataset's directory (the shard, its index)."""
        return (self.name,) + ((self.index_name,) if self.index is not None else ())

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items() if v is not None}
        if self.index is not None:  # one key order, however the entry was built or read back
            doc["index"] = {k: self.index[k] for k in ("name", "bytes", "sha256") if k in self.index}
        return doc


@dataclass
class Manifest:
    """What ``shardkit convert`` (or ``ShardWriter``) wrote: kind and schema, shards, sample total,
    parameters and what it skipped.

    ``classes`` is set for images from an ImageFolder tree; ``sequences`` (dtype, tokens, length
    statistics, whether labels are present) for sequences; ``stats`` for other kinds' summaries.
    ``source`` (file count, bytes, digest of the plan) lets a re-run of ``convert`` recognise its
    own output without any absolute path or time in the manifest. ``schema`` defaults to the
    kind's preset (what a version 1 manifest implies).
    """

    kind: Kind
    shards: list[ShardInfo]
    schema: Schema | None = None
    params: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    classes: list[str] | None = None
    sequences: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.schema is None:
            self.schema = _implied_schema(self.kind, self.sequences)

    @property
    def digest(self) -> str:
        """What identifies this dataset's content: a sha256 over its shards' names and sha256s."""
        h = hashlib.sha256()
        for s in self.shards:
            h.update(f"{s.name}\0{s.sha256}\n".encode())
        return h.hexdigest()

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
        doc |= {"samples": self.samples, "bytes": self.bytes, "schema": self.schema.to_json(),
                "shards": [s.to_json() for s in self.shards]}
        if self.classes is not None:
            doc["classes"] = self.classes
        if self.sequences is not None:
            doc["sequences"] = self.sequences
        if self.stats is not None:
            doc["stats"] = self.stats
        doc["params"] = self.params
        doc["skipped"] = self.skipped
        return json.dumps(doc, indent=1, sort_keys=False, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = MANIFEST_NAME) -> "Manifest":
        """Parse and validate a manifest; ``where`` (its path or URL) prefixes every message.

        Raises:
            ManifestError: not JSON, another format or a newer version, a missing field or one of
                the wrong type, an unsafe or repeated shard name, a malformed schema, or totals
                that disagree.
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
        if classes is not None or (version < 2 and doc["kind"] == "images"):
            classes = _field(doc, "classes", list, where)
            if not all(isinstance(c, str) for c in classes):
                _bad(where, "classes")
        sequences = doc.get("sequences")
        if sequences is not None or (version < 2 and doc["kind"] == "sequences"):
            sequences = _field(doc, "sequences", dict, where)
            if sequences.get("dtype") not in TOKEN_DTYPES:
                raise ManifestError(f"{where}: sequences.dtype {sequences.get('dtype')!r:.80} is not one of {TOKEN_DTYPES}")
            if not isinstance(sequences.get("has_labels"), bool):
                _bad(where, "sequences.has_labels")
        if version < 2 and doc["kind"] not in V1_KINDS:
            raise ManifestError(f"{where}: kind {doc['kind']!r} needs format version 2")
        params = _field(doc, "params", dict, where) if "params" in doc else {}
        skipped = _field(doc, "skipped", list, where) if "skipped" in doc else []
        if not all(isinstance(e, dict) for e in skipped):
            _bad(where, "skipped")
        source = _field(doc, "source", dict, where) if "source" in doc else None
        stats = _field(doc, "stats", dict, where) if "stats" in doc else None
        if version >= 2:
            try:
                schema = Schema.from_json(doc["kind"], doc.get("schema"))
            except ValueError as err:
                raise ManifestError(f"{where}: {err}") from None
        else:
            schema = _implied_schema(doc["kind"], sequences)
        return cls(kind=doc["kind"], shards=shards, schema=schema, params=params, skipped=skipped, classes=classes,
                   sequences=sequences, source=source, stats=stats, format=doc["format"], version=version)


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
    info = ShardInfo(name=entry["name"], samples=entry["samples"], bytes=entry["bytes"], sha256=entry["sha256"],
                     stamp=entry.get("stamp"), index=entry.get("index"), tokens=entry.get("tokens"))
    if not (isinstance(info.name, str) and _SHARD_NAME.match(info.name)):
        raise ManifestError(f"{where}: shard entry {i} has an unsafe or unexpected name {info.name!r:.80} "
                            f"(expected shard-NNNNNN.tar)")
    for key in ("samples", "bytes") + (("tokens",) if info.tokens is not None else ()):
        if not _is_count(getattr(info, key)):
            raise ManifestError(f"{where}: shard {info.name} has invalid {key} {getattr(info, key)!r:.80}")
    if not (isinstance(info.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", info.sha256)):
        raise ManifestError(f"{where}: shard {info.name} has invalid sha256 {info.sha256!r:.80}")
    if info.stamp is not None and not (isinstance(info.stamp, str) and _STAMP.match(info.stamp)):
        raise ManifestError(f"{where}: shard {info.name} has invalid stamp {info.stamp!r:.80}")
    index = info.index
    if index is not None and not (isinstance(index, dict) and _is_count(index.get("bytes"))
                                  and isinstance(index.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", index["sha256"])
                                  and index.get("name", index_name(info.name)) == index_name(info.name)):
        raise ManifestError(f"{where}: shard {info.name} has an invalid index entry {index!r:.80}")
    return info


#: The kinds of version 1, and the schema each implies (a sequences manifest says its token dtype).
V1_KINDS = {"images": lambda sequences: Schema.images(),
            "sequences": lambda sequences: Schema.sequences((sequences or {}).get("dtype"))}


def _implied_schema(kind: str, sequences: dict[str, Any] | None) -> Schema:
    """The schema a version 1 manifest implies by its kind."""
    if kind not in V1_KINDS:
        raise ValueError(f"a {kind} manifest needs its schema")
    return V1_KINDS[kind](sequences)


#: Token dtypes, smallest first: the converter picks the first that holds the largest id.
TOKEN_DTYPES = ("uint8", "uint16", "uint32", "uint64")


def _bad(where: str, what: str) -> NoReturn:
    raise ManifestError(f"{where}: field {what!r} is missing or of the wrong type")
