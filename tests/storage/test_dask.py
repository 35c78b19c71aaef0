"""Conversion on a Dask LocalCluster of 2 worker processes: the bytes of a local run, a killed worker survived."""

import os
import signal

import pytest

from datagen import dst_files
from shardkit.convert import dask as on_dask
from shardkit.convert.options import ConvertOptions
from shardkit.convert.output import Destination
from shardkit.convert.plan import content_digest, digest, plan_images
from shardkit.convert.sources import list_images
from shardkit.errors import MissingExtraError


@pytest.fixture(scope="module")
def cluster():
    with on_dask.open_client("local", workers=2) as client:
        yield client


def _convert_on_dask(src, dst, client, options):
    """What ``convert(src, dst, client=...)`` does, spelled out with the converter's parts."""
    opts = ConvertOptions.from_kwargs(dict(options))
    source = list_images(str(src))
    plan_digest = digest("images", opts, source.listing())
    plan = plan_images(source, opts, plan_digest)
    plan.stamps = content_digest("images", opts, source.listing())
    with Destination(str(dst)) as out:
        out.start(plan_digest, "images", opts.as_params())
        records = dict(on_dask.run_shards(plan, out, list(range(plan.num_shards)), client=client))
        return plan, out, records


def _kill_writer_of_shard(index, marker):
    """Installed in each worker: the first process to write shard ``index`` dies by SIGKILL halfway."""
    from shardkit.convert import output

    original = output.ShardWriter.add

    def add(self, chunk):
        original(self, chunk)
        if self.name == output.shard_name(index) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    output.ShardWriter.add = add


@pytest.fixture(scope="module")
def converted(local_run):
    return local_run(10, seed=3, max_shard_samples=7)


@pytest.mark.timeout(120)
def test_dask_writes_the_bytes_of_a_local_run(cluster, converted, tmp_path):
    src, expected, options = converted
    plan, _, records = _convert_on_dask(src, tmp_path / "dst", cluster, options)
    assert sorted(records) == list(range(plan.num_shards)) and plan.num_shards == 5
    shards = {name: data for name, data in expected.items() if name.startswith("shard-")}
    assert {k: v for k, v in dst_files(tmp_path / "dst").items() if k.startswith("shard-")} == shards
    assert all(records[i].sha256 and records[i].name == f"shard-{i:06d}.tar" for i in records)


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_shard_does_not_change_the_result(cluster, converted, tmp_path):
    src, expected, options = converted
    marker = tmp_path / "killed"
    cluster.run(_kill_writer_of_shard, 2, str(marker))
    plan, out, records = _convert_on_dask(src, tmp_path / "dst", cluster, options)
    assert marker.exists()  # a worker really died writing shard 2
    shards = {name: data for name, data in expected.items() if name.startswith("shard-")}
    assert {k: v for k, v in dst_files(tmp_path / "dst").items() if k.startswith("shard-")} == shards
    assert sorted(records) == list(range(plan.num_shards))


def test_missing_distributed_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    with pytest.raises(MissingExtraError, match=r"pip install 'shardkit\[dask\]'"):
        with on_dask.open_client("local"):
            pass
