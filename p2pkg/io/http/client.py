"""The peer client: HTTP/1.1 over ``asyncio.BufferedProtocol``.

The response head is collected in a small buffer and parsed by h11; the
body is then received *directly* into buffers a sink provides
(``recv_into``, no intermediate copies): for a span, one reusable buffer
per chunk, hashed with BLAKE3 as soon as it is full and written with
``pwrite`` at its offset. A sink raising :class:`BadDataError` aborts the
connection at once, so a bad peer's bytes never reach the file.

Every wait is bounded (slow retrieval, TUF's attack): connect; the head
(``head_timeout``, and one ``rate_window`` from its first byte); the body,
which must make progress (``stall_timeout``) *and* keep a floor: at least
``min_rate`` bytes/s over every ``rate_window`` seconds, or its end within
the window. A peer trickling a byte a second never trips "no progress" but
trips the floor, so a body of ``n`` bytes never takes much longer than
``rate_window + n / min_rate`` (the overall deadline). Such a peer is cut
off with a :class:`TooSlowError` that says how slow it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from p2pkg.core.link import BytesSink, Sink, SinkDone
from p2pkg.errors import BadDataError, P2pkgError, ProtocolError, TooSlowError, TransportError
from p2pkg.io.http import wire


@dataclass(frozen=True, slots=True)
class ClientConfig:
    connect_timeout: float = 5.0
    head_timeout: float = 10.0  # for the whole head (a cache pulling through may think first)
    stall_timeout: float = 5.0  # abort when a body makes no progress for this long
    # The floor (slow retrieval): every rate_window seconds a body must bring
    # min_rate * rate_window bytes or its end, and a head must be whole
    # rate_window after its first byte. 0 (either) turns the floor off.
    min_rate: float = 32 * 1024
    rate_window: float = 2.0
    idle_connections: int = 4  # kept per peer for reuse
    max_error_body: int = 64 * 1024
    # Sent with every request (a cache sends wire.ONLY_IF_CACHED: peers that
    # pull through must not do so on its behalf, so two caches never loop).
    extra_headers: tuple[tuple[str, str], ...] = ()

    @property
    def has_floor(self) -> bool:
        """Whether bodies and heads are held to ``min_rate`` (both settings positive)."""
        return self.min_rate > 0 and self.rate_window > 0


class SkipSink:
    """Discards ``skip`` bytes, passes ``take`` bytes to ``inner``, then stops.

    Used when a static server ignores Range and answers 200 with the whole file.
    """

    def __init__(self, inner: Sink, skip: int, take: int) -> None:
        self.inner = inner
        self.skip = skip
        self.take = take
        self._scratch = bytearray(min(skip, 1 << 20) or 1)

    def buffer(self) -> memoryview:
        if self.skip:
            return memoryview(self._scratch)[: min(self.skip, len(self._scratch))]
        view = self.inner.buffer()
        return view[: self.take] if len(view) > self.take else view

    def advance(self, n: int) -> None:
        if self.skip:
            self.skip -= n
            return
        self.take -= n
        self.inner.advance(n)
        if self.take == 0:
            raise SinkDone


SinkFactory = Callable[[wire.ResponseHead], Sink]
_T = TypeVar("_T")


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self._head = bytearray(wire.MAX_HEAD)
        self._head_len = 0
        self._in_body = False
        self._remaining = 0
        self._sink: Sink | None = None
        self._factory: SinkFactory | None = None
        self._method = "GET"
        self.head_future: asyncio.Future[wire.ResponseHead] | None = None
        self.body_future: asyncio.Future[bool] | None = None  # True: connection reusable
        self.progress = 0.0  # monotonic time of the last bytes received
        self.head_first = 0.0  # when the current head's first byte came (0: not yet)
        self.body_started = 0.0  # when the current head was complete
        self.body_size = 0
        self.closed = False
        self._reusable = False

    @property
    def head_bytes(self) -> int:
        """Bytes of the current head received so far."""
        return self._head_len

    @property
    def body_received(self) -> int:
        """Bytes of the current body received so far."""
        return self.body_size - self._remaining if self._in_body else self.body_size

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._in_body and self._sink is not None:
            view = self._sink.buffer()
            return view[: self._remaining] if len(view) > self._remaining else view
        return memoryview(self._head)[self._head_len :]

    def buffer_updated(self, nbytes: int) -> None:
        self.progress = time.monotonic()
        try:
            if self._in_body:
                self._body_bytes(nbytes)
            else:
                self._head_bytes(nbytes)
        except SinkDone:
            self._finish_body(reusable=False)
        except P2pkgError as exc:
            self._fail(exc)
        except Exception as exc:  # a sink bug must not hang the request
            self._fail(ProtocolError(self.peer, f"client error: {exc!r}"))

    def eof_received(self) -> bool | None:
        self._fail(TransportError(self.peer, "connection closed by peer"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f"connection lost: {exc}" if exc else "connection closed"
        self._fail(TransportError(self.peer, reason))

    # -- parsing

    def _head_bytes(self, nbytes: int) -> None:
        if self._head_len == 0:
            self.head_first = self.progress
        start = max(0, self._head_len - 3)
        self._head_len += nbytes
        end = self._head.find(b"\r\n\r\n", start, self._head_len)
        if end < 0:
            if self._head_len >= len(self._head):
                raise ProtocolError(self.peer, "response head too large")
            if self.head_future is None:
                raise ProtocolError(self.peer, "unsolicited bytes")
            return
        end += 4
        try:
            head = wire.parse_response_head(bytes(self._head[:end]), self._method)
        except wire.BadResponse as exc:
            raise ProtocolError(self.peer, f"bad response head: {exc}") from None
        leftover = bytes(self._head[end : self._head_len])
        self._head_len = 0
        if head.content_length is None:
            raise ProtocolError(self.peer, "response without Content-Length")
        assert self._factory is not None
        self._sink = self._factory(head)
        self._in_body = True
        self._remaining = 0 if self._method == "HEAD" else head.content_length
        self.body_size = self._remaining
        self.body_started = self.progress
        if self.head_future is not None and not self.head_future.done():
            self.head_future.set_result(head)
        if self._remaining == 0:
            self._finish_body(reusable=head.keep_alive and not leftover)
            return
        self._reusable = head.keep_alive
        # Bytes that arrived with the head go through the sink like any others.
        view = memoryview(leftover)
        while view and self._in_body:
            target = self.get_buffer(len(view))
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            self._body_bytes(n)

    def _body_bytes(self, n: int) -> None:
        self._remaining -= n
        assert self._sink is not None
        self._sink.advance(n)
        if self._remaining == 0:
            self._finish_body(reusable=self._reusable)

    def _finish_body(self, *, reusable: bool) -> None:
        self._in_body = False
        self._sink = None
        if self.body_future is not None and not self.body_future.done():
            self.body_future.set_result(reusable)

    def _fail(self, exc: P2pkgError) -> None:
        self._in_body = False
        self._sink = None
        for fut in (self.head_future, self.body_future):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- driving

    def start(self, method: str, data: bytes, factory: SinkFactory) -> None:
        loop = asyncio.get_running_loop()
        self._method = method
        self._factory = factory
        self._head_len = 0
        self.head_future = loop.create_future()
        self.body_future = loop.create_future()
        self.progress = time.monotonic()
        self.head_first = 0.0
        self.body_size = 0
        assert self.transport is not None
        self.transport.write(data)


class Connection:
    """One keep-alive connection to a peer; one request at a time."""

    def __init__(self, peer: str, proto: _Protocol, config: ClientConfig) -> None:
        self.peer = peer
        self._proto = proto
        self._config = config
        self.reusable = True
        self.completed = 0  # requests answered on this connection (> 0: reused from the pool)

    @property
    def answered(self) -> bool:
        """Whether any byte of the current request's response has arrived."""
        return self._proto.head_first != 0.0

    @classmethod
    async def open(cls, peer: str, host: str, port: int, config: ClientConfig) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(peer), host, port),
                config.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise TransportError(peer, f"cannot connect: {exc or 'timeout'}") from None
        return cls(peer, proto, config)

    def close(self) -> None:
        if self._proto.transport is not None and not self._proto.closed:
            self._proto.transport.close()
        self.reusable = False

    async def request(
        self,
        method: str,
        target: str,
        host: str,
        factory: SinkFactory,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
    ) -> wire.ResponseHead:
        """Send a request and stream the response body into ``factory(head)``'s sink."""
        proto = self._proto
        if proto.closed:
            raise TransportError(self.peer, "connection closed")
        data = wire.format_request(method, target, host, headers, len(body)) + body
        self.reusable = False
        proto.start(method, data, factory)
        assert proto.head_future is not None and proto.body_future is not None
        sent = proto.progress
        try:
            head = await self._wait(proto.head_future, lambda now: self._check_head(sent, now))
            # (time, bytes received then), oldest first: the floor is checked
            # against the newest sample at least one window old.
            samples = deque([(proto.body_started, 0)])
            await self._wait(proto.body_future, lambda now: self._check_body(samples, now))
            self.reusable = proto.body_future.result() and not proto.closed
            self.completed += 1
            return head
        except BaseException:
            self.close()
            raise
        finally:
            for fut in (proto.head_future, proto.body_future):
                if not fut.done():
                    # Abandoned (cancelled or timed out): the connection closes
                    # asynchronously, and its connection_lost must not leave an
                    # exception nobody will ever retrieve on these futures.
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # mark retrieved: the error was raised once, here

    async def _wait(self, fut: asyncio.Future[_T], check: Callable[[float], None]) -> _T:
        """``fut``'s result; every tick ``check(now)`` may raise (late, stalled, too slow)."""
        cfg = self._config
        window = cfg.rate_window if cfg.has_floor else math.inf
        tick = min(cfg.head_timeout, cfg.stall_timeout, window) / 4
        while True:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(fut), max(tick, 0.01))
            check(time.monotonic())

    def _check_head(self, sent: float, now: float) -> None:
        """The head within ``head_timeout``, and within a window of its first byte."""
        cfg, proto = self._config, self._proto
        if now - sent >= cfg.head_timeout:
            raise TransportError(self.peer, "timed out waiting for a response")
        if proto.head_first and cfg.has_floor and now - proto.head_first >= cfg.rate_window:
            elapsed = now - proto.head_first
            raise TooSlowError(
                self.peer,
                f"response head not complete {elapsed:.1f}s after its first byte",
                proto.head_bytes / elapsed,
            )

    def _check_body(self, samples: deque[tuple[float, int]], now: float) -> None:
        """Progress within ``stall_timeout``; the floor over the last ``rate_window``."""
        cfg, proto = self._config, self._proto
        if now - proto.progress >= cfg.stall_timeout:
            raise TransportError(self.peer, f"stalled: no data for {cfg.stall_timeout:g}s")
        if not cfg.has_floor:
            return
        received = proto.body_received
        samples.append((now, received))
        while len(samples) > 1 and samples[1][0] <= now - cfg.rate_window:
            samples.popleft()
        then, before = samples[0]
        elapsed = now - then
        if elapsed < cfg.rate_window:
            return  # not streaming for a whole window yet
        got = received - before
        # The floor, or the rest of the body when that is less: a small object
        # must simply be whole by the end of its first window.
        if got < min(cfg.min_rate * elapsed, proto.body_size - before):
            raise TooSlowError(
                self.peer,
                f"{got / elapsed:.0f} B/s below the floor {cfg.min_rate:.0f} B/s "
                f"({received} of {proto.body_size} bytes)",
                got / elapsed,
            )


