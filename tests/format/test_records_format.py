"""Records: keys, member names, groups, and a sample's members encoded field by field."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from shardkit.format.records import group_samples, members_bytes, sample_key, sample_members, split_name
from shardkit.format.tar import TarWriter, entry_bytes, read_members


def test_keys_and_names():
    assert sample_key(0) == "000000000" and sample_key(123_456_789) == "123456789"
    assert split_name("000000012.tokens.npy") == ("000000012", "tokens.npy")
    assert split_name("000000012.jpg") == ("000000012", "jpg")
    assert split_name("noext") == ("noext", "")


def test_sample_members_encode_each_field_by_its_extension():
    members = dict(sample_members("000000004", {
        "png": b"\x89PNG\r\n\x1a\nrest", "cls": 2, "json": {"path": "dög/a b.png", "label": 2, "class": "dög"},
        "caption.txt": "a dög", "mask.npy": np.zeros((2, 3), np.uint8), "raw.bin": b"\x00\x01"}))
    assert members["000000004.png"].startswith(b"\x89PNG") and members["000000004.cls"] == b"2"
    assert json.loads(members["000000004.json"]) == {"path": "dög/a b.png", "label": 2, "class": "dög"}
    assert members["000000004.caption.txt"] == "a dög".encode() and members["000000004.raw.bin"] == b"\x00\x01"
    assert list(members) == ["000000004.png", "000000004.cls", "000000004.json", "000000004.caption.txt",
                             "000000004.mask.npy", "000000004.raw.bin"]


@pytest.mark.parametrize("sample, fragment", [
    ({"cls": "3"}, "field 'cls': expected an int"),
    ({"cls": True}, "field 'cls': expected an int"),
    ({"txt": 3}, "field 'txt': expected a str"),
    ({"bin": "text"}, "field 'bin': expected bytes"),
    ({"json": {1, 2}}, "field 'json': the value is not JSON"),
    ({"x.npy": np.array([object()], dtype=object)}, "field 'x.npy': arrays of dtype object"),
    ({"x.npy": [1, 2]}, "field 'x.npy': expected a NumPy array"),
    ({"jpg": b"\x89PNG\r\n\x1a\n..."}, "field 'jpg': the bytes are a PNG image, not JPEG"),
    ({"a/b": b""}, "field name 'a/b'"),
    ({".hidden": b""}, "field name '.hidden'"),
], ids=["cls-str", "cls-bool", "txt-int", "bin-str", "json-set", "npy-object", "npy-list", "jpg-png", "slash", "dot"])
def test_values_that_do_not_fit_their_field_are_refused_by_name(sample, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        sample_members("000000000", sample)


def test_groups_are_runs_of_one_key_with_their_offset():
    buf = io.BytesIO()
    writer = TarWriter(buf)
    for name, data in [("0.jpg", b"a"), ("0.cls", b"1"), ("1.jpg", b"b" * 700), ("1.cls", b"2"), ("2.txt", b"t")]:
        writer.add(name, data)
    writer.close()
    groups = list(group_samples(read_members(buf.getvalue())))
    assert [(g.key, sorted(g.fields)) for g in groups] == [("0", ["cls", "jpg"]), ("1", ["cls", "jpg"]), ("2", ["txt"])]
    assert [g.offset for g in groups] == [0, 2048, 2048 + 512 + 1024 + 1024]
    assert members_bytes([1, 700]) == entry_bytes(1) + entry_bytes(700) == 512 + 512 + 512 + 1024
