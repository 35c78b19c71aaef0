"""``convert`` with a remote destination or source (moto S3), and on Dask through ``convert(...)`` itself.

These go through ``shardkit.convert``'s own arguments (``storage_options=``, an ``s3://`` SRC or
DST, ``scheduler=``, ``client=``) and the CLI's ``--scheduler``.
"""

from pathlib import Path

import pytest
from click.testing import CliRunner

from datagen import dst_files
import shardkit
from shardkit import storage
from shardkit.cli import cli


def _remote_files(url, options) -> dict[str, bytes]:
    return {rel: storage.read_bytes(storage.join(url, rel), options) for rel, _ in storage.walk_files(url, options)}


@pytest.fixture(scope="module")
def converted(local_run):
    return local_run(8, seed=5, max_shard_samples=8)


def test_convert_to_s3_writes_the_bytes_of_a_local_run_manifest_last(s3, converted, prefix, monkeypatch):
    src, expected, options = converted
    order = []
    put_file = storage.put_file
    monkeypatch.setattr(storage, "put_file", lambda local, url, *a, **k: (order.append(str(url)), put_file(local, url, *a, **k))[1])
    shardkit.convert(src, f"{prefix}/ds", storage_options=s3, workers=1, progress=False, **options)
    assert _remote_files(f"{prefix}/ds", s3) == expected
    published = [u.rsplit("/", 1)[1] for u in order if "/.shardkit" not in u]
    assert published[-1] == "manifest.json" and sorted(published[:-1]) == sorted(n for n in expected if n != "manifest.json")


def test_an_interrupted_conversion_to_s3_resumes_and_reuses_uploaded_shards(s3, converted, prefix, monkeypatch):
    src, expected, options = converted
    uploads = []
    put_file = storage.put_file

    def failing_put(local, url, *args, **kwargs):
        if str(url).endswith(".tar"):
            uploads.append(str(url).rsplit("/", 1)[1])
            if len(uploads) == 3:
                raise KeyboardInterrupt  # the user's Ctrl-C between two shards
        return put_file(local, url, *args, **kwargs)

    monkeypatch.setattr(storage, "put_file", failing_put)
    with pytest.raises(KeyboardInterrupt):
        shardkit.convert(src, f"{prefix}/ds", storage_options=s3, workers=1, progress=False, **options)
    assert not storage.exists(f"{prefix}/ds/manifest.json", s3)  # a reader never sees a half-written dataset
    first = list(uploads[:2])
    uploads.clear()
    shardkit.convert(src, f"{prefix}/ds", storage_options=s3, workers=1, progress=False, **options)
    assert not set(first) & set(uploads)  # the shards already uploaded were reused
    assert _remote_files(f"{prefix}/ds", s3) == expected


def test_convert_from_an_s3_source(s3, converted, prefix, tmp_path):
    src, expected, options = converted
    for rel, _ in storage.walk_files(src):
        storage.put_file(Path(src) / rel, f"{prefix}/src/{rel}", s3)
    manifest = shardkit.convert(f"{prefix}/src", tmp_path / "dst", storage_options=s3, workers=1, progress=False,
                                **options)
    got = dst_files(tmp_path / "dst")
    assert {k: v for k, v in got.items() if k.startswith("shard-")} == \
        {k: v for k, v in expected.items() if k.startswith("shard-")}
    assert manifest.samples == 24


@pytest.mark.parametrize("where, kind", [("file", None), ("file", "sequences"), ("prefix", None)])
def test_remote_sequence_files_are_refused_with_the_reason(s3, prefix, tmp_path, where, kind):
    (tmp_path / "train.jsonl").write_text('{"tokens": [1, 2, 3]}\n')
    storage.put_file(tmp_path / "train.jsonl", f"{prefix}/seq/train.jsonl", s3)
    src = f"{prefix}/seq/train.jsonl" if where == "file" else f"{prefix}/seq"
    with pytest.raises(shardkit.SourceError, match="read at random offsets.*copy them to a local disk"):
        shardkit.convert(src, tmp_path / "dst", kind=kind, storage_options=s3, workers=1, progress=False)
    assert not (tmp_path / "dst").exists()


@pytest.mark.timeout(180)
def test_convert_on_a_local_dask_cluster_gives_the_bytes_of_a_local_run(converted, tmp_path):
    src, expected, options = converted
    shardkit.convert(src, tmp_path / "dst", scheduler="local", workers=2, progress=False, **options)
    assert dst_files(tmp_path / "dst") == expected  # nothing about the cluster recorded, no temporary file left


@pytest.mark.timeout(180)
def test_cli_scheduler_local(converted, tmp_path):
    src, expected, options = converted
    result = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "dst"), "--scheduler", "local",
                                      "--workers", "2", "--seed", "5", "--max-shard-samples", "8"])
    assert result.exit_code == 0, result.output
    assert dst_files(tmp_path / "dst") == expected


@pytest.mark.timeout(180)
def test_convert_with_a_client_survives_a_worker_killed_mid_shard(converted, tmp_path):
    from shardkit.convert.dask import open_client
    from test_dask import _kill_writer_of_shard

    src, expected, options = converted
    marker = tmp_path / "killed"
    with open_client("local", workers=2) as client:
        client.run(_kill_writer_of_shard, 1, str(marker))
        shardkit.convert(src, tmp_path / "dst", client=client, progress=False, **options)
    assert marker.exists()
    assert dst_files(tmp_path / "dst") == expected
