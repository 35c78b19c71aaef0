"""Looking at a converted dataset: its manifest, a one-screen summary, and a full verification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ManifestError, ShardError, StorageError
from .format.manifest import MANIFEST_NAME, Manifest, ShardInfo
from .format.index import ShardIndex
from .format.records import group_samples
from .format.schema import LABEL_FIELD
from .format.tar import iter_members
from .storage import join, open_shard, read_bytes
from .storage.files import HashingReader


#: The largest ``manifest.json`` read (a manifest of a million shards is about 150 MB): a
#: bigger one, or a link to ``/dev/zero``, is refused instead of filling memory.
MANIFEST_LIMIT = 256 * 10**6


def load_manifest(dst: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """The manifest of the dataset at ``dst`` (a directory or URL).

    Raises:
        ManifestError: there is no ``manifest.json`` (not a dataset, or a conversion that has not
            finished), it is no regular file (a FIFO, a device), larger than
            :data:`MANIFEST_LIMIT`, or malformed.
    """
    where = join(dst, MANIFEST_NAME)
    try:
        text = read_bytes(where, storage_options, limit=MANIFEST_LIMIT)
    except FileNotFoundError:
        raise ManifestError(f"{where} does not exist: {dst} is not a shardkit dataset, or its conversion has "
                            f"not finished (run the same convert command again to resume it)") from None
    except (OSError, StorageError) as err:
        raise ManifestError(f"cannot read {where}: {err}") from None
    return Manifest.from_json(text, where)


def printable(text: Any) -> str:
    """``text`` with control and formatting characters (terminal escapes, bidi overrides, line
    breaks) written as ``\\xNN``/``\\uNNNN``, so a name from a manifest or a shard cannot
    rewrite the terminal it is printed on."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in text)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def summary(manifest: Manifest) -> str:
    """A few lines describing the dataset: kind, samples, shards, bytes, classes or token
    statistics, parameters, and the skipped inputs (the first few). Every name from the
    manifest is made :func:`printable`."""
    lines = [f"{manifest.kind}: {manifest.samples} samples in {len(manifest.shards)} shards, "
             f"{_human(manifest.bytes)} (format {printable(manifest.format)} v{manifest.version})"]
    schema = manifest.schema
    if schema.blocks is not None:
        cols = schema.blocks.columns
        lines.append("columns: " + ", ".join(f"{printable(c.field)} ({c.kind}{', ' + c.dtype if c.dtype else ''}"
                                             f"{', optional' if c.optional else ''})" for c in cols))
    else:
        lines.append("fields: " + ", ".join(f"{printable(f.name)} ({f.codec.name}{', ' + f.dtype if f.dtype else ''}"
                                            f"{', optional' if f.optional else ''})" for f in schema.fields))
    if manifest.classes is not None:
        shown = ", ".join(printable(c) for c in manifest.classes[:10]) + (", ..." if len(manifest.classes) > 10 else "")
        lines.append(f"classes ({len(manifest.classes)}): {shown}")
    if manifest.sequences:
        seq = manifest.sequences
        length = seq.get("length", {})
        lines.append(f"tokens: {printable(seq.get('tokens'))} as {seq['dtype']}, "
                     f"labels: {'yes' if seq.get('has_labels') else 'no'}")
        if isinstance(length, dict) and length:
            lines.append("length: " + ", ".join(f"{printable(k)} {printable(v)}" for k, v in length.items()))
    if manifest.params:
        lines.append("params: " + ", ".join(f"{printable(k)}={printable(v)}" for k, v in manifest.params.items()))
    lines.append(f"skipped: {len(manifest.skipped)}")
    for entry in manifest.skipped[:5]:
        line = f":{printable(entry['line'])}" if entry.get("line") else ""
        line += f" row {printable(entry['row'])}" if entry.get("row") is not None else ""
        line += f" member {printable(entry['member'])}" if entry.get("member") else ""
        lines.append(f"  {printable(entry.get('path'))}{line}: {printable(entry.get('reason'))}")
    if len(manifest.skipped) > 5:
        lines.append(f"  ... and {len(manifest.skipped) - 5} more (see manifest.json)")
    return "\n".join(lines)


@dataclass
class VerifyReport:
    """What :func:`verify` found: ``problems`` maps each bad shard to what is wrong with it."""

    shards: int = 0
    samples: int = 0
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.shards} shards, {self.samples} samples verified"
        bad = "\n".join(f"  {printable(name)}: {printable(why)}" for name, why in self.problems.items())
        return f"{len(self.problems)} of {self.shards} shards are bad:\n{bad}"


def _verify_shard(dst: str, info: ShardInfo, manifest: Manifest, storage_options) -> int:
    """The number of samples in a good shard; raises ShardError (or OSError) naming what is bad.

    Every member is decoded as the stream decodes it (the same codecs and image decoders), so a
    shard that verifies also streams."""
    schema, path = manifest.schema, join(dst, info.name)
    classes = len(manifest.classes) if manifest.classes is not None else None
    samples = 0
    with open_shard(path, storage_options=storage_options) as raw:
        stream = HashingReader(raw)
        offsets = []
        for group in group_samples(iter_members(stream, info.name, size=info.bytes, stamp=info.stamp), info.name):
            offsets.append((group.offset, samples))
            if schema.blocks is not None:
                samples += schema.blocks.decode(group.fields, info.name, group.key).size
                continue
            decoded = schema.decode_group(group.fields, info.name, group.key)
            label = decoded.get(LABEL_FIELD)
            if classes is not None and label is not None and not 0 <= label < classes:
                raise ShardError(f"label {label} is not a class index (0..{classes - 1})", shard=info.name,
                                 member=f"{group.key}.{LABEL_FIELD}")
            samples += 1
        stream.drain()
    if stream.size != info.bytes:
        raise ShardError(f"size is {stream.size} bytes, the manifest says {info.bytes}", shard=info.name)
    if stream.hexdigest() != info.sha256:
        raise ShardError("sha256 differs from the manifest's", shard=info.name)
    if samples != info.samples:
        raise ShardError(f"holds {samples} samples, the manifest says {info.samples}", shard=info.name)
    if info.index is not None:
        _verify_index(dst, info, offsets, storage_options)
    return samples


def _verify_index(dst: str, info: ShardInfo, offsets: list[tuple[int, int]], storage_options) -> None:
    try:
        data = read_bytes(join(dst, info.index_name), storage_options)
    except FileNotFoundError:
        raise ShardError(f"its index {info.index_name} is missing", shard=info.name) from None
    index = ShardIndex.from_bytes(data, info.name, info.bytes, info.samples, info.index["sha256"])
    if list(zip(index.offsets[:-1], index.starts[:-1])) != offsets:
        raise ShardError(f"its index {info.index_name} disagrees with where its samples are", shard=info.name)


def verify(dst: str, *, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Check every shard of the dataset at ``dst``: size, sha256 and stamp against the manifest,
    every member well-formed and decodable exactly as ``StreamingDataset`` decodes it (images
    with the same decoders, every field by its codec, token and row blocks), sample counts, and
    each shard's index.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False and ``report.problems`` names each bad shard.
    Raises:
        ManifestError: the manifest is missing or malformed.
    """
    manifest = load_manifest(dst, storage_options)
    report = VerifyReport(shards=len(manifest.shards))
    for info in manifest.shards:
        try:
            report.samples += _verify_shard(dst, info, manifest, storage_options)
        except FileNotFoundError:
            report.problems[info.name] = "missing"
        except (ShardError, OSError, StorageError) as err:
            report.problems[info.name] = str(err)
    return report
