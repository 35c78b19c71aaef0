"""Run the ``shardkit`` command as an unprivileged user (uid/gid 65534), for the probes of files a
user cannot read and of the process limit: root reads everything and ignores ``RLIMIT_NPROC``.

    python tests/hardening/unprivileged.py [--nproc N] -- convert SRC DST ...

The interpreter lives where uid 65534 cannot read (under /root), so everything a conversion
imports is imported first, by a small conversion run as root; then the process drops to uid 65534
(and, with ``--nproc``, to at most N processes) and runs the command line. Exit status 77 means
privileges could not be dropped (the caller skips).
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile

NOBODY = 65534


def _warm_up() -> None:
    """Import every module a conversion (images, sequences, several workers) and the CLI use."""
    import concurrent.futures.process  # noqa: F401
    import gettext  # noqa: F401
    import multiprocessing.popen_fork  # noqa: F401
    import multiprocessing.synchronize  # noqa: F401

    from PIL import Image

    import shardkit
    import shardkit.cli  # noqa: F401

    Image.init()
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(f"{work}/img/a")
        for name in ("x", "y"):  # two shards: two workers, so the pool's modules are imported too
            Image.new("RGB", (8, 8)).save(f"{work}/img/a/{name}.jpg")
        with open(f"{work}/s.jsonl", "w") as f:
            f.write('{"tokens": [1]}\n')
        for src, kind in ((f"{work}/img", "images"), (f"{work}/s.jsonl", "sequences")):
            shardkit.convert(src, f"{work}/out-{kind}", kind=kind, workers=2, max_shard_samples=1, progress=False)


def main(argv: list[str]) -> int:
    nproc = None
    if argv[:1] == ["--nproc"]:
        nproc, argv = int(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    _warm_up()
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError as err:
            print(f"cannot drop privileges: {err}", file=sys.stderr)
            return 77
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    from shardkit.cli import cli

    try:
        cli([os.fsdecode(a) for a in argv], prog_name="shardkit")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
