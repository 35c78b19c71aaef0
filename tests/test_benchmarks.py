"""The benchmark harness runs end to end on a tiny configuration and writes its JSON, markdown and
chart; the GPU benchmark refuses clearly to run without what it needs. No speed is asserted."""

from __future__ import annotations

import json
import math
import operator
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(*args: str, timeout: int = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One ``run.py --smoke`` for the module: (process, results folder)."""
    tmp = tmp_path_factory.mktemp("bench")
    proc = run("benchmarks/run.py", "--smoke", "--out", str(tmp / "results"), "--scratch", str(tmp / "scratch"))
    return proc, tmp / "results"


def test_smoke_run_succeeds_and_writes_every_output(smoke):
    proc, results = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (results / "smoke.md").read_text().startswith("# shardkit benchmarks")
    assert (results / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_results_hold_every_scenario_with_measured_rows(smoke):
    from benchmarks.run import SCENARIOS

    doc = json.loads((smoke[1] / "smoke.json").read_text())
    assert set(doc["sections"]) == set(SCENARIOS)
    assert doc["errors"] == []
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["versions"]["torch"]
    for section in doc["sections"].values():
        if section["kind"] == "ratio":
            assert section["rows"], section["id"]
            for row in section["rows"]:
                assert row["median"] > 0 and row["min"] <= row["median"] <= row["max"], (section["id"], row)
                if section["baseline"]:
                    assert row["ratio"] > 0
    assert all(r["ratio"] == 1.0 for s in doc["sections"].values() if s["kind"] == "ratio"
               for r in s["rows"] if r["contender"] == s["baseline"])
    memory = doc["sections"]["memory_epochs"]["summary"]
    assert memory["samples"] == memory["expected_samples"]
    # Every contender of a section did the same work: as many images or samples as its baseline.
    for section in doc["sections"].values():
        if section["kind"] == "ratio" and section["unit"] in ("img/s", "samples/s"):
            counts = {row["contender"]: row["items"] for row in section["rows"]}
            assert len(set(counts.values())) == 1 and min(counts.values()) > 0, (section["id"], counts)
    # Every target was measured, and "met" is what its goal says of the measured value.
    from benchmarks import targets

    assert len(doc["targets"]) == len(targets.check({}, 1)) >= 7
    for target in doc["targets"]:
        measured, (op, goal) = target["measured"], target["goal"].rstrip("×").split()
        assert isinstance(measured, (int, float)) and math.isfinite(measured), target
        if target["goal"].endswith("×"):
            assert measured > 0, target
        compare = {">=": operator.ge, "<=": operator.le, "<": operator.lt}[op]
        assert target["met"] is compare(measured, float(goal)), target


def test_markdown_names_the_baseline_and_every_contender(smoke):
    doc = json.loads((smoke[1] / "smoke.json").read_text())
    text = (smoke[1] / "smoke.md").read_text()
    for section in doc["sections"].values():
        assert f"## {section['title']}" in text
        for name in [r["contender"] for r in section.get("rows", [])] + [section.get("contender")]:
            assert name is None or name in text


def test_gpu_benchmark_refuses_to_run_without_cuda(tmp_path):
    proc = run("benchmarks/gpu.py", "--out", str(tmp_path), timeout=120, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "cannot run" in proc.stderr and "CUDA" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()
