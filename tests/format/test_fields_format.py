"""Field codecs: one definition of how each field is stored and read back, for the writer, the
reader and verify; and the .npy decoder that never unpickles."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import datagen
from shardkit.errors import ShardError
from shardkit.format.fields import CODECS, codec_of, extension, load_npy, sniff_image


def npy(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("field, value, expected", [
    ("cls", 7, 7), ("cls", np.int64(-3), -3), ("cls", torch.tensor(5), 5),
    ("txt", "a caption, ünïcode", "a caption, ünïcode"), ("caption.txt", "", ""),
    ("json", {"b": [1, 2.5, None, True], "a": "x"}, {"a": "x", "b": [1, 2.5, None, True]}), ("meta.json", [1], [1]),
    ("bin", b"\x00\xff", b"\x00\xff"), ("weights.pth", b"not unpickled", b"not unpickled"),
    ("x.pickle", b"\x80\x04K\x01.", b"\x80\x04K\x01."), ("noext.weird", bytearray(b"ab"), b"ab"),
], ids=str)
def test_round_trip(field, value, expected):
    codec = codec_of(field)
    assert codec.decode(codec.encode(value, extension(field))) == expected


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([True, False]),
                                   np.arange(5, dtype=">u2"), np.zeros((0, 2), np.int8), np.array(3.5),
                                   np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))],
                         ids=["float-2d", "bool", "big-endian", "empty", "0-d", "fortran"])
def test_npy_round_trip_any_numeric_array(array):
    out = codec_of("x.npy").decode(codec_of("x.npy").encode(array, "npy"))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == array.shape
    assert np.array_equal(out.numpy(), array) and out.numpy().dtype == array.dtype.newbyteorder("=")


def test_npy_takes_torch_tensors():
    t = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    assert torch.equal(codec_of("t.npy").decode(codec_of("t.npy").encode(t, "npy")), t)
    with pytest.raises(ValueError, match="cannot become a NumPy array"):
        codec_of("t.npy").encode(torch.zeros(2, dtype=torch.bfloat16), "npy")


@pytest.mark.parametrize("ext, fmt", [("jpg", "JPEG"), ("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_images_pass_bytes_through_and_encode_pil_images(ext, fmt):
    rng = np.random.default_rng(0)
    data = datagen.encode_image("RGB", fmt, rng)
    codec = codec_of(ext)
    assert codec.image and codec.encode(data, ext) == data  # byte for byte
    decoded = codec.decode(data)
    assert decoded.dtype == torch.uint8 and tuple(decoded.shape) == (3, 32, 48)
    pil = Image.fromarray(datagen.natural_image(rng, 40, 30))
    encoded = codec.encode(pil, ext, quality=80)
    assert sniff_image(encoded) == fmt and tuple(codec.decode(encoded).shape) == (3, 30, 40)
    if fmt != "JPEG":  # lossless: the same pixels come back
        assert np.array_equal(codec.decode(encoded).permute(1, 2, 0).numpy(), np.asarray(pil))


def test_image_fields_name_what_they_found():
    with pytest.raises(ValueError, match="not a JPEG, PNG or WebP"):
        codec_of("png").encode(b"GIF89a...", "png")
    with pytest.raises(ValueError, match="expected encoded image bytes or a PIL image"):
        codec_of("mask.png").encode(np.zeros((2, 2), np.uint8), "png")


@pytest.mark.parametrize("field, data, fragment", [
    ("cls", b"three", "is not an int"), ("txt", b"\xff\xfe", "not UTF-8"), ("json", b"{nope", "not valid JSON"),
    ("json", b"[" * 100_000, "nested too deeply"), ("x.npy", b"junk", "not a valid .npy"),
    ("jpg", b"\xff\xd8\xff\xe0 truncated", "cannot decode image"),
], ids=["cls", "txt", "json", "json-deep", "npy", "jpg"])
def test_decode_errors_are_shard_errors_naming_the_member(field, data, fragment):
    with pytest.raises(ShardError, match=f"shard s.tar, member 'k.{field}'") as info:
        codec_of(field).decode(data, "s.tar", f"k.{field}")
    assert fragment in str(info.value)


def test_the_table_knows_only_safe_codecs():
    assert set(CODECS) == {"jpg", "jpeg", "png", "webp", "cls", "txt", "json", "npy"}
    for ext in ("pth", "pickle", "pyd", "bin", "gif", "mp"):
        assert codec_of(f"x.{ext}").name == "bytes"  # yielded as bytes, never interpreted


def test_load_npy_gives_native_writable_arrays():
    array = load_npy(npy(np.arange(5, dtype=">u4")), "s", "m")
    assert array.dtype == np.dtype("=u4") and array.tolist() == [0, 1, 2, 3, 4]
    array[0] = 9  # torch.from_numpy warns on read-only arrays
    assert load_npy(npy(np.array([], dtype=np.uint8)), "s", "m").tolist() == []


class Explode:
    """Unpickling this creates a file: the proof that a decoder ran code from a shard."""

    target = None

    def __reduce__(self):
        return (open, (self.target, "w"))


def _npy_version(major: int) -> bytes:
    data = bytearray(npy(np.arange(3, dtype=np.uint8)))
    data[6] = major
    return bytes(data)


def _header_claims(count: int) -> bytes:
    """A valid .npy header for ``count`` uint64 values, followed by only 3 of them."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u8", "fortran_order": False, "shape": (count,)})
    return buf.getvalue() + bytes(24)


