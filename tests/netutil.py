"""Helpers for network tests: real servers on 127.0.0.1, faults, fake peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
from anyio.abc import TaskGroup, TaskStatus
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim import testbed
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.http import wire
from p2pkg.io.http.client import PeerClient
from p2pkg.io.http.server import Exchange, PeerServer, ServerConfig
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
    """A peer that misbehaves when serving archive bytes.

    ``absent`` and ``busy`` answer every file request through a route of their
    own; ``corrupt``, ``stall`` and ``reset`` break the bodies sent with sendfile.
    """

    def __init__(self, store: Store, mode: str, config: ServerConfig | None = None) -> None:
        super().__init__(store, config or ServerConfig())
        self.mode = mode
        if mode in ("absent", "busy"):
            self.route(wire.PREFIX + "/files/", self._faulty_file)

    async def _sendfile(
        self, writer: asyncio.StreamWriter, fh: IO[bytes], offset: int, count: int
    ) -> None:
        if self.mode == "corrupt":
            data = bytearray(os.pread(fh.fileno(), count, offset))
            data[len(data) // 2] ^= 0xFF
            writer.write(bytes(data))
            await writer.drain()
            return
        half = count // 2
        await super()._sendfile(writer, fh, offset, half)
        if self.mode == "stall":
            await asyncio.sleep(3600)
        elif self.mode == "reset":
            writer.transport.abort()
            raise ConnectionResetError

    async def _faulty_file(self, ex: Exchange) -> bool:
        if self.mode == "absent":
            return await ex.reply(404, b"not here")
        return await ex.reply(503, b"busy", headers=[("Retry-After", "30")])


class Services:
    """Roles running for one test, each a child of the test's task group.

    :meth:`start` runs anything with ``run(*, task_status)`` and returns the
    URL it started with; :meth:`server` opens a store and serves it (the
    store is closed once every role has stopped); :meth:`stop` cancels one
    role early (a peer going away mid-test). Use through :func:`services`.
    """

    def __init__(self, tg: TaskGroup, stores: contextlib.ExitStack) -> None:
        self._tg = tg
        self._stores = stores
        self._scopes: dict[str, anyio.CancelScope] = {}

    async def start(self, run: Callable[..., Awaitable[None]]) -> str:
        scope = anyio.CancelScope()

        async def runner(*, task_status: TaskStatus[str]) -> None:
            with scope:
                await run(task_status=task_status)

        url: str = await self._tg.start(runner)
        self._scopes[url] = scope
        return url

    async def server(
        self, store: Path, config: ServerConfig | None = None, *, mode: str | None = None
    ) -> PeerServer:
        """A peer server (a :class:`FaultyServer` when ``mode`` is given) on ``store``."""
        st = self._stores.enter_context(Store.open(store))
        cfg = config or ServerConfig()
        server = PeerServer(st, cfg) if mode is None else FaultyServer(st, mode, cfg)
        await self.start(server.run)
        return server

    def stop(self, url: str) -> None:
        """Cancel the role serving ``url`` (it stops at its next checkpoint)."""
        self._scopes.pop(url).cancel()


@contextlib.asynccontextmanager
async def services() -> AsyncIterator[Services]:
    """Roles for the block's duration: all stopped (and their stores closed) on the way out."""
    with contextlib.ExitStack() as stores:
        async with anyio.create_task_group() as tg:
            yield Services(tg, stores)
            tg.cancel_scope.cancel()


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


async def archive_path(client: PeerClient, project: str, filename: str) -> str:
    """The path of ``filename`` as linked from a cache's /simple/<project>/ page."""
    _, page, _ = await client.get_bytes(f"/simple/{project}/", 1 << 20)
    for link in page.decode().split('href="../../')[1:]:
        path = link.split("#")[0]
        if path.endswith("/" + filename):
            return "/" + path
    raise AssertionError(f"{filename} is not linked from /simple/{project}/")
