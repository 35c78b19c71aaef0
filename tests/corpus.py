"""A corpus of real damaged input for the converter, built from valid files made with Pillow.

``damaged_images()`` gives ``{name: bytes}`` of files no image library should accept: truncated
JPEG and PNG at several points, empty files, text under image extensions, TIFFs with garbled IFDs
(the classic crashers of naive decoders), headers declaring huge dimensions (decompression bombs),
a PNG whose header CRC is wrong and a GIF without frames. ``make_damaged_image_tree`` mixes them
into an ImageFolder tree of valid images (plus a directory named ``x.jpg`` and a broken symlink
``y.png``). ``damaged_jsonl`` does the same for sequence lines.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import datagen


def image_bytes(fmt: str, size=(64, 48), seed: int = 0, **save) -> bytes:
    """A valid photo-like image encoded as ``fmt`` by Pillow."""
    img = Image.fromarray(datagen.natural_image(np.random.default_rng(seed), *size))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A well-formed PNG (valid CRCs) whose IHDR declares ``width × height`` 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _real_png_bomb(side: int = 9500) -> bytes:
    """A complete, decodable PNG of ``side²`` black pixels (90 Mpx, just over PIL's 89.5 Mpx limit)
    in about 90 KB: PIL only warns on it, a converter must refuse it before decoding."""
    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + one grey byte per pixel
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return _png_declaring(side, side, idat)


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A valid small JPEG whose SOF0 frame header is rewritten to declare ``width × height``."""
    data = bytearray(image_bytes("JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(image_bytes("GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    image = data.index(b"\x2c", 13 + 3 * 256 if data[10] & 0x80 else 13)  # image descriptor
    data[image + 5:image + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _gif_without_frames() -> bytes:
    """Header, logical screen descriptor, global colour table, trailer: no image at all."""
    return b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff" + b"\x3b"


def _tiff() -> tuple[bytearray, dict[int, int]]:
    """An uncompressed little-endian RGB TIFF and ``{tag: byte offset of its entry}``."""
    data = bytearray(image_bytes("TIFF", size=(32, 24)))
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    entries = {struct.unpack_from("<H", data, ifd + 2 + 12 * i)[0]: ifd + 2 + 12 * i for i in range(count)}
    return data, entries


def _tiff_with(tag: int, value: int, kind: int | None = None) -> bytes:
    """The TIFF with one IFD entry's value (and type) replaced, as a fuzzer's flipped bits would."""
    data, entries = _tiff()
    entry = entries[tag]
    if kind is not None:
        struct.pack_into("<H", data, entry + 2, kind)
    struct.pack_into("<II", data, entry + 4, 1, value)  # count 1, the value inline
    return bytes(data)


def _tiff_patched(at: str) -> bytes:
    data, entries = _tiff()
    ifd = struct.unpack_from("<I", data, 4)[0]
    if at == "ifd-past-eof":
        struct.pack_into("<I", data, 4, 0xFFFFFF00)
    elif at == "garbled-ifd":
        rng = np.random.default_rng(1234)
        start, stop = ifd + 2, ifd + 2 + 12 * len(entries)
        data[start:stop] = rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    elif at == "cut-in-ifd":
        return bytes(data[:ifd + 7])
    return bytes(data)


def _tiff_bit_flipped(seed: int, flips: int = 8) -> bytes:
    """The TIFF with ``flips`` random bits of its IFD flipped, as a fuzzer makes them."""
    data, entries = _tiff()
    ifd = struct.unpack_from("<I", data, 4)[0]
    rng = np.random.default_rng(seed)
    for _ in range(flips):
        data[int(rng.integers(ifd, ifd + 2 + 12 * len(entries)))] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


# TIFF tags
WIDTH, BITS, COMPRESSION, PHOTOMETRIC, STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP = 256, 258, 259, 262, 273, 277, 278


def damaged_images() -> dict[str, bytes]:
    """``{file name: bytes}`` of damaged or hostile images; the extension is what the name claims."""
    jpeg, png = image_bytes("JPEG", quality=90), image_bytes("PNG")
    scan = jpeg.index(b"\xff\xda")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # IHDR's CRC
    return {
        "empty.jpg": b"",
        "empty.png": b"",
        "soi-only.jpg": jpeg[:2],
        "cut-in-tables.jpg": jpeg[:scan // 2],
        "cut-at-scan.jpg": jpeg[:scan + 14],
        "cut-mid-scan.jpg": jpeg[:(scan + len(jpeg)) // 2],
        "signature-only.png": png[:8],
        "cut-in-ihdr.png": png[:20],
        "cut-mid-idat.png": png[:len(png) // 2],
        "bad-ihdr-crc.png": bytes(bad_crc),
        "text.jpg": b"This is a text file, not a JPEG.\n",
        "html.png": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
        # ImageFolder has no .gif extension: GIFs reach the converter under another name
        "gif-without-frames.png": _gif_without_frames(),
        "huge-dimensions.png": _png_declaring(100_000, 100_000),
        "huge-dimensions.jpg": _jpeg_declaring(65_000, 65_000),
        "gif-huge-dimensions.jpg": _gif_declaring(65_535, 65_535),
        "real-bomb-90mpx.png": _real_png_bomb(),
        "tiff-strip-offset-past-eof.tif": _tiff_with(STRIP_OFFSETS, 10_000_000),
        "tiff-huge-width.tif": _tiff_with(WIDTH, 4_000_000_000, kind=4),
        "tiff-zero-bits.tiff": _tiff_with(BITS, 0, kind=3),
        "tiff-16-bits-rgb.tif": _tiff_with(BITS, 16, kind=3),
        "tiff-100-samples.tif": _tiff_with(SAMPLES, 100, kind=3),
        "tiff-unknown-photometric.tif": _tiff_with(PHOTOMETRIC, 99, kind=3),
        "tiff-unknown-compression.tif": _tiff_with(COMPRESSION, 54321, kind=3),
        "tiff-zero-rows-per-strip.tif": _tiff_with(ROWS_PER_STRIP, 0, kind=3),
        "tiff-ifd-past-eof.tif": _tiff_patched("ifd-past-eof"),
        "tiff-garbled-ifd.tif": _tiff_patched("garbled-ifd"),
        "tiff-cut-in-ifd.tif": _tiff_patched("cut-in-ifd"),
        **{f"tiff-bit-flipped-{seed}.tif": _tiff_bit_flipped(seed) for seed in range(6)},
    }


def valid_odd_images() -> dict[str, bytes]:
    """Valid images that look wrong: content and extension disagree (PIL reads by content)."""
    return {"png-named.jpg": image_bytes("PNG", seed=3), "jpeg-named.png": image_bytes("JPEG", seed=4)}


#: torchvision's ImageFolder extensions (no .gif: datagen's anim.gif is not a sample).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def make_damaged_image_tree(root: str | os.PathLike) -> tuple[Path, dict[str, int], set[str]]:
    """An ImageFolder tree: datagen's valid images of every format, the damaged corpus spread over
    the classes, a directory named ``x.jpg`` (torchvision walks into it: the image inside counts)
    and a broken symlink ``y.png``.

    Returns ``(root, {relative path: label} of the valid images, relative paths of the bad files)``.
    """
    root = datagen.make_image_tree(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    bad = set()
    for i, (name, data) in enumerate(sorted(damaged_images().items())):
        rel = f"{('cat', 'dog')[i % 2]}/{name}"
        (root / rel).write_bytes(data)
        bad.add(rel)
    for name, data in valid_odd_images().items():
        (root / "cat" / name).write_bytes(data)
    (root / "dog" / "x.jpg").mkdir()
    datagen.write_image(root / "dog" / "x.jpg" / "inside.png", "RGB", "PNG", np.random.default_rng(5))
    os.symlink(root / "nowhere" / "gone.png", root / "cat" / "y.png")
    bad.add("cat/y.png")
    valid = {str(p.relative_to(root)): classes.index(p.relative_to(root).parts[0])
             for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
             and str(p.relative_to(root)) not in bad}
    return root, valid, bad


#: (line, why it is bad or None for a valid line): the JSONL lines the converter meets in the wild.
JSONL_LINES = [
    (b'{"tokens": [1, 2, 3], "label": 0}', None),
    (b"not json at all", "not JSON"),
    (b'{"tokens": [1, 2, 3]', "truncated object"),
    (b'{"tokens": [4, 5]}', None),
    (b"[1, 2, 3]", "not an object"),
    (b'{"text": "hello"}', "no tokens"),
    (b'{"tokens": "1 2 3"}', "tokens a string"),
    (b'{"tokens": []}', "empty tokens"),
    (b'{"tokens": [1, -2, 3]}', "negative token"),
    (b'{"tokens": [1, 2.5]}', "float token"),
    (b'{"tokens": [1, "2"]}', "string token"),
    (b'{"tokens": [true, 1]}', "bool token"),
    (b'{"tokens": [[1, 2]]}', "nested list"),
    (b'{"tokens": [18446744073709551616]}', "token over 2**64-1"),
    (b'{"tokens": [18446744073709551615], "label": 2}', "token over 2**63-1 (streamed as int64)"),
    (b'{"tokens": [9223372036854775807], "label": 2}', None),
    (b'{"tokens": [1], "label": "cat"}', "label a string"),
    (b'{"tokens": [1], "label": 1.5}', "label a float"),
    (b'{"tokens": [1], "label": 9223372036854775808}', "label over int64"),
    (b'{"tokens": [NaN]}', "NaN token"),
    (b'{"tokens": [7, 8, 9], "label": -1}', None),
    (b'{"tokens": [1]}\xff\xfe', "invalid UTF-8"),
    (b"", None),  # blank lines are not records: neither converted nor skipped
    (b"   \t", None),
    (b'{"tokens": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
    (b'{"tokens": [' + b"9" * 5000 + b"]}", "integer with 5000 digits"),
    (b'{"tokens": [10, 11], "label": null}', None),
    (b'{"tokens": [12]}', None),  # the last line has no newline
]


def damaged_jsonl(path: str | os.PathLike) -> tuple[Path, list[tuple[list[int], int | None]], list[int]]:
    """Writes ``JSONL_LINES``; returns ``(path, valid (tokens, label) in order, 1-based bad line numbers)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(line for line, _ in JSONL_LINES))
    valid, bad = [], []
    for number, (line, why) in enumerate(JSONL_LINES, start=1):
        if why is not None:
            bad.append(number)
        elif line.strip():
            record = json.loads(line)
            valid.append((record["tokens"], record.get("label")))
    return path, valid, bad
