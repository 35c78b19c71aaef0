"""What shardkit may remove from a destination: the names it gives its files, and the manifest
entries that prove a file is one it wrote. Everything else in DST belongs to someone else."""

from __future__ import annotations

import json
import re
import stat
from typing import Any

from ..format.manifest import FORMAT_NAME

#: A file shardkit publishes in DST besides the manifest: a shard, or a file beside it
#: (``shard-000012.tar``, ``shard-000012.idx``).
OUTPUT_NAME = re.compile(r"shard-[0-9]{6,}(\.[A-Za-z0-9]+)+\Z")
#: What shardkit keeps in the partial directory: the lock, the plan, the replaced manifest, one
#: record per finished shard, and temporary files (``.NAME.tmp-PID-RANDOM``).
PARTIAL_ENTRY = re.compile(r"(lock|plan\.json|replaced-manifest\.json|shard-[0-9]{6,}\.json"
                           r"|\.[^/]+\.tmp-[0-9]+-[0-9a-f]{8})\Z")


def named_files(manifest_text: str | None) -> list[str] | None:
    """Every file name that the shard entries of a shardkit manifest name: each string field of an
    entry that is an :data:`OUTPUT_NAME` (the shard, and any file recorded beside it); None when
    ``manifest_text`` is not a shardkit manifest (not JSON, or another ``format``)."""
    try:
        doc = json.loads(manifest_text) if manifest_text is not None else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        return None
    return output_names(doc.get("shards"))


def output_names(entries: Any) -> list[str]:
    """The :data:`OUTPUT_NAME` values among the string fields of a shard entry (or a list of them),
    and of the objects in it (``"index": {"name": "shard-000012.idx", ...}``): a new kind of file
    recorded beside each shard is covered without a change here."""
    entries = entries if isinstance(entries, list) else [entries]
    found = []
    for entry in entries:
        if isinstance(entry, dict):
            for value in entry.values():
                if isinstance(value, str) and OUTPUT_NAME.match(value):
                    found.append(value)
                elif isinstance(value, dict):
                    found += output_names(value)
    return found


def what(mode: int) -> str:
    """What an ``lstat`` mode is, for a message: "a symbolic link", "a directory", ..."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"
