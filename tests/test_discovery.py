"""DNS-SD on the loopback interface only (conftest pins P2PKG_LAN_INTERFACE=127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pkg.io.discovery import Lan, announce_addresses
from p2pkg.io.http.client import PeerClient
from p2pkg.io.http.server import PeerServer
from p2pkg.roles.cache import Cache, CacheConfig

from .netutil import Master, archive_path, make_master

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
LOOPBACK = ("127.0.0.1",)


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=300_000)


async def test_announce_and_browse_on_loopback() -> None:
    a, b = Lan(LOOPBACK), Lan(LOOPBACK)
    try:
        await a.announce(4321, "cache", "aa" * 32)
        await a.announce(4322, "cache", "bb" * 32)  # trusts another namespace's key
        found = []
        for _ in range(20):
            found = await b.browse(0.3, key="aa" * 32)
            if found:
                break
        assert [p.url for p in found] == ["http://127.0.0.1:4321"]
        assert found[0].role == "cache"
    finally:
        await a.close()
        await b.close()


async def test_fetch_and_caches_find_a_lan_cache(master: Master, tmp_path: Path) -> None:
    origin = PeerServer(master.store)
    await origin.start()
    lan_config = CacheConfig(lan=True, lan_interfaces=LOOPBACK)
    first = Cache(tmp_path / "c1", master.pins, [origin.url], config=lan_config)
    url1 = await first.start()
    second = Cache(tmp_path / "c2", master.pins, [origin.url], config=lan_config)
    url2 = await second.start()
    try:
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
        for _ in range(100):
            if url1 in second.status()["lan_peers"]:
                break
            await asyncio.sleep(0.1)
        assert url1 in second.status()["lan_peers"]

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
    finally:
        await second.close()
        await first.close()
        await origin.close()


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


async def test_nothing_is_announced_when_no_reachable_address_is_left() -> None:
    a, b = Lan(LOOPBACK), Lan(LOOPBACK)
    try:
        assert not await a.announce(4000, "cache", "cc" * 32, listening_on="::1")
        assert await b.browse(0.5, key="cc" * 32) == []
    finally:
        await a.close()
        await b.close()
