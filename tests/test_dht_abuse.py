"""DHT abuse and lookup reliability (issue 10, item 5) on real UDP nodes on loopback.

Each honest node has a loopback address of its own (``test_dht.network``);
attackers sit on other loopback addresses: one host with many ports, a few
hosts, or a raw socket sending crafted replies. Every test is bounded in time.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import umsgpack
from kademlia.node import Node

from p2pkg.core.dht_records import (
    ProviderLimits,
    RoutingLimits,
    bin_key,
    content_key,
)
from p2pkg.core.objects import name_hash
from p2pkg.io.dht import DhtNode, DhtProtocol
from p2pkg.io.dht_service import DhtService
from p2pkg.roles.discover import PER_HOST, dht_peers, provider_url, trust_key

from .helpers import await_until
from .test_dht import addr, host, loopback, network

pytestmark = [pytest.mark.anyio, pytest.mark.net]

VICTIM = loopback(0, 99)  # a third party that nothing should connect to much


# ---------------------------------------------------------------------- a raw liar


@asynccontextmanager
async def liar(
    at: str, node_id: bytes, answer: Callable[[str, list[Any]], Any]
) -> AsyncIterator[tuple[str, int]]:
    """A raw UDP socket at ``at`` answering each request with ``answer(name, args)``.

    It pings back nothing and verifies nothing: it only sends crafted replies
    (its node id to a ping), for the block.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((at, 0))
    sock.setblocking(False)

    async def serve() -> None:
        while True:
            await anyio.wait_readable(sock)
            data, sender = sock.recvfrom(2048)
            if data[:1] != b"\x00":
                continue
            name, args = umsgpack.unpackb(data[21:])
            reply = node_id if name == "ping" else answer(name, args)
            sock.sendto(b"\x01" + data[1:21] + umsgpack.packb(reply), sender)

    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            yield sock.getsockname()
            tg.cancel_scope.cancel()


def aim_at_victim(name: str, args: list[Any]) -> Any:
    """Every GET_PROVIDERS answered with 16 ports of the victim (and no nodes)."""
    if name == "get_providers":
        return {"providers": [[VICTIM, 9000 + i] for i in range(16)], "nodes": []}
    return []


# ---------------------------------------------------------------------- (a) provider hints


@pytest.mark.parametrize("liars", [1, 2])
async def test_a_lying_reply_cannot_aim_a_client_at_a_victim(liars: int) -> None:
    """Item 5 (a): one reply naming 16 ports of one victim used to become 16 peers
    (and, with ``want`` reached, the end of the lookup before any honest reply)."""
    pinned = frozenset({b"\x01" * 32})
    key = bin_key(trust_key(pinned), name_hash("requests")[0])
    with anyio.fail_after(20):
        async with network(10) as nodes:
            assert await nodes[5].announce_key(key, 8443) > 0
            honest = provider_url(host(nodes[5]), 8443)
            async with (
                liar(loopback(0, 66), key, aim_at_victim) as one,
                liar(loopback(1, 66), key[:19] + b"\x01", aim_at_victim) as two,
            ):
                # The liars' ids are the key itself: they are asked first.
                boot = [*[one, two][:liars], addr(nodes[0])]
                svc = DhtService((loopback(0, 9), 0), boot)
                peers = await dht_peers(svc, pinned, ["requests"])
    urls = [p.url for p in peers]
    aimed = [u for u in urls if VICTIM in u]
    assert 0 < len(aimed) <= PER_HOST, urls  # a hint or two, never the 16 ports
    assert urls[0] == honest  # still found, and first: confirmed providers come first


