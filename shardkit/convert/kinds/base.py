"""The protocol every input kind implements, so that ``convert`` (and the executor, and Dask) never
asks which kind it converts.

A conversion is: :meth:`InputKind.list` the source (cheap: names, sizes, stamps; what the plan's
digest covers) → :meth:`~InputKind.scan_tasks` (pass 1, in worker processes: read the source once,
keep where each valid record is and why the others are not) → :meth:`~InputKind.plan` (pure: the
shuffle and the cut into shards) → :meth:`~InputKind.shard_tasks` (pass 2: the chunk tasks whose
members, in order, are one shard) → :meth:`~InputKind.manifest` (schema, classes, statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..options import ConvertOptions
from ..output import ChunkResult


@dataclass(frozen=True)
class Request:
    """What a kind's listing may need besides SRC: fsspec options, a remote listing already made,
    whether to hash every file, and the path options of some kinds (``labels``: a ``.npy`` of
    labels beside a ``.npy`` of features; ``root``: where a table's relative image paths start)."""

    storage_options: dict[str, Any] | None = None
    remote_files: list | None = None
    checksum: bool = False
    labels: str | None = None
    root: str | None = None


@dataclass
class Listed:
    """A listed source. ``listing``: ``(recorded path, size, stamp)`` of every input, what the
    digest covers; ``skipped``: inputs already known bad; ``ignored``: the recorded names of files
    the kind does not read (reported, never converted); ``data``: the kind's own description."""

    root: str
    entries: list[tuple]
    data: Any = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def listing(self) -> list[tuple]:
        return list(self.entries)


class InputKind:
    """One input kind; subclasses are stateless (an instance pickles to workers and Dask)."""

    #: the name ``--kind`` takes and the digest covers
    name: ClassVar[str] = ""
    #: what the files it reads are, for the message about the files it ignores
    reads: ClassVar[str] = ""
    #: shards may be written whole by worker processes (few, large, independent inputs: images)
    whole_shards: ClassVar[bool] = False
    #: added to the message of a conversion that keeps no sample
    empty_hint: ClassVar[str] = ""
    #: SRC may be a list of paths (webdataset tars)
    takes_lists: ClassVar[bool] = False
    #: SRC may be a URL (else ``check`` refuses one, and a remote prefix is never listed for it)
    reads_remote: ClassVar[bool] = True

    def check(self, src: str | list[str], dst: str, opts: ConvertOptions) -> None:
        """Refuse, before anything is written, what this kind cannot do (a remote source it does
        not read, DST inside SRC, an option it cannot honour): ``SourceError``/``DestinationError``."""

    def list(self, src: str | list[str], request: Request) -> Listed:
        """The source, listed. Raises ``SourceError`` when it is missing or holds nothing to read."""
        raise NotImplementedError

    def scan_tasks(self, listed: Listed, opts: ConvertOptions, workers: int, scratch: str) -> list[Callable[[], Any]]:
        """Pass 1's tasks (picklable callables, each with ``nbytes`` for the progress bar): none
        by default. ``scratch``: a local directory where tasks may keep what they read (its
        files are temporary: :func:`..tables.scratch_path`)."""
        return []

    def plan(self, listed: Listed, scans: list[Any], opts: ConvertOptions, digest: str):
        """The :class:`~..plan.Plan` from the listing and pass 1's results (in task order)."""
        raise NotImplementedError

    def shard_tasks(self, plan, index: int) -> list[Callable[[], ChunkResult]]:
        """The chunk tasks of shard ``index``, in order; their members concatenated are the shard."""
        raise NotImplementedError

    def manifest(self, plan, records: list) -> Any:
        """The :class:`~shardkit.format.manifest.Manifest` of the finished shards (without ``source``)."""
        raise NotImplementedError


def shard_infos(records: list) -> list:
    """The manifest's entries of the finished shards' records."""
    from ...format.manifest import ShardInfo

    return [ShardInfo(r.name, r.samples, r.bytes, r.sha256, r.stamp, r.index) for r in records]


def all_skipped(plan, records: list) -> list[dict[str, Any]]:
    """What the plan and the shards skipped, in the manifest's order."""
    from ..sources import skip_sort_key

    return sorted(list(plan.skipped) + [e for r in records for e in r.skipped], key=skip_sort_key)


def refuse_dst_inside(src: str, dst: str, what: str) -> None:
    """Refuse a local DST inside the local directory SRC, whose next conversion would read it.

    Raises:
        DestinationError: it is.
    """
    import os

    from ...errors import DestinationError
    from ...storage import is_url

    if not is_url(src) and not is_url(dst):
        s, d = os.path.realpath(src), os.path.realpath(dst)
        if d == s or d.startswith(s.rstrip(os.sep) + os.sep):
            kind = "become a class of" if what == "ImageFolder tree" else "be read by"
            raise DestinationError(f"the destination {dst} is inside the {what} {src}: it would "
                                   f"{kind} the next conversion; choose a directory outside it")
