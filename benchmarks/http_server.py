"""The remote scenario's object store: ``tests/servers.py``'s ``RangeHTTPServer`` (byte ranges, a
latency before each answer), in its own process (see ``background.py``).

``python -m benchmarks.http_server ROOT LATENCY`` prints the URL and serves until stdin closes."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from benchmarks.background import ROOT, running, until_stdin_closes


def serve(root: Path, latency: float) -> contextlib.AbstractContextManager[str]:
    """Serve ``root`` on 127.0.0.1 with ``latency`` seconds before each answer; yields the base URL."""
    return running("benchmarks.http_server", str(root), str(latency))


def main(root: str, latency: str) -> None:
    sys.path.insert(0, str(ROOT))
    from tests import servers

    with servers.RangeHTTPServer(root, latency=float(latency)) as url:
        print(url, flush=True)
        until_stdin_closes()


if __name__ == "__main__":
    main(*sys.argv[1:3])
