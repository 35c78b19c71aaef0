"""Records inside a shard: keys, member names, and a sample's members.

A sample ``{field: value}`` with key ``K`` is the run of members ``K.field`` (each encoded by its
field's codec, :mod:`.fields`); a block of samples is the run of members of one key
(:mod:`.blocks`). Readers group consecutive members by key, as webdataset does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from ..errors import ShardError
from .fields import codec_of, extension
from .tar import entry_bytes

NO_LABEL = -1


def sample_key(index: int) -> str:
    """Key of the sample (or block) at ``index``: digits only, so no dots, slashes or source names."""
    return f"{index:09d}"


def split_name(name: str) -> tuple[str, str]:
    """``"000000012.tokens.npy"`` → ``("000000012", "tokens.npy")``, as webdataset groups members."""
    key, _, ext = name.partition(".")
    return key, ext


class Group(NamedTuple):
    """The members of one key: ``fields`` maps each field (the name after the key) to its bytes;
    ``offset`` is the byte offset of the first member's header. ``duplicate``: the name of a
    member that appeared twice in the run (the last one is in ``fields``, as in webdataset)."""

    key: str
    fields: dict[str, bytes]
    offset: int
    duplicate: str | None = None


def group_samples(members: Iterable[Any], shard: str | None = None) -> Iterator[Group]:
    """Runs of consecutive tar members with the same key: one sample (or block) each, as
    webdataset groups them.

    Raises:
        ShardError: (only when ``shard`` is given) a sample holding the same field twice; without
            ``shard`` the group says so in ``duplicate`` and the last one wins, as in webdataset.
    """
    named = ((split_name(m.name), m) for m in members)
    for key, run in itertools.groupby(named, key=lambda item: item[0][0]):
        group: dict[str, bytes] = {}
        first, duplicate = None, None
        for (_, ext), member in run:
            if first is None:
                first = member.offset
            if ext in group:
                if shard is not None:
                    raise ShardError(f"duplicate member {member.name!r}", shard=shard, offset=member.offset)
                duplicate = duplicate or member.name
            group[ext] = member.data
        yield Group(key, group, first, duplicate)


def sample_members(key: str, sample: Mapping[str, Any], *, quality: int = 90) -> list[tuple[str, bytes]]:
    """The ``(name, bytes)`` members of one sample, each field encoded by its codec, in the
    sample's field order.

    Raises:
        ValueError: a field name that cannot be a member name, or a value its codec refuses
            (the message names the field).
    """
    members = []
    for name, value in sample.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name.endswith("."):
            raise ValueError(f"field name {name!r} is not a member extension (a non-empty string without '/' "
                             f"that neither starts nor ends with a dot)")
        try:
            members.append((f"{key}.{name}", codec_of(name).encode(value, extension(name), quality=quality)))
        except ValueError as err:
            raise ValueError(f"field {name!r}: {err}") from None
    return members


def members_bytes(sizes: Iterable[int]) -> int:
    """Tar bytes of members holding ``sizes`` data bytes each (headers and padding included)."""
    return sum(entry_bytes(n) for n in sizes)


def image_meta(path: str, label: int, class_name: str) -> dict[str, Any]:
    """The ``json`` field of a converted image sample."""
    return {"path": path, "label": label, "class": class_name}