class PeerClient:
    """Requests to one peer (base URL), with a small pool of idle connections."""

    def __init__(self, base_url: str, config: ClientConfig = ClientConfig()) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"peer URL must be http://host:port[/path], got {base_url!r}")
        self.url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc
        self.config = config
        self._idle: list[Connection] = []

    async def _connection(self) -> Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and not conn._proto.closed:
                return conn
        return await Connection.open(self.url, self.host, self.port, self.config)

    def _release(self, conn: Connection) -> None:
        if conn.reusable and len(self._idle) < self.config.idle_connections:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def request(
        self,
        method: str,
        path: str,
        factory: SinkFactory,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
    ) -> wire.ResponseHead:
        conn = await self._connection()
        try:
            head = await self._send(conn, method, path, factory, headers, body)
        except TransportError:
            conn.close()
            if not conn.completed or conn.answered:
                raise
            # A pooled connection the peer closed while it sat idle (its idle
            # timeout, or its slot freed for another client) fails before any
            # byte of the answer: that says nothing about the peer. Requests
            # here are reads (idempotent): once more on a fresh connection.
            conn = await Connection.open(self.url, self.host, self.port, self.config)
            try:
                head = await self._send(conn, method, path, factory, headers, body)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return head

    async def _send(
        self,
        conn: Connection,
        method: str,
        path: str,
        factory: SinkFactory,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
    ) -> wire.ResponseHead:
        return await conn.request(
            method,
            self.base_path + path,
            self.host_header,
            factory,
            headers=self.config.extra_headers + headers,
            body=body,
        )

    def _bounded(self, path: str, limit: int, sinks: list[BytesSink]) -> SinkFactory:
        """A factory collecting a whole body: ``limit`` for 200, small for errors."""

        def factory(head: wire.ResponseHead) -> Sink:
            size = head.content_length or 0
            cap = limit if head.status == 200 else self.config.max_error_body
            if size > cap:
                raise ProtocolError(self.url, f"{path}: body of {size} bytes exceeds {cap}")
            sink = BytesSink(size)
            sinks.append(sink)
            return sink

        return factory

    async def get_bytes(self, path: str, limit: int) -> tuple[int, bytes, wire.ResponseHead]:
        """GET a small body (objects, roots, status): (status, body, head), bounded by ``limit``."""
        sinks: list[BytesSink] = []
        head = await self.request("GET", path, self._bounded(path, limit, sinks))
        return head.status, bytes(sinks[0].data) if sinks else b"", head

    async def post(self, path: str, body: bytes, limit: int = 64 * 1024) -> tuple[int, bytes]:
        """POST ``body``; (status, response body), the body bounded by ``limit``."""
        sinks: list[BytesSink] = []
        head = await self.request("POST", path, self._bounded(path, limit, sinks), body=body)
        return head.status, bytes(sinks[0].data) if sinks else b""


__all__ = [
    "BadDataError",
    "BytesSink",
    "ClientConfig",
    "Connection",
    "PeerClient",
    "Sink",
    "SinkDone",
    "SkipSink",
]