@pytest.mark.parametrize("make, fragment", [
    (lambda: npy(np.array([1, "a"], dtype=object), allow_pickle=True), "found object"),
    (lambda: npy(np.arange(3, dtype=np.float32)), "1-D array of dtype kind i/u"),
    (lambda: npy(np.arange(4, dtype=np.uint8).reshape(2, 2)), "shape (2, 2)"),
    (lambda: npy(np.array(7, dtype=np.int64)), "shape ()"),
    (lambda: npy(np.array([True])), "1-D array of dtype kind i/u"),
    (lambda: npy(np.zeros(2, dtype=[("a", "<u4")])), "1-D array of dtype kind i/u"),
    (lambda: npy(np.arange(3, dtype=np.uint8))[:-1], "holds 2 bytes"),
    (lambda: npy(np.arange(3, dtype=np.uint8)) + b"x", "holds 4 bytes"),
    (lambda: _header_claims(10**15), "header says 1000000000000000 values"),
    (lambda: _npy_version(3), "not a valid .npy"),
    (lambda: b"", "not a valid .npy"),
    (lambda: b"\x93NUMPY\x01\x00\xff\xff{'descr'", "not a valid .npy"),
    (lambda: b"PK\x03\x04" + bytes(60), "not a valid .npy"),  # an .npz (zip) is not an array
    (lambda: pickle.dumps([1, 2, 3]), "not a valid .npy"),
], ids=["object", "float", "2-d", "0-d", "bool", "structured", "short", "long", "huge-claim", "v3", "empty",
        "bad-header", "npz", "pickle"])
def test_load_npy_refuses(make, fragment):
    with pytest.raises(ShardError, match="shard s.tar, member 'k.tokens.npy'") as info:
        load_npy(make(), "s.tar", "k.tokens.npy", kinds="iu", ndim=1)
    assert fragment in str(info.value)



@pytest.mark.parametrize("field", ["npy", "weights.pth", "x.pickle", "m.pyd", "jpg", "json", "txt", "cls"])
def test_pickled_members_never_run(tmp_path, field):
    """A pickle (or an object array holding one) under any field is refused or yielded as bytes,
    never unpickled: the file its unpickling would create never appears."""
    Explode.target = str(tmp_path / "ran")
    payload = npy(np.array([Explode()], dtype=object), allow_pickle=True) if field == "npy" \
        else pickle.dumps(Explode())
    try:
        out = codec_of(field).decode(payload, "s.tar", f"k.{field}")
    except ShardError:
        out = None
    assert out is None or out == payload or isinstance(out, str)
    assert not (tmp_path / "ran").exists()