async def test_hints_from_many_lookups_stay_few() -> None:
    """One discovery runs a lookup per bin: the hints of all of them are capped together."""
    pinned = frozenset({b"\x02" * 32})
    names = [f"project-{i}" for i in range(12)]

    def aim_everywhere(name: str, args: list[Any]) -> Any:
        if name == "get_providers":  # 2 ports on each of 8 hosts: 16 addresses, 8 hosts
            hosts = [loopback(i, 98) for i in range(8)]
            return {"providers": [[h, 9000 + p] for h in hosts for p in (0, 1)], "nodes": []}
        return []

    with anyio.fail_after(20):
        async with liar(loopback(2, 66), b"\x00" * 20, aim_everywhere) as lying:
            svc = DhtService((loopback(1, 9), 0), [lying])
            peers = await dht_peers(svc, pinned, names)
    assert len({name_hash(n)[0] for n in names}) > 2
    assert 0 < len(peers) <= 4, [p.url for p in peers]  # discover.MAX_HINTS


# ---------------------------------------------------------------------- (b) routing entries


class SybilProtocol(DhtProtocol):
    """A node that hides providers: stores nothing, returns none, names only its own kind."""

    sybils: list[tuple[bytes, str, int]]

    def rpc_add_provider(self, sender: tuple[str, int], *args: Any) -> bool:
        return True  # "stored"

    def rpc_get_providers(
        self, sender: tuple[str, int], nodeid: bytes, key: bytes, want: int
    ) -> dict[str, Any]:
        return {"providers": [], "nodes": self.rpc_find_node(sender, nodeid, key)}

    def rpc_find_node(self, sender: tuple[str, int], nodeid: bytes, key: bytes) -> list[Any]:
        self._source(sender, nodeid)
        near = sorted(
            self.sybils, key=lambda c: int.from_bytes(c[0], "big") ^ int.from_bytes(key, "big")
        )
        return near[:20]


class Sybil(DhtNode):
    def __init__(self, node_id: bytes, sybils: list[tuple[bytes, str, int]]) -> None:
        super().__init__(node_id)
        self.sybils = sybils

    def _create_protocol(self) -> DhtProtocol:
        protocol = SybilProtocol(self.node, self.storage, self.ksize, self.providers, self.roots)
        protocol.sybils = self.sybils
        return protocol


def entries(node: DhtNode, ip: str) -> list[list[Node]]:
    """Per bucket, the routing-table entries (replacements too) of ``node`` at ``ip``."""
    return [
        [n for n in (*b.get_nodes(), *b.replacement_nodes.values()) if n.ip == ip]
        for b in node.protocol.router.buckets
    ]


async def test_one_host_gets_a_few_routing_entries_and_cannot_eclipse_a_key() -> None:
    """Item 5 (b): 40 node ids on one address (ids right next to a key, hiding its
    providers) used to take most of the honest tables and every record of the key."""
    limits = RoutingLimits()
    key = content_key(b"eclipsed")
    at = loopback(3, 66)
    with anyio.fail_after(30):
        async with network(24) as nodes, anyio.create_task_group() as tg:
            sybils: list[tuple[bytes, str, int]] = []
            started = []
            for i in range(40):
                sybil = Sybil(key[:17] + i.to_bytes(3, "big"), sybils)
                port = await tg.start(sybil.run, at, 0)
                sybils.append((sybil.node.id, at, port))
                started.append(sybil)
            for i, sybil in enumerate(started):  # each joins, pinging and asking honest nodes
                await sybil.bootstrap([addr(nodes[i % 24]), addr(nodes[(i * 7) % 24])])
            for node in nodes:  # and the honest nodes hear of them in lookups too
                await node.lookup(key)

            def settled() -> bool:
                return not any(n.protocol._verifying for n in nodes)

            # contact checks in flight (each ends within the 2 s timeout)
            await await_until(settled, what="the honest nodes' contact checks")
            for node in nodes:
                held = entries(node, at)
                assert sum(map(len, held)) <= limits.per_table, host(node)
                assert all(len(b) <= limits.per_bucket for b in held), host(node)
            # The key's providers are still found: the sybils are at most a few of
            # the k closest nodes any lookup meets, so the record reaches honest ones.
            assert await nodes[3].announce_key(key, 7000) > 0
            for asker in nodes[10:16]:
                assert (host(nodes[3]), 7000) in await asker.find_key(key), host(asker)
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------------- (c) provider keys


