"""Scenarios: each function takes the run's :class:`~benchmarks.workspace.Workspace` and returns
result sections (plain dicts, written to JSON as they are and rendered by ``report.py``)."""

from __future__ import annotations

from typing import Any

from .. import harness


def ratio_section(id: str, title: str, unit: str, outcomes: dict[str, harness.Outcome], baseline: str | None,
                  *, per: int = 1000, per_unit: str = "1000 images", notes=(), skipped=(),
                  show_first: bool = False) -> dict[str, Any]:
    """A table of contenders: median/min/max rate, ratio of medians against ``baseline``, CPU and RSS;
    with ``show_first``, also the median time to the first batch."""
    return {"id": id, "kind": "ratio", "title": title, "unit": unit, "baseline": baseline,
            "per_unit": per_unit, "rows": harness.summarise(outcomes, baseline, per),
            "notes": list(notes), "skipped": list(skipped), "show_first": show_first}


def row(section: dict[str, Any], contender: str) -> dict[str, Any] | None:
    return next((r for r in section["rows"] if r["contender"] == contender), None)
