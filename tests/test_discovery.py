"""DNS-SD on the loopback interface only (conftest pins P2PKG_LAN_INTERFACE=127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from p2pkg.io import discovery
from p2pkg.io.discovery import Lan, LanAnnouncement, LanPeer, announce_addresses
from p2pkg.io.http.client import PeerClient
from p2pkg.roles.cache import Cache, CacheConfig

from .helpers import await_until
from .netutil import Master, archive_path, make_master, services

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
LOOPBACK = ("127.0.0.1",)


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=300_000)


def our_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks alive now that were not before, other than the test's own."""
    return {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}


@asynccontextmanager
async def announced(*announcements: LanAnnouncement) -> AsyncIterator[None]:
    """Each announcement on its own running Lan (loopback) for the block."""
    async with anyio.create_task_group() as tg:
        for a in announcements:
            await tg.start(partial(Lan(LOOPBACK).run, announce=a))
        yield
        tg.cancel_scope.cancel()


@pytest.mark.net
async def test_announce_and_browse_on_loopback() -> None:
    ours = LanAnnouncement(4321, "cache", "aa" * 32)
    other = LanAnnouncement(4322, "cache", "bb" * 32)  # trusts another namespace's key
    async with announced(ours, other):
        found: list[LanPeer] = []
        for _ in range(5):
            # 1.5 s: two queries a second apart, so one is answered even when the
            # responder multicast its records within the last second (RFC 6762 §6).
            found = await Lan(LOOPBACK).browse(1.5, key="aa" * 32)
            if found:
                break
        assert [p.url for p in found] == ["http://127.0.0.1:4321"]
        assert found[0].role == "cache"


@pytest.mark.net
async def test_run_reports_peers_and_stops_everything_it_started() -> None:
    """on_peer sees the others (not its own announcement); cancelled, no task is left."""
    before = set(asyncio.all_tasks())
    seen: list[LanPeer] = []
    found = anyio.Event()

    def on_peer(peer: LanPeer) -> None:
        seen.append(peer)
        if peer.url == "http://127.0.0.1:4401":
            found.set()

    watcher = Lan(LOOPBACK)
    own = LanAnnouncement(4402, "cache", "aa" * 32)
    with anyio.fail_after(20):
        async with (
            announced(LanAnnouncement(4401, "cache", "aa" * 32)),
            anyio.create_task_group() as tg,
        ):
            await tg.start(partial(watcher.run, announce=own, on_peer=on_peer))
            await found.wait()
            tg.cancel_scope.cancel()
    assert "http://127.0.0.1:4402" not in {p.url for p in seen}
    assert "http://127.0.0.1:4401" in {p.url for p in watcher.peers.values()}
    assert not our_tasks(before)


@pytest.mark.net
async def test_cancelling_run_propagates_and_cleans_up() -> None:
    before = set(asyncio.all_tasks())
    lan = Lan(LOOPBACK)
    start = time.monotonic()
    with anyio.move_on_after(0.5) as scope:
        await lan.run(announce=LanAnnouncement(4403, "cache", "aa" * 32), on_peer=lambda p: None)
    assert scope.cancelled_caught  # run re-raised the cancellation; the scope caught it
    assert time.monotonic() - start < 0.5 + discovery.CLOSE_TIMEOUT * 2  # cleanup is bounded
    assert not our_tasks(before)
    with anyio.move_on_after(0.1):  # and it can run again
        await lan.run()


@pytest.mark.net
async def test_browse_returns_after_wait_without_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps = 0
    real_sleep = anyio.sleep

    async def counting_sleep(delay: float) -> None:
        nonlocal sleeps
        sleeps += 1
        await real_sleep(delay)

    monkeypatch.setattr(anyio, "sleep", counting_sleep)
    before = set(asyncio.all_tasks())
    start = time.monotonic()
    assert await Lan(LOOPBACK).browse(1.0, key="dd" * 32) == []
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 2.0, elapsed
    assert sleeps <= 1  # one timed wait, not a loop of short sleeps
    assert not our_tasks(before)


@pytest.mark.net
async def test_fetch_and_caches_find_a_lan_cache(master: Master, tmp_path: Path) -> None:
    async with services() as svc:
        origin = await svc.server(master.store)
        lan_config = CacheConfig(lan=True, lan_interfaces=LOOPBACK)
        first = Cache(tmp_path / "c1", master.pins, [origin.url], config=lan_config)
        url1 = await svc.start(first.run)
        second = Cache(tmp_path / "c2", master.pins, [origin.url], config=lan_config)
        url2 = await svc.start(second.run)
        # `p2pkg fetch` with no --peer finds the caches on the LAN and fetches through one.
        cmd = [
            sys.executable,
            "-m",
            "p2pkg.cli",
            "fetch",
            "small",
            "--trust",
            master.pub,
            "--dest",
            str(tmp_path / "out"),
            "--json",
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        result = json.loads(out)
        assert set(result["peers"]) <= {url1, url2} and result["peers"]
        assert (tmp_path / "out" / master.small.name).read_bytes() == master.small.read_bytes()

        # The second cache discovers the first and prefers it (tier 0) over the origin:
        # an archive the first cache holds comes from it, not from the origin.
        await await_until(
            lambda: url1 in second.status()["lan_peers"],
            what="the second cache to discover the first",
        )

        async def get_big(url: str) -> bytes:
            client = PeerClient(url)
            try:
                href = await archive_path(client, "big", "big-1.0-py3-none-any.whl")
                status, body, _ = await client.get_bytes(href, 10 << 20)
                assert status == 200
                return body
            finally:
                client.close()

        assert await get_big(url1) == master.big.read_bytes()  # warms the first cache
        before = origin.stats.bytes_sent
        assert await get_big(url2) == master.big.read_bytes()
        assert origin.stats.bytes_sent - before < 100_000  # pages' objects at most


@pytest.mark.parametrize(
    ("listening_on", "interfaces", "expected"),
    [
        # bound to every interface: announce the interfaces' addresses
        ("0.0.0.0", None, ["192.0.2.7", "198.51.100.3"]),
        ("0.0.0.0", ("127.0.0.1",), ["127.0.0.1"]),
        # bound to loopback: nobody on a LAN can reach it, so no announcement...
        ("127.0.0.1", None, []),
        ("127.0.0.1", ("192.0.2.7",), []),
        # ...unless mDNS itself is pinned to loopback (tests, the demo)
        ("127.0.0.1", ("127.0.0.1",), ["127.0.0.1"]),
        # bound to one address: that address only, never the host's others
        ("192.0.2.7", None, ["192.0.2.7"]),
        ("::1", None, []),
    ],
)
def test_announces_only_addresses_it_can_be_reached_on(
    listening_on: str, interfaces: tuple[str, ...] | None, expected: list[str]
) -> None:
    local = ["192.0.2.7", "198.51.100.3"]
    assert announce_addresses(listening_on, interfaces, local) == expected


@pytest.mark.net
async def test_nothing_is_announced_when_no_reachable_address_is_left() -> None:
    async with announced(LanAnnouncement(4000, "cache", "cc" * 32, listening_on="::1")):
        assert await Lan(LOOPBACK).browse(0.5, key="cc" * 32) == []


def test_hostile_txt_values_do_not_raise() -> None:
    assert discovery._text(b"\xff\xfe") == "\ufffd\ufffd"
    assert discovery._text(None) == ""
