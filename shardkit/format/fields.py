"""How one field of a sample is stored as a tar member, defined once for the writer, the reader and
``verify``.

A sample is a mapping ``{field: value}``; field ``f`` of the sample with key ``K`` is the member
``K.f``, and the last extension of ``f`` says how it is stored (webdataset's convention, so every
webdataset tool reads shardkit's shards):

=================  =============================================  ==============================
extension          stored as                                       read back as
=================  =============================================  ==============================
jpg jpeg png webp  the encoded image, byte for byte (a PIL image  a uint8 RGB tensor 3×H×W (or
                   is encoded: PNG, JPEG at a quality, lossless    the bytes with ``decode=False``)
                   WebP)
cls                an int, ASCII                                   int
txt                UTF-8 text                                      str
json               a JSON value (UTF-8, sorted keys)               the value
npy                a NumPy array, never pickled, no object dtype   a tensor
anything else      raw bytes (``bin``, ``pth``, ``pickle``...)     bytes, never interpreted
=================  =============================================  ==============================

Compound names such as ``caption.txt`` or ``mask.png`` work: only the last extension counts.
"""

from __future__ import annotations

import io
import json
import numbers
from typing import Any

import numpy as np

from ..errors import ShardError

#: Image field extensions → the PIL formats stored byte for byte under them (MPO is a JPEG with
#: extra frames, as phone cameras write them: every JPEG decoder reads its first frame).
IMAGE_FORMATS = {"jpg": ("JPEG", "MPO"), "jpeg": ("JPEG", "MPO"), "png": ("PNG",), "webp": ("WEBP",)}
#: The extension a PIL format is stored under when the converter passes it through.
PASSTHROUGH_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
#: NumPy dtype kinds a ``.npy`` field may hold: booleans and numbers (no objects, strings, records).
NPY_KINDS = "biufc"


def extension(field: str) -> str:
    """The last extension of a field name, lower case: ``"caption.txt"`` → ``"txt"``."""
    return field.rsplit(".", 1)[-1].lower()


