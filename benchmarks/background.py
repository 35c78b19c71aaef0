"""Helpers run in their own process for the length of a scenario (the HTTP server, a Dask
cluster), so their threads neither compete for the GIL of the process being measured nor count
in its CPU time. Each prints one line (its address) and runs until its stdin closes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(module: str, *args: str, start_timeout: float = 120) -> Iterator[str]:
    """Run ``python -m module args...`` from the repository root; yields the first line it prints."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"{module} {' '.join(args)} did not start (exit code {proc.poll()})")
        yield line
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def until_stdin_closes() -> None:
    sys.stdin.read()
