"""The destination: shards written under temporary names and published whole, the manifest last,
a record per finished shard so an interrupted run resumes, and a lock against a second writer.

Layout while a conversion runs::

    DST/.shardkit-partial/lock                flock'ed by the running conversion
    DST/.shardkit-partial/plan.json           the plan's digest: a re-run resumes only the same plan
    DST/.shardkit-partial/shard-000003.json   samples, bytes, sha256, skipped of a finished shard
    DST/.shardkit-partial/.shard-000004.tar.tmp-PID-RANDOM   a shard being written
    DST/.shardkit-partial/replaced-manifest.json  (--overwrite) the old manifest, until its files are gone
    DST/shard-000000.tar ...                  published shards

shardkit removes only what it can prove it wrote: regular files that a shardkit manifest in DST
or a record in the partial directory names, and its own files in the partial directory; it
never follows a link out of DST and never removes a directory tree.

Every publication goes through :meth:`Destination.publish`, the one place that moves bytes to their
final name: a rename on a local disk, an upload (``shardkit.storage.publish``) to an fsspec URL,
where the partial directory is a prefix and shards are staged in a local temporary directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile

from dataclasses import asdict, dataclass, field
from typing import Any

from .. import storage
from ..errors import DestinationError
from ..format.index import IndexBuilder, index_name
from ..format.manifest import MANIFEST_NAME, shard_name
from ..format.tar import TarWriter
from ..inspect import MANIFEST_LIMIT
from ..storage.files import FileLock, HashingWriter, fsync_dir, sha256_of_file, temporary_path
from .owned import OUTPUT_NAME, PARTIAL_ENTRY, named_files, output_names, what

PARTIAL = ".shardkit-partial"
PLAN_NAME = "plan.json"
LOCK_NAME = "lock"
REPLACED_NAME = "replaced-manifest.json"


@dataclass
class ChunkResult:
    """What a worker returns for a slice of a shard: its tar members in order, how many samples
    they hold, what it skipped, and how many source bytes it read (for progress). ``groups``: the
    samples each group (key) of the members holds, in order (empty: one per key)."""

    members: list[tuple[str, bytes]]
    samples: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    source_bytes: int = 0
    groups: list[int] = field(default_factory=list)

    @classmethod
    def join(cls, parts: list["ChunkResult"]) -> "ChunkResult":
        return cls([m for p in parts for m in p.members], sum(p.samples for p in parts),
                   [e for p in parts for e in p.skipped], sum(p.source_bytes for p in parts),
                   [g for p in parts for g in p.groups])


@dataclass
class ShardRecord:
    """A finished shard, as kept in ``.shardkit-partial/`` until the manifest is written:
    ``index`` is its index sidecar's ``{"bytes", "sha256"}``."""

    name: str
    samples: int
    bytes: int
    sha256: str
    skipped: list[dict[str, Any]]
    stamp: str | None = None
    index: dict[str, Any] | None = None


def _space_error(err: OSError, what: str, dst: str) -> DestinationError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DestinationError(f"no space left on the device of {dst} while writing {what}; free some "
                                f"space and run the same command again: finished shards are kept")
    return DestinationError(f"cannot write {what} in {dst}: {err.strerror or err}")


