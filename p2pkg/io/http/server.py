"""The peer server: serves a store over HTTP/1.1 (docs/protocol.md §6).

asyncio streams for the request side (heads parsed by h11 with a size
limit and timeouts against slowloris), ``loop.sendfile`` for every body
that lives in an archive (files, ranges, chunks, batches), so serving costs
little CPU and no buffer memory. Budgets: a connection cap and an optional
upload rate (one token bucket shared by all connections); past either the
server answers 503 with Retry-After rather than slowing everyone down.

Requests go through a route table: the longest registered path prefix
wins, and the peer protocol is registered under ``/p2pkg/v1/``. A role
adds its own routes (the cache: ``/``, ``/simple/``, ``/files/``) with
:meth:`PeerServer.route` and answers through the :class:`Exchange` it is
handed. The server does not own the store: the role that opened it passes
it in and closes it (one SQLite connection per store per process).

:meth:`PeerServer.run` is structured: every connection handler is a child
of its task group, and cancelling ``run`` stops accepting, aborts the open
connections and returns once every handler has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import anyio
from anyio.abc import TaskStatus

from p2pkg.io.http import wire
from p2pkg.io.http.peer_routes import NotifyHandler, PeerProtocol
from p2pkg.io.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Budgets and timeouts of a peer server."""

    max_connections: int = 512
    head_timeout: float = 10.0  # a request head must arrive within this (slowloris)
    idle_timeout: float = 60.0  # keep-alive connections idle longer are closed
    body_timeout: float = 30.0
    max_body: int = wire.MAX_BATCH * 32
    rate: float | None = None  # upload bytes/s for the whole server; None = unlimited
    burst: int = 256 * 1024
    max_debt_seconds: float = 2.0  # queued upload beyond this answers 503
    rate_slice: int = 256 * 1024  # sendfile granularity when rate-limited


class TokenBucket:
    """Upload budget shared by all connections; debt-based so waits are fair."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def debt_seconds(self, now: float) -> float:
        self._refill(now)
        return max(0.0, -self.tokens / self.rate)

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` tokens (possibly going into debt); seconds to wait before sending."""
        self._refill(now)
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)


@dataclass
class ServerStats:
    requests: int = 0
    bytes_sent: int = 0
    busy: int = 0
    active: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


StatusExtra = Callable[[], dict[str, Any]]


