"""Fixtures for the converter's tests."""

import os
import subprocess

import pytest


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(name, size, ro=False)``: a tmpfs of ``size`` at ``tmp_path/name`` (root only), or
    None where mounting is not possible; every mount is undone at teardown."""
    mounts = []

    def mount(name: str, size: str, ro: bool = False):
        path = tmp_path / name
        path.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                                               capture_output=True).returncode:
            return None
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)
