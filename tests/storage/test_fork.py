"""A forked child (a DataLoader worker) that uses fsspec must leave its parent's connections alone.

The parent's fsspec event loop shares its epoll instance with every forked child. Before
``storage/fork.py``, a child's first fsspec call dropped the parent's cached filesystems, whose
finalizers unregistered the parent's pooled sockets from that shared epoll, and the parent's
next request on such a socket waited out its whole timeout (the benchmark's 30 s stall).
"""

import gc
import os

import pytest

import datagen
import shardkit
from shardkit import StreamingDataset, make_loader, storage
from shardkit.storage import retry
from servers import RangeHTTPServer

#: One try with a short timeout: a request that is not woken up fails instead of being retried.
NO_SECOND_CHANCE = retry.RetryPolicy(attempts=1, timeout=5.0, deadline=5.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fork")
    src = datagen.write_jsonl(root / "src" / "train.jsonl", datagen.random_sequences(40, seed=3, max_len=50))
    shardkit.convert(src, root / "dst", workers=1, progress=False, max_shard_samples=10)
    return root / "dst"


def _child_uses_fsspec(url: str) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            storage.read_bytes(f"{url}/manifest.json")
            gc.collect()  # as it runs sooner or later in any child that lives a while
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _collect_garbage(samples):
    gc.collect()  # a short test epoch allocates too little for the collector to run by itself
    return samples


def _workers_use_fsspec(url: str) -> None:
    loader = make_loader(StreamingDataset(url), 8, num_workers=2, multiprocessing_context="fork",
                         collate_fn=_collect_garbage)
    assert sum(len(batch) for batch in loader) == 40


@pytest.mark.parametrize("children", [_child_uses_fsspec, _workers_use_fsspec], ids=["os.fork", "DataLoader"])
def test_parent_requests_still_complete_after_a_child_used_fsspec(dataset, monkeypatch, children):
    monkeypatch.setattr(retry, "DEFAULT_POLICY", NO_SECOND_CHANCE)
    with RangeHTTPServer(dataset) as url:
        storage.read_bytes(f"{url}/manifest.json")  # leaves a keep-alive connection in the parent's pool
        children(url)
        for _ in range(3):  # each on a pooled connection the child may have unregistered
            assert len(StreamingDataset(url)) == 40
