"""Helpers for network tests: real servers on 127.0.0.1, faults, fake peers."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim import testbed
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.http.client import PeerClient
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_sdist, build_wheel

MiB = 1 << 20


@dataclass
class Master:
    store: Path
    key: Ed25519PrivateKey
    dist: Path
    big: Path
    small: Path

    @property
    def pins(self) -> frozenset[bytes]:
        return frozenset({public_bytes(self.key)})

    @property
    def pub(self) -> str:
        return format_pubkey(public_bytes(self.key))


def make_master(tmp: Path, big_size: int = 6 * MiB) -> Master:
    dist = tmp / "dist"
    dist.mkdir()
    key = Ed25519PrivateKey.generate()
    big = build_wheel(dist, "big", "1.0", payload=big_size)
    small = build_wheel(dist, "small", "1.0", payload=20_000)
    build_sdist(dist, "small", "1.0")
    store = tmp / "master"
    with Store.open(store, create=True) as st:
        publish(st, [key], [dist])
    return Master(store, key, dist, big, small)


class FaultyServer(PeerServer):
    """A peer that misbehaves when serving archive bytes."""

    def __init__(self, store: Path, mode: str, config: ServerConfig | None = None) -> None:
        super().__init__(store, config or ServerConfig())
        self.mode = mode

    async def _sendfile(
        self, writer: asyncio.StreamWriter, path: Path, offset: int, count: int
    ) -> None:
        if self.mode == "corrupt":
            data = bytearray(path.read_bytes()[offset : offset + count])
            data[len(data) // 2] ^= 0xFF
            writer.write(bytes(data))
            await writer.drain()
            return
        half = count // 2
        await super()._sendfile(writer, path, offset, half)
        if self.mode == "stall":
            await asyncio.sleep(3600)
        elif self.mode == "reset":
            writer.transport.abort()
            raise ConnectionResetError

    async def _file(self, writer, blake3, req, head_only):  # type: ignore[no-untyped-def]
        if self.mode == "absent":
            return await self._simple(writer, 404, b"not here")
        if self.mode == "busy":
            return await self._simple(writer, 503, b"busy", headers=[("Retry-After", "30")])
        return await super()._file(writer, blake3, req, head_only)


class FakePeer:
    """A raw HTTP server answering canned bytes per path (for malformed responses)."""

    def __init__(self, routes: dict[str, bytes]) -> None:
        self.routes = routes
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            writer.write(
                self.routes.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def http_response(status: int, body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def serve_process(
    store: Path, *args: str
) -> AbstractContextManager[tuple[subprocess.Popen[bytes], str]]:
    """``p2pkg serve`` in a subprocess on a free port; yields (process, url)."""
    return testbed.serve(store, *args)


spawn = testbed.spawn


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(step)


async def archive_path(client: PeerClient, project: str, filename: str) -> str:
    """The path of ``filename`` as linked from a cache's /simple/<project>/ page."""
    _, page, _ = await client.get_bytes(f"/simple/{project}/", 1 << 20)
    for link in page.decode().split('href="../../')[1:]:
        path = link.split("#")[0]
        if path.endswith("/" + filename):
            return "/" + path
    raise AssertionError(f"{filename} is not linked from /simple/{project}/")
