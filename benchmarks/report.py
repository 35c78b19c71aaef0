"""Render a run's results (the JSON document run.py writes) as a markdown table and a PNG chart.

``python benchmarks/report.py results/full.json`` re-renders an existing result."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import one_line  # noqa: E402


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _rate_digits(values) -> int:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return 0 if finite and min(finite) >= 100 else 1 if finite and min(finite) >= 1 else 2


def _ratio_table(section: dict[str, Any]) -> list[str]:
    unit, per = section["unit"], section["per_unit"]
    extra = [(k, h, d) for k, h, d in (("stored_ratio", "stored × int32", 2),
                                        ("padding_efficiency", "padded efficiency", 2),
                                        ("tokens_delivered", "tokens delivered", 3),
                                        ("time_vs_tar", "time × tar cf", 1),
                                        ("mb_per_s", "MB/s", 1)) if any(k in r for r in section["rows"])]
    if section.get("show_first"):
        extra.append(("first_item_s", "first batch after (s)", 2))
    header = ["contender", f"median {unit}", "× baseline" if section["baseline"] else "", "min – max",
              f"CPU-s per {per} (main + workers)", "peak RSS MB"] + [h for _, h, _ in extra]
    lines = ["| " + " | ".join(h for h in header) + " |", "|" + "---|" * len(header)]
    digits = _rate_digits([r.get("median") for r in section["rows"]])
    for r in section["rows"]:
        name = f"**{r['contender']}**" if r["contender"] in _baselines(section) else r["contender"]
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:160]} |" + " |" * (len(header) - 2))
            continue
        cells = [name, _num(r["median"], digits), _num(r.get("ratio"), 2) if section["baseline"] else "",
                 f"{_num(r['min'], digits)} – {_num(r['max'], digits)}",
                 f"{r['cpu_main_per']:.2f} + {r['cpu_children_per']:.2f}", _num(r["peak_rss_mb"])]
        cells += [_num(r.get(k), d) for k, _, d in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _baselines(section: dict[str, Any]) -> list[str]:
    """The section's baseline, or its baselines where each row is against its own (token packing: one per L)."""
    return section.get("baselines") or [section["baseline"]]


def _matrix_table(section: dict[str, Any]) -> list[str]:
    lines = ["| contender | " + " | ".join(section["columns"]) + " |", "|---|" + "---|" * len(section["columns"])]
    for r in section["rows"]:
        cells = [_num(v) if e is None else "failed" for v, e in zip(r["values"], r["errors"])]
        lines.append(f"| {r['contender']} | " + " | ".join(cells) + " |")
    return lines


def _series_table(section: dict[str, Any]) -> list[str]:
    s = section["summary"]
    return [f"{section['contender']}: peak RSS (main + workers) first epoch {s['first']:.0f} MB, last "
            f"{s['last']:.0f} MB, max {s['max']:.0f} MB, growth {s['growth_mb']:+.0f} MB; "
            f"{s['samples']} samples seen ({s['expected_samples']} expected).", "",
            "per epoch (MB): " + ", ".join(f"{v:.0f}" for v in section["values"])]


RENDER = {"ratio": _ratio_table, "matrix": _matrix_table, "series": _series_table}


def _targets(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_num(t['measured'], 2)} | {t['goal']} | {met} |")
    return lines


def markdown(doc: dict[str, Any], chart: str | None = None) -> str:
    lines = [f"# shardkit benchmarks: `{doc['name']}` ({doc['config']['mode']} run)", "",
             f"Machine: {one_line(doc['machine'])}.  ",
             *[f"Side environment `{name}` (built once, in {info.get('build_s', 0):.0f} s): " +
               ", ".join(f"{k} {v}" for k, v in info.items() if k != "build_s" and not k.endswith("_from")) + ".  "
               for name, info in doc.get("side_environments", {}).items()],
             f"Run {doc['started']}, {doc['duration_s'] / 60:.1f} min. Ratios are medians against the "
             f"baseline measured in the same run; contenders alternate, repeated.", ""]
    if doc.get("errors"):
        lines += ["**Errors in this run:**", ""] + [f"- {e}" for e in doc["errors"]] + [""]
    lines += ["## Targets", ""] + _targets(doc["targets"]) + [""]
    if chart:
        lines += [f"![chart]({chart})", ""]
    for section in doc["sections"].values():
        lines += [f"## {section['title']}", ""] + RENDER[section["kind"]](section) + [""]
        lines += [f"- {note}" for note in section.get("notes", [])]
        lines += [f"- not run: {s}" for s in section.get("skipped", [])]
        lines.append("")
    return "\n".join(lines)


