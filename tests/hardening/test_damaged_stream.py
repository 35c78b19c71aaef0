"""Damaged shards under the loader's policies, fuzzed end to end: ``on_error="skip"`` yields only
original samples, loses none from intact places, and replaces every missing one by a repeat of
an intact one (counted), so the count stays the manifest's;
``on_error="raise"`` raises only ``ShardError``; ``verify=True`` catches every changed byte.

Damage here keeps the shard's size (header bit flips, zero-filled holes, garbage over a header):
a changed size is a manifest mismatch, reported before the first sample (the loader's own tests).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from fuzzing import fuzz
from hypothesis import strategies as st

import datagen
import shardkit
from shardkit.errors import ShardError
from shardkit.format.tar import BLOCK, read_members

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """16 small JPEGs in 3 shards, and each shard's samples as ``(bytes, label)``."""
    root = tmp_path_factory.mktemp("damaged-stream")
    tree = datagen.make_jpeg_tree(root / "src", classes=2, per_class=8, sizes=(32, 40))
    manifest = shardkit.convert(tree, root / "ds", workers=1, max_shard_samples=6, progress=False)
    assert len(manifest.shards) == 3
    from shardkit import StreamingDataset

    by_shard = [list(StreamingDataset([str(root / "ds" / s.name)], shuffle=False, decode=False))
                for s in manifest.shards]
    assert [len(s) for s in by_shard] == [s.samples for s in manifest.shards]
    return root / "ds", manifest, by_shard


DAMAGE = st.sampled_from(["header-bit", "zero-blocks", "header-garbage"])


def damage(shard: bytes, kind: str, data) -> bytes:
    headers = [m.offset for m in read_members(shard)]
    damaged = bytearray(shard)
    if kind == "header-bit":
        at = data.draw(st.sampled_from(headers)) + data.draw(st.integers(0, BLOCK - 1))
        damaged[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "zero-blocks":
        first = data.draw(st.integers(0, len(shard) // BLOCK - 1))
        stop = min(len(shard), (first + data.draw(st.integers(1, 3))) * BLOCK)
        damaged[first * BLOCK:stop] = bytes(stop - first * BLOCK)
    else:
        at = data.draw(st.sampled_from(headers))
        junk = data.draw(st.binary(min_size=BLOCK, max_size=BLOCK))
        damaged[at:at + BLOCK] = junk
    return bytes(damaged)


def stream(root: Path, **options):
    from shardkit import StreamingDataset

    ds = StreamingDataset(str(root), shuffle=False, decode=False, **options)
    return ds, list(ds)


def test_skip_policy_loses_nothing_intact_and_accounts_for_the_rest(dataset, fuzz_examples):
    src, manifest, by_shard = dataset
    originals = Counter(s for shard in by_shard for s in shard)

    @fuzz(max(10, fuzz_examples // 3), st.integers(0, 2), DAMAGE, st.data())
    def prop(index, kind, data):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "ds"
            shutil.copytree(src, root)
            name = manifest.shards[index].name
            damaged = damage((src / name).read_bytes(), kind, data)
            (root / name).write_bytes(damaged)

            ds, got = stream(root, on_error="skip")
            counted = Counter(got)
            if kind != "zero-blocks":  # a hole in an image's data changes its bytes, unseen without verify
                assert set(counted) <= set(originals), "a damaged sample came through"
            for i, shard in enumerate(by_shard):
                if i != index:
                    assert all(counted[s] >= 1 for s in shard), f"intact shard {i} lost samples"
            dropped = sum(r["dropped"] for r in ds.errors)
            assert len(got) == manifest.samples, (len(got), ds.errors)
            if kind != "zero-blocks":
                assert sum(n - 1 for n in counted.values()) == dropped, "each lost sample has one stand-in"
            assert all(r["shard"] == name for r in ds.errors)

            try:
                _, raised_got = stream(root)
            except ShardError as err:
                assert err.shard == name
            else:
                assert len(raised_got) == manifest.samples  # the damage was invisible to the tar reader

            if damaged != (src / name).read_bytes():
                with pytest.raises(ShardError, match=name):
                    stream(root, verify=True)


class Explode:
    """Unpickling this creates a file: the proof that a loader ran code from a shard."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_hostile_members_in_webdataset_shards_never_run_and_bombs_are_refused(tmp_path):
    """Shards from elsewhere (no manifest): pickles under any extension are never loaded, images
    whose headers announce too many pixels are refused, and the good samples around them come through."""
    import io
    import pickle
    import tarfile

    import numpy as np

    import corpus
    from shardkit import StreamingDataset

    target = str(tmp_path / "pwned")
    payload = pickle.dumps(Explode(target))
    npy = io.BytesIO()
    np.save(npy, np.array([Explode(target)], dtype=object), allow_pickle=True)
    bad = corpus.damaged_images()
    good = corpus.valid_odd_images()
    jpeg = corpus.image_bytes("JPEG", seed=7)
    samples = [
        ("s0", {"jpg": jpeg, "cls": b"0"}),
        ("s1", {"jpg": payload, "cls": b"1"}),
        ("s2", {"png": good["png-named.jpg"], "cls": b"2", "pth": payload, "pickle": payload, "pyd": payload}),
        ("s2b", {"jpg": jpeg, "cls": b"8", "npy": npy.getvalue()}),
        ("s3", {"png": bad["huge-dimensions.png"], "cls": b"3"}),
        ("s4", {"png": bad["real-bomb-90mpx.png"], "cls": b"4"}),
        ("s5", {"jpg": bad["huge-dimensions.jpg"], "cls": b"5"}),
        ("s6", {"jpg": bad["gif-huge-dimensions.jpg"], "cls": b"6"}),
        ("s7", {"jpg": jpeg, "cls": b"7"}),
    ]
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    ds = StreamingDataset([str(path)], shuffle=False, on_error="skip")
    assert ds.kind == "samples"  # extra fields: a dict per sample, every field kept
    got = list(ds)
    assert len(got) == len(samples), "stand-ins keep the count"
    assert {s["cls"] for s in got} == {0, 2, 7}
    intact = next(s for s in got if s["cls"] == 2)
    assert intact["pth"] == intact["pickle"] == intact["pyd"] == payload, "yielded as bytes, never unpickled"
    assert all(image.dtype == torch.uint8 and image.shape[0] == 3 for s in got for image in
               [s.get("jpg"), s.get("png")] if image is not None)
    assert len(ds.errors) == 6 and sum(r["dropped"] for r in ds.errors) == 6
    errors = " | ".join(r["error"] for r in ds.errors)
    assert "s1.jpg" in errors and "s2b.npy" in errors and errors.count("pixels") + errors.count("bomb") >= 4
    with pytest.raises(ShardError, match="s1.jpg"):
        list(StreamingDataset([str(path)], shuffle=False))
    assert not (tmp_path / "pwned").exists()
