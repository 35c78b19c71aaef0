"""MosaicML Streaming (0.13.0), from the main process: it lives in its own virtual environment
(``benchmarks/sidevenv.py``: it pins numpy<2.2), so one subprocess of that environment, started
at its first use and kept for the run, writes its MDS shards and times its passes; the harness
gets each pass's :class:`~benchmarks.harness.Measurement` back (``mosaic_side.py`` runs it)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .. import harness, sidevenv

ROOT = Path(__file__).resolve().parent.parent.parent
SMOKE_SKIPPED = ("mosaicml-streaming: not run in smoke mode (it needs its own virtual environment, "
                 "which quick and full runs build under the scratch folder)")


class MosaicPeer:
    """The side process. Every method raises RuntimeError with the side's error when it fails;
    a failure to build or start the environment is kept and raised again (not retried)."""

    def __init__(self, scratch: Path):
        self.scratch, self.info = scratch, {}
        self._proc: subprocess.Popen | None = None
        self._broken: str | None = None

    def _start(self) -> subprocess.Popen:
        if self._broken:
            raise RuntimeError(self._broken)
        if self._proc is None:
            try:
                python, self.info = sidevenv.ensure(self.scratch, "mosaicml")
            except Exception as err:  # noqa: BLE001 - every MosaicML row fails with this reason
                self._broken = f"mosaicml-streaming side environment: {type(err).__name__}: {err}"
                raise RuntimeError(self._broken) from err
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            self._proc = subprocess.Popen([str(python), "-m", "benchmarks.contenders.mosaic_side"], cwd=ROOT,
                                          env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self._proc

    def call(self, op: str, **args):
        proc = self._start()
        proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            self._broken = f"the mosaicml-streaming side process died (exit code {proc.wait()}); see its log above"
            raise RuntimeError(self._broken)
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"mosaicml-streaming: {answer['error']}")
        return answer["result"]

    def write_images(self, files: list[Path], labels: list[int], out: Path, encoding: str,
                     size_limit: int) -> Path:
        """MDS shards of about ``size_limit`` bytes: the images as a ``jpeg`` or ``bytes`` column + label."""
        self.call("write_images", files=[str(p) for p in files], labels=list(labels), out=str(out),
                  encoding=encoding, size_limit=size_limit)
        return out

    def write_sequences(self, jsonl: Path, out: Path) -> Path:
        self.call("write_sequences", jsonl=str(jsonl), out=str(out))
        return out

    def image_pass(self, data: Path, batch_size: int, num_workers: int, *, uint8: bool = False,
                   seed: int = 0) -> harness.Measurement:
        """One shuffled epoch of normalised float32 batches: the PIL transform in the workers, or
        (``uint8``) torchcodec + uint8 v2 in the workers and normalisation in the consumer."""
        return self._measurement("images", data=str(data), batch_size=batch_size, num_workers=num_workers,
                                 variant="uint8" if uint8 else "pil", seed=seed, predownload=1 << 20)

    def sequence_pass(self, data: Path, predownload: int = 100_000) -> harness.Measurement:
        """In order, one process, ``batch_size=1``: ``(int64 tokens, label)`` per sample."""
        return self._measurement("sequences", data=str(data), predownload=predownload)

    def padded_pass(self, data: Path, batch_size: int, predownload: int = 100_000) -> harness.Measurement:
        """In order, one process: padded batches ``(B×T int64, lengths, labels)``, the benchmark's collate."""
        return self._measurement("padded", data=str(data), batch_size=batch_size, predownload=predownload)

    def _measurement(self, kind: str, **spec) -> harness.Measurement:
        return harness.Measurement(**self.call("measure", kind=kind, **spec))

    def version_note(self) -> str:
        i = self.info
        return (f"MosaicML Streaming {i.get('mosaicml-streaming')} runs in its own virtual environment "
                f"(numpy {i.get('numpy')}, the main environment's torch {i.get('torch')}), timed in that "
                f"process by the same harness (its RSS: that process and its workers)")

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
