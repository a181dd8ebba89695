"""Slow retrieval (issue 10): real trickling and lying peers on 127.0.0.1.

A :class:`netsim.trickler.Trickler` answers like an honest peer — right
status, Content-Length, Content-Range — then sends the body at 1 byte/s,
or half of it and nothing more (a Content-Length lie). Beside an honest
:class:`PeerServer` a fetch must cost what the honest peer needs plus a
bounded penalty; alone, a trickler must fail the fetch with "too slow"
long before the trickle would end. Floors are small here (a 0.5 s window)
so each test takes a few seconds; the CLI test runs the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from netsim.trickler import Trickler
from p2pkg.core.schedule import ScheduleConfig
from p2pkg.errors import FetchError
from p2pkg.io.http.client import ClientConfig, PeerClient, TooSlowError
from p2pkg.roles.session import Session

from .netutil import Master, Services, archive_path, make_master, services

pytestmark = [pytest.mark.anyio, pytest.mark.net]

#: The floor of the product (32 KiB/s), measured over half a second instead of two.
FLOOR = ClientConfig(rate_window=0.5, head_timeout=2.0, connect_timeout=2.0)


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=3 << 20)


async def _peers(svc: Services, master: Master, **trickle: object) -> tuple[str, Trickler, str]:
    """An honest peer, and a trickler in front of it: (honest URL, trickler, its URL)."""
    honest = await svc.server(master.store)
    trickler = Trickler(honest.url, **trickle)  # type: ignore[arg-type]
    return honest.url, trickler, await svc.start(trickler.run)


async def _timed_fetch(
    master: Master, peers: Sequence[str], out: Path, specs: Sequence[str] = ("big", "small")
) -> tuple[float, Session]:
    """Seconds to resolve and fetch ``specs`` (checked) with a fresh session on ``peers``."""
    session = Session(master.pins, peers, client_config=FLOOR)
    started = time.monotonic()
    try:
        with anyio.fail_after(30):
            for spec in specs:
                path, _ = await session.fetch(spec, out)
                original = master.big if spec == "big" else master.small
                assert path.read_bytes() == original.read_bytes(), spec
    finally:
        session.close()
    return time.monotonic() - started, session


@contextlib.asynccontextmanager
async def _dripping(pieces: Sequence[bytes], every: float) -> AsyncIterator[str]:
    """A server answering any request with ``pieces``, one every ``every`` seconds."""
    handlers: set[asyncio.Task[object]] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(every)
            await reader.read()  # until the client goes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def _split(data: bytes, n: int) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("where", ["head", "body"])
async def test_the_client_cuts_off_a_trickle_at_the_floor(where: str) -> None:
    """1 byte every 50 ms (20 B/s): never "no progress", always below the floor."""
    body = b"x" * 1000
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    pieces = [*_split(head, 1), body] if where == "head" else [head, *_split(body, 1)]
    async with _dripping(pieces, 0.05) as url:
        client = PeerClient(url, FLOOR)
        started = time.monotonic()
        try:
            with anyio.fail_after(5), pytest.raises(TooSlowError) as caught:
                await client.get_bytes("/p2pkg/v1/root", 1 << 20)
        finally:
            client.close()
    took = time.monotonic() - started
    assert FLOOR.rate_window <= took < FLOOR.rate_window + 0.5, took
    message = str(caught.value)
    expected = "response head not complete" if where == "head" else "B/s below the floor 32768"
    assert "too slow: " in message and expected in message, message
    assert caught.value.rate < 100


async def test_a_slow_body_above_the_floor_is_not_cut_off() -> None:
    """40 KB at about 50 KB/s for 0.8 s: over the floor of 32 KiB/s in every window."""
    body = bytes(40_000)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    async with _dripping([head, *_split(body, 2_500)], 0.05) as url:
        client = PeerClient(url, FLOOR)
        try:
            with anyio.fail_after(5):
                status, got, _ = await client.get_bytes("/p2pkg/v1/root", 1 << 20)
        finally:
            client.close()
    assert status == 200 and got == body


async def test_a_sole_trickling_file_peer_fails_the_fetch_as_too_slow(
    master: Master, tmp_path: Path
) -> None:
    """No minimum-rate floor used to mean a 20 KB fetch from a 1 B/s peer ran for hours."""
    async with services() as svc:
        _, trickler, url = await _peers(svc, master, only=("files",))
        session = Session(
            master.pins, [url], client_config=FLOOR, schedule_config=ScheduleConfig(backoff=0.05)
        )
        started = time.monotonic()
        try:
            with (
                anyio.fail_after(15),
                pytest.raises(FetchError, match=r"too slow: .* below the floor"),
            ):
                await session.fetch("small", tmp_path / "out")
        finally:
            session.close()
        took = time.monotonic() - started
    attempts = ScheduleConfig().max_failures
    assert trickler.asked["files"] == attempts
    # Each attempt: one window, and a tick to notice; the back-offs are small here.
    assert took < attempts * (FLOOR.rate_window + 0.25) + 1.5, took
    assert not (tmp_path / "out" / master.small.name).exists()


async def test_a_trickler_beside_an_honest_peer_costs_a_bounded_penalty(
    master: Master, tmp_path: Path
) -> None:
    """Roots, objects and files trickled at 1 B/s by the first peer listed."""
    async with services() as svc:
        honest, trickler, url = await _peers(svc, master)
        alone, _ = await _timed_fetch(master, [honest], tmp_path / "alone")
        both, session = await _timed_fetch(master, [url, honest], tmp_path / "both")
    # The root refresh gives other peers a grace (0.25 s) once the honest root is in;
    # the trickler is then backed off and asked for nothing else.
    assert both < alone + 1.0, (alone, both)
    assert trickler.asked["root"] == 1 and trickler.asked["files"] == 0, trickler.asked
    assert not session.banned
    assert [r.url for r in session.book.live(session.monotonic())][-1] == url


async def test_trickled_objects_cost_one_hedge_delay(master: Master, tmp_path: Path) -> None:
    """A peer that serves roots at once but trickles objects (manifests, tree nodes)."""
    async with services() as svc:
        honest, trickler, url = await _peers(svc, master, only=("objects",))
        session = Session(master.pins, [url, honest], client_config=FLOOR)
        try:
            await session.refresh_root()
            started = time.monotonic()
            with anyio.fail_after(10):
                first = await session.resolve("big")
            took_first = time.monotonic() - started
            started = time.monotonic()
            with anyio.fail_after(10):
                many = await session.resolve_many(["small", "big"])
            took_more = time.monotonic() - started
        finally:
            session.close()
    assert first.filename == master.big.name
    assert [m.filename for m in many] == [master.small.name, master.big.name]
    assert took_first < 1.0 and took_more < 0.5, (took_first, took_more)
    assert trickler.asked["objects"] == 1, trickler.asked  # outrun once, then asked last


async def test_a_content_length_liar_costs_one_hedge_not_a_stall_per_object(
    master: Master, tmp_path: Path
) -> None:
    """Item 8: half the promised object, then silence, from the first peer listed. It
    used to cost stall_timeout (5 s) per object, and the liar stayed first in line."""
    async with services() as svc:
        honest, liar, url = await _peers(svc, master, lie=True, only=("objects",))
        session = Session(master.pins, [url, honest])  # the product's timeouts
        took = []
        try:
            await session.refresh_root()
            for spec in ("big", "small"):
                started = time.monotonic()
                with anyio.fail_after(20):
                    await session.resolve(spec)
                took.append(time.monotonic() - started)
        finally:
            session.close()
    assert took[0] < 1.0 and took[1] < 0.5, took
    assert liar.asked["objects"] == 1, liar.asked  # outrun once, then asked last
    assert url in session.book.backoffs(session.monotonic()) and not session.banned


async def test_a_lying_file_peer_is_deferred_on_the_next_file(
    master: Master, tmp_path: Path
) -> None:
    async with services() as svc:
        honest, liar, url = await _peers(svc, master, lie=True, only=("files",))
        took, session = await _timed_fetch(master, [url, honest], tmp_path / "out")
    # The first file's span is duplicated once the liar is overdue; the second skips it.
    assert took < 2.0, took
    assert liar.asked["files"] == 1, liar.asked
    assert url in session.book.backoffs(session.monotonic())


async def test_cache_pages_are_not_held_by_a_trickler(master: Master, tmp_path: Path) -> None:
    """The cache's /simple/ pages used to hang on a peer trickling objects."""
    from p2pkg.roles.cache import Cache

    async with services() as svc:
        honest, _, url = await _peers(svc, master)
        cache = Cache(tmp_path / "cache", master.pins, [url, honest])
        client = PeerClient(await svc.start(cache.run))
        try:
            started = time.monotonic()
            with anyio.fail_after(15):
                href = await archive_path(client, "big", master.big.name)
            took = time.monotonic() - started
        finally:
            client.close()
    assert master.big.name in href
    assert took < 2.0, took


async def test_cli_fetch_beside_a_trickler_costs_honest_time_plus_a_bounded_penalty(
    master: Master, tmp_path: Path
) -> None:
    """``p2pkg fetch`` with the product's floors, the trickler listed first."""

    async def fetch(peers: Sequence[str], dest: Path) -> float:
        cmd = [sys.executable, "-m", "p2pkg.cli", "fetch", "big", "--trust", master.pub]
        for peer in peers:
            cmd += ["--peer", peer]
        started = time.monotonic()
        with anyio.fail_after(60):
            done = await anyio.run_process([*cmd, "--dest", str(dest), "--json"])
        took = time.monotonic() - started
        assert json.loads(done.stdout)["filename"] == master.big.name
        assert (dest / master.big.name).read_bytes() == master.big.read_bytes()
        return took

    async with services() as svc:
        honest, trickler, url = await _peers(svc, master)
        alone = await fetch([honest], tmp_path / "alone")
        both = await fetch([url, honest], tmp_path / "both")
    assert both < alone + 1.5, (alone, both)
    assert trickler.asked["files"] == 0, trickler.asked
