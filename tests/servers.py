"""Real servers on 127.0.0.1 for the storage tests and the benchmarks, started and stopped by them.

``RangeHTTPServer`` serves a directory over HTTP/1.1 with Range support and injects faults:

    with RangeHTTPServer(root, latency=0.02) as url:          # 20 ms before each first byte
        ...
    server = RangeHTTPServer(root, fail_first=3, drop_after=5000)
    with server as url:                                        # 3 × 503, then cut bodies
        ...
    server.count("GET", "/shard-000000.tar")                  # requests it answered

``moto_s3()`` runs moto's S3 server (``ThreadedMotoServer``) on a free port and yields the endpoint.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RangeHTTPServer:
    """A threaded HTTP server over ``root`` with byte ranges and fault injection.

    Faults (all may be changed while the server runs):

    - ``latency``: seconds slept before answering each request (a slow first byte).
    - ``fail_first``: answer ``fail_status`` (503) to K requests, HEAD included, from request number
      ``fail_from`` on (0: the first ones); ``fail_always=True`` never recovers.
    - ``drop_after`` / ``drops``: the first ``drops`` GET bodies longer than ``drop_after`` bytes are
      cut after that many bytes and the connection closed (``drops=None``: every one).
    - ``status_for``: ``{"/path": code}`` answers fixed codes (403, 404, ...) for those paths.

    ``requests`` lists ``(method, path, range header)`` of every request received; ``max_in_flight``
    is the most requests it was answering at once.
    """

    def __init__(self, root: str | os.PathLike, *, latency: float = 0.0, fail_first: int = 0,
                 fail_from: int = 0, fail_status: int = 503, fail_always: bool = False, drop_after: int | None = None,
                 drops: int | None = 1, status_for: dict[str, int] | None = None) -> None:
        self.root = Path(root)
        self.latency, self.fail_first, self.fail_from, self.fail_status = latency, fail_first, fail_from, fail_status
        self.fail_always, self.drop_after, self.drops = fail_always, drop_after, drops
        self.status_for = dict(status_for or {})
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._failed = self._dropped = 0
        self._in_flight = self.max_in_flight = 0
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests matched ``method`` and ``path`` (None matches all)."""
        with self._lock:
            return sum(1 for m, p, _ in self.requests if method in (None, m) and path in (None, p))

    def counts(self) -> Counter:
        with self._lock:
            return Counter((m, p) for m, p, _ in self.requests)

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"faults": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="RangeHTTPServer", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # called by the handler, one request at a time per thread
    def _record(self, method: str, path: str, range_header: str | None) -> tuple[int | None, int | None]:
        """Log the request; return (status to fail with or None, byte count to cut the body at or None)."""
        with self._lock:
            number = len(self.requests)
            self.requests.append((method, path, range_header))
            if path in self.status_for:
                return self.status_for[path], None
            if self.fail_always or (number >= self.fail_from and self._failed < self.fail_first):
                self._failed += 1
                return self.fail_status, None
            return None, self.drop_after if method == "GET" else None

    def _enter(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _take_drop(self) -> bool:
        """Whether this body is one of the ``drops`` to cut."""
        with self._lock:
            if self.drops is not None and self._dropped >= self.drops:
                return False
            self._dropped += 1
            return True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not hold up stop()
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops the SYNs of a burst of new connections (a loader's
    # workers all starting at once), and each dropped one costs a 1 s retransmission.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients that hang up are expected here
            super().handle_error(request, client_address)


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY each keep-alive answer waits out a 40 ms delayed ACK: the latency
    # under test would be 60 ms, not the 20 ms asked for.
    disable_nagle_algorithm = True
    faults: RangeHTTPServer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(self.faults.root), **kwargs)

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        self.faults._enter(1)
        try:
            self._answer(body)
        finally:
            self.faults._enter(-1)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        fail, cut = self.faults._record(self.command, path, self.headers.get("Range"))
        if self.faults.latency:
            time.sleep(self.faults.latency)
        if fail is not None:
            return self._status(fail, body)
        local = Path(self.translate_path(self.path))
        if local.is_dir():
            return super().do_GET() if body else super().do_HEAD()
        if not local.is_file():
            return self._status(404, body)
        size = local.stat().st_size
        start, end, status = 0, size, 200
        if self.headers.get("Range"):
            parsed = self._parse_range(self.headers["Range"], size)
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            (start, end), status = parsed, 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not body:
            return
        with open(local, "rb") as f:
            if cut is not None and end - start > cut and self.faults._take_drop():
                f.seek(start)
                self.wfile.write(f.read(cut))
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.flush()
            # sendfile: the kernel copies, so the server (on the benchmark's own cores) costs
            # its clients as little CPU as a store on another machine would
            self.connection.sendfile(f, start, end - start)

    @staticmethod
    def _parse_range(header: str, size: int) -> tuple[int, int] | None:
        match = _RANGE.match(header.strip())
        if not match or match.groups() == ("", ""):
            return None
        first, last = match.groups()
        if first == "":
            start, end = max(size - int(last), 0), size
        else:
            start = int(first)
            end = min(int(last) + 1, size) if last else size
        return (start, end) if start < end else None

    def _status(self, code: int, body: bool) -> None:
        text = f"{code} {self.responses.get(code, ('',))[0]}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)


@contextlib.contextmanager
def moto_s3(bucket: str | None = "bucket") -> Iterator[dict]:
    """Run moto's S3 server on 127.0.0.1 and yield the ``storage_options`` that reach it.

    Creates ``bucket`` first when given. Moto accepts any key and secret.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "testing-key", "secret": "testing-secret",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    try:
        if bucket:
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=options["key"],
                         aws_secret_access_key=options["secret"]).create_bucket(Bucket=bucket)
        yield options
    finally:
        server.stop()
