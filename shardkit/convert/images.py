"""Encoding images into shard records, in worker processes: read, check, pass through or convert.

JPEG, PNG and WebP are stored byte for byte; any other format is stored as a lossless PNG of
``img.convert("RGB")``, which is what ``ImageFolder``'s loader gives for the source. Every failure
of one file (unreadable, not an image, truncated, a decompression bomb, a crashing decoder) becomes
an entry in ``skipped`` with its reason, never an exception out of the worker.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .. import storage
from ..format.fields import PASSTHROUGH_FORMATS
from ..format.records import image_meta, sample_key, sample_members
from ..format.schema import LABEL_FIELD, META_FIELD
from .output import ChunkResult
from .names import source_path
from .sources import skip_entry

#: Formats PIL may not try: EPS runs Ghostscript on whatever the file says.
_REFUSED_FORMATS = frozenset({"EPS"})
#: Object addresses in an error message would make the manifest differ from run to run.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@functools.cache
def _open_formats() -> list[str]:
    """The formats PIL may try, in the order it tries them: the stored-as-is ones first, because
    PIL builds an image object for every format whose check a file passes before its own (four
    per JPEG in PIL's order), which was half of a header-only conversion's time."""
    Image.init()
    allowed = [f for f in Image.ID if f not in _REFUSED_FORMATS]
    return [f for f in PASSTHROUGH_FORMATS if f in allowed] + [f for f in allowed if f not in PASSTHROUGH_FORMATS]


class SkipImage(Exception):
    """This file is skipped; the message is the reason recorded in the manifest."""


def read_source(path: str | bytes) -> bytes:
    """The bytes of a regular file (never blocks on a FIFO or device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise SkipImage(f"cannot read: {err.strerror or err}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SkipImage("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as err:
        raise SkipImage(f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)


def encode_image(data: bytes, *, validate: str = "full", resize: int | None = None,
                 quality: int = 90) -> tuple[str, bytes]:
    """``(extension, bytes)`` to store for one source image.

    Raises:
        SkipImage: empty, not an image, truncated or corrupt (with ``validate="full"``), or larger
            than PIL's decompression-bomb limit; the message says which.
    """
    if not data:
        raise SkipImage("empty file")
    with warnings.catch_warnings():
        # PIL warns about oddities it recovers from (corrupt EXIF, tags past the end): the decode
        # decides. A decompression bomb's warning, though, means the file is refused.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_open_formats()) as img:
                fmt = img.format
                ext = PASSTHROUGH_FORMATS.get(fmt)
                big = resize is not None and max(img.size) > resize
                if validate == "full" and fmt == "JPEG" and not big:
                    # Validation needs every entropy-coded byte decoded, not full-size pixels: at
                    # 1/8 scale libjpeg still decodes (and checks) all of it but skips most of the
                    # IDCT and colour work, 2.5x faster on 300-500 px photos; truncated and
                    # corrupt files fail the same way (tests/hardening/test_corpus.py).
                    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                if validate == "full" or ext is None or big:
                    img.load()
                if big:
                    return "jpg", _resized_jpeg(img, resize, quality)
                if ext is not None:
                    return ext, data
                return "png", _lossless_png(img)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise SkipImage(f"decompression bomb: {err}") from None
        except SkipImage:
            raise
        except Image.UnidentifiedImageError:
            raise SkipImage("not an image PIL can identify") from None
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
            raise SkipImage(f"cannot decode ({type(err).__name__}: {_ADDRESS.sub('', str(err))})") from None


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _lossless_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    _rgb(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _resized_jpeg(img: Image.Image, side: int, quality: int) -> bytes:
    w, h = img.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = _rgb(img).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class ImageChunk:
    """A task: encode the images at some consecutive positions of a shard. Picklable, runs in any
    process; ``items`` are ``(position, path relative to root, label, class name)``."""

    root: str
    items: tuple[tuple[int, str, int, str], ...]
    validate: str
    resize: int | None
    quality: int
    storage_options: dict[str, Any] | None = None  # when root is a URL

    def __call__(self) -> ChunkResult:
        members, skipped, read = [], [], 0
        for position, path, label, class_name in self.items:
            try:
                data = self._read(path)
                read += len(data)
                ext, stored = encode_image(data, validate=self.validate, resize=self.resize, quality=self.quality)
            except SkipImage as err:
                skipped.append(skip_entry(path, str(err)))
                continue
            members += sample_members(sample_key(position), {ext: stored, LABEL_FIELD: label,
                                                             META_FIELD: image_meta(path, label, class_name)})
        return ChunkResult(members, len(self.items) - len(skipped), skipped, read)

    def _read(self, path: str) -> bytes:
        where = source_path(self.root, path)  # the recorded name is an escape of the file's real name
        if storage.is_url(self.root):
            # A store failing after its retries fails the conversion (which resumes) rather than
            # drop a valid image: StorageError propagates.
            return storage.read_bytes(where, self.storage_options)
        return read_source(where)

    # What the worker pool needs to pin a dead worker on one image (see pool.WorkerPool).

    def split(self) -> list["ImageChunk"]:
        return [dataclasses.replace(self, items=(item,)) for item in self.items]

    def crashed(self) -> ChunkResult:
        return ChunkResult([], 0, [skip_entry(path, "the decoder crashed (its worker process died)")
                                   for _, path, _, _ in self.items])

    def merge(self, results: list[ChunkResult]) -> ChunkResult:
        return ChunkResult.join(results)

    def __repr__(self) -> str:
        return f"ImageChunk({', '.join(path for _, path, _, _ in self.items)})"
