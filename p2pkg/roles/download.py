"""The file downloader: one archive from several peers, verified chunk by chunk.

It drives the pure :class:`p2pkg.core.schedule.Scheduler` over
:class:`p2pkg.core.link.Link` objects — one per peer, HTTP in the product,
fakes in tests and netsim — and keeps what it learns about each peer in the
shared :class:`p2pkg.core.peers.PeerBook` (a peer's measured rate sizes its
first span on the next file; a peer that sends bad data is banned there).

Slow retrieval: the HTTP client cuts a peer off below its rate floor
(:class:`~p2pkg.io.http.client.TooSlowError`); such a peer, or one whose
span a duplicate finished first, is backed off in the book with the rate
it showed, and the next files defer it while another peer can work. With
an honest peer present a trickling one costs a file little more than the
honest peer needs (the scheduler duplicates its span within
``stall_after``).

Every chunk is checked against its BLAKE3 id before it touches the disk
(docs/protocol.md §2.2) — in batches on a second core
(:mod:`p2pkg.roles.chunk_writer`) — and the destination is written only
when every chunk has been (temp name, fsync, rename). That is the whole check: the
chunk list comes from a manifest reachable from the signed root, and the
master computed the chunk list, sha256 and BLAKE3 in one pass over the same
bytes at publish, so re-hashing the whole file would check nothing more
(``p2pkg verify`` re-hashes stores; pip checks sha256 again). ``paranoid``
re-hashes it anyway, trailing the download on a worker thread.

A download in progress lives in a *partial* file (in the store's
``partial/`` or beside the destination). Re-running a fetch re-hashes the
partial file's chunks and downloads only the ones that do not verify, so an
interrupted fetch resumes; chunks the local store already holds (an older
version of the same wheel) are copied instead of downloaded.

A local failure (the disk full, permission denied, an I/O error) is a
:class:`~p2pkg.errors.LocalError`: not the peers' fault, so it aborts the
whole download at once — the other spans are cancelled, no peer is
penalised or banned — removes the partial file (the space comes back) and
reaches the caller unchanged, never as "no peer could deliver".
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import math
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import blake3

from p2pkg.core.link import BytesSink, Link
from p2pkg.core.objects import FileManifest
from p2pkg.core.peers import PeerBook
from p2pkg.core.schedule import Failure, ScheduleConfig, Scheduler, Span
from p2pkg.errors import (
    LOCAL_ERRNOS,
    AbsentError,
    BadDataError,
    FetchError,
    IntegrityError,
    LocalError,
    PeerBusyError,
    PeerError,
    TooSlowError,
    local_error,
    local_io,
)
from p2pkg.io.fsutil import copy_atomic, fsync_path, pwrite_all
from p2pkg.io.ingest import Hashed
from p2pkg.io.store import Store
from p2pkg.roles.chunk_writer import ChunkWriter, SpanSink

log = logging.getLogger(__name__)

SMALL_FILE = 1 << 20  # at most this: hashed inline, no helper thread, no fallocate
SYNC_EVERY = 32 << 20  # the hashing thread fdatasyncs the partial file this often
Progress = Callable[[int, int], None]


@dataclass
class FetchStats:
    """What one file download did (for --json, logs and benchmarks)."""

    filename: str = ""
    size: int = 0
    from_network: int = 0
    from_local: int = 0  # chunks reused from the partial file or the store
    seconds: float = 0.0
    peers: dict[str, dict[str, object]] = field(default_factory=dict)


class _PrefixHasher:
    """A worker trailing the verified prefix: flushes it, and (paranoid) hashes it whole.

    The final whole-file check (docs/protocol.md §3.3) would otherwise be a
    serial pass after the download; this way it overlaps it and only the
    last chunks remain to hash at the end.
    """

    def __init__(self, fd: int, size: int, path: Path, *, hash: bool = True) -> None:
        self.fd = fd
        self.size = size
        self.path = path
        self.hash = hash  # False: only flush the verified prefix to disk as it grows
        self.sha = hashlib.sha256()
        self.b3 = blake3.blake3()
        self.pos = 0
        self.synced = 0
        self.target = 0
        self.cond = threading.Condition()
        self.stopped = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="p2pkg-hash", daemon=True)
        self.thread.start()

    def advance(self, target: int) -> None:
        with self.cond:
            if target > self.target:
                self.target = target
                self.cond.notify()

    def _run(self) -> None:
        if self.size == 0:
            return
        try:
            # Hash straight from the page cache through a read-only mapping (no copies).
            # It reads only the verified prefix: every byte of it was written
            # in full (pwrite_all), so no page of the mapping is a hole that a
            # full file system could fail to back (SIGBUS on tmpfs).
            with local_io(self.path, "reading"):
                mm = mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ)
            with mm:
                view = memoryview(mm)
                try:
                    self._hash(view)
                finally:
                    view.release()
        except BaseException as exc:  # re-raised by finish()
            self.error = exc

    def _hash(self, view: memoryview) -> None:
        while self.pos < self.size:
            with self.cond:
                while self.pos >= self.target and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    return
                target = self.target
            while self.pos < target:
                end = min(target, self.pos + (4 << 20))
                if self.hash:
                    block = view[self.pos : end]
                    self.sha.update(block)
                    self.b3.update(block)
                    block.release()
                self.pos = end
                if self.pos - self.synced >= SYNC_EVERY:
                    # Flush as we go (off the event loop) so the final fsync that
                    # makes the file durable only has the tail left to write.
                    with local_io(self.path, "syncing"):
                        os.fdatasync(self.fd)
                    self.synced = self.pos

    def finish(self) -> tuple[bytes, bytes]:
        """Block until the whole file is hashed; (sha256, BLAKE3)."""
        self.advance(self.size)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.sha.digest(), self.b3.digest()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join()


@dataclass
class _Download:
    manifest: FileManifest
    fd: int
    path: Path  # the partial file fd writes to (named in LocalErrors)
    sched: Scheduler
    stats: FetchStats
    progress: Progress | None
    hasher: _PrefixHasher | None  # None for small files: hashed in one go at the end
    watch: Callable[[int], None] | None = None
    clock: Callable[[], float] = time.monotonic
    on_rate: Callable[[], None] | None = None  # a peer's first rate is known: plan again
    done_bytes: int = 0
    prefix: int = 0  # chunks 0..prefix-1 are all verified

    def start(self) -> None:
        s = self.sched
        self.done_bytes = sum(s.lengths[i] for i in range(len(s.lengths)) if s.done[i])
        self._advance_prefix()

    def is_done(self, index: int) -> bool:
        return bool(self.sched.done[index])

    def chunk_verified(self, peer: str, index: int) -> None:
        """Chunk ``index`` from ``peer`` was verified and written (maybe a second copy)."""
        state = self.sched.peers[peer]
        measured = state.rate > 0
        new = self.sched.chunk_done(peer, index, self.clock())
        if not measured and state.rate > 0 and self.on_rate is not None:
            self.on_rate()  # its next span may be pipelined now
        if not new:
            return  # another peer's copy came first
        length = self.sched.lengths[index]
        self.stats.from_network += length
        self.done_bytes += length
        if index == self.prefix:
            self._advance_prefix()
        if self.progress is not None:
            self.progress(self.done_bytes, self.manifest.size)

    def _advance_prefix(self) -> None:
        s = self.sched
        while self.prefix < len(s.lengths) and s.done[self.prefix]:
            self.prefix += 1
        if self.hasher is not None:
            self.hasher.advance(s.offsets[self.prefix])
        if self.watch is not None:
            self.watch(s.offsets[self.prefix])


class FileDownloader:
    """Downloads archives over links, sharing one peer book and one optional store."""

    def __init__(
        self,
        links: Callable[[str], Link],
        book: PeerBook,
        store: Store | None = None,
        *,
        schedule_config: ScheduleConfig = ScheduleConfig(),  # noqa: B008 - frozen
        clock: Callable[[], float] = time.monotonic,
        paranoid: bool = False,
    ) -> None:
        self.links = links
        self.book = book
        self.store = store
        self.schedule_config = schedule_config
        self.clock = clock
        # Every chunk is checked against its BLAKE3 id from a manifest the master
        # signed (and the master checked at publish that the chunk list, sha256
        # and BLAKE3 describe the same bytes): re-hashing the whole file checks
        # nothing more. ``paranoid`` does it anyway (sha256 and BLAKE3).
        self.paranoid = paranoid

    def partial_path(self, manifest: FileManifest, dest: Path | None) -> Path:
        """Where ``manifest``'s download lives until it is whole (resumed from there)."""
        if self.store is not None:
            return self.store.partial_path(manifest.blake3)
        if dest is None:
            raise ValueError("a destination directory or a store is needed")
        return dest / f".{manifest.blake3.hex()}.p2pkg-partial"

    async def fetch_file(
        self,
        manifest: FileManifest,
        dest: Path | None,
        *,
        progress: Progress | None = None,
        sync_dir: bool = True,
        watch: Callable[[int], None] | None = None,
    ) -> tuple[Path, FetchStats]:
        """Download ``manifest``'s file; return its path (``dest``/filename if given).

        ``sync_dir=False`` leaves the fsync of ``dest`` to the caller (one per
        batch of files rather than one per file). ``watch(n)`` is called each
        time the verified prefix of the partial file grows to ``n`` bytes (a
        cache streams it to an installer while the rest is still arriving).
        """
        started = time.monotonic()
        stats = FetchStats(manifest.filename, manifest.size)
        store = self.store
        if store is None and dest is None:
            raise ValueError("a destination directory or a store is needed")
        if store is not None and store.has_file(manifest.blake3):
            stats.from_local = manifest.size
            path = store.file_path(manifest.blake3)
            if dest is not None:
                path = await anyio.to_thread.run_sync(copy_atomic, path, dest, manifest.filename)
            stats.seconds = time.monotonic() - started
            return path, stats
        if store is None:
            assert dest is not None
            with local_io(dest, "creating"):
                dest.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(manifest, dest)
        try:
            path = await self._fetch_into(
                manifest, partial, dest, stats, progress, sync_dir, watch, store
            )
        except LocalError:
            # This machine failed, not the peers: give the space back. The
            # destination and the store are as they were (a store commit
            # that fails takes its own changes back).
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise
        stats.seconds = time.monotonic() - started
        return path, stats

    async def _fetch_into(
        self,
        manifest: FileManifest,
        partial: Path,
        dest: Path | None,
        stats: FetchStats,
        progress: Progress | None,
        sync_dir: bool,
        watch: Callable[[int], None] | None,
        store: Store | None,
    ) -> Path:
        """Download into ``partial``, verify it, then move it to the store or ``dest``."""
        with local_io(partial, "opening"):
            fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # SQLite stays on this thread; the worker only reads, hashes and copies.
            elsewhere = _store_locations(store, manifest) if store is not None else {}
            small = manifest.size <= SMALL_FILE
            if small:  # microseconds of work: not worth a thread hand-off
                have = _reusable_chunks(fd, partial, manifest, elsewhere)
            else:
                have = await anyio.to_thread.run_sync(
                    _reusable_chunks, fd, partial, manifest, elsewhere
                )
            stats.from_local = sum(manifest.chunks[i].length for i in have)
            # Large files: a worker trails the verified prefix, flushing it to
            # disk as it grows (and hashing it when paranoid), so the end has
            # only the tail left to do.
            hasher = (
                None if small else _PrefixHasher(fd, manifest.size, partial, hash=self.paranoid)
            )
            try:
                await self._download(manifest, fd, partial, have, stats, progress, hasher, watch)
                if hasher is not None:
                    sha, b3 = await anyio.to_thread.run_sync(hasher.finish)
                elif self.paranoid:
                    sha, b3 = _hash_fd(fd, partial, manifest.size)
            finally:
                if hasher is not None:
                    hasher.stop()
            if self.paranoid:
                if sha != manifest.sha256:
                    raise IntegrityError(manifest.filename, manifest.sha256.hex(), sha.hex())
                if b3 != manifest.blake3:
                    raise IntegrityError(manifest.filename, manifest.blake3.hex(), b3.hex())
            with local_io(partial, "syncing"):
                await anyio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)
        if store is not None:
            store.commit(files=[_as_hashed(manifest, partial)])
            path = store.file_path(manifest.blake3)
            if dest is not None:
                path = await anyio.to_thread.run_sync(copy_atomic, path, dest, manifest.filename)
            return path
        assert dest is not None
        path = dest / manifest.filename
        with local_io(path, "writing"):
            partial.replace(path)
        if sync_dir:
            fsync_path(dest)
        return path

    async def fetch_range(self, manifest: FileManifest, start: int, stop: int) -> bytes:
        """Bytes ``start``..``stop - 1`` of ``manifest``'s archive, verified, from one peer.

        For a reader that needs a piece before the whole file is in (an
        installer reading a wheel's metadata by Range while a cache is still
        downloading it): the chunks covering the range are fetched as one span
        from the best live peer and each is checked against its BLAKE3 id
        before any byte is returned; a peer that sends bad bytes is banned,
        one that fails is skipped.
        """
        if not 0 <= start < stop <= manifest.size:
            raise ValueError(f"range {start}..{stop} outside 0..{manifest.size}")
        offsets = manifest.chunk_offsets()
        first = bisect.bisect_right(offsets, start) - 1
        last = bisect.bisect_left(offsets, stop) - 1
        lo, hi = offsets[first], offsets[last] + manifest.chunks[last].length
        problems: list[str] = []
        for record in self.book.live(self.clock()):
            sink = BytesSink(hi - lo)
            try:
                await self.links(record.url).span(manifest.blake3, lo, hi, manifest.size, sink)
            except PeerError as exc:
                problems.append(str(exc))
                continue
            data = bytes(sink.data)
            bad = [
                i
                for i in range(first, last + 1)
                if blake3.blake3(
                    data[offsets[i] - lo : offsets[i] - lo + manifest.chunks[i].length]
                ).digest()
                != manifest.chunks[i].id
            ]
            if sink.filled != hi - lo or bad:
                self.book.ban(record.url, f"bad bytes in {manifest.filename}", self.clock())
                problems.append(f"peer {record.url}: bad bytes")
                continue
            return data[start - lo : stop - lo]
        raise FetchError(
            f"no peer could deliver bytes {start}-{stop - 1} of {manifest.filename}: "
            + ("; ".join(problems[-3:]) or "no live peer")
        )

    async def _download(
        self,
        manifest: FileManifest,
        fd: int,
        partial: Path,
        have: set[int],
        stats: FetchStats,
        progress: Progress | None,
        hasher: _PrefixHasher | None,
        watch: Callable[[int], None] | None = None,
    ) -> None:
        now = self.clock()
        peers = self.book.live(now)
        if not peers and len(have) < len(manifest.chunks):
            raise FetchError(f"no peers to fetch {manifest.filename} from")
        sched = Scheduler(
            [c.length for c in manifest.chunks],
            have,
            [(p.url, int(p.tier)) for p in peers],
            now,
            self.schedule_config,
            rates=self.book.rates(),
            deferred=self.book.backoffs(now),
            latencies=self.book.latencies(),
            queued=self.book.queues(),
        )
        ctx = _Download(manifest, fd, partial, sched, stats, progress, hasher, watch, self.clock)
        ctx.start()
        writer = ChunkWriter(
            fd,
            partial,
            manifest.filename,
            [c.id for c in manifest.chunks],
            sched.offsets,
            ctx.chunk_verified,
            ctx.is_done,
            threaded=manifest.size > SMALL_FILE,
        )
        try:
            await self._run_spans(manifest, sched, ctx, writer, stats)
        finally:
            writer.close()  # no write to the partial file after this

    async def _run_spans(
        self,
        manifest: FileManifest,
        sched: Scheduler,
        ctx: _Download,
        writer: ChunkWriter,
        stats: FetchStats,
    ) -> None:
        wake = anyio.Event()
        clock = self.clock
        fatal: LocalError | None = None

        def replan() -> None:
            wake.set()  # the Event of the moment: ``wake`` is replaced each round

        ctx.on_rate = replan
        # span id -> (span, its sink), while its request runs
        running: dict[int, tuple[Span, SpanSink]] = {}

        async def run(peer: str, span: Span) -> None:
            nonlocal wake, fatal

            def first_byte(t: float) -> None:
                sched.first_byte(peer, span, t)
                wake.set()  # a long link may now take more spans in flight

            sink = SpanSink(
                writer, peer, span.first, span.end, sched.offsets, sched.missing, clock, first_byte
            )
            started = sink.started = clock()
            running[span.id] = (span, sink)
            self.book.reserve(peer, span.stop - span.start)
            try:
                link = self.links(peer)
                await link.span(manifest.blake3, span.start, span.stop, manifest.size, sink)
                await sink.settle()  # its last batches verified and written
                now = clock()
                # Seconds of the peer's whole bandwidth (spans in flight share it).
                seconds = sched.span_finished(peer, span, now, sink.received)
                self.book.observe_transfer(peer, sink.received, seconds)
                if sink.first_byte is not None:  # the round trip, for the next spans
                    self.book.observe_latency(peer, sink.first_byte - started)
            except PeerBusyError as exc:
                log.info("peer %s is busy (503), retry after %gs", peer, exc.retry_after)
                sched.span_failed(peer, span, clock(), Failure.BUSY, exc.retry_after)
            except BadDataError as exc:
                log.warning("banning peer %s: %s", peer, exc)
                self.book.ban(peer, str(exc), clock())
                sched.span_failed(peer, span, clock(), Failure.BAD)
            except AbsentError:
                log.info("peer %s does not hold %s", peer, manifest.filename)
                sched.span_failed(peer, span, clock(), Failure.ABSENT)
            except TooSlowError as exc:
                log.info("span %d-%d from %s: %s", span.first, span.end, peer, exc)
                self.book.observe_slow(peer, clock(), exc.rate)
                sched.span_failed(peer, span, clock(), Failure.SLOW, rate=exc.rate, reason=str(exc))
            except PeerError as exc:
                log.info("span %d-%d from %s failed: %s", span.first, span.end, peer, exc)
                self.book.observe_failure(peer, clock())
                sched.span_failed(peer, span, clock(), Failure.ERROR, reason=str(exc))
            except LocalError as exc:
                # Our disk, not this peer: no failure is counted against it, and
                # the other peers' spans would hit the same disk: stop them all.
                if fatal is None:
                    fatal = exc
            finally:
                self.book.release(peer, span.stop - span.start)
                del running[span.id]
                wake.set()

        failed = False
        async with anyio.create_task_group() as tg:
            while not sched.complete:
                if fatal is not None:
                    break
                if sched.failed():
                    failed = True
                    break
                now = clock()
                for name in sched.ready_peers(now):
                    while (span := sched.assign(name, now)) is not None:
                        tg.start_soon(run, name, span)
                wake = anyio.Event()
                wakeup = sched.next_wakeup(now)
                timeout = math.inf if wakeup is None else max(0.0, wakeup - now)
                with anyio.move_on_after(timeout):
                    await wake.wait()
            if sched.complete:
                self._outrun(running)
            tg.cancel_scope.cancel()  # endgame duplicates still running lost the race
        if fatal is not None:
            raise fatal
        stats.peers = sched.peer_summary()
        if failed:
            summary = "; ".join(f"{n}: {s['dropped']}" for n, s in stats.peers.items())
            raise FetchError(f"no peer could deliver {manifest.filename} ({summary})")

    def _outrun(self, running: dict[int, tuple[Span, SpanSink]]) -> None:
        """Back off the peers whose spans duplicates finished while they still sent.

        A trickling peer that the floor did not cut off (the file was done
        first) is still far slower than the rest: the next file defers it.
        """
        now = self.clock()
        for span, sink in running.values():
            if span.duplicate or sink.received >= span.stop - span.start:
                continue  # a duplicate that lost, or an owner that just finished
            rate = sink.received / max(now - sink.started, 1e-6)
            log.info(
                "peer %s was outrun on chunks %d-%d (%.0f B/s)",
                sink.peer,
                span.first,
                span.end,
                rate,
            )
            self.book.observe_slow(sink.peer, now, rate)


