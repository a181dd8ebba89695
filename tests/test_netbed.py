"""The benchmarks' link emulation: the delay proxy and shaped namespaces (netsim.netbed)."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.net

BODY = os.urandom(3 << 20)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = BODY if self.path == "/big" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def proxy(to: int, *args: str) -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "netsim.netbed", "proxy", "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen([*cmd, "--to", f"127.0.0.1:{to}", *args], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"ready")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def get(port: int, path: str) -> tuple[float, bytes]:
    """(seconds, raw response) of one request on a fresh connection, read to its end."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := s.recv(1 << 16):
            chunks.append(data)
    return time.monotonic() - start, b"".join(chunks)


def test_the_proxy_adds_its_delay_each_way_and_caps_nothing() -> None:
    with origin() as port, proxy(port, "--delay", "0.05") as p:
        took, raw = get(p, "/small")
        assert raw.endswith(b"ok")
        assert 0.1 <= took < 0.4  # a round trip of 2 x 50 ms
        took, raw = get(p, "/big")
        assert raw.endswith(BODY[-1000:])
        assert len(BODY) / (took - 0.1) > 30 << 20  # bytes are delayed, not throttled


def test_the_proxy_can_refuse_and_stall() -> None:
    with origin() as port, proxy(port, "--busy", "1") as p:
        _, raw = get(p, "/small")
        assert raw.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in raw
    with origin() as port, proxy(port, "--stall-after", "100000") as p:
        with socket.create_connection(("127.0.0.1", p), timeout=1.5) as s:
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            with pytest.raises(TimeoutError):
                while data := s.recv(1 << 16):
                    got += len(data)
        assert got == 100000  # then nothing, and the connection stays open


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("tc"), reason="namespaces need root and tc"
)
def test_a_shaped_namespace_link_holds_its_rate_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    from netsim.netbed import NetBed

    (tmp_path / "blob").write_bytes(os.urandom(12 << 20))
    serve = [sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1"]
    with NetBed("p2tt") as bed:
        server = bed.host("server", up=4 << 20)
        client = bed.host("client")
        server.popen([*serve, "--directory", str(tmp_path)])
        server.wait_port(8000)
        port = server.delayed(8000, 0.01)
        curl = ["curl", "-s", "-o", "/dev/null", "--max-time", "2", "-w", "%{speed_download}"]
        res = client.run([*curl, f"http://{server.addr}:{port}/blob"], capture_output=True)
        rate = float(res.stdout or 0)
        assert 3.0 * (1 << 20) < rate < 4.4 * (1 << 20), rate
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert "p2tt-" not in names.stdout
