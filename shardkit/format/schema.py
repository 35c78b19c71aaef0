"""A dataset's schema: its kind, its fields and how they are laid out in the shards, defined once
for the writers, the planner, the reader and ``verify``.

Two layouts:

- **one sample per key** (``layout: "samples"``): field ``f`` of the sample ``K`` is the member
  ``K.f``, stored by the codec its extension names (:mod:`.fields`);
- **blocks** (``layout: "blocks"``): one key holds the columns of a run of samples
  (:mod:`.blocks`): token sequences, tabular rows.

The kind names what the stream yields (``images``: ``(image, label)``, ``sequences``:
``(tokens, label)``, ``tabular``: ``(features, label)``, ``samples``: a dict of the fields) and is
recorded in the manifest; code asks the schema, never the kind's name, how to read or write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ShardError
from .blocks import BlockLayout, Column, row_layout, token_layout
from .fields import IMAGE_FORMATS, codec_of, extension

KINDS = ("images", "sequences", "tabular", "samples")
#: The members of an image sample written by ``convert``: the image, its label, its metadata.
LABEL_FIELD, META_FIELD = "cls", "json"

#: Decodes an image member: ``(data, shard, member) -> value`` (the reader's decode modes).
ImageDecoder = Callable[[bytes, str | None, str | None], Any]


@dataclass(frozen=True)
class FieldSpec:
    """One field of a one-sample-per-key schema: its name (the member extension), whether samples
    may lack it, and for arrays their dtype and (when the same for every sample) shape."""

    name: str
    optional: bool = False
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    @property
    def codec(self):
        return codec_of(self.name)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "codec": self.codec.name}
        if self.optional:
            doc["optional"] = True
        if self.dtype is not None:
            doc["dtype"] = self.dtype
        if self.shape is not None:
            doc["shape"] = list(self.shape)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "FieldSpec":
        """The field a manifest records.

        Raises:
            ValueError: a value of the wrong type (the manifest loader names the file).
        """
        shape, dtype, optional = doc.get("shape"), doc.get("dtype"), doc.get("optional", False)
        if not isinstance(optional, bool) or not (dtype is None or isinstance(dtype, str)) or not (
                shape is None or (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape))):
            raise ValueError(f"schema field {doc.get('name')!r:.40} has a bad optional, dtype or shape")
        return cls(doc["name"], optional, dtype, tuple(shape) if shape is not None else None)


@dataclass(frozen=True)
class Schema:
    """The kind and fields of a dataset: ``fields`` for one sample per key, or ``blocks``.
    ``one_of``: fields of which every sample holds exactly one (an image in one of its formats)."""

    kind: str
    fields: tuple[FieldSpec, ...] = ()
    blocks: BlockLayout | None = None
    one_of: tuple[str, ...] = ()

    # -- the presets --------------------------------------------------------------------------
    @classmethod
    def images(cls, labelled: bool = True, meta: bool = True) -> "Schema":
        """An ImageFolder-style image dataset: one image (JPEG, PNG or WebP), its ``cls`` label
        (absent in unlabelled webdataset shards) and its ``json`` metadata."""
        images = tuple(FieldSpec(ext, optional=True) for ext in IMAGE_FORMATS)
        return cls("images", images + (FieldSpec(LABEL_FIELD, optional=not labelled),)
                   + ((FieldSpec(META_FIELD, optional=True),) if meta else ()), one_of=tuple(IMAGE_FORMATS))

    @classmethod
    def sequences(cls, dtype: str | None) -> "Schema":
        return cls("sequences", blocks=token_layout(dtype))

    @classmethod
    def tabular(cls, width: int | None, dtype: str = "float32") -> "Schema":
        return cls("tabular", blocks=row_layout(width, dtype))

    @classmethod
    def samples(cls, fields: Iterable[FieldSpec]) -> "Schema":
        return cls("samples", tuple(fields))

    # -- what it holds ------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """The sample's field names."""
        return self.blocks.fields if self.blocks is not None else tuple(f.name for f in self.fields)

    @property
    def image_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.codec.image)

    def count(self, group: dict[str, bytes], shard: str | None, key: str) -> int:
        """Samples in one group of members (one key): 1, or the block's size.

        Raises:
            ShardError: a block whose counting member is missing or malformed.
        """
        return 1 if self.blocks is None else self.blocks.count(group, shard, key)

    # -- one sample per key -------------------------------------------------------------------
    def check_group(self, group: dict[str, bytes], shard: str | None, key: str) -> None:
        """Raise ``ShardError`` if a group lacks a required field or has not exactly one of ``one_of``."""
        found = ", ".join("." + m for m in sorted(group)) or "nothing"
        missing = [f.name for f in self.fields if not f.optional and f.name not in group]
        if missing:
            raise ShardError(f"sample lacks {', '.join('.' + m for m in missing)}; found {found}",
                             shard=shard, member=key)
        if self.one_of and sum(name in group for name in self.one_of) != 1:
            how = "no" if not any(name in group for name in self.one_of) else "more than one"
            raise ShardError(f"sample has {how} member of .{', .'.join(self.one_of)}; found {found}",
                             shard=shard, member=key)

    def decode_group(self, group: dict[str, bytes], shard: str | None, key: str, *,
                     names: Iterable[str] | None = None, image: ImageDecoder | None = None) -> dict[str, Any]:
        """The fields of one sample (``names``: only those; default every member present, so a
        field the schema does not know comes through as bytes), each decoded by its codec;
        ``image`` decodes image members instead of the codec (bytes through, a crop decoder...).

        Raises:
            ShardError: a required field missing, or a member its codec cannot decode.
        """
        self.check_group(group, shard, key)
        out = {}
        for name in (group if names is None else names):
            data = group.get(name)
            if data is None:
                continue
            codec = codec_of(name)
            member = f"{key}.{name}"
            out[name] = image(data, shard, member) if codec.image and image is not None else codec.decode(data, shard, member)
        return out

    # -- the manifest -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        if self.blocks is not None:
            return self.blocks.to_json()
        doc: dict[str, Any] = {"layout": "samples", "fields": [f.to_json() for f in self.fields]}
        if self.one_of:
            doc["one_of"] = list(self.one_of)
        return doc

    @classmethod
    def from_json(cls, kind: str, doc: Any) -> "Schema":
        """The schema a manifest records for ``kind``.

        Raises:
            ValueError: (the manifest loader names the file) not a schema of this shardkit.
        """
        if not isinstance(doc, dict) or doc.get("layout") not in ("samples", "blocks"):
            raise ValueError("schema is not an object with layout 'samples' or 'blocks'")
        try:
            if doc["layout"] == "blocks":
                columns = tuple(Column.from_json(c) for c in doc["columns"])
                if not columns:  # each column checked its own kind, names and types
                    raise ValueError("block columns are empty")
                return cls(kind, blocks=BlockLayout(columns))
            fields = tuple(FieldSpec.from_json(f) for f in doc["fields"])
            one_of = tuple(doc.get("one_of", ()))
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"schema entry is malformed ({err!r:.80})") from None
        names = [f.name for f in fields]
        if not all(isinstance(n, str) and n and "/" not in n for n in names) or \
                not all(isinstance(n, str) for n in one_of) or not set(one_of) <= set(names):
            raise ValueError("schema field names must be non-empty strings without '/', one_of among them")
        return cls(kind, fields, one_of=one_of)


def infer_schema(groups: Iterable[frozenset[str]], *, blocks: bool = True) -> Schema:
    """The schema of webdataset shards without a manifest, from the distinct sets of member
    extensions their groups have (``blocks``: whether every group is a well-formed block): token blocks and tabular rows as
    shardkit writes them, image + optional label samples as ``(image, label)``, anything else as
    dicts of every field seen (those some samples lack are optional)."""
    groups = list(groups)
    if not groups:
        return Schema.images(labelled=False)
    union = frozenset().union(*groups)
    if blocks and all({"tokens.npy", "lengths.npy"} <= g for g in groups):
        return Schema.sequences(None)
    if blocks and all(g == {"features.npy", "labels.npy"} for g in groups):
        return Schema.tabular(None)
    images = set(IMAGE_FORMATS)
    if all(len(g & images) == 1 and g - images <= {LABEL_FIELD, META_FIELD} for g in groups):
        return Schema.images(labelled=all(LABEL_FIELD in g for g in groups), meta=True)
    return Schema.samples(FieldSpec(name, optional=not all(name in g for g in groups)) for name in sorted(union))


__all__ = ["KINDS", "FieldSpec", "Schema", "extension", "infer_schema"]
