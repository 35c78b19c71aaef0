"""The ``shardkit`` command: arguments, exit codes, what it prints, and what it does not import."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import datagen
from shardkit.cli import cli

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "convert"))
from convert_helpers import make_bad_tree  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("argv", [["--help"], ["convert", "--help"], ["info", "--help"], ["verify", "--help"]])
def test_help_does_not_import_torch(argv):
    code = ("import sys\nfrom shardkit.cli import cli\n"
            f"try:\n    cli({argv!r}, prog_name='shardkit')\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'torchvision', 'numpy', 'PIL') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: shardkit" in proc.stdout


def test_converting_does_not_import_torch(jpeg_tree, tmp_path):
    code = ("import sys\nfrom shardkit.cli import cli\n"
            f"try:\n    cli(['convert', {str(jpeg_tree)!r}, {str(tmp_path / 'out')!r}, '--workers', '1'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\nassert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_python_dash_m_and_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shardkit", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "convert" in proc.stdout and "verify" in proc.stdout
    script = Path(sys.executable).parent / "shardkit"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


@pytest.mark.parametrize("value, message", [
    ("10XB", "is not a size"), ("-5MB", "is not a size"), ("0", "not a positive size"), ("MB", "is not a size"),
])
def test_size_option_errors_exit_2(image_tree, tmp_path, value, message):
    result = invoke("convert", image_tree, tmp_path / "out", "--max-shard-size", value)
    assert result.exit_code == 2
    assert "Invalid value for '--max-shard-size'" in result.output and message in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--kind", "videos"], ["--quality", "101"], ["--workers", "0"],
                                  ["--max-shard-samples", "0"], ["--validate", "none"], ["--no-validate", "--validate", "full"],
                                  ["--colour", "red"]])
def test_bad_arguments_exit_2(image_tree, tmp_path, args):
    assert invoke("convert", image_tree, tmp_path / "out", *args).exit_code == 2


def test_convert_prints_a_summary_and_the_skipped_count(tmp_path):
    make_bad_tree(tmp_path / "bad")
    result = invoke("convert", tmp_path / "bad", tmp_path / "out", "--workers", "1", "--max-shard-size", "1MB")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("2 samples, 1 shards, ") and "7 skipped" in line and "samples/s" in line and "MB/s" in line
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert doc["params"]["max_shard_size"] == 10**6 and len(doc["skipped"]) == 7


def test_strict_exits_1_without_a_manifest(tmp_path):
    make_bad_tree(tmp_path / "bad")
    result = invoke("convert", tmp_path / "bad", tmp_path / "out", "--workers", "1", "--strict")
    assert result.exit_code == 1
    assert "strict: 2 input(s) cannot be converted" in result.output and "b/broken link.jpg" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_library_errors_exit_1_with_the_message(jpeg_tree, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep")
    result = invoke("convert", jpeg_tree, tmp_path / "out")
    assert result.exit_code == 1 and "Error:" in result.output and "--overwrite" in result.output
    result = invoke("convert", tmp_path / "absent", tmp_path / "out2")
    assert result.exit_code == 1 and "no such file or directory" in result.output


@pytest.mark.parametrize("flags, validate", [([], "full"), (["--no-validate"], "header"),
                                             (["--validate", "header"], "header")])
def test_options_reach_the_manifest(jpeg_tree, tmp_path, flags, validate):
    result = invoke("convert", jpeg_tree, tmp_path / "out", "--workers", "1", "--seed", "7", "--no-shuffle",
                    "--max-shard-samples", "8", "--resize", "32", "--quality", "70", *flags)
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "out" / "manifest.json").read_text())["params"]
    assert params == {"seed": 7, "shuffle": False, "max_shard_size": 256 * 10**6, "max_shard_samples": 8,
                      "resize": 32, "quality": 70, "validate": validate, "strict": False,
                      "tokens_field": "tokens", "label_field": "label"}


def test_sequences_with_kind_and_fields(tmp_path, sequences):
    path = datagen.write_jsonl(tmp_path / "data.jsonl", sequences[:20], tokens_field="ids", label_field="y")
    result = invoke("convert", path, tmp_path / "out", "--kind", "sequences", "--tokens-field", "ids",
                    "--label-field", "y", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("20 samples, 1 shards")
    result = invoke("info", tmp_path / "out")
    assert result.exit_code == 0 and result.output.startswith("sequences: 20 samples in 1 shards")


def test_info_and_verify(image_tree, tmp_path):
    assert invoke("convert", image_tree, tmp_path / "out", "--workers", "1", "--max-shard-samples", "5").exit_code == 0
    result = invoke("info", tmp_path / "out")
    assert result.exit_code == 0 and "images: 12 samples in 3 shards" in result.output and "classes (4)" in result.output
    result = invoke("verify", tmp_path / "out")
    assert result.exit_code == 0 and result.output.startswith("ok: 3 shards, 12 samples")
    shard = tmp_path / "out" / "shard-000002.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x10
    shard.write_bytes(bytes(data))
    (tmp_path / "out" / "shard-000000.tar").write_bytes(b"")
    result = invoke("verify", tmp_path / "out")
    assert result.exit_code == 1
    assert "2 of 3 shards are bad" in result.output
    assert "shard-000000.tar" in result.output and "shard-000002.tar" in result.output
    assert "shard-000001.tar" not in result.output
    result = invoke("info", tmp_path / "nothing")
    assert result.exit_code == 1 and "not a shardkit dataset" in result.output