class ShardWriter:
    """Writes one shard to a local temporary file (:attr:`Destination.staging`), with its index;
    :meth:`finish` fsyncs both, publishes the index then the shard under their final names and
    records them in the partial directory, for a re-run to find. ``stamp`` goes into every tar
    header (see ``format.tar.member_header``). Used as a context manager, the temporary files are
    removed if the shard is not finished."""

    def __init__(self, dst: "Destination", index: int, stamp: str = "") -> None:
        self.dst, self.name, self.stamp = dst, shard_name(index), stamp
        # Unique per writer: a scheduler may run the same shard twice at once (both give the same bytes).
        self.tmp = temporary_path(self.name, dst.staging)
        self.samples, self.skipped = 0, []
        try:
            self._file = open(self.tmp, "wb")
        except OSError as err:
            raise _space_error(err, self.name, dst.path) from None
        self._hash = HashingWriter(self._file)
        self._tar = TarWriter(self._hash, stamp)
        self._index = IndexBuilder()
        self._key: str | None = None

    @property
    def bytes_written(self) -> int:
        """Bytes of the shard so far (before its end-of-archive marker)."""
        return self._tar.bytes_written

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:  # flushing the buffer on a full disk fails again; the file goes anyway
                pass
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def add(self, chunk: ChunkResult) -> None:
        groups = iter(chunk.groups)
        try:
            for name, data in chunk.members:
                key = name.partition(".")[0]
                if key != self._key:
                    self._key = key
                    self._index.group(self._tar.bytes_written, next(groups, 1))
                self._tar.add(name, data)
        except OSError as err:
            raise _space_error(err, self.name, self.dst.path) from None
        self.samples += chunk.samples
        self.skipped.extend(chunk.skipped)

    def finish(self) -> ShardRecord:
        """Complete the shard, record it, then publish its index and itself. Recorded first: every
        file published in DST is one shardkit can prove it wrote (``--overwrite`` removes only
        those); a record whose files are missing or differ only means the shard is written again
        on resume."""
        index = self._index.finish(self._tar.bytes_written).to_bytes()
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as err:
            raise _space_error(err, self.name, self.dst.path) from None
        record = ShardRecord(self.name, self.samples, self._tar.bytes_written, self._hash.hexdigest(),
                             self.skipped, self.stamp or None,
                             {"name": index_name(self.name), "bytes": len(index),
                              "sha256": hashlib.sha256(index).hexdigest()})
        self.dst.save_record(record)
        try:
            self.dst.write_file(index_name(self.name), index)
            self.dst.publish(self.tmp, self.name)
        except OSError as err:
            raise _space_error(err, self.name, self.dst.path) from None
        return record


def _record_name(shard: str) -> str:
    """``shard-000003.tar`` → ``shard-000003.json``, its record in the partial directory."""
    return shard.removesuffix(".tar") + ".json"


def _shard_number(name: str) -> int:
    """The number in ``shard-000012.tar`` or a file beside it (``shard-000012.idx``)."""
    return int(name.split("-", 1)[1].split(".", 1)[0])


def _is_shardkit_file(name: str) -> bool:
    return name in (MANIFEST_NAME, PARTIAL) or OUTPUT_NAME.match(name) is not None


