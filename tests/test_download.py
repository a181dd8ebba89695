"""The file downloader over fake links: seeded faults, no sockets (the Link seam)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from p2pkg.core.link import Sink, SinkDone
from p2pkg.core.objects import FileManifest, ObjectId
from p2pkg.core.peers import PeerBook, Tier
from p2pkg.core.schedule import ScheduleConfig
from p2pkg.errors import (
    AbsentError,
    FetchError,
    PeerBusyError,
    ProtocolError,
    TooSlowError,
    TransportError,
)
from p2pkg.io.ingest import hash_bytes
from p2pkg.roles.download import FileDownloader

pytestmark = pytest.mark.anyio

MODES = ("ok", "corrupt", "reset", "absent", "busy", "drop")


#: Real seconds a trickling link runs before "the client's floor" cuts it off.
TRICKLE_CUT = 0.6


class FakeLink:
    """A peer holding ``data``, misbehaving as ``mode`` says; pieces sized by ``rng``.

    Besides :data:`MODES`: ``trickle`` sends a byte every 10 ms and is cut off
    after :data:`TRICKLE_CUT` seconds with the HTTP client's
    :class:`TooSlowError`; ``liar`` sends half of each span, then nothing.
    """

    def __init__(self, url: str, data: bytes, mode: str, rng: random.Random) -> None:
        self.url = url
        self.data = data
        self.mode = mode
        self.rng = rng
        self.requests = 0

    async def span(self, blake3: bytes, start: int, stop: int, size: int, sink: Sink) -> None:
        self.requests += 1
        if self.mode == "absent":
            raise AbsentError(self.url, "not held (404)")
        if self.mode == "busy" and self.rng.random() < 0.5:
            raise PeerBusyError(self.url, 0.01)
        if self.mode == "drop" and self.rng.random() < 0.5:
            raise TransportError(self.url, "connection refused")
        if self.mode == "trickle":
            await self._trickle(start, stop, sink)
        if self.mode == "liar":
            await self._send(self.data[start : start + (stop - start) // 2], sink)
            await anyio.sleep_forever()  # the Content-Length said more
        body = bytearray(self.data[start:stop])
        if self.mode == "corrupt":
            body[self.rng.randrange(len(body))] ^= 0xFF
        cut = self.rng.randrange(len(body)) if self.mode == "reset" else len(body)
        pos = 0
        try:
            while pos < len(body):
                if pos >= cut:
                    raise TransportError(self.url, "connection reset")
                view = sink.buffer()
                n = min(len(view), len(body) - pos, self.rng.randint(1, 70_000), cut - pos or 1)
                view[:n] = body[pos : pos + n]
                sink.advance(n)
                pos += n
                await anyio.sleep(0)
        except SinkDone:
            return

    async def _trickle(self, start: int, stop: int, sink: Sink) -> None:
        with anyio.move_on_after(TRICKLE_CUT):
            for i in range(start, stop):
                await self._send(self.data[i : i + 1], sink)
                await anyio.sleep(0.01)
        raise TooSlowError(self.url, "100 B/s below the floor 32768 B/s", 100.0)

    @staticmethod
    async def _send(body: bytes, sink: Sink) -> None:
        pos = 0
        with contextlib.suppress(SinkDone):
            while pos < len(body):
                view = sink.buffer()
                n = min(len(view), len(body) - pos)
                view[:n] = body[pos : pos + n]
                sink.advance(n)
                pos += n
                await anyio.sleep(0)

    async def chunks(self, ids: Sequence[bytes], size: int, sink: Sink) -> None:
        raise ProtocolError(self.url, "chunk batch: HTTP 405", 405)  # a static server

    async def object(self, oid: ObjectId) -> bytes:
        raise AbsentError(self.url, "no objects here")

    async def objects(self, oids: Sequence[ObjectId]) -> list[bytes]:
        raise AbsentError(self.url, "no objects here")

    async def root(self, version: int | None = None) -> bytes:
        raise AbsentError(self.url, "no root here")

    def close(self) -> None:
        pass


def manifest_of(data: bytes, name: str = "demo-1.0-py3-none-any.whl") -> FileManifest:
    sha, b3, chunks = hash_bytes(data)
    return FileManifest(name, "1.0", len(data), sha, b3, "", None, 0, None, chunks)


async def _fetch(
    data: bytes, modes: Sequence[str], seed: int, dest: Path, book: PeerBook | None = None
) -> tuple[PeerBook, dict[str, FakeLink], Path]:
    rng = random.Random(seed)
    links = {f"peer{i}-{m}": FakeLink(f"peer{i}-{m}", data, m, rng) for i, m in enumerate(modes)}
    book = book or PeerBook()
    for url in links:
        book.add(url, Tier.MIRROR)
    downloader = FileDownloader(links.__getitem__, book)
    with anyio.fail_after(30):
        path, _ = await downloader.fetch_file(manifest_of(data), dest)
    return book, links, path


@pytest.mark.parametrize("seed", range(12))
async def test_faulty_links_never_corrupt_the_file(tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    data = rng.randbytes(rng.randint(1, 3_000_000))
    modes = ["ok", *rng.sample(MODES[1:], k=rng.randint(1, 4))]
    rng.shuffle(modes)
    book, links, path = await _fetch(data, modes, seed, tmp_path)
    assert path.read_bytes() == data, f"seed {seed}, modes {modes}"
    banned = set(book.banned(float("-inf")))
    for url, link in links.items():
        if link.mode == "corrupt" and link.requests:
            assert url in banned, f"seed {seed}: corrupt {url} not banned"
        if link.mode == "ok":
            assert url not in banned, f"seed {seed}: honest {url} banned"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], f"seed {seed}: leftovers"


async def test_only_bad_links_write_nothing(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(500_000)
    with pytest.raises(FetchError):
        await _fetch(data, ["corrupt", "absent", "reset"], 7, tmp_path)
    assert not (tmp_path / "demo-1.0-py3-none-any.whl").exists()


async def test_measured_rates_outlive_one_file(tmp_path: Path) -> None:
    """The peer book keeps what a download measured: the next file starts from it."""
    data = random.Random(3).randbytes(2_000_000)
    book, _, _ = await _fetch(data, ["ok"], 3, tmp_path / "a")
    rate = book.rates()["peer0-ok"]
    assert rate > 0
    # the scheduler of the next file sizes its first span from that rate
    from p2pkg.core.schedule import ScheduleConfig, Scheduler

    cfg = ScheduleConfig()
    fresh = Scheduler([65_536] * 2000, (), [("peer0-ok", 1)], 0.0, cfg)
    known = Scheduler([65_536] * 2000, (), [("peer0-ok", 1)], 0.0, cfg, rates=book.rates())
    first_fresh = fresh.assign("peer0-ok", 0.0)
    first_known = known.assign("peer0-ok", 0.0)
    assert first_fresh is not None and first_known is not None
    assert first_fresh.stop - first_fresh.start == cfg.initial_span
    expected = max(cfg.min_span, min(cfg.max_span, int(rate * cfg.target_span_seconds)))
    assert abs((first_known.stop - first_known.start) - expected) <= 65_536


async def _slow_pair(
    tmp_path: Path, mode: str
) -> tuple[PeerBook, dict[str, FakeLink], list[float]]:
    """A ``mode`` peer listed first beside an honest one; two files; seconds for each."""
    rng = random.Random(5)
    first, second = rng.randbytes(3_000_000), rng.randbytes(2_000_000)
    links = {u: FakeLink(u, b"", m, rng) for u, m in [("slow", mode), ("honest", "ok")]}
    book = PeerBook()
    for url in links:
        book.add(url)
    downloader = FileDownloader(links.__getitem__, book)
    took = []
    for n, data in enumerate((first, second)):
        for link in links.values():
            link.data = data
        started = time.monotonic()
        with anyio.fail_after(10):
            path, _ = await downloader.fetch_file(
                manifest_of(data, f"f{n}-1.0-py3-none-any.whl"), tmp_path
            )
        took.append(time.monotonic() - started)
        assert path.read_bytes() == data
    return book, links, took


@pytest.mark.parametrize("mode", ["trickle", "liar"])
async def test_a_slow_peer_beside_an_honest_one_costs_a_bounded_penalty(
    tmp_path: Path, mode: str
) -> None:
    """Slow retrieval: a trickler or a Content-Length liar listed first costs the first
    file about ``stall_after`` (its span is duplicated) and the next file nothing: the
    peer book backs it off (not a ban) and the next file defers it."""
    book, links, took = await _slow_pair(tmp_path, mode)
    assert took[0] < ScheduleConfig().stall_after + 1.0, took
    assert links["slow"].requests == 1, "the second file did not ask the slow peer"
    assert "slow" in book.backoffs(time.monotonic()) and not book.banned(time.monotonic())
    rates = book.rates()
    assert rates["slow"] < rates["honest"] / 10  # what it showed: asked last, smallest spans
    assert [r.url for r in book.live(time.monotonic())] == ["honest", "slow"]


async def test_a_sole_trickling_peer_fails_the_fetch_saying_it_is_too_slow(tmp_path: Path) -> None:
    data = random.Random(6).randbytes(200_000)
    link = FakeLink("trickler", data, "trickle", random.Random(6))
    book = PeerBook()
    book.add("trickler")
    downloader = FileDownloader(
        {"trickler": link}.__getitem__, book, schedule_config=ScheduleConfig(backoff=0.01)
    )
    started = time.monotonic()
    with anyio.fail_after(10), pytest.raises(FetchError, match="too slow: 100 B/s below the floor"):
        await downloader.fetch_file(manifest_of(data), tmp_path)
    assert time.monotonic() - started < ScheduleConfig().max_failures * TRICKLE_CUT + 1.0
    assert link.requests == ScheduleConfig().max_failures
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".whl")]


@pytest.mark.parametrize("size", [50_000, 3_000_000])  # the inline path and the worker's
async def test_chunks_are_the_check_and_paranoid_re_hashes_the_whole_file(
    tmp_path: Path, size: int
) -> None:
    """Only a manifest whose sha256 disagrees with its own chunks tells the two apart.

    No honest master writes one (publish computes all three in one pass): by
    default the chunks are the check; ``paranoid`` also re-hashes the file.
    """
    import dataclasses

    from p2pkg.errors import IntegrityError

    data = random.Random(size).randbytes(size)
    odd = dataclasses.replace(manifest_of(data), sha256=b"\x00" * 32)
    for paranoid in (False, True):
        book = PeerBook()
        book.add("ok", Tier.MIRROR)
        link = FakeLink("ok", data, "ok", random.Random(1))
        downloader = FileDownloader({"ok": link}.__getitem__, book, paranoid=paranoid)
        dest = tmp_path / str(paranoid)
        with anyio.fail_after(30):
            if paranoid:
                with pytest.raises(IntegrityError):
                    await downloader.fetch_file(odd, dest)
                assert not (dest / odd.filename).exists()  # nothing at the destination
            else:
                path, _ = await downloader.fetch_file(odd, dest)
                assert path.read_bytes() == data


async def test_many_files_at_once_spread_over_the_peers(tmp_path: Path) -> None:
    """Each file's scheduler sees what the others queued on each peer (the book)."""
    rng = random.Random(5)
    # Small files (no rate sample) from two peers the book measured alike.
    files = [rng.randbytes(rng.randint(5_000, 60_000)) for _ in range(32)]
    manifests = [manifest_of(d, f"f{i}-1.0-py3-none-any.whl") for i, d in enumerate(files)]
    by_b3 = {m.blake3: d for m, d in zip(manifests, files, strict=True)}

    class Holder(FakeLink):
        """An honest peer holding every file; each request waits a round trip."""

        async def span(self, blake3: bytes, start: int, stop: int, size: int, sink: Sink) -> None:
            self.requests += 1
            await anyio.sleep(0.005 if self.url == "peer-a" else 0.01)  # a is nearer
            one = FakeLink(self.url, by_b3[blake3], "ok", self.rng)
            await one.span(blake3, start, stop, size, sink)

    links = {u: Holder(u, b"", "ok", random.Random(1)) for u in ("peer-a", "peer-b")}
    book = PeerBook()
    for url in links:
        book.add(url, Tier.MIRROR)
        book.observe_transfer(url, 1 << 20, 1.0)  # 1 MiB/s: a queue outweighs timing jitter
        book.observe_latency(url, 0.005 if url == "peer-a" else 0.01)
    downloader = FileDownloader(links.__getitem__, book)
    limiter = anyio.CapacityLimiter(16)

    async def one(m: FileManifest) -> None:
        async with limiter:
            path, _ = await downloader.fetch_file(m, tmp_path)
        assert path.read_bytes() == by_b3[m.blake3]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for m in manifests:
                tg.start_soon(one, m)
    asked = sorted(link.requests for link in links.values())
    assert sum(asked) == len(files)
    # Without the book's queues every file went to the nearer peer: [0, 32].
    assert asked[0] >= len(files) // 8, asked
    assert not book.queues()  # every reservation released
