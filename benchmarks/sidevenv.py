"""Side virtual environments for peers whose pins clash with shardkit's environment.

MosaicML Streaming 0.13 pins ``numpy<2.2``; installing it beside shardkit would downgrade the main
environment's numpy. So the benchmark builds it its own virtual environment under the scratch
folder, once (about 40 s on 2 cores, 0.8 GB, mostly cloud SDKs it requires), and runs that peer in
a subprocess of it. The main environment's packages stay visible *after* the side
environment's own (a ``.pth`` line appends the main ``site-packages`` to ``sys.path``): the side
numpy shadows the main one, while torch, torchvision, torchcodec, Pillow and psutil are the main
environment's (a second 5 GB torch is not installed: pip sees them as installed). torch 2.14's
numpy bridge works with numpy 2.1 (checked when the environment is built)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

log = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parent.parent

#: name → the requirements pip installs into that environment.
SPECS = {"mosaicml": ("mosaicml-streaming==0.13.0", "numpy<2.2")}

# Run in the side environment once it is built: the versions it resolves to, and a torch ↔ numpy
# round trip (the one thing the shared torch needs from the older numpy).
_CHECK = """
import json, numpy, torch, streaming
a = numpy.arange(6, dtype=numpy.int32).reshape(2, 3)
assert torch.from_numpy(a).long().sum().item() == 15 and torch.ones(2).numpy().dtype == numpy.float32
print(json.dumps({"numpy": numpy.__version__, "torch": torch.__version__, "mosaicml-streaming": streaming.__version__,
                  "numpy_from": numpy.__file__, "torch_from": torch.__file__}))
"""


def _folder(scratch: Path, name: str) -> Path:
    main_site = sysconfig.get_paths()["purelib"]
    key = json.dumps([SPECS[name], main_site, sys.version]).encode()
    return scratch / f"venv-{name}-{hashlib.sha256(key).hexdigest()[:10]}"


def ensure(scratch: Path, name: str) -> tuple[Path, dict]:
    """The side environment ``name`` (built the first time): (its python, what it holds: versions,
    build seconds). Raises RuntimeError, with pip's last lines, when it cannot be built."""
    folder = _folder(scratch, name)
    python, done = folder / "bin" / "python", folder / "COMPLETE"
    if done.exists():
        return python, json.loads(done.read_text())
    if folder.exists():
        shutil.rmtree(folder)  # a build that was interrupted
    log.info("building the %s side environment under %s (once; about a minute)", name, folder)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # zz-: .pth files run in name order; a plain path line is appended to sys.path, after site-packages
    (Path(site) / "zz-main-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip_log = folder / "pip.log"
    with open(pip_log, "w") as out:
        pip = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                              "-c", str(ROOT / "scripts" / "constraints.txt"), *SPECS[name]],
                             stdout=out, stderr=subprocess.STDOUT)
    if pip.returncode:
        tail = [line for line in pip_log.read_text().splitlines() if "is ignored: it is neither" not in line]
        raise RuntimeError(f"pip could not build the {name} side environment ({pip_log}):\n" + "\n".join(tail[-15:]))
    check = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True)
    if check.returncode:
        raise RuntimeError(f"the {name} side environment does not work with the main environment's torch:\n"
                           f"{check.stderr[-2000:]}")
    info = {**json.loads(check.stdout.strip().splitlines()[-1]), "build_s": round(time.monotonic() - start, 1)}
    done.write_text(json.dumps(info) + "\n")
    log.info("built the %s side environment in %.0f s: %s", name, info["build_s"], info)
    return python, info
