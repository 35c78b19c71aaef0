"""Fixtures for the hardening probes: the CLI in a subprocess (plain, or as an unprivileged user)
and a temporary directory that such a user can enter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNPRIVILEGED = Path(__file__).with_name("unprivileged.py")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def cli():
    """``cli(*args, timeout=120)``: ``python -m shardkit ARGS`` in a subprocess (bytes or str
    arguments); the CompletedProcess, output as text."""
    def run(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "shardkit", *[os.fsencode(a) for a in args]]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=_env(), **kwargs)
    return run


@pytest.fixture
def open_tmp():
    """A fresh directory under the system's temporary directory that every user may enter and
    write (pytest's own are private to root); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="shardkit-probe-"))
    path.chmod(0o777)
    yield path
    for folder, dirs, _ in os.walk(path):  # chmod 000 folders the probes made
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755, follow_symlinks=False)
    shutil.rmtree(path)


@pytest.fixture
def as_nobody():
    """``as_nobody(*args, nproc=None, timeout=120)``: the shardkit command as uid 65534 (see
    unprivileged.py), optionally limited to ``nproc`` processes; skips when privileges cannot be
    dropped."""
    def run(*args, nproc: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        limit = ["--nproc", str(nproc)] if nproc is not None else []
        argv = [sys.executable, str(UNPRIVILEGED), *limit, "--", *[os.fsencode(a) for a in args]]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=_env())
        if proc.returncode == 77:
            pytest.skip(f"cannot run as an unprivileged user here: {proc.stderr.strip()}")
        return proc
    return run
