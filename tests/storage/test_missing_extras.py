"""A URL whose fsspec implementation is not installed names the shardkit extra that brings it."""

import importlib
import sys

import pytest

import shardkit
from shardkit import MissingExtraError, storage

#: url, fsspec protocol, the package made missing, the module fsspec loads for the protocol, the hint
CASES = {
    "s3": ("s3://bucket/train", "s3", "s3fs", "s3fs", r"pip install 'shardkit\[s3\]'"),
    "https": ("https://127.0.0.1:9/train", "https", "aiohttp", "fsspec.implementations.http",
              r"pip install 'shardkit\[http\]'"),
}


@pytest.fixture
def uninstalled(monkeypatch):
    """``uninstalled(protocol, package, loader_module)``: ``package`` fails to import as if it were
    not installed, and fsspec forgets the implementation it had loaded for ``protocol``."""
    def hide(protocol: str, package: str, loader_module: str) -> None:
        monkeypatch.delitem(importlib.import_module("fsspec.registry")._registry, protocol, raising=False)
        monkeypatch.delitem(sys.modules, loader_module, raising=False)  # so that fsspec imports it again
        monkeypatch.setitem(sys.modules, package, None)  # and "import package" raises ImportError

    return hide


@pytest.mark.parametrize("url, protocol, package, loader_module, hint", CASES.values(), ids=CASES.keys())
def test_a_missing_implementation_names_the_extra(uninstalled, url, protocol, package, loader_module, hint):
    uninstalled(protocol, package, loader_module)
    with pytest.raises(MissingExtraError, match=hint) as info:
        storage.read_bytes(f"{url}/manifest.json")
    assert url in str(info.value)
    with pytest.raises(MissingExtraError, match=hint):
        shardkit.StreamingDataset(url)
