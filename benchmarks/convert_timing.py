"""Where one ``shardkit convert`` spends its time, measured from outside shardkit's code:

    python -m benchmarks.convert_timing SPAWNED_AT -- convert SRC DST [OPTIONS]

runs the CLI as ``python -m shardkit`` does, with timers wrapped around a few of
``shardkit.convert.api``'s functions (whichever exist: the converter is being reworked), and
prints one JSON line of marks (seconds since the epoch). :func:`split` turns them into phases:
process start, imports, listing (with the destination check and the worker pool's start),
planning, writing, the manifest, and the process's exit."""

from __future__ import annotations

import time

ENTERED = time.time()  # first: the interpreter's own start ends here

import functools  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: shardkit.convert.api function → the phase it is (marks at its entry and exit).
WRAPPED = {"convert": "convert", "_make_plan": "planning", "_write": "writing", "_write_on_dask": "writing"}


def _timed(marks: dict, name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        marks.setdefault(f"{name}_start", time.time())
        try:
            return fn(*args, **kwargs)
        finally:
            marks[f"{name}_end"] = time.time()
    return wrapper


def main(argv: list[str]) -> None:
    marks = {"spawned": float(argv[0]), "entered": ENTERED}
    import shardkit.convert
    import shardkit.convert.api as api
    from shardkit.cli import cli

    for attr, name in WRAPPED.items():
        if hasattr(api, attr):
            setattr(api, attr, _timed(marks, name, getattr(api, attr)))
    shardkit.convert.convert = api.convert  # what the CLI imports when the command runs
    marks["imported"] = time.time()
    try:
        cli.main(argv[2:] if argv[1:2] == ["--"] else argv[1:], prog_name="shardkit", standalone_mode=False)
    finally:
        marks["returned"] = time.time()
        print(json.dumps(marks), flush=True)


def run(args: list[str]) -> dict[str, float]:
    """Run ``shardkit ARGS`` under the timers in a fresh process; its phases in seconds."""
    spawned = time.time()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.convert_timing", repr(spawned), "--", *args], cwd=ROOT,
                          check=True, capture_output=True, text=True)
    marks = json.loads(proc.stdout.strip().splitlines()[-1])
    marks["exited"] = time.time()
    return split(marks)


def split(m: dict[str, float]) -> dict[str, float]:
    """Phases in seconds, in order, each present when its marks are."""
    points = [("process start", "spawned", "entered"), ("imports", "entered", "imported"),
              ("command line", "imported", "convert_start"),
              ("listing + destination + pool start", "convert_start", "planning_start"),
              ("planning", "planning_start", "planning_end"), ("writing", "writing_start", "writing_end"),
              ("manifest", "writing_end", "convert_end"), ("exit", "returned", "exited"),
              ("total", "spawned", "exited")]
    return {name: m[b] - m[a] for name, a, b in points if a in m and b in m}


if __name__ == "__main__":
    main(sys.argv[1:])
