"""The issues' targets, checked against the sections of a run (never tuned by touching the baseline).

Only targets an issue gives a number for, and only where the shardkit contender exists: a target
of a feature not built yet is added with its contender (a target never measured would read as
neither met nor failed, so it is left out rather than shown as "not measured")."""

from __future__ import annotations

from typing import Any, Callable

from .scenarios import conversion, images, remote, row, sequences, tabular


def _ratio(section_id: str, contender: str, reference: str | None = None) -> Callable[[dict], float | None]:
    """Median of ``contender`` over the section's baseline (or over ``reference``'s median)."""
    def get(sections: dict) -> float | None:
        section = sections.get(section_id)
        mine = section and row(section, contender)
        if not mine or "median" not in mine:
            return None
        if reference is None:
            return mine.get("ratio")
        ref = row(section, reference)
        return mine["median"] / ref["median"] if ref and ref.get("median") else None
    return get


def _memory_growth(sections: dict) -> float | None:
    memory = sections.get("memory_epochs")
    if not memory:
        return None
    s = memory["summary"]
    return s["growth_mb"] / s["first"]


def _tar(cores: int, section_id: str = "conversion") -> Callable[[dict], float | None]:
    return lambda sections: (conversion.tar_time_ratio(sections[section_id], cores)
                             if section_id in sections else None)


def _pad_fraction(size: int) -> Callable[[dict], float | None]:
    def get(sections: dict) -> float | None:
        section = sections.get("token_packing")
        mine = section and row(section, sequences.pack_name(sequences.SHARDKIT_PACK, size))
        return mine.get("pad_fraction") if mine else None
    return get


def check(sections: dict[str, dict[str, Any]], cores: int) -> list[dict[str, Any]]:
    """One entry per target: what, measured value, goal, met (None when not measured in this run)."""
    specs = [
        ("issue 4/5: recommended pipeline vs the map-style baseline, warm", "×", ">=", 1.6,
         _ratio("images_warm", images.RECOMMENDED)),
        ("issue 5: recommended pipeline streaming over HTTP vs the baseline's GET per file", "×", ">=", 5.0,
         _ratio("images_remote", remote.STREAM)),
        ("issue 6: streaming over HTTP vs the same shards on local disk", "×", ">=", 0.9,
         _ratio("images_remote", remote.STREAM, remote.LOCAL)),
        ("issue 4/5: shardkit sequences vs webdataset one-sample-per-key", "×", ">=", 10.0,
         _ratio("sequences", sequences.SHARDKIT, sequences.WEBDATASET)),
        (f"issue 5: convert ({cores} workers, full validation) vs all-core PIL decode rate", "×", ">=", 0.7,
         _ratio("conversion", conversion.shardkit_name(cores, "full"))),
        (f"issue 5: convert ({cores} workers, header only) time vs tar cf time", "×", "<=", 3.0, _tar(cores)),
        ("issue 14: the same on the tree of many small files (20,000 in a full run)", "×", "<=", 3.0,
         _tar(cores, "conversion_many_files")),
        ("issue 14: recommended pipeline vs the torchcodec decode + crop limit, warm", "×", ">=", 0.85,
         _ratio("images_warm", images.RECOMMENDED, images.LIMIT_UINT8)),
        ("issue 14: recommended pipeline vs the map-style baseline, warm", "×", ">=", 2.0,
         _ratio("images_warm", images.RECOMMENDED)),
        ("issue 14: crop-aware decoding vs the recommended pipeline, 300-500 px (no slower)", "×", ">=", 0.97,
         _ratio("images_warm", images.CROP_AWARE, images.RECOMMENDED)),
        ("issue 14: crop-aware loader on 1200-1600 px photos vs the full decode + crop limit", "×", ">=", 1.5,
         _ratio("images_large", images.CROP_AWARE, images.LIMIT_UINT8)),
        ("issue 14: shardkit sequences vs litdata, padded batches", "×", ">=", 3.0,
         _ratio("sequences_batched", sequences.BATCHED_SHARDKIT, sequences.BATCHED_LITDATA)),
        ("issue 14: shardkit sequences vs webdataset, padded batches", "×", ">=", 100.0,
         _ratio("sequences_batched", sequences.BATCHED_SHARDKIT, sequences.BATCHED_WEBDATASET)),
        ("issue 14: first epoch over HTTP, small shards, vs the baseline's GET per file", "×", ">=", 10.0,
         _ratio("images_remote_first_epoch", remote.FIRST_STREAM)),
        ("issue 14: steady epochs over HTTP vs the same shards on local disk", "×", ">=", 0.95,
         _ratio("images_remote", remote.STREAM, remote.LOCAL)),
        (f"issue 14: convert ({cores} workers, full validation) vs all-core PIL decode rate", "×", ">=", 0.9,
         _ratio("conversion", conversion.shardkit_name(cores, "full"))),
        ("issue 7: RSS growth over the epochs, relative to the first epoch", "", "<=", 0.05, _memory_growth),
        ("issue 12: shardkit tabular rows vs the tutorial's TabularDataset + DataLoader", "×", ">=", 20.0, _ratio("tabular", tabular.SHARDKIT)),
        ("issue 13: packed batches (L=2048) vs LitData's TokensLoader, tokens/s", "×", ">=", 2.0,
         _ratio("token_packing", sequences.pack_name(sequences.SHARDKIT_PACK, 2048),
                sequences.pack_name(sequences.LITDATA_PACK, 2048))),
        ("issue 13: pad tokens in packed batches (L=2048), fraction of all", "", "<", 0.005, _pad_fraction(2048)),
    ]
    results = []
    for what, unit, op, goal, get in specs:
        value = get(sections)
        met = None if value is None else {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]
        results.append({"target": what, "measured": value, "goal": f"{op} {goal}{unit}", "met": met})
    return results
