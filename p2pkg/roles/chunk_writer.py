"""Verify received chunks and write them into a partial file, on the second core.

A span's body arrives in *batches*: runs of whole chunks of about
:data:`BATCH` bytes received straight into one buffer (large reads, few
calls). A finished batch goes to the :class:`ChunkWriter`'s worker thread,
which checks every chunk against its BLAKE3 id (docs/protocol.md §2.2) and
writes the verified run at its offset with one ``pwrite``, while the event
loop goes on receiving the next batch. BLAKE3 and ``pwrite`` release the
GIL, so receiving and hashing overlap on two cores; batches, not chunks,
cross the thread boundary (a hand-off per chunk was measured slower than
hashing inline).

Nothing unverified is ever written: a batch with a bad chunk writes the
verified chunks before it and reports the bad one, and the span's sink
raises :class:`~p2pkg.errors.BadDataError` at its next bytes or when the
span ends (the downloader bans the peer). When the worker falls behind
(:data:`MAX_QUEUED` batches waiting) or the file is small, a batch is
verified and written inline on the loop instead: the loop does the work
itself rather than queueing without bound.

Results come back to the event loop (``call_soon_threadsafe``), where all
scheduler state lives; the worker only reads ``is_done`` (a stale answer
costs a redundant hash, never a wrong result).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import blake3

from p2pkg.config import CHUNK_PARAMS
from p2pkg.core.link import SinkDone
from p2pkg.errors import BadDataError, LocalError, local_io
from p2pkg.io.fsutil import pwrite_all

BATCH = 1 << 20  # bytes of whole chunks handed to the worker at once (at least)
MAX_QUEUED = 8  # batches waiting for the worker before the loop verifies inline
# On a slow link a batch takes long to fill: its whole chunks go out after this
# long, so the verified prefix (which a cache streams to an installer) keeps
# growing chunk by chunk instead of jumping a batch at a time.
FLUSH_AFTER = 0.02
# A batch is whole chunks up to the first boundary past BATCH: this holds any.
CAPACITY = BATCH + CHUNK_PARAMS.max_size


@dataclass
class _Batch:
    sink: SpanSink
    buf: bytearray  # the batch is buf[:size]
    size: int
    first: int  # chunk indexes first .. end-1, starting at file offset `start`
    end: int
    start: int


@dataclass
class _Result:
    verified: list[int] = field(default_factory=list)
    bad: int | None = None
    error: LocalError | None = None


class ChunkWriter:
    """Verifies batches of one file's chunks and writes them to its partial file.

    ``ids``/``offsets``: the manifest's chunk ids and their offsets (one more
    offset than ids: the file size). ``on_verified(peer, index)`` runs on
    the event loop for each chunk verified and written; ``is_done(index)``
    says a chunk is already in (a duplicate span's copy is not re-checked).
    ``threaded=False`` verifies every batch inline (small files).
    """

    def __init__(
        self,
        fd: int,
        path: Path,
        filename: str,
        ids: Sequence[bytes],
        offsets: Sequence[int],
        on_verified: Callable[[str, int], None],
        is_done: Callable[[int], bool],
        *,
        threaded: bool,
    ) -> None:
        self.fd = fd
        self.path = path
        self.filename = filename
        self.ids = ids
        self.offsets = offsets
        self.on_verified = on_verified
        self.is_done = is_done
        self._loop = asyncio.get_running_loop()
        self._pool: list[bytearray] = []
        self._queued = 0
        self._closed = False
        self._jobs: collections.deque[_Batch] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="p2pkg-verify", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ loop side

    def take_buffer(self, size: int) -> bytearray:
        """A buffer for a batch of ``size`` bytes (batch-sized ones are recycled)."""
        if size > CAPACITY:  # chunks larger than the format allows: the peer check fails
            return bytearray(size)
        if self._pool:
            return self._pool.pop()
        return bytearray(CAPACITY if size >= BATCH else size)

    def submit(self, batch: _Batch) -> None:
        """Verify and write ``batch``: on the worker, or inline when it is behind."""
        batch.sink.pending += 1
        if self._thread is None or self._queued >= MAX_QUEUED:
            self._complete(batch, self._process(batch))
            return
        self._queued += 1
        with self._cond:
            self._jobs.append(batch)
            self._cond.notify()

    def _complete(self, batch: _Batch, result: _Result) -> None:
        if len(batch.buf) == CAPACITY and len(self._pool) < MAX_QUEUED:
            self._pool.append(batch.buf)
        sink = batch.sink
        if not self._closed:
            for index in result.verified:
                self.on_verified(sink.peer, index)
            if result.error is not None:
                sink.fail(result.error)
            elif result.bad is not None:
                sink.fail(
                    BadDataError(
                        sink.peer, f"chunk {result.bad} of {self.filename} failed verification"
                    )
                )
        sink.batch_settled()

    def _from_worker(self, batch: _Batch, result: _Result) -> None:
        self._queued -= 1
        self._complete(batch, result)

    def close(self) -> None:
        """Stop the worker; batches not yet taken are dropped, none is written after."""
        self._closed = True
        if self._thread is None:
            return
        with self._cond:
            self._jobs.clear()
            self._cond.notify()
        self._thread.join()
        self._thread = None

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = self._jobs.popleft()
            result = self._process(batch)
            try:
                self._loop.call_soon_threadsafe(self._from_worker, batch, result)
            except RuntimeError:  # the loop is gone: nobody waits for the result
                return

    def _process(self, batch: _Batch) -> _Result:
        """Check each chunk of ``batch``; write each verified run at its offset."""
        result = _Result()
        view = memoryview(batch.buf)
        base = batch.start
        run_from: int | None = None  # first chunk of the verified run not yet written
        try:
            for i in range(batch.first, batch.end):
                lo, hi = self.offsets[i] - base, self.offsets[i + 1] - base
                if self.is_done(i):
                    self._write(view, base, run_from, i)
                    run_from = None
                    result.verified.append(i)  # counted for this peer, already in
                    continue
                if blake3.blake3(view[lo:hi]).digest() != self.ids[i]:
                    self._write(view, base, run_from, i)
                    result.bad = i
                    return result
                if run_from is None:
                    run_from = i
                result.verified.append(i)
            self._write(view, base, run_from, batch.end)
        except LocalError as exc:
            result.verified = []
            result.error = exc
        finally:
            view.release()
        return result

    def _write(self, view: memoryview, base: int, first: int | None, end: int) -> None:
        if first is None or first == end:
            return
        lo, hi = self.offsets[first] - base, self.offsets[end] - base
        with local_io(self.path, "writing"):
            pwrite_all(self.fd, view[lo:hi], self.offsets[first])


class SpanSink:
    """Receives one span's body into batch buffers for a :class:`ChunkWriter`.

    ``offsets``: the file's chunk offsets; ``needed(first, end)`` says
    whether any of chunks ``first .. end - 1`` is still missing (a duplicate
    that lost the race stops early with :class:`~p2pkg.core.link.SinkDone`);
    ``clock`` times the first byte (the peer's latency), which
    ``on_first_byte(t)`` hears of at once.
    """

    def __init__(
        self,
        writer: ChunkWriter,
        peer: str,
        first: int,
        end: int,
        offsets: Sequence[int],
        needed: Callable[[int, int], bool],
        clock: Callable[[], float],
        on_first_byte: Callable[[float], None] | None = None,
    ) -> None:
        self.writer = writer
        self.peer = peer
        self.end = end
        self.offsets = offsets
        self.needed = needed
        self.received = 0  # body bytes arrived (the peer's measured rate)
        self.started = 0.0  # when its request was sent (the downloader's clock)
        self.first_byte: float | None = None  # when its first body byte came
        self.clock = clock
        self.on_first_byte = on_first_byte
        self.pending = 0  # batches submitted, not yet settled
        self._error: BadDataError | LocalError | None = None
        self._settled: anyio.Event | None = None
        self._first = first  # the batch being received: chunks _first.._stop-1
        self._stop = first
        self._filled = 0
        self._size = 0
        self._opened = 0.0  # when the batch's buffer was opened
        self._buf = bytearray()
        self._next_batch()

    def _next_batch(self) -> None:
        first = stop = self._stop
        while stop < self.end and (
            stop == first or self.offsets[stop] - self.offsets[first] < BATCH
        ):
            stop += 1
        self._first, self._stop = first, stop
        self._filled = 0
        self._size = self.offsets[stop] - self.offsets[first]
        self._buf = self.writer.take_buffer(self._size) if self._size else bytearray()
        self._opened = self.clock()

    def _flush_whole_chunks(self) -> None:
        """Submit the whole chunks of a batch filling slowly; keep receiving the rest."""
        base = self.offsets[self._first]
        cut = self._first
        while cut < self._stop and self.offsets[cut + 1] - base <= self._filled:
            cut += 1
        if cut == self._first:
            return  # not one whole chunk yet
        done = self.offsets[cut] - base
        old = self._buf
        self.writer.submit(_Batch(self, old, done, self._first, cut, base))
        self._first = cut
        self._size -= done
        self._filled -= done
        self._buf = self.writer.take_buffer(self._size)
        self._buf[: self._filled] = old[done : done + self._filled]
        self._opened = self.clock()

    # -- the Sink protocol (called from the link's read loop)

    def buffer(self) -> memoryview:
        return memoryview(self._buf)[self._filled : self._size]

    def advance(self, n: int) -> None:
        if self._error is not None:
            raise self._error
        if self.first_byte is None:
            self.first_byte = self.clock()
            if self.on_first_byte is not None:
                self.on_first_byte(self.first_byte)
        self._filled += n
        self.received += n
        if self._filled < self._size:
            if self.clock() - self._opened >= FLUSH_AFTER:
                self._flush_whole_chunks()
                if self._error is not None:  # verified inline, and bad
                    raise self._error
            return
        batch = _Batch(
            self, self._buf, self._size, self._first, self._stop, self.offsets[self._first]
        )
        self.writer.submit(batch)
        if self._error is not None:  # verified inline, and bad
            raise self._error
        if self._stop < self.end and not self.needed(self._stop, self.end):
            raise SinkDone  # a duplicate finished the rest of this span first
        self._next_batch()

    # -- results (on the loop, from the writer)

    def fail(self, error: BadDataError | LocalError) -> None:
        if self._error is None:
            self._error = error

    def batch_settled(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self._settled is not None:
            self._settled.set()

    async def settle(self) -> None:
        """Wait until every batch received is verified and written; raise what went wrong."""
        if self.pending:
            self._settled = anyio.Event()
            await self._settled.wait()
        if self._error is not None:
            raise self._error


__all__ = ["BATCH", "MAX_QUEUED", "ChunkWriter", "SpanSink"]