def chart(doc: dict[str, Any], path: Path) -> Path:
    """One panel per ratio section (× baseline, median with min–max whiskers), the sweep and the RSS series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = list(doc["sections"].values())
    fig, axes = plt.subplots(len(sections), 1, figsize=(11, 2.2 + sum(_height(s) for s in sections)),
                             gridspec_kw={"height_ratios": [_height(s) for s in sections]}, squeeze=False)
    for ax, section in zip(axes[:, 0], sections):
        {"ratio": _bars, "matrix": _lines, "series": _series}[section["kind"]](ax, section)
    fig.suptitle(f"shardkit benchmarks ({doc['config']['mode']}): {doc['machine']['cpu']}, "
                 f"{doc['machine']['cores']} cores, {doc['machine']['device']}", fontsize=11,
                 y=1 - 0.15 / fig.get_figheight())
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    _quantize(path)
    return path


def _quantize(path: Path) -> None:
    """A chart of flat colours in 64 of them: a third of the bytes (567 -> 174 KB for a full run),
    small enough to commit with each run."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def _height(section: dict[str, Any]) -> float:
    return 0.42 * len(section["rows"]) + 0.8 if section["kind"] == "ratio" else 2.6


def _bars(ax, section: dict[str, Any]) -> None:
    rows = [r for r in section["rows"] if "median" in r][::-1]
    base = next((r["median"] for r in rows if r["contender"] == section["baseline"]), None)
    # each row against its own baseline (its ratio), which is the section's one but in token packing
    scales = [r["median"] / r["ratio"] if base and r.get("ratio") else base or 1.0 for r in rows]
    medians = [r["median"] / scale for r, scale in zip(rows, scales)]
    low = [m - r["min"] / scale for m, r, scale in zip(medians, rows, scales)]
    high = [r["max"] / scale - m for m, r, scale in zip(medians, rows, scales)]
    colors = [_color(r["contender"], _baselines(section)) for r in rows]
    ax.barh(range(len(rows)), medians, xerr=[low, high], color=colors, capsize=3)
    ax.set_yticks(range(len(rows)), [r["contender"][:70] for r in rows], fontsize=8)
    ax.set_xlabel(f"× baseline ({section['unit']})" if base else section["unit"], fontsize=8)
    if base:
        ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlim(0, max((m + h for m, h in zip(medians, high)), default=1.0) * 1.12)  # room for the figures
    for i, r in enumerate(rows):  # past the whisker, so the figure never sits on it
        ax.text(medians[i] + high[i], i, f"  {r['median']:,.0f}", va="center", fontsize=7)
    ax.set_title(section["title"], fontsize=9, loc="left")


def _color(contender: str, baselines: list[str | None]) -> str:
    """Grey baseline, red shardkit, blue peers, green limits and references."""
    if contender in baselines:
        return "#888888"
    if contender.startswith("limit") or "reference" in contender or contender.startswith("tar cf"):
        return "#2ca02c"
    return "#d62728" if contender.startswith("shardkit") else "#1f77b4"


def _lines(ax, section: dict[str, Any]) -> None:
    for r in section["rows"]:
        ax.plot(section["x"], [v if v is not None else float("nan") for v in r["values"]], marker="o",
                label=r["contender"][:70])
    ax.set_xticks(section["x"])
    ax.set_xlabel("num_workers", fontsize=8)
    ax.set_ylabel(section["unit"], fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(section["title"], fontsize=9, loc="left")


def _series(ax, section: dict[str, Any]) -> None:
    ax.plot(range(1, len(section["values"]) + 1), section["values"], marker=".", color="#d62728")
    ax.set_ylim(0, max(section["values"]) * 1.15)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("peak RSS, MB", fontsize=8)
    ax.set_title(section["title"] + " (main + workers)", fontsize=9, loc="left")


def write(doc: dict[str, Any], out: Path) -> tuple[Path, Path, Path]:
    """``out/<name>.json``, ``.md`` and ``.png``."""
    out.mkdir(parents=True, exist_ok=True)
    base = out / doc["name"]
    json_path, md_path, png_path = base.with_suffix(".json"), base.with_suffix(".md"), base.with_suffix(".png")
    json_path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    chart(doc, png_path)
    md_path.write_text(markdown(doc, png_path.name))
    return json_path, md_path, png_path


if __name__ == "__main__":
    path = Path(sys.argv[1])
    document = json.loads(path.read_text())
    print(write(document, path.parent)[1])
