"""The upstream client's rules (retries, bounds, encodings) and the mirror's CLI usage.

The client is tested against real HTTP servers on 127.0.0.1 that misbehave
on purpose; the usage errors need no network at all.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.upstream_index import free_port
from p2pkg.cli import main
from p2pkg.errors import IntegrityError, UpstreamError
from p2pkg.io.store import Store
from p2pkg.io.upstream_http import UpstreamClient
from p2pkg.roles.mirror import Selection, mirror_index
from p2pkg.testing.archives import build_wheel

#: (status, headers, body) for one request; the handler is called with the path.
Reply = tuple[int, dict[str, str], bytes]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, dict(self.headers)))
        status, headers, body = self.server.answer(self.path)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: Callable[[str], Reply]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.seen: list[tuple[str, dict[str, str]]] = []


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str], Reply]], tuple[_Server, str]]]:
    servers: list[tuple[_Server, threading.Thread]] = []

    def start(answer: Callable[[str], Reply]) -> tuple[_Server, str]:
        server = _Server(answer)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server, f"http://127.0.0.1:{server.server_address[1]}/simple/"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _client(url: str) -> UpstreamClient:
    return UpstreamClient(url, backoff=0.01)


@pytest.mark.net
def test_5xx_is_retried_and_then_an_upstream_error(
    serve: Callable[[Callable[[str], Reply]], tuple[_Server, str]],
) -> None:
    calls: list[str] = []

    def flaky(path: str) -> Reply:
        calls.append(path)
        if path.endswith("/ok/") and len(calls) < 3:
            return 503, {"Retry-After": "0"}, b"busy"
        if path.endswith("/never/"):
            return 500, {}, b"broken"
        return 200, {"Content-Type": "text/html", "ETag": '"e1"'}, b"<a href='x-1.0.tar.gz'>x</a>"

    _, url = serve(flaky)

    async def go() -> None:
        async with _client(url) as up:
            page = await up.project_page("ok")
            assert (page.status, page.etag, up.requests) == (200, '"e1"', 3)
            with pytest.raises(UpstreamError, match=r"HTTP 500 \(after 3 attempts\)"):
                await up.project_page("never")
            assert up.requests == 6

    anyio.run(go)


@pytest.mark.net
def test_client_errors_are_not_retried_and_404_is_an_answer(
    serve: Callable[[Callable[[str], Reply]], tuple[_Server, str]],
) -> None:
    _, url = serve(lambda p: (404, {}, b"") if "gone" in p else (403, {}, b"no"))

    async def go() -> None:
        async with _client(url) as up:
            assert (await up.project_page("gone")).status == 404
            with pytest.raises(UpstreamError) as caught:
                await up.project_page("secret")
            assert caught.value.status == 403
            assert up.requests == 2

    anyio.run(go)


@pytest.mark.net
def test_a_closed_port_is_an_upstream_error_after_the_retries() -> None:
    async def go() -> None:
        async with _client(f"http://127.0.0.1:{free_port()}/simple/") as up:
            with pytest.raises(UpstreamError, match="ConnectError"):
                await up.project_page("x")
            assert up.requests == 3

    anyio.run(go)


@pytest.mark.net
def test_conditional_requests_and_the_serial_header(
    serve: Callable[[Callable[[str], Reply]], tuple[_Server, str]],
) -> None:
    def answer(path: str) -> Reply:
        if server.seen[-1][1].get("If-None-Match") == '"v7"':
            return 304, {"ETag": '"v7"', "X-PyPI-Last-Serial": "7"}, b""
        return 200, {"ETag": '"v7"', "X-PyPI-Last-Serial": "7"}, b""

    server, url = serve(answer)

    async def go() -> None:
        async with _client(url) as up:
            first = await up.project_page("p")
            again = await up.project_page("p", first.etag)
            assert (first.status, first.last_serial) == (200, 7)
            assert (again.status, again.modified, again.etag) == (304, False, '"v7"')

    anyio.run(go)
    assert server.seen[0][1].get("Accept", "").startswith("application/vnd.pypi.simple.v1+json")


@pytest.mark.net
def test_bodies_are_bounded_and_files_hashed_raw(
    serve: Callable[[Callable[[str], Reply]], tuple[_Server, str]], tmp_path: Path
) -> None:
    tarball = gzip.compress(b"x" * 10_000)  # what a .tar.gz is: gzip bytes

    def answer(path: str) -> Reply:
        if path.endswith(".tar.gz"):
            # bottle (pypiserver) labels a .tar.gz this way: the bytes are the file's.
            return 200, {"Content-Encoding": "gzip"}, tarball
        if path.endswith("big"):
            return 200, {}, b"y" * 5000
        return 200, {"Content-Length": "999999999"}, b"z"

    _, url = serve(answer)
    root = url.removesuffix("simple/")

    async def go() -> None:
        async with _client(url) as up:
            got = await up.download(
                root + "a-1.0.tar.gz",
                tmp_path / "a",
                sha256=hashlib.sha256(tarball).digest(),
                max_size=1 << 20,
            )
            assert (tmp_path / "a").read_bytes() == tarball and got.size == len(tarball)
            with pytest.raises(IntegrityError):
                await up.download(
                    root + "a-1.0.tar.gz", tmp_path / "b", sha256=b"\0" * 32, max_size=1 << 20
                )
            assert not (tmp_path / "b").exists()
            with pytest.raises(UpstreamError, match="over 1000"):
                await up.fetch(root + "big", 1000)
            with pytest.raises(UpstreamError, match="over 1000"):
                await up.fetch(root + "liar", 1000)  # refused on its Content-Length

    anyio.run(go)


@pytest.mark.net
def test_a_failing_page_is_reported_and_the_rest_published(
    serve: Callable[[Callable[[str], Reply]], tuple[_Server, str]],
    tmp_path: Path,
    dist: Path,
    key: Ed25519PrivateKey,
) -> None:
    whl = build_wheel(dist, "fine", "1.0")
    digest = hashlib.sha256(whl.read_bytes()).hexdigest()

    def answer(path: str) -> Reply:
        if path == "/simple/fine/":
            link = f'<a href="/f/{whl.name}#sha256={digest}">{whl.name}</a>'
            return 200, {"Content-Type": "text/html"}, link.encode()
        if path == f"/f/{whl.name}":
            return 200, {}, whl.read_bytes()
        return 502, {}, b"bad gateway"

    _, url = serve(answer)
    with Store.open(tmp_path / "store", create=True) as st:
        result = mirror_index(st, [key], url, Selection(projects=["fine", "broken"]))
    assert result.added == (whl.name,)
    assert [(p.project, p.filename) for p in result.failed] == [("broken", None)]
    assert result.projects == 2


# ---------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--project", "x"], "--project needs --from-index"),
        (["--latest", "2"], "--latest needs --from-index"),
        (["--from-index", "https://i.example/simple/"], "needs --project NAME"),
        (["--from-index", "https://i.example/simple/", "--project", "x", "dist/"], "PATHS"),
        (["--from-index", "https://i.example/simple/", "--all", "--project", "x"], "--all"),
        (["--from-index", "https://i.example/simple/", "--all", "--yank", "a.whl"], "--yank"),
        (["--from-index", "ftp://i.example/", "--all"], "not an http(s) index URL"),
        (
            ["--from-index", "https://i.example/simple/", "--all", "--python-version", "3"],
            "not a Python version",
        ),
        (["--from-index", "https://i.example/simple/", "--all", "--latest", "0"], "--latest"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    key = tmp_path / "k"
    assert CliRunner().invoke(main, ["keygen", "--out", str(key)]).exit_code == 0
    res = CliRunner().invoke(
        main, ["publish", "--store", str(tmp_path / "s"), "--key", str(key), *args]
    )
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1
