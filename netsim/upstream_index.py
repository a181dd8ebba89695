"""An upstream index on loopback for mirroring tests and benchmarks.

:func:`pypiserver` runs a real pypiserver (PEP 503 HTML, ``#sha256=``
fragments, no auth, no fallback to the public index) over a packages
directory on 127.0.0.1. :class:`CountingProxy` sits in front of any index:
it counts every request by path, and can corrupt chosen files' bodies (a
tampered mirror or a broken CDN) or hold chosen files' requests until
released (a run to interrupt). With ``etags`` it adds what a caching front
(a CDN, nginx) adds to an index without them: an ETag on every page and
``304 Not Modified`` for a matching ``If-None-Match``. Both always stop: the
process is terminated (then killed), the proxy's threads are released and
joined.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from netsim.testbed import stop

#: Longest a held request waits for :meth:`CountingProxy.release`.
HOLD_LIMIT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pypiserver(packages: Path, timeout: float = 30.0) -> Iterator[str]:
    """A pypiserver serving ``packages`` on 127.0.0.1; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "pypiserver", "run", "-p", str(port), "-i", "127.0.0.1"]
    cmd += ["--disable-fallback"]
    cmd += ["-a", ".", "-P", ".", "--log-stream", "none", str(packages)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"pypiserver did not start: {err[-500:]}") from None
                time.sleep(0.05)
        yield url
    finally:
        stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()


class CountingProxy(ThreadingHTTPServer):
    """A GET-only forwarding proxy to ``target`` (``http://HOST:PORT``) that counts.

    ``requests`` lists every request path in arrival order; a name (the
    path's last segment) in ``tamper`` has one byte of its body flipped; a
    name in ``hold`` waits for :meth:`release` (at most :data:`HOLD_LIMIT`);
    with ``etags``, pages get an ETag and matching requests a 304.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, target: str, *, etags: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.etags = etags
        #: Body bytes sent back (pages and files), to compare runs.
        self.bytes_out = 0
        host, _, port = target.removeprefix("http://").rstrip("/").partition(":")
        self.target = (host, int(port or 80))
        self.requests: list[str] = []
        self.tamper: set[str] = set()
        self.hold: set[str] = set()
        self.released = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def release(self) -> None:
        self.released.set()

    def files(self) -> list[str]:
        """Names of the files asked for (paths outside ``/simple/``), in order."""
        with self.lock:
            return [p.rsplit("/", 1)[-1] for p in self.requests if not p.startswith("/simple")]

    def reset(self) -> list[str]:
        """The requests so far, and a fresh count (of requests and bytes)."""
        with self.lock:
            seen, self.requests = self.requests, []
            self.bytes_out = 0
        return seen


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingProxy

    def do_GET(self) -> None:
        proxy = self.server
        with proxy.lock:
            proxy.requests.append(self.path)
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        if name in proxy.hold and not proxy.released.wait(HOLD_LIMIT):
            self.close_connection = True
            return
        forwarded = {
            k: v
            for k, v in self.headers.items()
            if k.lower() in ("accept", "accept-encoding", "user-agent")
            or (k.lower() == "if-none-match" and not proxy.etags)
        }
        conn = http.client.HTTPConnection(*proxy.target, timeout=30)
        try:
            conn.request("GET", self.path, headers=forwarded)
            resp = conn.getresponse()
            body = resp.read()
            headers = resp.getheaders()
            status = resp.status
        finally:
            conn.close()
        if name in proxy.tamper and status == 200 and body:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        extra = []
        if proxy.etags and status == 200 and self.path.startswith("/simple"):
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            extra.append(("ETag", etag))
            if self.headers.get("If-None-Match") == etag:
                status, body = 304, b""
        with proxy.lock:
            proxy.bytes_out += len(body)
        self.send_response(status)
        skip = ("content-length", "connection", "transfer-encoding", "server", "date", "etag")
        for k, v in [*headers, *extra]:
            if k.lower() not in skip or (k, v) in extra:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def counting_proxy(target: str, *, etags: bool = False) -> Iterator[CountingProxy]:
    """A :class:`CountingProxy` to ``target`` served on a thread until the block ends."""
    proxy = CountingProxy(target, etags=etags)
    thread = threading.Thread(target=proxy.serve_forever, name="counting-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.release()  # held requests finish (their clients may be gone)
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)