class Exchange:
    """One request on one connection, and the public ways to answer it.

    A handler answers with :meth:`reply` (a body in memory), :meth:`send_file`
    (a held archive), or — for bodies that grow while they are sent —
    :meth:`write_head`, :meth:`sendfile` and :meth:`abort`. Every method
    that returns a bool returns whether the connection may be kept alive.
    """

    __slots__ = ("_writer", "body", "head_only", "path", "peer", "req", "server")

    def __init__(
        self,
        server: PeerServer,
        req: wire.RequestHead,
        body: bytes,
        peer: str,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.req = req
        self.body = body
        self.peer = peer
        self.path = req.target.split("?", 1)[0]
        self.head_only = req.method == "HEAD"
        self._writer = writer

    async def reply(
        self,
        status: int,
        body: bytes,
        *,
        headers: Sequence[tuple[str, str]] = (),
        ctype: str = "text/plain; charset=utf-8",
        keep: bool = True,
    ) -> bool:
        """A whole response with ``body`` (only its head when the request is HEAD)."""
        return await self.server._simple(
            self._writer,
            status,
            body,
            keep=keep,
            headers=headers,
            head_only=self.head_only,
            ctype=ctype,
        )

    async def send_file(
        self, blake3: bytes, *, on_sent: Callable[[int], None] | None = None
    ) -> bool:
        """A held archive, whole or the one byte range asked for.

        404 when the store lacks it, 416 for a range outside it, 503 with
        Retry-After when the upload budget is queued too far ahead. The body
        goes out with ``sendfile``; ``on_sent(n)`` is called once it has.
        """
        return await self.server.protocol.send_file(self, blake3, on_sent=on_sent)

    async def over_budget(self) -> bool:
        """Answer 503 + Retry-After if the server's upload budget is queued too far ahead."""
        return await self.server._busy(self)

    def write_head(
        self, status: int, headers: Sequence[tuple[str, str]], *, keep: bool = True
    ) -> None:
        """Queue a response head (the caller sends the body and states its length)."""
        self._writer.write(self.server._head(status, list(headers), keep))

    async def sendfile(self, fh: IO[bytes], offset: int, count: int) -> None:
        """Send ``count`` bytes of ``fh`` from ``offset`` (kernel copy, upload budget)."""
        await self.server._sendfile(self._writer, fh, offset, count)

    async def drain(self) -> None:
        """Wait until what was written has gone to the socket (flow control)."""
        await self._writer.drain()

    def abort(self) -> None:
        """Drop the connection now: a body cut short is all the client sees."""
        self._writer.transport.abort()


Handler = Callable[[Exchange], Awaitable[bool]]
"""A route's handler: answers the exchange; returns whether to keep the connection."""


class PeerServer:
    """Serve one store over HTTP. ``on_notify`` receives pushed roots (seeds).

    ``store`` belongs to the caller, which closes it after :meth:`run` ended.
    """

    def __init__(
        self,
        store: Store,
        config: ServerConfig = ServerConfig(),
        *,
        on_notify: NotifyHandler | None = None,
        status_extra: StatusExtra | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.status_extra = status_extra
        self.stats = ServerStats()
        self.bucket = TokenBucket(config.rate, config.burst) if config.rate else None
        self._routes: dict[str, Handler] = {}
        self.protocol = PeerProtocol(store, on_notify=on_notify)
        self.route(wire.PREFIX + "/", self.peer_protocol)
        self._server: asyncio.Server | None = None
        self._bound: tuple[str, int] | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # every open connection
        self._overflow = 0

    # ------------------------------------------------------------------ routes

    def route(self, prefix: str, handler: Handler) -> None:
        """Answer requests whose path starts with ``prefix`` with ``handler``.

        The longest matching prefix wins; registering a prefix again replaces
        its handler. A path no prefix matches is answered 404.
        """
        self._routes[prefix] = handler

    def handler_for(self, path: str) -> Handler | None:
        """The handler of the longest registered prefix of ``path`` (None: 404)."""
        best: str | None = None
        for prefix in self._routes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return None if best is None else self._routes[best]

    # ------------------------------------------------------------------ running

    @property
    def host(self) -> str:
        """The address the listening socket is bound to."""
        if self._bound is None:
            raise RuntimeError("the server is not running")
        return self._bound[0]

    @property
    def port(self) -> int:
        """The TCP port the server listens on (the one chosen when 0 was asked)."""
        if self._bound is None:
            raise RuntimeError("the server is not running")
        return self._bound[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; ``started(url)`` once bound.

        Each connection is handled by a child task of this call: on
        cancellation the listener closes, open connections are aborted and
        this returns (re-raising the cancellation) once every handler ended.
        """
        if self._server is not None:
            raise RuntimeError("the server is already running")
        async with anyio.create_task_group() as tg:

            def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                # A plain callback, not a coroutine: asyncio would make a free task
                # of a coroutine; this makes the handler a child of run's task group
                # (and the connection stays an asyncio transport, so sendfile works).
                if self._server is None:  # accepted just before the listener closed
                    writer.transport.abort()
                    return
                self._writers.add(writer)
                tg.start_soon(self._connection, reader, writer)

            server = await asyncio.start_server(
                accept, host, port, limit=wire.MAX_HEAD, backlog=1024
            )
            self._server = server
            sock = server.sockets[0].getsockname()
            self._bound = (str(sock[0]), int(sock[1]))
            try:
                task_status.started(self.url)
                await anyio.sleep_forever()
            finally:
                # Stop accepting, then drop every connection: handlers blocked on
                # a socket end at once instead of waiting out their timeouts.
                self._server = None
                server.close()
                for writer in list(self._writers):
                    writer.transport.abort()

    # ------------------------------------------------------------------ connection

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.stats.active >= self.config.max_connections:
                await self._refuse(reader, writer)
            else:
                await self._serve_connection(reader, writer)
        except Exception:
            log.exception("peer server: unexpected error refusing a connection")
        except BaseException:
            writer.transport.abort()  # cancelled (the server is stopping): drop it now
            raise
        finally:
            self._writers.discard(writer)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        cfg = self.config
        self.stats.active += 1
        peer = str(writer.get_extra_info("peername"))
        try:
            timeout = cfg.head_timeout
            while True:
                try:
                    with anyio.fail_after(timeout):
                        head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    await self._simple(writer, 431, b"request head too large", keep=False)
                    return
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                timeout = cfg.idle_timeout
                try:
                    req = wire.parse_request_head(head)
                except wire.BadRequest as exc:
                    await self._simple(writer, 400, str(exc).encode()[:200], keep=False)
                    return
                body = b""
                if req.content_length:
                    if req.content_length > cfg.max_body:
                        await self._simple(writer, 413, b"body too large", keep=False)
                        return
                    try:
                        with anyio.fail_after(cfg.body_timeout):
                            body = await reader.readexactly(req.content_length)
                    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                        return
                self.stats.requests += 1
                ex = Exchange(self, req, body, peer, writer)
                handler = self.handler_for(ex.path)
                if handler is None:
                    keep = await ex.reply(404, b"not found")
                else:
                    keep = await handler(ex)
                if not (keep and req.keep_alive):
                    return
        except ConnectionError:
            return
        except Exception:
            log.exception("peer server: unexpected error serving %s", peer)
        finally:
            self.stats.active -= 1
            writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Over the connection budget: answer the first request 503, then close.

        Reading the request first (briefly) gives the client a proper HTTP answer
        instead of a reset racing its write. Overflow connections have their own
        ceiling (twice the budget); past it they are closed at once.
        """
        self.stats.busy += 1
        if self._overflow >= 2 * self.config.max_connections:
            writer.transport.abort()
            return
        self._overflow += 1
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                with anyio.fail_after(2.0):
                    await reader.readuntil(b"\r\n\r\n")
            headers = [("Retry-After", "1"), ("Content-Length", "4")]
            writer.write(self._head(503, headers, False) + b"busy")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._overflow -= 1
            writer.close()

    # ------------------------------------------------------------------ responses

    def _head(self, status: int, headers: list[tuple[str, str]], keep: bool) -> bytes:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        if not keep:
            headers = [*headers, ("Connection", "close")]
        return wire.format_response_head(status, headers)

    async def _simple(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        keep: bool = True,
        headers: Sequence[tuple[str, str]] = (),
        head_only: bool = False,
        ctype: str = "text/plain; charset=utf-8",
    ) -> bool:
        hdrs = [("Content-Type", ctype), ("Content-Length", str(len(body))), *headers]
        writer.write(self._head(status, hdrs, keep))
        if not head_only:
            writer.write(body)
            self.stats.bytes_sent += len(body)
        await writer.drain()
        return keep

    async def _busy(self, ex: Exchange) -> bool:
        """503 when the upload budget is queued too far ahead."""
        if self.bucket is None:
            return False
        debt = self.bucket.debt_seconds(time.monotonic())
        if debt <= self.config.max_debt_seconds:
            return False
        self.stats.busy += 1
        retry = str(max(1, math.ceil(debt)))
        await ex.reply(503, b"busy", headers=[("Retry-After", retry)])
        return True

    async def _sendfile(
        self, writer: asyncio.StreamWriter, fh: IO[bytes], offset: int, count: int
    ) -> None:
        """``count`` bytes of ``fh`` from ``offset`` with ``loop.sendfile``, within the budget."""
        await writer.drain()
        loop = asyncio.get_running_loop()
        if self.bucket is None:
            await loop.sendfile(writer.transport, fh, offset, count)
            self.stats.bytes_sent += count
            return
        while count > 0:
            n = min(self.config.rate_slice, count)
            wait = self.bucket.reserve(n, time.monotonic())
            if wait > 0:
                await anyio.sleep(wait)
            await loop.sendfile(writer.transport, fh, offset, n)
            self.stats.bytes_sent += n
            offset += n
            count -= n

    # ------------------------------------------------------------------ peer protocol

    async def peer_protocol(self, ex: Exchange) -> bool:
        """The built-in ``/p2pkg/v1/`` handler (a role may wrap it, e.g. pull-through)."""
        return await self.protocol.handle(ex)

    def status(self) -> dict[str, Any]:
        latest = self.store.latest_root_stored()
        files, size = self.store.stats()
        out: dict[str, Any] = {
            "root_version": latest[0] if latest else None,
            "root_id": latest[1].hex() if latest else None,
            "files": files,
            "bytes_held": size,
            "connections": self.stats.active,
            "max_connections": self.config.max_connections,
            "rate_limit": self.config.rate,
            "requests": self.stats.requests,
            "bytes_sent": self.stats.bytes_sent,
            "busy_answers": self.stats.busy,
        }
        if self.status_extra is not None:
            out.update(self.status_extra())
        return out
