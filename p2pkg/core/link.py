"""The seam between the engine and one peer: a :class:`Link`.

The downloader, the object source and the root follower talk to peers only
through links, so a unit test or netsim drives the real engine over fake
links (and fake time), and the product drives it over HTTP
(:class:`p2pkg.io.http.link.HttpLink`). A link maps every failure to one
:class:`p2pkg.errors.PeerError` subclass, once, at its boundary:
:class:`~p2pkg.errors.AbsentError` (the peer does not hold it),
:class:`~p2pkg.errors.PeerBusyError` (503 + Retry-After),
:class:`~p2pkg.errors.ProtocolError`, :class:`~p2pkg.errors.TransportError`;
a sink may raise :class:`~p2pkg.errors.BadDataError` (the peer is banned),
:class:`SinkDone` (the rest is not needed) or
:class:`~p2pkg.errors.LocalError` (the receiver's disk failed: the link
passes it through unchanged, and no peer is blamed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from p2pkg.core.objects import ObjectId


class Sink(Protocol):
    """Where a response body goes: straight into the receiver's buffers."""

    def buffer(self) -> memoryview:
        """A non-empty writable view for the next bytes."""
        ...

    def advance(self, n: int) -> None:
        """``n`` bytes were written into the last buffer. May raise to abort."""
        ...


class BytesSink:
    """Collects a whole body of known, bounded size in memory (``data[:filled]``)."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.filled = 0

    def buffer(self) -> memoryview:
        return memoryview(self.data)[self.filled :]

    def advance(self, n: int) -> None:
        self.filled += n


class SinkDone(Exception):
    """Raised by a sink that needs no more bytes (the rest is discarded)."""


class Link(Protocol):
    """One peer, as the engine sees it (docs/protocol.md §6)."""

    @property
    def url(self) -> str:
        """The peer's name in logs, the peer book and the scheduler."""
        ...

    async def span(self, blake3: bytes, start: int, stop: int, size: int, sink: Sink) -> None:
        """Bytes ``start``..``stop - 1`` of archive ``blake3`` (``size`` bytes) into ``sink``."""
        ...

    async def chunks(self, ids: Sequence[bytes], size: int, sink: Sink) -> None:
        """Several chunks' bytes, concatenated in ``ids`` order (``size`` in all), into ``sink``.

        Raises :class:`~p2pkg.errors.AbsentError` when the peer lacks any of
        them and :class:`~p2pkg.errors.ProtocolError` when it cannot answer
        batches at all (a static file server).
        """
        ...

    async def object(self, oid: ObjectId) -> bytes:
        """One object's stored form (a zstd frame), not yet checked against its id."""
        ...

    async def objects(self, oids: Sequence[ObjectId]) -> list[bytes]:
        """Several objects' frames in order, ``b""`` for those the peer lacks.

        Raises :class:`~p2pkg.errors.ProtocolError` when the peer cannot answer
        batches at all (a static file server).
        """
        ...

    async def root(self, version: int | None = None) -> bytes:
        """The peer's latest signed root (or ``version``), as a zstd frame."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


__all__ = ["BytesSink", "Link", "Sink", "SinkDone"]