def sniff_image(data: bytes) -> str | None:
    """The PIL format family of encoded image bytes, from their magic: "JPEG", "PNG", "WEBP" or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


class Codec:
    """One way of storing a field. ``encode`` raises ``ValueError`` (the caller names the field
    and sample); ``decode`` raises :class:`ShardError` naming ``shard`` and ``member``."""

    name = "bytes"
    image = False  # decoded by the image decoders (the reader's decode modes apply)

    def encode(self, value: Any, ext: str, *, quality: int = 90) -> bytes:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        raise ValueError(f"expected bytes for a .{ext} field (its extension is not one shardkit "
                         f"interprets), got {_type(value)}")

    def decode(self, data: bytes, shard: str | None = None, member: str | None = None) -> Any:
        return data


class ImageCodec(Codec):
    name = "image"
    image = True

    def encode(self, value: Any, ext: str, *, quality: int = 90) -> bytes:
        wanted = IMAGE_FORMATS[ext]
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            found = sniff_image(data)
            if found not in wanted:
                raise ValueError(f"the bytes are {'a ' + found + ' image' if found else 'not a JPEG, PNG or WebP image'},"
                                 f" not {wanted[0]}: name the field after its format, or pass a PIL image")
            return data
        from PIL import Image

        if isinstance(value, Image.Image):
            buf = io.BytesIO()
            image = value if value.mode in ("RGB", "L") or wanted[0] != "JPEG" else value.convert("RGB")
            options = {"quality": quality} if wanted[0] == "JPEG" else {"lossless": True} if wanted[0] == "WEBP" else {}
            image.save(buf, format=wanted[0], **options)
            return buf.getvalue()
        raise ValueError(f"expected encoded image bytes or a PIL image for a .{ext} field, got {_type(value)}")

    def decode(self, data: bytes, shard: str | None = None, member: str | None = None) -> Any:
        from ..stream.decode import decode_image  # torch is imported only where images are decoded

        return decode_image(data, shard=shard, member=member)


class ClsCodec(Codec):
    name = "cls"

    def encode(self, value: Any, ext: str, *, quality: int = 90) -> bytes:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return str(int(value)).encode()
        if _is_integer_tensor(value):
            return str(int(value.item())).encode()
        raise ValueError(f"expected an int for a .cls field, got {_type(value)}")

    def decode(self, data: bytes, shard: str | None = None, member: str | None = None) -> int:
        try:
            return int(data)
        except ValueError:
            raise ShardError(f"label {data[:20]!r} is not an int", shard=shard, member=member) from None


class TextCodec(Codec):
    name = "txt"

    def encode(self, value: Any, ext: str, *, quality: int = 90) -> bytes:
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError as err:  # lone surrogates
                raise ValueError(f"text is not valid Unicode ({err})") from None
        raise ValueError(f"expected a str for a .{ext} field, got {_type(value)}")

    def decode(self, data: bytes, shard: str | None = None, member: str | None = None) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ShardError(f"text is not UTF-8 ({err})", shard=shard, member=member) from None


class JsonCodec(Codec):
    name = "json"

    def encode(self, value: Any, ext: str, *, quality: int = 90) -> bytes:
        try:
            return json.dumps(value, ensure_ascii=False, sort_keys=True, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as err:
            raise ValueError(f"the value is not JSON ({err})") from None

    def decode(self, data: bytes, shard: str | None = None, member: str | None = None) -> Any:
        try:
            return json.loads(data)
        except RecursionError:
            raise ShardError("not valid JSON (nested too deeply)", shard=shard, member=member) from None
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, integer digit limits
            raise ShardError(f"not valid JSON ({err})", shard=shard, member=member) from None


class NpyCodec(Codec):
    name = "npy"

    def encode(self, value: Any, ext: str, *, quality: int = 90) -> bytes:
        array = as_array(value)
        return npy_bytes(array)

    def decode(self, data: bytes, shard: str | None = None, member: str | None = None) -> Any:
        import torch

        return torch.from_numpy(load_npy(data, shard, member))


def as_array(value: Any) -> np.ndarray:
    """``value`` (a NumPy array or a torch tensor) as an array a ``.npy`` may hold; ``ValueError`` else."""
    if type(value).__module__.startswith("torch") and hasattr(value, "numpy"):
        try:
            value = value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as err:  # bfloat16 and other dtypes NumPy lacks
            raise ValueError(f"the tensor cannot become a NumPy array ({err})") from None
    if not isinstance(value, np.ndarray):
        raise ValueError(f"expected a NumPy array or a torch tensor for a .npy field, got {_type(value)} "
                         f"(wrap lists in numpy.asarray)")
    if value.dtype.kind not in NPY_KINDS or value.dtype.fields is not None:
        raise ValueError(f"arrays of dtype {value.dtype} are not stored (numbers and booleans only: "
                         f"object arrays would need pickle)")
    return value


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` bytes of an array (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, shard: str | None, member: str | None, *, kinds: str = NPY_KINDS,
             ndim: int | None = None) -> np.ndarray:
    """Decode a ``.npy`` member into a native-byte-order, writable array.

    Never unpickles, and checks the header's shape against the bytes present before anything is
    allocated, so a header claiming a huge array costs nothing. ``kinds`` (dtype kinds) and
    ``ndim`` restrict what is accepted.

    Raises:
        ShardError: not a version 1 or 2 ``.npy``, a dtype or shape outside what is accepted, or a
            header that disagrees with the data length.
    """
    shape, fortran, dtype, start, count = npy_header(data, shard, member, kinds=kinds, ndim=ndim)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    array = array.reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), order="C", copy=True)  # writable, native, as np.load gives


def npy_header(data: bytes, shard: str | None, member: str | None, *, kinds: str = NPY_KINDS,
               ndim: int | None = None) -> tuple[tuple[int, ...], bool, np.dtype, int, int]:
    """``(shape, fortran order, dtype, data offset, value count)`` of a ``.npy`` member, checked
    as :func:`load_npy` checks it (the same errors), without reading its values."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
    except Exception as err:  # noqa: BLE001 - numpy's header parser raises a zoo of types on
        # garbage (ValueError, SyntaxError, tokenize.TokenError, ...), varying by version
        raise ShardError(f"not a valid .npy array ({err})", shard=shard, member=member) from None
    if dtype.kind not in kinds or dtype.fields is not None or (ndim is not None and len(shape) != ndim):
        wanted = f"a {ndim}-D " if ndim is not None else "an "
        raise ShardError(f"expected {wanted}array of dtype kind {'/'.join(kinds)}, found {dtype} with shape {shape}",
                         shard=shard, member=member)
    start = stream.tell()
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != len(data) - start:
        raise ShardError(f"header says {count} values of {dtype.itemsize} bytes, the member holds "
                         f"{len(data) - start} bytes after it", shard=shard, member=member)
    return tuple(shape), fortran, dtype, start, count


def _is_integer_tensor(value: Any) -> bool:
    return (type(value).__module__.startswith("torch") and getattr(value, "ndim", None) == 0
            and not value.dtype.is_floating_point and not value.dtype.is_complex and str(value.dtype) != "torch.bool")


def _type(value: Any) -> str:
    return type(value).__name__


BYTES = Codec()
#: The one table: extension → codec. Anything not listed is raw bytes.
CODECS: dict[str, Codec] = {**{ext: ImageCodec() for ext in IMAGE_FORMATS}, "cls": ClsCodec(), "txt": TextCodec(),
                            "json": JsonCodec(), "npy": NpyCodec()}


def codec_of(field: str) -> Codec:
    """The codec of a field, by its last extension (raw bytes for any extension not in :data:`CODECS`)."""
    return CODECS.get(extension(field), BYTES)
