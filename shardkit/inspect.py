"""Looking at a converted dataset: its manifest, a one-screen summary, and a full verification."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

from .errors import ManifestError, ShardError, StorageError
from .format.manifest import MANIFEST_NAME, Manifest, ShardInfo
from .format.records import (IMAGE_EXTENSIONS, LABEL_EXT, META_EXT, STORED_FORMATS, TOKENS_EXT, decode_block,
                              group_samples)
from .format.tar import iter_members
from .storage import join, open_shard, read_bytes


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


class _Hashing:
    def __init__(self, stream) -> None:
        self.stream, self.sha, self.size = stream, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _check_image(group: dict[str, bytes], shard: str, key: str, classes: list[str] | None) -> None:
    from PIL import Image

    exts = [e for e in group if e in IMAGE_EXTENSIONS]
    if len(exts) != 1 or LABEL_EXT not in group or META_EXT not in group:
        raise ShardError(f"sample has members {sorted(group)}, expected one image, .cls and .json",
                         shard=shard, member=key)
    try:
        label = int(group[LABEL_EXT])
    except ValueError:
        raise ShardError("label is not an int", shard=shard, member=f"{key}.{LABEL_EXT}") from None
    if classes is not None and not 0 <= label < len(classes):
        raise ShardError(f"label {label} is not a class index (0..{len(classes) - 1})", shard=shard,
                         member=f"{key}.{LABEL_EXT}")
    member = f"{key}.{exts[0]}"
    # Image.open looks each of ``formats`` up among the registered openers, and MPO has none (the
    # JPEG opener returns MPO images): asking for it raised KeyError: 'MPO' on any JPEG it refused.
    Image.init()
    formats = [f for f in STORED_FORMATS[exts[0]] if f in Image.OPEN]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(group[exts[0]]), formats=formats) as img:
                img.load()
        except Exception as err:  # PIL's many error types for a damaged image
            raise ShardError(f"image does not decode ({type(err).__name__}: {err})", shard=shard,
                             member=member) from None


def _verify_shard(dst: str, info: ShardInfo, manifest: Manifest, storage_options) -> int:
    """The number of samples in a good shard; raises ShardError (or OSError) naming what is bad."""
    path = join(dst, info.name)
    samples = 0
    with open_shard(path, storage_options=storage_options) as raw:
        stream = _Hashing(raw)
        for key, group in group_samples(iter_members(stream, info.name, size=info.bytes), info.name):
            if manifest.kind == "images":
                _check_image(group, info.name, key, manifest.classes)
                samples += 1
            else:
                tokens, offsets, labels = decode_block(group, info.name, key)
                if tokens.dtype.name != manifest.sequences["dtype"]:
                    raise ShardError(f"tokens are {tokens.dtype.name}, the manifest says {manifest.sequences['dtype']}",
                                     shard=info.name, member=f"{key}.{TOKENS_EXT}")
                samples += len(offsets) - 1
        while stream.read(1 << 20):
            pass
    if stream.size != info.bytes:
        raise ShardError(f"size is {stream.size} bytes, the manifest says {info.bytes}", shard=info.name)
    if stream.sha.hexdigest() != info.sha256:
        raise ShardError("sha256 differs from the manifest's", shard=info.name)
    if samples != info.samples:
        raise ShardError(f"holds {samples} samples, the manifest says {info.samples}", shard=info.name)
    return samples


def verify(dst: str, *, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Check every shard of the dataset at ``dst``: size and sha256 against the manifest, every
    member well-formed, every sample decodable (images with PIL, token blocks), sample counts.

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
