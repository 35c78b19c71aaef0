"""A description of the machine a run was measured on, stored with its results."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import psutil

PACKAGES = ("torch", "torchvision", "torchcodec", "numpy", "pillow", "webdataset", "litdata",
            "mosaicml-streaming", "fsspec")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe() -> dict:
    import torch
    from PIL import features

    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)}"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "os": platform.platform(), "python": platform.python_version(), "device": device,
            "torch_threads": torch.get_num_threads(), "libjpeg_turbo": features.version("libjpeg_turbo"),
            "versions": versions()}


def one_line(machine: dict) -> str:
    v = machine["versions"]
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GiB RAM, {machine['device']}; "
            f"Python {machine['python']}, torch {v['torch']}, torchvision {v['torchvision']}, "
            f"torchcodec {v['torchcodec']}, Pillow {v['pillow']} (libjpeg-turbo {machine['libjpeg_turbo']})")
