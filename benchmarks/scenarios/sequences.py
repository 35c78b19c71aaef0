"""Token sequences: samples/s read in one process (each sample a 1-D int64 tensor, in order, and
padded batches of them), the bytes each format stores, the padded-token efficiency of batches with and without bucketing, and
tokens/s of fixed-length packed blocks (the peers' and the tutorials' packing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import harness
from ..contenders import baseline, litdata_peer, mosaic_peer, shardkit_peer, webdataset_peer
from ..workspace import Workspace, files_under
from . import ratio_section

BASELINE = "map-style JSONL (json.loads per line, lines in memory)"
WEBDATASET = "webdataset, .npy + .cls per key (integer mtime)"
SHARDKIT = "shardkit StreamingDataset"
LITDATA = "litdata optimize + StreamingDataset"
MOSAIC = "mosaicml streaming, MDS ndarray, batch_size=1, predownload=100000"


def _stored(files: list[Path], payload: int) -> float:
    return sum(p.stat().st_size for p in files) / payload


def throughput(ws: Workspace) -> list[dict[str, Any]]:
    payload, n = 4 * sum(len(tokens) for tokens, _ in ws.records), len(ws.records)
    contenders = [
        (harness.Contender(BASELINE, lambda: baseline.iterate(baseline.JsonlSequences(ws.src.jsonl)), expected=n),
         lambda: [ws.src.jsonl]),
        (harness.Contender(WEBDATASET, lambda: webdataset_peer.sequences(ws.webdataset_sequences), expected=n),
         lambda: ws.webdataset_sequences),
        (harness.Contender(SHARDKIT, lambda: shardkit_peer.sequences(ws.shardkit_sequences), expected=n),
         lambda: shardkit_peer.shard_files(ws.shardkit_sequences)),
    ]
    skipped, why = [], litdata_peer.available()
    if why:
        contenders.append((harness.failing(LITDATA, why), lambda: []))
    else:
        contenders.append((harness.Contender(LITDATA, lambda: litdata_peer.sequences(ws.litdata_sequences),
                                             expected=n),
                           lambda: files_under(ws.litdata_sequences)))
    if ws.cfg.side_venvs:
        contenders.append((harness.Contender(MOSAIC, measured=lambda: ws.mosaic.sequence_pass(ws.mosaic_sequences),
                                             expected=n),
                           lambda: files_under(ws.mosaic_sequences)))
    else:
        skipped.append(mosaic_peer.SMOKE_SKIPPED)
    stored = {}
    for contender, files in contenders:  # build every format (untimed) and weigh it
        try:
            stored[contender.name] = _stored(files(), payload)
        except Exception as err:  # noqa: BLE001 - the timed run below records the same failure
            stored[contender.name] = None
            harness.log.error("%s: building its data failed: %s", contender.name, err)
    outcomes = harness.compare([c for c, _ in contenders], ws.cfg.rounds)
    section = ratio_section("sequences", "Token sequences, one process, in order", "samples/s", outcomes,
                            BASELINE, per=10_000, per_unit="10,000 samples", skipped=skipped,
                            notes=[f"{len(ws.records)} sequences, lengths lognormal(4.0, 0.9) clipped to "
                                   f"[8, 2048], ids < 50,000; each sample a 1-D int64 tensor; median of "
                                   f"{ws.cfg.rounds}. 'stored' = bytes on disk / int32 payload"]
                            + ([ws.mosaic.version_note()] if ws.cfg.side_venvs and ws.mosaic.info else []))
    for r in section["rows"]:
        r["stored_ratio"] = stored.get(r["contender"])
    return [section]


BATCHED_BASELINE = "map-style JSONL + DataLoader(batch_size=B), pad_sequence collate"
BATCHED_WEBDATASET = "webdataset .npy + .cls, .batched(B), the same collate"
BATCHED_SHARDKIT = "shardkit make_loader(B): padded batches from the blocks"
BATCHED_LITDATA = "litdata StreamingDataLoader(batch_size=B), the same collate"
BATCHED_MOSAIC = "mosaicml streaming StreamingDataLoader(batch_size=B), the same collate"


def _samples(batch) -> int:
    return len(batch[1])


def batched(ws: Workspace) -> list[dict[str, Any]]:
    """The same sequences taken as a trainer takes them: padded batches ``(B×T int64, lengths,
    labels)`` of 64, in order, one process (num_workers=0): each peer with its own loader and the
    tutorial's ``pad_sequence`` collate, shardkit with ``make_loader``'s."""
    b, n, pad = ws.cfg.batch_size, len(ws.records), baseline.pad_batch
    why = litdata_peer.available()
    # every format built before anything is timed
    ws.webdataset_sequences, ws.shardkit_sequences
    if not why:
        ws.litdata_sequences
    if ws.cfg.side_venvs:
        ws.mosaic_sequences
    contenders = [
        harness.Contender(BATCHED_BASELINE, lambda: baseline.padded_loader(ws.src.jsonl, b, 0, shuffle=False),
                          _samples, expected=n),
        harness.Contender(BATCHED_WEBDATASET, lambda: webdataset_peer.padded_sequences(ws.webdataset_sequences, b, pad),
                          _samples, expected=n),
        harness.Contender(BATCHED_SHARDKIT, lambda: shardkit_peer.padded_loader(ws.shardkit_sequences, b, 0,
                                                                                shuffle=False),
                          _samples, expected=n),
    ]
    skipped = []
    contenders.append(harness.failing(BATCHED_LITDATA, why) if why else harness.Contender(
        BATCHED_LITDATA, lambda: litdata_peer.padded_sequences(ws.litdata_sequences, b, pad), _samples, expected=n))
    if ws.cfg.side_venvs:
        contenders.append(harness.Contender(BATCHED_MOSAIC, measured=lambda: ws.mosaic.padded_pass(ws.mosaic_sequences, b),
                                            expected=n))
    else:
        skipped.append(mosaic_peer.SMOKE_SKIPPED)
    for contender in contenders:  # each one's modules imported (one batch, untimed), as a trainer's are
        if contender.run is not None:
            try:
                next(iter(contender.run()))
            except Exception:  # noqa: BLE001 - its timed run records the failure
                pass
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    return [ratio_section("sequences_batched", f"Token sequences, padded batches of {b}, one process, in order",
                          "samples/s", outcomes, BATCHED_BASELINE, per=10_000, per_unit="10,000 samples",
                          skipped=skipped,
                          notes=[f"the {n} sequences of the per-sample scenario, B = {b}; every contender "
                                 f"delivers (padded B×T int64, lengths, labels); median of {ws.cfg.rounds}"])]


class PaddingCounter:
    """Counts samples of ``(padded B×T, lengths, labels)`` batches and the padded-token efficiency:
    real tokens / tokens in padded batches."""

    def __init__(self):
        self.real = self.padded = 0

    def __call__(self, batch) -> int:
        padded, lengths = batch[0], batch[1]
        self.real += int(lengths.sum())
        self.padded += padded.numel()
        return len(lengths)

    @property
    def efficiency(self) -> float:
        return self.real / self.padded if self.padded else float("nan")


def padding(ws: Workspace) -> list[dict[str, Any]]:
    """Batched loaders (batch 64, num_workers as for images): samples/s and padded efficiency."""
    b, w = ws.cfg.batch_size, ws.cfg.num_workers
    variants = {
        "map-style JSONL, DataLoader(shuffle=True), pad_collate":
            lambda: baseline.padded_loader(ws.src.jsonl, b, w),
        "shardkit, shuffled, pad_collate (no bucketing)":
            lambda: shardkit_peer.padded_loader(ws.shardkit_sequences, b, w),
        "shardkit, length bucketing":
            lambda: shardkit_peer.padded_loader(ws.shardkit_sequences, b, w, bucketing=True),
        "shardkit, length bucketing + token budget":
            lambda: shardkit_peer.padded_loader(ws.shardkit_sequences, b, w, max_tokens=b * 128),
    }
    counters = {name: PaddingCounter() for name in variants}
    contenders = [harness.Contender(name, run, counters[name], expected=ws.cfg.sequences)
                  for name, run in variants.items()]
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    section = ratio_section("sequences_padding", "Token sequences, batched: padding efficiency", "samples/s",
                            outcomes, next(iter(variants)), per=10_000, per_unit="10,000 samples",
                            notes=[f"batch {b} (token budget: {b * 128} tokens per batch), num_workers={w}; "
                                   f"efficiency = real tokens / tokens in the padded batches"])
    for r in section["rows"]:
        r["padding_efficiency"] = counters[r["contender"]].efficiency
    return [section]


# shardkit's packed batches: make_loader(..., block_size=L) over the same tokens, in one process,
# in stored order (as LitData's TokensLoader and group_texts read them), batches of PACK_ROWS rows.
SHARDKIT_PACK = "shardkit make_loader(block_size=L), packed batches"
PACK_TOKENS = 32_768  # tokens per shardkit batch (rows = PACK_TOKENS // L): a training step's worth
BASELINE_PACK = "JSONL concatenated and cut into blocks (HF group_texts)"
LITDATA_PACK = "litdata optimize + TokensLoader(block_size)"


def pack_name(contender: str, size: int) -> str:
    return f"{contender}, L={size}"


def _tokens(block) -> int:
    return block.numel()


class PackCounter:
    """Counts the real tokens of packed batches (what the contender delivers) and their padding."""

    def __init__(self):
        self.real = self.pad = 0

    def __call__(self, batch) -> int:
        documents = batch["document_ids"]
        padded = documents[documents[:, -1] < 0]  # padding ends its row: only those rows need counting
        pad = int((padded < 0).sum()) if len(padded) else 0
        real = documents.numel() - pad
        self.real += real
        self.pad += pad
        return real

    @property
    def pad_fraction(self) -> float:
        return self.pad / (self.real + self.pad) if self.real + self.pad else float("nan")


def packed_loader(source, block_size: int):
    """shardkit's packed batches of ``block_size`` tokens, one process, in stored order."""
    import shardkit

    dataset = shardkit.StreamingDataset(str(source), shuffle=False)
    return shardkit.make_loader(dataset, max(1, PACK_TOKENS // block_size), block_size=block_size, num_workers=0)


def packing(ws: Workspace) -> list[dict[str, Any]]:
    """tokens/s of fixed blocks of L tokens (every block size of the run), one process, in order."""
    total = sum(len(tokens) for tokens, _ in ws.records)
    why = litdata_peer.available()
    if not why:
        ws.litdata_tokens  # built before anything is timed
    # converted, and shardkit's modules imported (one batch, untimed), before anything is timed, as
    # LitData's are by building its data above
    next(iter(packed_loader(ws.shardkit_sequences, ws.cfg.block_sizes[0])))
    contenders, totals, counters = [], {}, {}
    for size in ws.cfg.block_sizes:
        contenders.append(harness.Contender(pack_name(BASELINE_PACK, size),
                                            lambda size=size: baseline.group_texts(ws.src.jsonl, size),
                                            _tokens, expected=total // size * size))
        mine = pack_name(SHARDKIT_PACK, size)
        counters[mine] = PackCounter()
        contenders.append(harness.Contender(mine, lambda size=size: packed_loader(ws.shardkit_sequences, size),
                                            counters[mine], expected=total))
        totals[mine] = total // size * size
        name = pack_name(LITDATA_PACK, size)
        contenders.append(harness.failing(name, why) if why else harness.Contender(
            name, lambda size=size: litdata_peer.token_blocks(ws.litdata_tokens, size), _tokens))
        totals[name] = total // size * size
    outcomes = harness.compare(contenders, ws.cfg.rounds)
    rows = []
    for size in ws.cfg.block_sizes:  # one ratio per block size: each against the baseline of its size
        base = outcomes[pack_name(BASELINE_PACK, size)]
        rows += [o.summary(base, 1_000_000) for name, o in outcomes.items() if name.endswith(f", L={size}")]
    for r in rows:  # LitData drops the tail of every chunk that is not a whole block: say how much
        if r["contender"] in totals and "items" in r:
            r["tokens_delivered"] = r["items"] / totals[r["contender"]]
        if r["contender"] in counters and "items" in r:
            r["pad_fraction"] = counters[r["contender"]].pad_fraction
    pads = ", ".join(f"L={size}: {counters[pack_name(SHARDKIT_PACK, size)].pad_fraction:.4%}"
                     for size in ws.cfg.block_sizes)
    return [{"id": "token_packing", "kind": "ratio", "title": "Token packing: fixed blocks of L tokens, one process",
             "unit": "tokens/s", "baseline": pack_name(BASELINE_PACK, ws.cfg.block_sizes[0]),
             "baselines": [pack_name(BASELINE_PACK, size) for size in ws.cfg.block_sizes],
             "per_unit": "1M tokens", "rows": rows, "skipped": [], "show_first": False,
             "notes": [f"the {len(ws.records)} sequences of the sequences scenario ({total:,} tokens), each block "
                       f"a 1-D int64 tensor; × = against the baseline with the same L; median of {ws.cfg.rounds}",
                       "'tokens delivered' = tokens in the blocks / the baseline's (whole blocks of the "
                       "concatenated stream); LitData cuts blocks per chunk and drops each chunk's remainder",
                       f"shardkit: batches of {PACK_TOKENS:,} tokens (rows = {PACK_TOKENS:,} / L) with "
                       f"position_ids, document_ids and cu_seqlens, every token of the pass once (its rate "
                       f"counts real tokens only); pad tokens / all tokens: {pads}"]}]