def add_provider(key: bytes, port: int) -> bytes:
    request = ["add_provider", [random.randbytes(20), key, port, 24 * 3600]]
    data: bytes = b"\x00" + random.randbytes(20) + umsgpack.packb(request)
    return data


async def test_flooded_key_tables_still_take_an_announcers_new_keys() -> None:
    """Item 5 (c): keys from two addresses used to fill the key table (for up to 24 h)
    and the table refused a legitimate announcer's new keys."""
    limits = ProviderLimits(keys=300, source_records=120)
    with anyio.fail_after(30):
        async with network(3, limits) as nodes:
            target, honest = nodes[0], nodes[1]

            async def synced() -> None:  # a ping behind the flood: answered once all is read
                ok, _ = await honest.protocol.call(addr(target), "ping", honest.node.id)
                assert ok

            async def flood(hosts: list[str], count: int) -> None:
                socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in hosts]
                try:
                    for sock, at in zip(socks, hosts, strict=True):
                        sock.bind((at, 0))
                    for i in range(count):
                        for n, sock in enumerate(socks):
                            sock.sendto(
                                add_provider(content_key(f"{at}{n}/{i}".encode()), 80), addr(target)
                            )
                        if i % 40 == 39:
                            await synced()  # paced: the target's socket buffer is finite
                    await synced()
                finally:
                    for sock in socks:
                        sock.close()

            async def announce(tag: str) -> int:
                calls = [
                    honest.protocol.call(
                        addr(target),
                        "add_provider",
                        honest.node.id,
                        content_key(f"{tag}{i}".encode()),
                        8000,
                        3600,
                    )
                    for i in range(20)
                ]
                accepted = 0
                for call in calls:
                    ok, value = await call
                    accepted += ok and value is True
                return accepted

            await flood([loopback(10, 66), loopback(11, 66)], 300)
            store = target.providers
            assert all(store.held_by(loopback(i, 66)) <= limits.source_records for i in (10, 11))
            assert await announce("honest/") == 20
            # More flooding hosts fill the table: the biggest holders give way.
            await flood([loopback(12 + i, 66) for i in range(4)], 150)
            assert len(store.records) == limits.keys
            assert await announce("later/") == 20
            assert store.held_by(host(honest)) == 40
            now = target.protocol.clock()
            for i in range(20):
                held = store.get(content_key(f"honest/{i}".encode()), 4, now)
                assert held == [(host(honest), 8000)], i


# ---------------------------------------------------------------------- (d) reliability


async def test_every_lookup_finds_its_providers_alive_and_with_a_fifth_dead() -> None:
    """Item 5 (d) at small scale (the 200-node figures: ``python -m netsim.bench_dht``)."""
    rng = random.Random(10)
    with anyio.fail_after(60):
        async with network(40) as nodes:
            objects = [rng.randbytes(32) for _ in range(8)]
            owner = {}
            for obj in objects:
                announcer = rng.choice(nodes)
                assert await announcer.announce(obj, 8000) > 0
                owner[obj] = (host(announcer), 8000)
            for i in range(16):
                obj = objects[i % len(objects)]
                asker = nodes[(i * 7 + 1) % len(nodes)]
                assert owner[obj] in await asker.find_providers(obj), f"alive, lookup {i}"
            dead = rng.sample(nodes, 8)  # the records they held, and announced, stay elsewhere
            for node in dead:
                node.stop()
            alive = [n for n in nodes if n not in dead]
            for i in range(8):  # each meets dead nodes: ~0.5 s of soft timeouts
                obj = objects[i % len(objects)]
                asker = alive[(i * 5 + 2) % len(alive)]
                assert owner[obj] in await asker.find_providers(obj), f"dead, lookup {i}"
