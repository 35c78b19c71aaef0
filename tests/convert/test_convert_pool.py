"""The worker pool: ordered results, bounded memory, and workers that die mid-task."""

import dataclasses
import os
import signal

import pytest

from shardkit.convert.pool import WorkerPool
from shardkit.errors import ShardkitError


@dataclasses.dataclass(frozen=True)
class Items:
    """A splittable task over numbers; a negative number kills the worker running it (as a
    segfaulting decoder would)."""

    items: tuple[int, ...]

    def __call__(self):
        for item in self.items:
            if item < 0:
                os.kill(os.getpid(), signal.SIGKILL)
        return [("ok", item) for item in self.items]

    def split(self):
        return [Items((item,)) for item in self.items]

    def crashed(self):
        return [("crashed", item) for item in self.items]

    def merge(self, results):
        return [r for part in results for r in part]


@dataclasses.dataclass(frozen=True)
class Whole:
    def __call__(self):
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("workers", [1, 3])
def test_results_come_back_in_task_order(workers):
    tasks = [Items(tuple(range(i, i + 3))) for i in range(0, 60, 3)]
    with WorkerPool(workers) as pool:
        assert [r for result in pool.map(tasks, window=4) for r in result] == [("ok", i) for i in range(60)]


def test_tasks_are_pulled_lazily_within_the_window():
    pulled = []

    def tasks():
        for i in range(50):
            pulled.append(i)
            yield Items((i,))

    with WorkerPool(2) as pool:
        results = pool.map(tasks(), window=3)
        next(results)
        assert len(pulled) <= 4  # never the whole list at once
        assert len(list(results)) == 49


def test_a_dying_worker_is_pinned_on_its_input_and_the_rest_survive():
    tasks = [Items((0, 1, 2)), Items((3, -4, 5)), Items((6, 7)), Items((-8,)), Items((9,))]
    with WorkerPool(2) as pool:
        out = [r for result in pool.map(tasks) for r in result]
    assert out == [("ok", 0), ("ok", 1), ("ok", 2), ("ok", 3), ("crashed", -4), ("ok", 5), ("ok", 6), ("ok", 7),
                   ("crashed", -8), ("ok", 9)]


def test_a_dying_worker_on_an_unsplittable_task_is_a_clear_error():
    with WorkerPool(2) as pool, pytest.raises(ShardkitError, match="worker process died.*run the same command"):
        list(pool.map([Items((1,)), Whole()]))


def test_one_worker_converts_in_this_process(jpeg_tree, tmp_path, monkeypatch):
    import shardkit
    from shardkit.convert import pool as pool_module

    def no_processes(*args, **kwargs):
        raise AssertionError("workers=1 must not start a process pool")

    monkeypatch.setattr(pool_module, "ProcessPoolExecutor", no_processes)
    assert shardkit.convert(jpeg_tree, tmp_path / "out", workers=1, max_shard_samples=4).samples == 30


def test_a_decoder_crash_inside_a_whole_shard_task_skips_only_that_image(jpeg_tree, tmp_path, monkeypatch):
    """Images are written as whole shards in the workers; when one image kills its worker, the
    shard is rebuilt from single images and only the killer is skipped."""
    import shardkit
    from shardkit.convert import images as images_module
    from shardkit.convert import pool as pool_module

    killer = jpeg_tree / "class01" / "img00004.jpg"
    poison = killer.read_bytes()
    encode = images_module.encode_image

    def crashing_encode(data, **kwargs):
        if data == poison:
            os.kill(os.getpid(), signal.SIGKILL)  # as a segfaulting decoder would
        return encode(data, **kwargs)

    monkeypatch.setattr(images_module, "encode_image", crashing_encode)
    monkeypatch.setattr(pool_module, "_start_method", lambda: "fork")  # the workers see the patch
    manifest = shardkit.convert(jpeg_tree, tmp_path / "out", workers=2, max_shard_samples=6)
    assert [e["path"] for e in manifest.skipped] == ["class01/img00004.jpg"]
    assert "crashed" in manifest.skipped[0]["reason"]
    assert manifest.samples == 29 and len(manifest.shards) == 5