# ---------------------------------------------------------------------- helpers


def _store_locations(store: Store, manifest: FileManifest) -> dict[int, tuple[Path, int]]:
    """Chunk index -> (archive path, offset) for chunks the store holds in other files."""
    out = {}
    for i, c in enumerate(manifest.chunks):
        loc = store.chunk_location(c.id)
        if loc is not None:
            out[i] = (store.file_path(loc.file), loc.offset)
    return out


def _reusable_chunks(
    fd: int, partial: Path, manifest: FileManifest, elsewhere: dict[int, tuple[Path, int]]
) -> set[int]:
    """Chunks already verified in the partial file, or copied from other local files.

    Also sizes a new partial file and reserves its blocks, so a disk too
    full for the file fails here (:class:`LocalError`), before any peer is asked.
    """
    with local_io(partial, "reading"):
        size = os.fstat(fd).st_size
    have: set[int] = set()
    offsets = manifest.chunk_offsets()
    if size == manifest.size and size > 0:
        with local_io(partial, "reading"):
            for i, c in enumerate(manifest.chunks):
                if blake3.blake3(os.pread(fd, c.length, offsets[i])).digest() == c.id:
                    have.add(i)
    else:
        with local_io(partial, "writing"):
            os.ftruncate(fd, manifest.size)
        if manifest.size > SMALL_FILE:
            _reserve(fd, partial, manifest.size)
    for i, (path, offset) in elsewhere.items():
        if i in have:
            continue
        c = manifest.chunks[i]
        try:
            with path.open("rb") as fh:
                data = os.pread(fh.fileno(), c.length, offset)
        except OSError:
            continue
        if len(data) == c.length and blake3.blake3(data).digest() == c.id:
            with local_io(partial, "writing"):
                pwrite_all(fd, data, offsets[i])
            have.add(i)
    return have


def _reserve(fd: int, partial: Path, size: int) -> None:
    """Allocate the partial file's blocks up front: ENOSPC shows now, not mid-transfer.

    A file system that cannot preallocate (EOPNOTSUPP, EINVAL) is fine: the
    writes report a full disk then, and :func:`pwrite_all` never ignores it.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in LOCAL_ERRNOS:
            raise local_error(exc, partial, "reserving space for") from exc


def _hash_fd(fd: int, partial: Path, size: int) -> tuple[bytes, bytes]:
    """sha256 and BLAKE3 of a small file, in one read."""
    with local_io(partial, "reading"):
        data = os.pread(fd, size, 0)
    return hashlib.sha256(data).digest(), blake3.blake3(data).digest()


def _as_hashed(manifest: FileManifest, path: Path) -> Hashed:
    return Hashed(manifest.size, manifest.sha256, manifest.blake3, manifest.chunks, path)


__all__ = ["FetchStats", "FileDownloader", "Progress"]
