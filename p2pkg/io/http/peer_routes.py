"""The peer protocol's handlers (docs/protocol.md §6) over one store.

:class:`PeerProtocol` answers ``/p2pkg/v1/`` requests — roots, objects and
object batches, chunks and chunk batches, archives with Range, status and
push notifications — through an :class:`~p2pkg.io.http.server.Exchange`;
the :class:`~p2pkg.io.http.server.PeerServer` (connections, budgets,
routes) installs it under that prefix. Bodies that live in archives go out
with ``sendfile``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from p2pkg.core.chunking import ChunkId
from p2pkg.core.codec import encode_uvarint
from p2pkg.core.objects import ObjectId
from p2pkg.errors import NotFoundError
from p2pkg.io.http import wire
from p2pkg.io.store import Store

if TYPE_CHECKING:
    from p2pkg.io.http.server import Exchange

NotifyHandler = Callable[[bytes, str], Awaitable[None]]


class PeerProtocol:
    """The ``/p2pkg/v1/`` routes of one store. ``on_notify`` takes pushed roots (seeds)."""

    def __init__(self, store: Store, *, on_notify: NotifyHandler | None = None) -> None:
        self.store = store
        self.on_notify = on_notify
        #: Called with an archive's BLAKE3 each time its first byte is served: a
        #: download counts once across all the peers that share its spans.
        self.on_download: Callable[[bytes], None] | None = None

    async def handle(self, ex: Exchange) -> bool:
        """Answer one request under ``/p2pkg/v1/``."""
        req = ex.req
        route = wire.parse_target(req.target)
        if route is None:
            return await ex.reply(404, b"not found")
        head_only = ex.head_only
        post_routes = (wire.Kind.CHUNK_BATCH, wire.Kind.OBJECT_BATCH, wire.Kind.NOTIFY)
        if (route.kind in post_routes) != (req.method == "POST") or req.method not in (
            "GET",
            "HEAD",
            "POST",
        ):
            return await ex.reply(405, b"method not allowed", keep=False)
        try:
            match route.kind:
                case wire.Kind.ROOT:
                    latest = self.store.latest_root_stored()
                    if latest is None:
                        return await ex.reply(404, b"no root yet")
                    _, rid, data = latest
                    return await self._object(ex, data, rid, wire.MUTABLE)
                case wire.Kind.ROOT_VERSION:
                    data = self.store.root_stored(route.version)
                    return await self._object(ex, data, None, wire.IMMUTABLE)
                case wire.Kind.OBJECT:
                    data = self.store.get_stored(ObjectId(route.id))
                    return await self._object(ex, data, route.id, wire.IMMUTABLE)
                case wire.Kind.FILE:
                    return await self.send_file(ex, route.id)
                case wire.Kind.CHUNK:
                    return await self._chunks(ex, [route.id], head_only)
                case wire.Kind.OBJECT_BATCH:
                    if (
                        len(ex.body) % 32
                        or not ex.body
                        or len(ex.body) // 32 > wire.MAX_OBJECT_BATCH
                    ):
                        return await ex.reply(400, b"body must be 1-1024 object ids")
                    return await self._object_batch(ex)
                case wire.Kind.CHUNK_BATCH:
                    body = ex.body
                    if len(body) % 32 or not body or len(body) // 32 > wire.MAX_BATCH:
                        return await ex.reply(400, b"body must be 1-1024 chunk ids")
                    ids = [body[i : i + 32] for i in range(0, len(body), 32)]
                    return await self._chunks(ex, ids, False)
                case wire.Kind.STATUS:
                    data = json.dumps(ex.site.status(), sort_keys=True).encode()
                    return await ex.reply(
                        200,
                        data,
                        headers=[("Cache-Control", wire.MUTABLE)],
                        ctype="application/json",
                    )
                case wire.Kind.NOTIFY:
                    if self.on_notify is None:
                        return await ex.reply(404, b"this peer takes no notifications")
                    await self.on_notify(ex.body, ex.peer)
                    return await ex.reply(202, b"accepted")
        except NotFoundError:
            return await ex.reply(404, b"not found")
        return await ex.reply(404, b"not found")

    async def _object(self, ex: Exchange, data: bytes, etag: bytes | None, cache: str) -> bool:
        headers = [("Cache-Control", cache)]
        if etag is not None:
            headers.append(("ETag", f'"{etag.hex()}"'))
        return await ex.reply(200, data, headers=headers, ctype="application/vnd.p2pkg.object+zstd")

    async def _object_batch(self, ex: Exchange) -> bool:
        """Objects by id, each as ``uvarint length || zstd frame`` (length 0: not held)."""
        body = ex.body
        out = bytearray()
        for i in range(0, len(body), 32):
            try:
                frame = self.store.get_stored(ObjectId(body[i : i + 32]))
            except NotFoundError:
                frame = b""
            out += encode_uvarint(len(frame))
            out += frame
            if len(out) > wire.MAX_OBJECT_BATCH_BYTES:
                return await ex.reply(413, b"batch too large; ask for fewer")
        return await ex.reply(
            200,
            bytes(out),
            headers=[("Cache-Control", wire.IMMUTABLE)],
            ctype="application/vnd.p2pkg.core.objects",
        )

    async def send_file(
        self, ex: Exchange, blake3: bytes, *, on_sent: Callable[[int], None] | None = None
    ) -> bool:
        """A held archive, whole or one byte range; ``on_sent(n)`` after the body went out."""
        size = self.store.file_size(blake3)
        if size is None:
            return await ex.reply(404, b"file not held")
        try:
            rng = wire.parse_range(ex.req.headers.get("range"), size)
        except wire.Unsatisfiable:
            return await ex.reply(
                416,
                b"range not satisfiable",
                headers=[("Content-Range", f"bytes */{size}")],
            )
        if await ex.over_budget():
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
        ex.write_head(status, headers)
        if ex.head_only:
            await ex.drain()
            return True
        try:
            with self.store.file_path(blake3).open("rb") as fh:
                await ex.sendfile(fh, start, end - start)
        except FileNotFoundError:
            ex.abort()  # evicted mid-flight: the client fails over
            return False
        if on_sent is not None:
            on_sent(end - start)
        if start == 0 and self.on_download is not None:
            self.on_download(blake3)
        return True

    async def _chunks(self, ex: Exchange, ids: list[bytes], head_only: bool) -> bool:
        locations = []
        for cid in ids:
            loc = self.store.chunk_location(ChunkId(cid))
            if loc is None:
                return await ex.reply(404, b"chunk not held")
            locations.append(loc)
        if await ex.over_budget():
            return True
        total = sum(loc.length for loc in locations)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(total)),
            ("Cache-Control", wire.IMMUTABLE),
        ]
        ex.write_head(200, headers)
        if head_only:
            await ex.drain()
            return True
        try:
            for loc in locations:
                with self.store.file_path(loc.file).open("rb") as fh:
                    await ex.sendfile(fh, loc.offset, loc.length)
        except FileNotFoundError:
            ex.abort()
            return False
        return True


__all__ = ["NotifyHandler", "PeerProtocol"]
