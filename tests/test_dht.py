"""The DHT on real UDP sockets bound to 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import pytest
import umsgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.core.dht_records import ProviderLimits, ProviderStore, content_key
from p2pkg.core.root import public_bytes
from p2pkg.io.dht import MAX_DATAGRAM, DhtNode
from p2pkg.testing.signer import make_root, signed_bytes, tamper_signature

pytestmark = pytest.mark.anyio


# Every node of a loopback network shares 127.0.0.1: allow many records per source IP.
LOOPBACK_LIMITS = ProviderLimits(per_source=64)


async def start_network(n: int, limits: ProviderLimits = LOOPBACK_LIMITS) -> list[DhtNode]:
    nodes = []
    for _ in range(n):
        node = DhtNode(providers=ProviderStore(limits))
        await node.listen(0, "127.0.0.1")
        nodes.append(node)
    seed = ("127.0.0.1", nodes[0].port)
    for node in nodes[1:]:
        await node.bootstrap([seed])
    for node in nodes[1:]:  # a second pass so that early nodes learn about later ones
        await node.bootstrap([seed, ("127.0.0.1", random.choice(nodes).port)])
    return nodes


def stop(nodes: list[DhtNode]) -> None:
    for node in nodes:
        node.stop()


async def test_fifty_nodes_every_provider_is_found() -> None:
    nodes = await start_network(50)
    try:
        objects = [bytes([i]) * 32 for i in range(10)]
        providers = {}
        for i, obj in enumerate(objects):
            announcers = random.Random(i).sample(nodes, 3)
            for a in announcers:
                assert await a.announce(obj, port=9000 + nodes.index(a)) > 0
            providers[obj] = {("127.0.0.1", 9000 + nodes.index(a)) for a in announcers}
        for i, obj in enumerate(objects):
            asker = nodes[(i * 7) % len(nodes)]
            found = set(await asker.find_providers(obj))
            assert found == providers[obj], f"object {i}"
        # roots in the same 50-node network: the highest valid version, never a forgery
        key = Ed25519PrivateKey.generate()
        first = public_bytes(key)
        v3 = signed_bytes(make_root(3, [key]), [key])
        await nodes[10].put_root(v3, first)
        await nodes[11].put_root(signed_bytes(make_root(1, [key]), [key]), first)
        await nodes[12].put_root(tamper_signature(signed_bytes(make_root(7, [key]), [key])), first)
        for asker in nodes[20:30]:
            assert await asker.get_root(first) == v3
    finally:
        stop(nodes)


async def test_roots_highest_valid_version_and_no_forgery() -> None:
    nodes = await start_network(20)
    key = Ed25519PrivateKey.generate()
    first = public_bytes(key)
    try:
        v1 = signed_bytes(make_root(1, [key]), [key])
        v2 = signed_bytes(make_root(2, [key]), [key])
        assert await nodes[3].put_root(v2, first) > 0
        assert await nodes[5].put_root(v1, first) == 0  # older: every node keeps v2
        forged = tamper_signature(signed_bytes(make_root(9, [key]), [key]))
        assert await nodes[7].put_root(forged, first) == 0
        mallory = Ed25519PrivateKey.generate()
        evil = signed_bytes(make_root(10, [mallory]), [mallory])
        assert await nodes[8].put_root(evil, first) == 0  # not the namespace's key
        assert await nodes[12].get_root(first) == v2
    finally:
        stop(nodes)


async def test_hostile_node_cannot_break_the_others() -> None:
    limits = ProviderLimits(per_key=16, per_source=16, keys=200)
    nodes = await start_network(12, limits)
    target = nodes[4]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    addr = ("127.0.0.1", target.port)
    rng = random.Random(5)
    try:
        for i in range(300):
            sock.sendto(rng.randbytes(rng.randint(0, 100)), addr)  # garbage
            sock.sendto(
                b"\x00" + rng.randbytes(20) + b"\xff" * (MAX_DATAGRAM + 10), addr
            )  # oversized
            sock.sendto(
                b"\x00" + rng.randbytes(20) + umsgpack.packb(["ping", [1, 2, 3, 4, 5]]), addr
            )
            sock.sendto(b"\x00" + rng.randbytes(20) + umsgpack.packb(["__init__", []]), addr)
            sock.sendto(
                b"\x01" + rng.randbytes(20) + umsgpack.packb([[b"x", "not-an-ip", -1]]), addr
            )
            key = content_key(i.to_bytes(4, "big"))
            flood = ["add_provider", [rng.randbytes(20), key, 1000 + i % 100, 10**9]]
            sock.sendto(b"\x00" + rng.randbytes(20) + umsgpack.packb(flood), addr)
            if i % 10 == 9:
                await asyncio.sleep(0.005)  # same event loop: let the target read
        await asyncio.sleep(0.5)
        assert target.protocol.dropped >= 300 * 4 * 0.9  # garbage, oversized, bad calls
        assert len(target.providers.records) <= limits.keys
        # 300 made-up node ids from one address: none got into the routing table.
        hostile_port = sock.getsockname()[1]
        contacts = [n for b in target.protocol.router.buckets for n in b.get_nodes()]
        assert not [n for n in contacts if n.port == hostile_port]
        assert all(len(e) <= limits.per_key for e in target.providers.records.values())
        # the network still works, including through the attacked node
        obj = b"\x42" * 32
        await nodes[1].announce(obj, 7777)
        assert ("127.0.0.1", 7777) in await nodes[9].find_providers(obj)
        assert await target.find_providers(obj) == [("127.0.0.1", 7777)]
    finally:
        sock.close()
        stop(nodes)


async def test_malformed_contacts_do_not_break_lookups() -> None:
    nodes = await start_network(6)
    liar = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    liar.bind(("127.0.0.1", 0))
    liar.setblocking(False)
    loop = asyncio.get_running_loop()

    async def answer_with_junk() -> None:
        while True:
            data, addr = await loop.sock_recvfrom(liar, 2048)
            junk = [
                [b"short", "127.0.0.1", 1],
                [b"\x01" * 20, "999.1.1.1", 5],
                "x",
                [b"\x02" * 20, "127.0.0.1", 0],
            ]
            liar.sendto(b"\x01" + data[1:21] + umsgpack.packb(junk), addr)

    task = asyncio.create_task(answer_with_junk())
    try:
        probe = DhtNode(wait_timeout=0.5)
        await probe.listen(0, "127.0.0.1")
        found = await probe.bootstrap([liar.getsockname(), ("127.0.0.1", nodes[0].port)])
        assert all(len(n.id) == 20 and n.port > 0 for n in found)
        obj = b"\x07" * 32
        await nodes[2].announce(obj, 8123)
        assert ("127.0.0.1", 8123) in await probe.find_providers(obj)
        probe.stop()
    finally:
        task.cancel()
        liar.close()
        stop(nodes)


async def test_lookups_survive_dead_nodes() -> None:
    nodes = await start_network(40)
    try:
        obj = b"\x33" * 32
        await nodes[1].announce(obj, 6000)
        await nodes[2].announce(obj, 6001)
        dead = random.Random(1).sample(nodes[3:], 8)  # 20%
        for d in dead:
            d.stop()
        alive = [n for n in nodes if n not in dead]
        times = []
        for asker in alive[3:13]:
            start = time.monotonic()
            found = await asker.find_providers(obj)
            times.append(time.monotonic() - start)
            assert {("127.0.0.1", 6000), ("127.0.0.1", 6001)} & set(found)
        times.sort()
        assert times[len(times) // 2] < 2.0, times
    finally:
        stop(nodes)


def test_identity_is_saved_as_json(tmp_path: Path) -> None:
    node = DhtNode()
    path = tmp_path / "dht.json"

    node.bootstrappable_neighbors = lambda: [("127.0.0.1", 4000)]  # type: ignore[method-assign]
    node.save_state_json(path)
    node_id, contacts = DhtNode.load_state_json(path)
    assert node_id == node.node.id and contacts == [("127.0.0.1", 4000)]
    assert b"pickle" not in path.read_bytes() and path.read_text().startswith("{")
    path.write_text("not json")
    assert DhtNode.load_state_json(path) == (None, [])


def test_end_to_end_client_knows_only_one_dht_address(tmp_path: Path) -> None:
    """Master + 3 seeds + a client that knows one DHT bootstrap address and no peer."""
    import json as _json
    import subprocess
    import sys

    from netsim.references import free_port
    from netsim.testbed import Testbed, wait_synced

    from .netutil import make_master

    master = make_master(tmp_path, big_size=2 << 20)
    boot = free_port()
    dht = ["--dht-listen", "127.0.0.1:0", "--dht-bootstrap", f"127.0.0.1:{boot}"]
    with Testbed() as bed:
        _, murl = bed.serve(master.store, "--dht-listen", f"127.0.0.1:{boot}")
        seeds = []
        for i in range(3):
            _, url = bed.seed(tmp_path / f"s{i}", master.pub, [murl], "--interval", "1s", *dht)
            seeds.append(url)
        for url in seeds:
            wait_synced(url, 1)
        cmd = [
            sys.executable,
            "-m",
            "p2pkg.cli",
            "fetch",
            "big",
            "--trust",
            master.pub,
            "--no-lan",
            *dht,
            "--dest",
            str(tmp_path / "out"),
            "--json",
        ]
        result = None
        for _ in range(20):  # announcements land a moment after the sync
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
            if done.returncode == 0:
                result = _json.loads(done.stdout)
                break
            time.sleep(0.5)
        assert result is not None, done.stderr
        assert (tmp_path / "out" / master.big.name).read_bytes() == master.big.read_bytes()
        assert set(result["peers"]) & set(seeds), result["peers"]


def test_replies_always_fit_one_datagram() -> None:
    from p2pkg.io.dht import _fit

    ipv6 = [(bytes([i]) * 20, "2001:db8:85a3:1234:5678:8a2e:370:7334", 65000) for i in range(20)]
    data = _fit(b"\x00" * 20, ipv6)
    assert data is not None and len(data) <= MAX_DATAGRAM
    assert len(umsgpack.unpackb(data[21:])) < 20  # the farthest contacts were dropped
    reply = {"providers": [["127.0.0.1", 1]] * 16, "nodes": ipv6}
    data = _fit(b"\x00" * 20, reply)
    assert data is not None and len(data) <= MAX_DATAGRAM
    assert len(umsgpack.unpackb(data[21:])["providers"]) == 16  # providers are kept


async def test_cancelled_rpcs_leave_no_state() -> None:
    """Cancelling a pending call (a cancel scope) forgets it; its timer firing later is harmless."""
    import anyio

    node = DhtNode(wait_timeout=0.3)
    await node.listen(0, "127.0.0.1")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # never answers
    try:
        with anyio.move_on_after(0.05):
            await node.protocol.call(silent.getsockname(), "ping", node.node.id)
        assert not node.protocol._outstanding and not node.protocol._sent_to
        await asyncio.sleep(0.4)  # past the hard timeout: nothing fires, nothing leaks
        ok, _ = await node.protocol.call(silent.getsockname(), "ping", node.node.id)
        assert ok is False and not node.protocol._outstanding
    finally:
        silent.close()
        node.stop()


async def test_restarted_node_rejoins_from_saved_contacts(tmp_path: Path) -> None:
    from p2pkg.io.dht_service import DhtService

    nodes = await start_network(8)
    state = tmp_path / "dht.json"
    try:
        first = DhtService(("127.0.0.1", 0), [("127.0.0.1", nodes[0].port)], state)
        node = await first.start()
        node_id = node.node.id
        await first.close()  # saves id + contacts
        again = DhtService(("127.0.0.1", 0), [], state)  # no bootstrap address given
        node = await again.start()
        try:
            assert node.node.id == node_id
            obj = b"\x55" * 32
            await nodes[3].announce(obj, 5555)
            assert ("127.0.0.1", 5555) in await node.find_providers(obj)
        finally:
            await again.close()
    finally:
        stop(nodes)
