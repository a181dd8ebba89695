"""A :class:`~p2pkg.core.link.Link` over HTTP/1.1 (docs/protocol.md §6).

The one place where HTTP statuses become the engine's errors: 404 →
:class:`AbsentError`, 503 → :class:`PeerBusyError`, any other unexpected
status or malformed answer → :class:`ProtocolError`; socket failures are
:class:`TransportError`, mapped by :mod:`p2pkg.io.http.client`.

A root request answered 503 is asked again after the answer's
``Retry-After`` (at most :data:`ROOT_RETRIES` times, each wait capped at
:data:`ROOT_RETRY_CAP` seconds): a peer refusing connections for a moment
(a full connection budget, issue 10) must not cost a refresh its only
peer. Everything else a 503 answers goes back to the engine, whose
scheduler pauses the peer for the ``Retry-After`` and uses other peers
meanwhile. The caller's deadline still bounds the whole (the follower
cancels roots that take too long).
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from p2pkg.config import LIMITS
from p2pkg.core.codec import Reader
from p2pkg.core.link import Sink
from p2pkg.core.objects import ObjectId
from p2pkg.errors import AbsentError, DecodeError, PeerBusyError, ProtocolError
from p2pkg.io.http import wire
from p2pkg.io.http.client import ClientConfig, PeerClient, SkipSink

MAX_OBJECT_FRAME = LIMITS.max_object_size + (1 << 20)  # a zstd frame of the largest object
MAX_ROOT_FRAME = 64 * 1024
ROOT_RETRIES = 2  # root requests asked again after a 503
ROOT_RETRY_CAP = 4.0  # seconds: the longest Retry-After a root request waits out


class HttpLink:
    """One peer reached over HTTP; connections are pooled per link."""

    def __init__(self, url: str, config: ClientConfig = ClientConfig()) -> None:  # noqa: B008
        self.client = PeerClient(url, config)

    @property
    def url(self) -> str:
        return self.client.url

    def close(self) -> None:
        self.client.close()

    async def span(self, blake3: bytes, start: int, stop: int, size: int, sink: Sink) -> None:
        whole = start == 0 and stop == size
        url = self.url

        def factory(head: wire.ResponseHead) -> Sink:
            if head.status == 206 and not whole:
                if head.content_range != (start, stop, size):
                    raise ProtocolError(url, f"asked {start}-{stop}, got {head.content_range}")
                return sink
            if head.status == 200:
                if head.content_length != size:
                    raise ProtocolError(
                        url, f"file is {head.content_length} bytes, expected {size}"
                    )
                # A server that ignores Range sends the whole file: skip to the span.
                return sink if whole else SkipSink(sink, start, stop - start)
            raise _status_error(url, head, "file")

        headers = () if whole else (("Range", f"bytes={start}-{stop - 1}"),)
        await self.client.request("GET", wire.file_path(blake3), factory, headers=headers)

    async def chunks(self, ids: Sequence[bytes], size: int, sink: Sink) -> None:
        if not 0 < len(ids) <= wire.MAX_BATCH:
            raise ValueError(f"1 to {wire.MAX_BATCH} ids per chunk batch")
        url = self.url

        def factory(head: wire.ResponseHead) -> Sink:
            if head.status != 200:
                raise _status_error(url, head, "chunk batch")
            if head.content_length != size:
                raise ProtocolError(url, f"chunk batch of {head.content_length} bytes, not {size}")
            return sink

        await self.client.request("POST", wire.BATCH_PATH, factory, body=b"".join(ids))

    async def object(self, oid: ObjectId) -> bytes:
        status, body, head = await self.client.get_bytes(wire.object_path(oid), MAX_OBJECT_FRAME)
        if status != 200:
            raise _status_error(self.url, head, f"object {oid.hex()[:16]}")
        return body

    async def objects(self, oids: Sequence[ObjectId]) -> list[bytes]:
        if len(oids) > wire.MAX_OBJECT_BATCH:
            raise ValueError(f"at most {wire.MAX_OBJECT_BATCH} ids per batch")
        status, body = await self.client.post(
            wire.OBJECTS_PATH, b"".join(oids), wire.MAX_OBJECT_BATCH_BYTES
        )
        if status != 200:  # e.g. a static server: no POST
            raise ProtocolError(self.url, f"object batch: HTTP {status}", status)
        try:
            r = Reader(body)
            frames = [r.bytes_(MAX_OBJECT_FRAME) for _ in oids]
            r.end()
        except DecodeError as exc:
            raise ProtocolError(self.url, f"malformed object batch: {exc}") from None
        return frames

    async def root(self, version: int | None = None) -> bytes:
        """The latest signed root (or ``version``'s); a 503 is retried after its Retry-After."""
        path = wire.root_path() if version is None else wire.root_version_path(version)
        retries = 0
        while True:
            status, body, head = await self.client.get_bytes(path, MAX_ROOT_FRAME)
            if status == 200:
                return body
            error = _status_error(self.url, head, path)
            if not isinstance(error, PeerBusyError) or retries == ROOT_RETRIES:
                raise error
            retries += 1
            await anyio.sleep(min(error.retry_after, ROOT_RETRY_CAP))


def _status_error(
    url: str, head: wire.ResponseHead, what: str
) -> AbsentError | PeerBusyError | ProtocolError:
    if head.status == 404:
        return AbsentError(url, f"{what}: not held (404)")
    if head.status == 503:
        return PeerBusyError(url, head.retry_after())
    return ProtocolError(url, f"{what}: unexpected HTTP {head.status}", head.status)


__all__ = ["HttpLink"]
