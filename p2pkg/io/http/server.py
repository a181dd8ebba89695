"""The peer server: serves a store over HTTP/1.1 (docs/protocol.md §6).

asyncio streams for the request side (heads parsed by h11 with a size
limit and timeouts against slowloris), ``loop.sendfile`` for every body
that lives in an archive (files, ranges, chunks, batches), so serving costs
little CPU and no buffer memory. Budgets: a connection cap and an optional
upload rate (one token bucket shared by all connections); past either the
server answers 503 with Retry-After rather than slowing everyone down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pkg.core.chunking import ChunkId
from p2pkg.core.codec import encode_uvarint
from p2pkg.core.objects import ObjectId
from p2pkg.errors import NotFoundError
from p2pkg.io.http import wire
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


NotifyHandler = Callable[[bytes, str], Awaitable[None]]
StatusExtra = Callable[[], dict[str, Any]]


class PeerServer:
    """Serve one store. ``on_notify`` receives pushed roots (seeds)."""

    def __init__(
        self,
        store_path: Path,
        config: ServerConfig = ServerConfig(),
        *,
        on_notify: NotifyHandler | None = None,
        status_extra: StatusExtra | None = None,
    ) -> None:
        self.store = Store.open(store_path)
        self.config = config
        self.on_notify = on_notify
        self.status_extra = status_extra
        self.stats = ServerStats()
        self.bucket = TokenBucket(config.rate, config.burst) if config.rate else None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._overflow = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._connection, host, port, limit=wire.MAX_HEAD, backlog=1024
        )
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.transport.abort()
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        self.store.close()

    async def __aenter__(self) -> PeerServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ connection

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            pass  # server shutting down: the transport was aborted
        finally:
            self._tasks.discard(task)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        cfg = self.config
        if self.stats.active >= cfg.max_connections:
            await self._refuse(reader, writer)
            return
        self.stats.active += 1
        self._conns.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            timeout = cfg.head_timeout
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
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
                        body = await asyncio.wait_for(
                            reader.readexactly(req.content_length), cfg.body_timeout
                        )
                    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                        return
                self.stats.requests += 1
                keep = await self._dispatch(req, body, writer, peer)
                if not (keep and req.keep_alive):
                    return
        except ConnectionError:
            return
        except Exception:
            log.exception("peer server: unexpected error serving %s", peer)
        finally:
            self.stats.active -= 1
            self._conns.discard(writer)
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
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
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

    async def _busy(self, writer: asyncio.StreamWriter) -> bool:
        """503 when the upload budget is queued too far ahead."""
        if self.bucket is None:
            return False
        debt = self.bucket.debt_seconds(time.monotonic())
        if debt <= self.config.max_debt_seconds:
            return False
        self.stats.busy += 1
        retry = str(max(1, math.ceil(debt)))
        await self._simple(writer, 503, b"busy", headers=[("Retry-After", retry)])
        return True

    async def _sendfile(
        self, writer: asyncio.StreamWriter, path: Path, offset: int, count: int
    ) -> None:
        await writer.drain()
        loop = asyncio.get_running_loop()
        with path.open("rb") as fh:
            if self.bucket is None:
                await loop.sendfile(writer.transport, fh, offset, count)
                self.stats.bytes_sent += count
                return
            while count > 0:
                n = min(self.config.rate_slice, count)
                wait = self.bucket.reserve(n, time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
                await loop.sendfile(writer.transport, fh, offset, n)
                self.stats.bytes_sent += n
                offset += n
                count -= n

    async def _dispatch(
        self, req: wire.RequestHead, body: bytes, writer: asyncio.StreamWriter, peer: object
    ) -> bool:
        route = wire.parse_target(req.target)
        if route is None:
            return await self._simple(writer, 404, b"not found")
        head_only = req.method == "HEAD"
        post_routes = (wire.Kind.CHUNK_BATCH, wire.Kind.OBJECT_BATCH, wire.Kind.NOTIFY)
        if (route.kind in post_routes) != (req.method == "POST") or req.method not in (
            "GET",
            "HEAD",
            "POST",
        ):
            return await self._simple(writer, 405, b"method not allowed", keep=False)
        try:
            match route.kind:
                case wire.Kind.ROOT:
                    latest = self.store.latest_root_stored()
                    if latest is None:
                        return await self._simple(writer, 404, b"no root yet")
                    _, rid, data = latest
                    return await self._object(writer, data, rid, wire.MUTABLE, head_only)
                case wire.Kind.ROOT_VERSION:
                    data = self.store.root_stored(route.version)
                    return await self._object(writer, data, None, wire.IMMUTABLE, head_only)
                case wire.Kind.OBJECT:
                    data = self.store.get_stored(ObjectId(route.id))
                    return await self._object(writer, data, route.id, wire.IMMUTABLE, head_only)
                case wire.Kind.FILE:
                    return await self._file(writer, route.id, req, head_only)
                case wire.Kind.CHUNK:
                    return await self._chunks(writer, [route.id], head_only)
                case wire.Kind.OBJECT_BATCH:
                    if len(body) % 32 or not body or len(body) // 32 > wire.MAX_OBJECT_BATCH:
                        return await self._simple(writer, 400, b"body must be 1-1024 object ids")
                    return await self._object_batch(writer, body)
                case wire.Kind.CHUNK_BATCH:
                    if len(body) % 32 or not body or len(body) // 32 > wire.MAX_BATCH:
                        return await self._simple(writer, 400, b"body must be 1-1024 chunk ids")
                    ids = [body[i : i + 32] for i in range(0, len(body), 32)]
                    return await self._chunks(writer, ids, False)
                case wire.Kind.STATUS:
                    data = json.dumps(self.status(), sort_keys=True).encode()
                    return await self._simple(
                        writer,
                        200,
                        data,
                        headers=[("Cache-Control", wire.MUTABLE)],
                        head_only=head_only,
                        ctype="application/json",
                    )
                case wire.Kind.NOTIFY:
                    if self.on_notify is None:
                        return await self._simple(writer, 404, b"this peer takes no notifications")
                    await self.on_notify(body, str(peer))
                    return await self._simple(writer, 202, b"accepted")
        except NotFoundError:
            return await self._simple(writer, 404, b"not found")
        return await self._simple(writer, 404, b"not found")

    async def _object(
        self,
        writer: asyncio.StreamWriter,
        data: bytes,
        etag: bytes | None,
        cache: str,
        head_only: bool,
    ) -> bool:
        headers = [("Cache-Control", cache)]
        if etag is not None:
            headers.append(("ETag", f'"{etag.hex()}"'))
        return await self._simple(
            writer,
            200,
            data,
            headers=headers,
            head_only=head_only,
            ctype="application/vnd.p2pkg.object+zstd",
        )

    async def _object_batch(self, writer: asyncio.StreamWriter, body: bytes) -> bool:
        """Objects by id, each as ``uvarint length || zstd frame`` (length 0: not held)."""
        out = bytearray()
        for i in range(0, len(body), 32):
            try:
                frame = self.store.get_stored(ObjectId(body[i : i + 32]))
            except NotFoundError:
                frame = b""
            out += encode_uvarint(len(frame))
            out += frame
            if len(out) > wire.MAX_OBJECT_BATCH_BYTES:
                return await self._simple(writer, 413, b"batch too large; ask for fewer")
        return await self._simple(
            writer,
            200,
            bytes(out),
            headers=[("Cache-Control", wire.IMMUTABLE)],
            ctype="application/vnd.p2pkg.core.objects",
        )

    async def _file(
        self,
        writer: asyncio.StreamWriter,
        blake3: bytes,
        req: wire.RequestHead,
        head_only: bool,
        *,
        on_sent: Callable[[int], None] | None = None,
    ) -> bool:
        """A held archive, whole or one byte range; ``on_sent(n)`` after the body went out."""
        size = self.store.file_size(blake3)
        if size is None:
            return await self._simple(writer, 404, b"file not held")
        try:
            rng = wire.parse_range(req.headers.get("range"), size)
        except wire.Unsatisfiable:
            return await self._simple(
                writer,
                416,
                b"range not satisfiable",
                headers=[("Content-Range", f"bytes */{size}")],
            )
        if await self._busy(writer):
            return True
        start, end = rng if rng is not None else (0, size)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(end - start)),
            ("Accept-Ranges", "bytes"),
            ("Cache-Control", wire.IMMUTABLE),
            ("ETag", f'"{blake3.hex()}"'),
        ]
        status = 200
        if rng is not None:
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        writer.write(self._head(status, headers, True))
        if not head_only:
            try:
                await self._sendfile(writer, self.store.file_path(blake3), start, end - start)
            except FileNotFoundError:
                writer.transport.abort()  # evicted mid-flight: the client fails over
                return False
            if on_sent is not None:
                on_sent(end - start)
        else:
            await writer.drain()
        return True

    async def _chunks(
        self, writer: asyncio.StreamWriter, ids: list[bytes], head_only: bool
    ) -> bool:
        locations = []
        for cid in ids:
            loc = self.store.chunk_location(ChunkId(cid))
            if loc is None:
                return await self._simple(writer, 404, b"chunk not held")
            locations.append(loc)
        if await self._busy(writer):
            return True
        total = sum(loc.length for loc in locations)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(total)),
            ("Cache-Control", wire.IMMUTABLE),
        ]
        writer.write(self._head(200, headers, True))
        if head_only:
            await writer.drain()
            return True
        try:
            for loc in locations:
                await self._sendfile(writer, self.store.file_path(loc.file), loc.offset, loc.length)
        except FileNotFoundError:
            writer.transport.abort()
            return False
        return True

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
