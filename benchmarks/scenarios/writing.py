"""Image + caption pairs (JPEG bytes, caption text, a small json per sample): writing them into
shards from Python, and streaming them back as training batches."""

from __future__ import annotations

import shutil
from typing import Any

import torch

from .. import harness
from ..contenders import shardkit_peer, webdataset_peer
from ..workspace import Workspace
from . import ratio_section

WDS_WRITER = "webdataset ShardWriter(...).write(sample), integer mtime"
WDS_STREAM = "webdataset, torchcodec + uint8 v2, captions as str, batched in the workers"
SK_WRITER = "shardkit ShardWriter(...).write(sample)"
SK_STREAM = "shardkit, torchcodec + uint8 v2, captions as str, batched in the workers"


def _payload(ws: Workspace) -> int:
    return sum(len(s["jpg"]) + len(s["txt"].encode()) for s in ws.pairs)


def _write(ws: Workspace, name: str, folder: str, write) -> harness.Contender:
    """``write(samples, out, per_shard)`` of every pair as one timed pass (the output removed before each)."""
    out = ws.work / "pairs-writing" / folder

    def one_pass():
        write(ws.pairs, out, ws.per_shard)
        yield len(ws.pairs)

    return harness.Contender(name, one_pass, lambda k: k, expected=len(ws.pairs),
                             prepare=lambda: shutil.rmtree(out, ignore_errors=True))


def writing(ws: Workspace) -> list[dict[str, Any]]:
    """samples/s and MB/s (JPEG + caption bytes) of a writer fed in-memory samples, one process."""
    ws.pairs  # read into memory before the clock
    outcomes = harness.compare([_write(ws, WDS_WRITER, "webdataset", webdataset_peer.write_samples),
                                _write(ws, SK_WRITER, "shardkit", shardkit_peer.write_samples)], ws.cfg.rounds)
    payload = _payload(ws)
    section = ratio_section("pairs_writing", "Image + caption pairs: writing shards from Python", "samples/s",
                            outcomes, WDS_WRITER, per_unit="1000 samples",
                            notes=[f"{len(ws.pairs)} samples (the images scenario's JPEGs, a 5-25 word caption, "
                                   f"a 4-field json), {payload / 1e6:.0f} MB of JPEG + caption, {ws.per_shard} "
                                   f"per shard, page cache warm; MB/s counts JPEG + caption bytes; median of "
                                   f"{ws.cfg.rounds}; shardkit also writes an index per shard and the manifest "
                                   f"(sha256 of every shard)"])
    for r in section["rows"]:
        if "median" in r:
            r["mb_per_s"] = r["median"] * payload / len(ws.pairs) / 1e6
    return [section]


def count_pairs(batch) -> int:
    """Samples in a batch, after checking it is ``(uint8 B×3×224×224, [str] * B, [dict] * B)``."""
    images, captions, metadata = batch
    if (images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, 224, 224)
            or len(captions) != len(images) or not all(isinstance(c, str) for c in captions)
            or len(metadata) != len(images)):
        raise TypeError(f"expected uint8 B×3×224×224 images, B str captions and B dicts, got {images.dtype} "
                        f"{tuple(images.shape)}, {len(captions)} captions, {len(metadata)} json")
    return len(images)


def streaming(ws: Workspace) -> list[dict[str, Any]]:
    b, w, n = ws.cfg.batch_size, ws.cfg.num_workers, len(ws.pairs)
    shards = ws.webdataset_pairs
    ours = shardkit_peer.write_samples(ws.pairs, ws.work / "shardkit-pairs", ws.per_shard) \
        if not (ws.work / "shardkit-pairs" / "manifest.json").exists() else ws.work / "shardkit-pairs"
    contenders = [harness.Contender(WDS_STREAM, lambda: webdataset_peer.pairs_loader(shards, b, w), count_pairs,
                                    expected=n),
                  harness.Contender(SK_STREAM, lambda: shardkit_peer.pairs_loader(ours, b, w), count_pairs, expected=n)]
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    return [ratio_section("pairs_streaming", "Image + caption pairs: streaming training batches", "samples/s",
                          outcomes, WDS_STREAM, per_unit="1000 samples",
                          notes=[f"the {n} pairs as each one's writer wrote them ({len(shards)} shards), "
                                 f"shuffled, batch {b}, num_workers={w}; batches of uint8 3×224×224 crops, "
                                 f"captions as str and the json as dicts; median of {ws.cfg.rounds}"])]
