"""Many small archives at once: their chunks in batch requests, spread over the peers.

One request per small archive costs a round trip each; 200 wheels of
100 KB from peers 40 ms away spend more time waiting than transferring.
The peer protocol answers a batch of chunk ids with their bytes in one
response (``POST /p2pkg/v1/chunks``, docs/protocol.md §6), so
:func:`prefill` packs the chunks of many small archives into batches of
about :data:`BATCH_BYTES`, has every live peer work through them
:data:`IN_FLIGHT` at a time, checks every chunk against its BLAKE3 id and
writes each archive's chunks into the *partial file* its download would
use. The downloads that follow find their partial files complete — the
resume path re-checks them — and finish without a request; an archive the
batches did not fill (a peer without batches, such as a static export, a
failure) is simply downloaded the usual way.

A peer that sends a bad chunk is banned and its batch goes to another
peer; one that cannot answer batches (or lacks a chunk) is not asked again
here; one that fails is backed off. Nothing unverified is written.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import blake3

from p2pkg.core.link import BytesSink, Link
from p2pkg.core.objects import FileManifest
from p2pkg.core.peers import PeerBook
from p2pkg.errors import (
    AbsentError,
    LocalError,
    PeerBusyError,
    PeerError,
    ProtocolError,
    TooSlowError,
    local_io,
)
from p2pkg.io.fsutil import pwrite_all

log = logging.getLogger(__name__)

BATCHABLE = 512 * 1024  # archives at most this big go in batches
BATCH_BYTES = 2 << 20  # a batch's bytes at most (and 1024 chunk ids, the protocol's limit)
MIN_BATCH = 256 * 1024  # ... and at least, when there are few archives
MAX_IDS = 1024
IN_FLIGHT = 2  # batch requests per peer at once: one in transit while one answers
MAX_PEERS = 8


@dataclass
class _Batch:
    files: list[tuple[FileManifest, Path]]  # each archive and its partial file
    ids: list[bytes]
    size: int


@dataclass
class PrefillStats:
    batches: int = 0  # batch requests answered
    received: int = 0  # bytes
    # archive BLAKE3 -> (the peer, seconds its batch took)
    filled: dict[bytes, tuple[str, float]] = field(default_factory=dict)


def pack(files: Sequence[tuple[FileManifest, Path]], peers: int) -> list[_Batch]:
    """Whole archives in batches: enough batches for every peer to keep two going."""
    total = sum(m.size for m, _ in files)
    target = min(BATCH_BYTES, max(MIN_BATCH, total // max(1, peers * 2 * IN_FLIGHT)))
    batches: list[_Batch] = []
    current = _Batch([], [], 0)
    for manifest, partial in files:
        ids = [c.id for c in manifest.chunks]
        if current.files and (
            current.size + manifest.size > target or len(current.ids) + len(ids) > MAX_IDS
        ):
            batches.append(current)
            current = _Batch([], [], 0)
        current.files.append((manifest, partial))
        current.ids.extend(ids)
        current.size += manifest.size
    if current.files:
        batches.append(current)
    return batches


async def prefill(
    files: Sequence[tuple[FileManifest, Path]],
    links: Callable[[str], Link],
    book: PeerBook,
    clock: Callable[[], float] = time.monotonic,
    *,
    durable: bool = False,
) -> PrefillStats:
    """Fill the partial files of small archives from chunk batches; what it did.

    ``files``: each archive with the partial file its download would use.
    Only small archives (≤ :data:`BATCHABLE`) without a partial file yet
    are taken, and only when there are at least two. ``durable``: fsync
    each partial file once written (the caller then only has to rename
    it). A local failure (the disk full) removes the partial files written
    here and is raised.
    """
    stats = PrefillStats()
    todo = [
        (m, p)
        for m, p in files
        if 0 < m.size <= BATCHABLE and m.chunks and len(m.chunks) <= MAX_IDS and not p.exists()
    ]
    peers = [r.url for r in book.live(clock())][:MAX_PEERS]
    if len(todo) < 2 or not peers:
        return stats
    queue = collections.deque(pack(todo, len(peers)))
    written: list[Path] = []
    cannot: set[str] = set()  # peers not asked again here
    fatal: list[LocalError] = []

    async def worker(peer: str) -> None:
        while queue and peer not in cannot and not fatal:
            batch = queue.popleft()
            started = clock()
            try:
                data = await _fetch(links(peer), batch)
                bad = _first_bad(batch, data)
                if bad is not None:
                    log.warning("banning peer %s: chunk %s of a batch is bad", peer, bad.hex()[:16])
                    book.ban(peer, "sent a chunk that failed verification", clock())
                    cannot.add(peer)
                    queue.append(batch)
                    return
                # Off the loop: a batch's opens and fsyncs would stall the others.
                await anyio.to_thread.run_sync(_write, batch, data, written, durable)
            except (AbsentError, ProtocolError) as exc:
                log.info("no chunk batches from %s: %s", peer, exc)
                cannot.add(peer)
                queue.append(batch)
                return
            except (PeerBusyError, TooSlowError, PeerError) as exc:
                log.info("chunk batch from %s failed: %s", peer, exc)
                book.observe_failure(peer, clock())
                queue.append(batch)
                return
            except LocalError as exc:
                fatal.append(exc)
                return
            took = clock() - started
            book.observe_transfer(peer, batch.size, took)
            stats.batches += 1
            stats.received += batch.size
            for manifest, _ in batch.files:
                stats.filled[manifest.blake3] = (peer, took)

    async with anyio.create_task_group() as tg:
        for peer in peers:
            for _ in range(IN_FLIGHT):
                tg.start_soon(worker, peer)
    if fatal:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise fatal[0]
    return stats


async def _fetch(link: Link, batch: _Batch) -> bytes:
    sink = BytesSink(batch.size)
    await link.chunks(batch.ids, batch.size, sink)
    if sink.filled != batch.size:
        raise ProtocolError(link.url, f"chunk batch ended at {sink.filled} of {batch.size} bytes")
    return bytes(sink.data)


def _first_bad(batch: _Batch, data: bytes) -> bytes | None:
    """The id of the first chunk of ``data`` that does not hash to its id, if any."""
    view = memoryview(data)
    pos = 0
    for manifest, _ in batch.files:
        for c in manifest.chunks:
            if blake3.blake3(view[pos : pos + c.length]).digest() != c.id:
                return c.id
            pos += c.length
    return None


def _write(batch: _Batch, data: bytes, written: list[Path], durable: bool) -> None:
    """Each archive's verified bytes into its partial file (fsynced when ``durable``)."""
    pos = 0
    for manifest, partial in batch.files:
        with local_io(partial, "writing"):
            partial.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            written.append(partial)
            try:
                pwrite_all(fd, memoryview(data)[pos : pos + manifest.size], 0)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        pos += manifest.size


__all__ = ["BATCHABLE", "PrefillStats", "pack", "prefill"]