class Destination:
    """DST, a local directory or an fsspec URL, held for the lifetime of the object (use it as a
    context manager). A local DST is locked against a second conversion; an object store offers
    no lock, so two conversions into one URL at once are not detected.

    Objects created without entering (a distributed worker writing one shard) publish and
    record shards but take no lock.

    Raises (on entry):
        DestinationError: DST cannot be created or written, or another conversion holds its lock.
    """

    def __init__(self, path: str, storage_options: dict[str, Any] | None = None) -> None:
        self.path, self.storage_options = path, storage_options
        self.remote = storage.is_url(path)
        self.partial = storage.join(path, PARTIAL)
        self._lock: FileLock | None = None  # closed in forked workers: they never hold DST (H1)
        self._created = self._created_lock = False
        self._staging: str | None = None

    @property
    def staging(self) -> str:
        """A local directory for files being written: the partial directory itself when DST is
        local (so publishing is a rename), a private temporary directory when it is remote."""
        if not self.remote:
            return self.partial
        if self._staging is None:
            self._staging = tempfile.mkdtemp(prefix="shardkit-staging-")
        return self._staging

    def __enter__(self) -> "Destination":
        if self.remote:
            return self
        self._created = not os.path.lexists(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as err:
            raise DestinationError(f"cannot create the destination {self.path}: {err.strerror or err}") from None
        if not os.path.isdir(self.path):
            raise DestinationError(f"the destination {self.path} exists and is not a directory")
        if not os.access(self.path, os.W_OK | os.X_OK) or _read_only_fs(self.path):
            raise DestinationError(f"the destination {self.path} is not writable")
        try:
            os.mkdir(self.partial)
        except FileExistsError:
            pass
        except OSError as err:
            raise DestinationError(f"the destination {self.path} is not writable: {err.strerror or err}") from None
        mode = os.lstat(self.partial).st_mode
        if not stat.S_ISDIR(mode):  # never follow a link out of DST, nor write into a file
            raise DestinationError(f"{self.partial} is {what(mode)}, not the directory shardkit keeps its "
                                   f"working files in; shardkit never follows a link out of the destination: "
                                   f"remove it, then run again")
        lock = os.path.join(self.partial, LOCK_NAME)
        self._created_lock = not os.path.lexists(lock)
        self._lock = FileLock(lock)
        try:
            taken = self._lock.acquire(wait=0)
        except OSError as err:
            self._lock = None
            if err.errno == errno.ELOOP:
                raise DestinationError(f"{lock} is a symbolic link; shardkit never follows a link out of the "
                                       f"destination: remove it, then run again") from None
            raise DestinationError(f"the destination {self.path} is not writable: {err.strerror or err}") from None
        if not taken:
            self._lock = None
            raise DestinationError(f"another conversion is writing into {self.path} (it holds "
                                   f"{os.path.join(PARTIAL, LOCK_NAME)}); wait for it to finish")
        try:
            self._check_partial()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        for name in os.listdir(self.partial):  # left by a killed run; we hold the lock, so nobody writes them
            if ".tmp-" in name:
                os.unlink(os.path.join(self.partial, name))
        return self

    def _check_partial(self) -> None:
        """Everything in the partial directory must be a regular file of a name shardkit gives its
        own files: anything else was put there by someone else, and is not shardkit's to remove."""
        for name in sorted(os.listdir(self.partial)):
            mode = os.lstat(os.path.join(self.partial, name)).st_mode
            if not (PARTIAL_ENTRY.match(name) and stat.S_ISREG(mode)):
                raise DestinationError(f"{os.path.join(self.partial, name)} is {what(mode)} that shardkit did not "
                                       f"write; it keeps only its own files in {PARTIAL}: remove it, then run again")

    def __exit__(self, *exc) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._lock is None or not self._lock.held:  # never entered, or a forked worker's copy
            return
        # Leave nothing behind that a later run could mistake for work in progress; the temporary
        # files are those of workers stopped mid-shard (the pool is gone by now, and we hold the lock).
        try:
            for name in os.listdir(self.partial):
                if ".tmp-" in name:
                    os.unlink(os.path.join(self.partial, name))
            if os.listdir(self.partial) == [LOCK_NAME]:
                os.unlink(os.path.join(self.partial, LOCK_NAME))
                os.rmdir(self.partial)
            elif self._created_lock:
                os.unlink(os.path.join(self.partial, LOCK_NAME))
            if self._created and not os.listdir(self.path):
                os.rmdir(self.path)
        except OSError:
            pass
        self._lock.release()
        self._lock = None

    # --- storage, local or remote ---

    def _read_text(self, path: str) -> str | None:
        """A small file of DST (manifest, plan, record), None if absent; a file that is no
        regular file or too large is an error, never a hang or an allocation."""
        if self.remote and not storage.exists(path, self.storage_options):
            return None
        try:
            return storage.read_bytes(path, self.storage_options, limit=MANIFEST_LIMIT).decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise DestinationError(f"cannot read {path}: {err.strerror or err}") from None

    def _names(self, folder: str) -> list[str]:
        return storage.ls(folder, self.storage_options)

    def _kind(self, name: str, folder: str | None = None) -> str | None:
        """What ``name`` in DST is: "a regular file", "a directory", "a symbolic link", ..., or None."""
        path = storage.join(folder or self.path, name)
        if self.remote:  # an object store holds objects only
            return "a regular file" if storage.exists(path, self.storage_options) else None
        try:
            return what(os.lstat(path).st_mode)
        except FileNotFoundError:
            return None

    def _remove(self, path: str) -> None:
        """Delete one file; a link is removed itself, never what it points to, and a directory
        never (callers checked: :meth:`clear`)."""
        if not self.remote and os.path.isdir(path) and not os.path.islink(path):
            raise DestinationError(f"{path} is a directory; shardkit removes only files it wrote")
        storage.remove(path, self.storage_options)

    def publish(self, tmp: str, name: str, folder: str | None = None) -> None:
        """Make the finished, fsync'd local file ``tmp`` appear whole as ``name`` in DST (or in
        ``folder``): a rename on a local disk, an upload (then ``tmp`` is deleted) to a URL."""
        final = storage.join(folder or self.path, name)
        try:
            storage.publish(tmp, final, self.storage_options)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if not self.remote:
            fsync_dir(os.path.dirname(final) or ".")

    def _size_and_sha256(self, name: str) -> tuple[int, str] | None:
        path = storage.join(self.path, name)
        if self.remote:
            return storage.sha256_of(path, self.storage_options) if storage.exists(path, self.storage_options) else None
        if self._kind(name) != "a regular file":  # a link or a FIFO in a shard's place is no shard
            return None
        return sha256_of_file(path)

    # --- what is already there ---

    def foreign_entries(self) -> list[str]:
        return [n for n in self._names(self.path) if not _is_shardkit_file(n)]

    def shard_files(self) -> list[str]:
        return [n for n in self._names(self.path) if n not in (PARTIAL, MANIFEST_NAME) and _is_shardkit_file(n)]

    def shard_size(self, name: str) -> int | None:
        """The size of a published shard; None if absent or not a regular file."""
        if not self.remote and self._kind(name) != "a regular file":
            return None
        return storage.size(storage.join(self.path, name), self.storage_options)

    def manifest_text(self) -> str | None:
        return self._read_text(storage.join(self.path, MANIFEST_NAME))

    def partial_plan(self) -> dict[str, Any] | None:
        """The plan an unfinished run recorded (``digest``, ``kind``, ``params``), None if none;
        an unreadable one has the digest ``"<unreadable>"``."""
        text = self._read_text(storage.join(self.partial, PLAN_NAME))
        if text is None:
            return None
        try:
            plan = json.loads(text)
            if isinstance(plan, dict) and isinstance(plan.get("digest"), str):
                return plan
        except ValueError:
            pass
        return {"digest": "<unreadable>"}

    def partial_digest(self) -> str | None:
        plan = self.partial_plan()
        return None if plan is None else plan["digest"]

    def _recorded_files(self) -> set[str]:
        """The files the partial directory says shardkit wrote: those of a manifest being
        replaced, and the shards of the records."""
        names = set(named_files(self._read_text(storage.join(self.partial, REPLACED_NAME))) or [])
        for entry in self._names(self.partial):
            if re.fullmatch(r"shard-[0-9]{6,}\.json", entry):
                try:
                    names.update(output_names(json.loads(self._read_text(storage.join(self.partial, entry)) or "")))
                except ValueError:
                    pass
        return names

    def clear(self) -> None:
        """Remove what shardkit wrote here: the manifest first (so no new reader starts on it while
        its shards go), then every file it names or the partial records name, then the records.

        Raises:
            DestinationError: before anything is removed, when something shardkit did not write is in
                the way: a ``manifest.json`` that is not shardkit's, a file named like a shard that no
                manifest or record names, or a named file that is a directory, link or special file.
        """
        where = storage.join(self.path, MANIFEST_NAME)
        text = self.manifest_text()
        removable = self._recorded_files()
        if text is not None:
            named = named_files(text)
            if named is None:
                raise DestinationError(f"{where} is not a shardkit manifest; shardkit removes only what it wrote: "
                                       f"move it away, or choose another destination")
            removable.update(named)
        in_the_way = [n for n in self._names(self.path) if OUTPUT_NAME.match(n) and n not in removable]
        if in_the_way:
            shown = ", ".join(in_the_way[:5]) + (", ..." if len(in_the_way) > 5 else "")
            raise DestinationError(f"{self.path} holds {shown}, which no shardkit manifest there names; shardkit "
                                   f"removes only files it wrote: move them away, or choose another destination")
        for name in sorted(removable | ({MANIFEST_NAME} if text is not None else set())):
            kind = self._kind(name)
            if kind not in (None, "a regular file"):
                raise DestinationError(f"{storage.join(self.path, name)} is {kind}, not a file shardkit wrote; "
                                       f"shardkit removes only its own files: remove it yourself, or choose "
                                       f"another destination")
        if text is not None:
            # Kept in the partial directory until its shards are gone: a run killed in between
            # still knows which files were shardkit's.
            self._write_small(REPLACED_NAME, text, f"the replaced {MANIFEST_NAME}", self.partial)
            self._remove(where)
            if not self.remote:
                fsync_dir(self.path)
        for name in sorted(removable):
            self._remove(storage.join(self.path, name))
        self.clear_partial()

    def clear_partial(self) -> None:
        """Forget the records of an unfinished run (the lock stays held)."""
        for name in self._names(self.partial):
            if name != LOCK_NAME:
                self._remove(storage.join(self.partial, name))

    def has_records(self) -> bool:
        """Whether a shard of this plan was finished and recorded (there is work to resume)."""
        return any(re.fullmatch(r"shard-[0-9]{6,}\.json", n) for n in self._names(self.partial))

    # --- the run's records ---

    def write_file(self, name: str, data: bytes | str, folder: str | None = None) -> None:
        """Publish ``data`` whole as ``name`` in DST (or ``folder``), through a temporary file.

        Raises:
            OSError: it cannot be written (no temporary file is left).
        """
        tmp = temporary_path(name, self.staging)
        try:
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            self.publish(tmp, name, folder)
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk must not leave half a file behind
                os.unlink(tmp)
            raise

    def _write_small(self, name: str, text: str, what: str, folder: str | None = None) -> None:
        try:
            self.write_file(name, text, folder)
        except OSError as err:
            raise _space_error(err, what, self.path) from None

    def start(self, digest: str, kind: str, params: dict[str, Any]) -> None:
        self._write_small(PLAN_NAME, json.dumps({"digest": digest, "kind": kind, "params": params}, sort_keys=True),
                          PLAN_NAME, self.partial)

    def save_record(self, record: ShardRecord) -> None:
        self._write_small(_record_name(record.name),
                          json.dumps(asdict(record), sort_keys=True, ensure_ascii=False),
                          f"the record of {record.name}", self.partial)

    def finished(self, index: int) -> ShardRecord | None:
        """The record of shard ``index`` if it was finished by an earlier run of the same plan and
        its file is intact (same size and sha256)."""
        name = shard_name(index)
        text = self._read_text(storage.join(self.partial, _record_name(name)))
        if text is None:
            return None
        try:
            record = ShardRecord(**json.loads(text))
            if self._size_and_sha256(name) == (record.bytes, record.sha256):
                return record
        except (OSError, ValueError, TypeError):
            pass
        return None

    def remove_extra_shards(self, count: int) -> None:
        """Shards (and the files beside them) numbered ``count`` and above belong to no plan of
        this run: those shardkit recorded are removed; any other is in the way (a
        DestinationError naming it)."""
        extra = [n for n in self.shard_files() if _shard_number(n) >= count]
        if not extra:
            return
        recorded = self._recorded_files()
        foreign = [n for n in extra if n not in recorded or self._kind(n) != "a regular file"]
        if foreign:
            raise DestinationError(f"{self.path} holds {', '.join(foreign[:5])}, which this conversion did not "
                                   f"write; move them away, or choose another destination")
        for name in extra:
            self._remove(storage.join(self.path, name))

    def write_manifest(self, text: str) -> None:
        """Publish the manifest, then remove the partial directory: the conversion is complete."""
        self._write_small(MANIFEST_NAME, text, MANIFEST_NAME)
        self.clear_partial()
        if not self.remote:
            os.unlink(os.path.join(self.partial, LOCK_NAME))  # we still hold the flock on the open file
            os.rmdir(self.partial)


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
