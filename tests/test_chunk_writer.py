"""Batches of chunks verified and written on the second core (p2pkg.roles.chunk_writer)."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import anyio
import blake3
import pytest

from p2pkg.errors import BadDataError
from p2pkg.roles import chunk_writer
from p2pkg.roles.chunk_writer import BATCH, MAX_QUEUED, ChunkWriter, SpanSink
from tests.fakes import FakeClock

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024


class File:
    """A file of equal chunks, its partial file and what the writer reported."""

    def __init__(self, tmp: Path, chunks: int, *, corrupt: int | None = None) -> None:
        rng = random.Random(chunks)
        self.data = rng.randbytes(chunks * CHUNK)
        self.offsets = [i * CHUNK for i in range(chunks + 1)]
        self.ids = [blake3.blake3(self.data[o : o + CHUNK]).digest() for o in self.offsets[:-1]]
        self.sent = bytearray(self.data)
        if corrupt is not None:
            self.sent[corrupt * CHUNK + 5] ^= 0xFF
        self.path = tmp / "partial"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, len(self.data))
        self.done = bytearray(chunks)
        self.verified: list[int] = []

    def on_verified(self, peer: str, index: int) -> None:
        self.verified.append(index)
        self.done[index] = 1

    def writer(self, *, threaded: bool = True) -> ChunkWriter:
        return ChunkWriter(
            self.fd,
            self.path,
            "demo.whl",
            self.ids,
            self.offsets,
            self.on_verified,
            lambda i: bool(self.done[i]),
            threaded=threaded,
        )

    def sink(self, writer: ChunkWriter, clock: FakeClock | None = None) -> SpanSink:
        def needed(first: int, end: int) -> bool:
            return not all(self.done[first:end])

        return SpanSink(
            writer, "peer", 0, len(self.ids), self.offsets, needed, clock or FakeClock()
        )

    def on_disk(self) -> bytes:
        return os.pread(self.fd, len(self.data), 0)


def feed(sink: SpanSink, body: bytes | bytearray, piece: int = 100_000) -> None:
    pos = 0
    while pos < len(body):
        view = sink.buffer()
        n = min(len(view), piece, len(body) - pos)
        view[:n] = body[pos : pos + n]
        sink.advance(n)
        pos += n


async def test_batches_are_verified_and_written_off_the_loop(tmp_path: Path) -> None:
    f = File(tmp_path, 40)  # 2.5 MiB: three batches
    writer = f.writer()
    try:
        sink = f.sink(writer)
        feed(sink, f.sent)
        with anyio.fail_after(5):
            await sink.settle()
    finally:
        writer.close()
    assert sorted(f.verified) == list(range(40))
    assert f.on_disk() == f.data


@pytest.mark.parametrize("threaded", [True, False])
async def test_a_bad_chunk_writes_nothing_of_itself_or_after_and_fails_the_span(
    tmp_path: Path, threaded: bool
) -> None:
    f = File(tmp_path, 12, corrupt=5)  # one batch of 12 chunks (768 KiB)
    writer = f.writer(threaded=threaded)
    try:
        sink = f.sink(writer)
        with pytest.raises(BadDataError, match=r"chunk 5 of demo\.whl"):
            feed(sink, f.sent)
            with anyio.fail_after(5):
                await sink.settle()
    finally:
        writer.close()
    assert f.verified == [0, 1, 2, 3, 4]
    disk = f.on_disk()
    assert disk[: 5 * CHUNK] == f.data[: 5 * CHUNK]
    assert disk[5 * CHUNK :] == bytes(7 * CHUNK)  # never written: zeros


async def test_a_slowly_filling_batch_hands_over_its_whole_chunks(tmp_path: Path) -> None:
    """On a slow link the verified prefix grows chunk by chunk, not a batch at a time."""
    f = File(tmp_path, 20)
    clock = FakeClock()
    writer = f.writer(threaded=False)
    try:
        sink = f.sink(writer, clock)
        feed(sink, f.sent[: 3 * CHUNK + 10])  # three whole chunks and a bit, quickly
        assert f.verified == []  # a batch is 1 MiB: not full yet
        clock.advance(chunk_writer.FLUSH_AFTER)
        feed(sink, f.sent[3 * CHUNK + 10 : 3 * CHUNK + 20])
        assert f.verified == [0, 1, 2]
        feed(sink, f.sent[3 * CHUNK + 20 :])
        await sink.settle()
    finally:
        writer.close()
    assert sorted(f.verified) == list(range(20))
    assert f.on_disk() == f.data


async def test_a_worker_falling_behind_makes_the_loop_verify_inline(tmp_path: Path) -> None:
    """At most MAX_QUEUED batches wait for the worker: memory stays bounded."""
    chunks = (MAX_QUEUED + 3) * (BATCH // CHUNK)
    f = File(tmp_path, chunks)
    gate = threading.Event()
    loop_thread = threading.get_ident()
    inline: list[int] = []

    def is_done(i: int) -> bool:
        if threading.get_ident() != loop_thread:
            gate.wait(10)  # the worker is stuck until the loop has done its share
        else:
            inline.append(i)
        return bool(f.done[i])

    writer = ChunkWriter(
        f.fd, f.path, "demo.whl", f.ids, f.offsets, f.on_verified, is_done, threaded=True
    )
    try:
        sink = f.sink(writer)
        feed(sink, f.sent)
        # The first batch is with the worker, MAX_QUEUED wait; the rest ran here.
        assert len(inline) >= 2 * (BATCH // CHUNK)
        gate.set()
        with anyio.fail_after(10):
            await sink.settle()
    finally:
        gate.set()
        writer.close()
    assert sorted(f.verified) == list(range(chunks))
    assert f.on_disk() == f.data


async def test_a_duplicate_span_stops_once_its_rest_is_in(tmp_path: Path) -> None:
    from p2pkg.core.link import SinkDone

    f = File(tmp_path, 40)
    writer = f.writer(threaded=False)
    try:
        sink = f.sink(writer)
        for i in range(16, 40):
            f.done[i] = 1  # another peer delivered the rest
        with pytest.raises(SinkDone):
            feed(sink, f.sent)
        await sink.settle()
    finally:
        writer.close()
    assert sorted(f.verified)[:16] == list(range(16))
