"""The DHT on real UDP sockets bound to loopback addresses.

Each node of a test network has an address of its own in 127.0.0.0/8 (Linux
routes all of it to lo; binding 127.x.y.z needs no privilege): the DHT caps
what one host may hold, so nodes sharing 127.0.0.1 would be one host.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import umsgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kademlia.node import Node

from p2pkg.core.dht_records import ProviderLimits, ProviderStore, content_key
from p2pkg.core.root import public_bytes
from p2pkg.io.dht import MAX_DATAGRAM, DhtNode
from p2pkg.io.dht_service import DhtService
from p2pkg.testing.signer import make_root, signed_bytes, tamper_signature

from .helpers import await_until, wait_until

pytestmark = pytest.mark.anyio


def loopback(i: int, net: int = 1) -> str:
    """The ``i``-th address of loopback network ``net``: 127.<net>.x.y, one host per node."""
    return f"127.{net}.{i // 250}.{i % 250 + 1}"


def addr(node: DhtNode) -> tuple[str, int]:
    """Where ``node`` listens (its host is what others record as a provider's IP)."""
    assert node.transport is not None
    host, port = node.transport.get_extra_info("sockname")[:2]
    return str(host), int(port)


def host(node: DhtNode) -> str:
    return addr(node)[0]


@asynccontextmanager
async def network(
    n: int, limits: ProviderLimits | None = None, net: int = 1
) -> AsyncIterator[list[DhtNode]]:
    """``n`` joined nodes, each on its own loopback address, stopped (sockets closed) after."""
    async with anyio.create_task_group() as tg:
        nodes = []
        for i in range(n):
            node = DhtNode(providers=ProviderStore(limits or ProviderLimits()))
            await tg.start(node.run, loopback(i, net), 0)
            nodes.append(node)
        seed = addr(nodes[0])
        for node in nodes[1:]:
            await node.bootstrap([seed])
        for node in nodes[1:]:  # a second pass so that early nodes learn about later ones
            await node.bootstrap([seed, addr(random.choice(nodes))])
        yield nodes
        tg.cancel_scope.cancel()


def our_tasks(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks alive now that were not before, other than the test's own."""
    return {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}


@pytest.mark.net
async def test_fifty_nodes_every_provider_is_found() -> None:
    async with network(50) as nodes:
        objects = [bytes([i]) * 32 for i in range(10)]
        providers = {}
        for i, obj in enumerate(objects):
            announcers = random.Random(i).sample(nodes, 3)
            for a in announcers:
                assert await a.announce(obj, port=9000 + nodes.index(a)) > 0
            providers[obj] = {(host(a), 9000 + nodes.index(a)) for a in announcers}
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


@pytest.mark.net
async def test_roots_highest_valid_version_and_no_forgery() -> None:
    key = Ed25519PrivateKey.generate()
    first = public_bytes(key)
    async with network(20) as nodes:
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


@pytest.mark.net
async def test_hostile_node_cannot_break_the_others() -> None:
    limits = ProviderLimits(per_key=16, per_source=16, keys=200)
    rng = random.Random(5)
    async with network(12, limits) as nodes:
        target = nodes[4]
        to = addr(target)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for i in range(300):
                sock.sendto(rng.randbytes(rng.randint(0, 100)), to)  # garbage
                sock.sendto(
                    b"\x00" + rng.randbytes(20) + b"\xff" * (MAX_DATAGRAM + 10), to
                )  # oversized
                sock.sendto(
                    b"\x00" + rng.randbytes(20) + umsgpack.packb(["ping", [1, 2, 3, 4, 5]]), to
                )
                sock.sendto(b"\x00" + rng.randbytes(20) + umsgpack.packb(["__init__", []]), to)
                sock.sendto(
                    b"\x01" + rng.randbytes(20) + umsgpack.packb([[b"x", "not-an-ip", -1]]), to
                )
                key = content_key(i.to_bytes(4, "big"))
                flood = ["add_provider", [rng.randbytes(20), key, 1000 + i % 100, 10**9]]
                sock.sendto(b"\x00" + rng.randbytes(20) + umsgpack.packb(flood), to)
                if i % 10 == 9:
                    await asyncio.sleep(0.005)  # same event loop: let the target read

            async def answered() -> bool:  # a ping behind the flood: answered once all is read
                ok, _ = await nodes[0].protocol.call(to, "ping", nodes[0].node.id)
                return bool(ok)

            await await_until(answered, what="the target to read the flood")
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
        assert (host(nodes[1]), 7777) in await nodes[9].find_providers(obj)
        assert await target.find_providers(obj) == [(host(nodes[1]), 7777)]


@pytest.mark.net
async def test_malformed_contacts_do_not_break_lookups() -> None:
    liar = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    liar.bind(("127.0.0.1", 0))
    liar.setblocking(False)
    loop = asyncio.get_running_loop()

    async def answer_with_junk() -> None:
        while True:
            data, sender = await loop.sock_recvfrom(liar, 2048)
            junk = [
                [b"short", "127.0.0.1", 1],
                [b"\x01" * 20, "999.1.1.1", 5],
                "x",
                [b"\x02" * 20, "127.0.0.1", 0],
            ]
            liar.sendto(b"\x01" + data[1:21] + umsgpack.packb(junk), sender)

    with liar:
        async with network(6) as nodes, anyio.create_task_group() as tg:
            tg.start_soon(answer_with_junk)
            probe = DhtNode(wait_timeout=0.5)
            await tg.start(probe.run, "127.0.0.1", 0)
            found = await probe.bootstrap([liar.getsockname(), addr(nodes[0])])
            assert all(len(n.id) == 20 and n.port > 0 for n in found)
            obj = b"\x07" * 32
            await nodes[2].announce(obj, 8123)
            assert (host(nodes[2]), 8123) in await probe.find_providers(obj)
            tg.cancel_scope.cancel()


@pytest.mark.net
async def test_lookups_survive_dead_nodes() -> None:
    async with network(40) as nodes:
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
            assert {(host(nodes[1]), 6000), (host(nodes[2]), 6001)} & set(found)
        times.sort()
        assert times[len(times) // 2] < 2.0, times
        assert all(d.transport is None for d in dead)  # stopped: their sockets are closed


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


@pytest.mark.net
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
    # One loopback address per process, HTTP and DHT alike: a provider's address is
    # the source address of its announcements, and one host's share is capped.
    boot_at = f"{loopback(0, 3)}:{boot}"

    def on(i: int) -> list[str]:
        return ["--listen", f"{loopback(i, 3)}:0", "--dht-listen", f"{loopback(i, 3)}:0"]

    with Testbed() as bed:
        _, murl = bed.serve(
            master.store, "--listen", f"{loopback(0, 3)}:0", "--dht-listen", boot_at
        )
        seeds = []
        for i in range(1, 4):
            _, url = bed.seed(
                tmp_path / f"s{i}",
                master.pub,
                [murl],
                "--interval",
                "1s",
                *on(i),
                "--dht-bootstrap",
                boot_at,
            )
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
            "--dht-listen",
            f"{loopback(4, 3)}:0",
            "--dht-bootstrap",
            boot_at,
            "--dest",
            str(tmp_path / "out"),
            "--json",
        ]
        errors: list[str] = []

        def fetched() -> Any:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
            if done.returncode == 0:
                return _json.loads(done.stdout)
            errors.append(done.stderr)
            return None

        try:  # announcements land a moment after the sync
            result = wait_until(fetched, timeout=30, step=0.5, what="a fetch through the DHT")
        except TimeoutError:
            pytest.fail(errors[-1])
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


@pytest.mark.net
async def test_cancelled_rpcs_leave_no_state() -> None:
    """Cancelling a pending call (a cancel scope) forgets it; its timer firing later is harmless."""
    node = DhtNode(wait_timeout=0.3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # never answers
        async with anyio.create_task_group() as tg:
            await tg.start(node.run, "127.0.0.1", 0)
            with anyio.move_on_after(0.05):
                await node.protocol.call(silent.getsockname(), "ping", node.node.id)
            assert not node.protocol._outstanding and not node.protocol._sent_to
            await asyncio.sleep(0.4)  # past the hard timeout: nothing fires, nothing leaks
            ok, _ = await node.protocol.call(silent.getsockname(), "ping", node.node.id)
            assert ok is False and not node.protocol._outstanding
            # a lookup cancelled while its queries wait: they are forgotten too
            node.protocol.router.add_contact(Node(b"\x09" * 20, *silent.getsockname()))
            with anyio.move_on_after(0.05) as scope:
                await node.find_providers(b"\x01" * 32)
            assert scope.cancelled_caught
            assert not node.protocol._outstanding and not node.protocol._sent_to
            tg.cancel_scope.cancel()


@pytest.mark.net
async def test_restarted_node_rejoins_from_saved_contacts(tmp_path: Path) -> None:
    state = tmp_path / "dht.json"
    async with network(8) as nodes:
        first = DhtService(("127.0.0.1", 0), [addr(nodes[0])], state)
        async with first.running() as node:
            node_id = node.node.id
        assert state.exists()  # saved on the way out: id + contacts
        again = DhtService(("127.0.0.1", 0), [], state)  # no bootstrap address given
        async with again.running() as node:
            assert node.node.id == node_id
            obj = b"\x55" * 32
            await nodes[3].announce(obj, 5555)
            assert (host(nodes[3]), 5555) in await node.find_providers(obj)


def ping_from(node_id: bytes) -> bytes:
    """A PING request datagram claiming ``node_id``."""
    data: bytes = b"\x00" + bytes(20) + umsgpack.packb(["ping", [node_id]])
    return data


@pytest.mark.net
async def test_service_run_stops_everything_it_started(tmp_path: Path) -> None:
    """Cancelling DhtService.run: no task of its left, the UDP socket closed, the state saved."""
    state = tmp_path / "dht.json"
    loop = asyncio.get_running_loop()
    before = set(asyncio.all_tasks())
    svc = DhtService(("127.0.0.1", 0), [], state)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer, anyio.fail_after(10):
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        async with anyio.create_task_group() as tg:
            node = await tg.start(svc.run)
            tg.start_soon(svc.keep_announcing, lambda: [content_key(b"x")], 9999)
            assert node.transport is not None
            sock = node.transport.get_extra_info("socket")
            # A request from an unknown node: answered at once, and its id checked by a
            # ping back — a child task that is still waiting when the service is cancelled.
            peer.sendto(ping_from(b"\x07" * 20), ("127.0.0.1", node.port))
            kinds: set[bytes] = set()
            while kinds != {b"\x00", b"\x01"}:  # our answer, and the node's own ping
                data, _ = await loop.sock_recvfrom(peer, 2048)
                kinds.add(data[:1])
            assert node.protocol._verifying
            assert our_tasks(before)
            tg.cancel_scope.cancel()
    assert not our_tasks(before)
    assert sock.fileno() == -1 and node.transport is None and svc.node is None
    assert not node.protocol._verifying
    assert json.loads(state.read_text())["id"] == node.node.id.hex()


@pytest.mark.net
async def test_a_request_after_shutdown_starts_nothing() -> None:
    node = DhtNode()
    async with anyio.create_task_group() as tg:
        await tg.start(node.run, "127.0.0.1", 0)
        tg.cancel_scope.cancel()
    before = set(asyncio.all_tasks())
    dropped = node.protocol.dropped
    node.protocol.datagram_received(ping_from(b"\x07" * 20), ("127.0.0.1", 9))
    assert not our_tasks(before) and not node.protocol._verifying
    assert node.protocol.dropped == dropped + 1  # not answered: the socket is closed
    ok, _ = await node.protocol.call(("127.0.0.1", 9), "ping", node.node.id)
    assert ok is False and not node.protocol._outstanding  # at once, nothing sent


@pytest.mark.net
async def test_cancelling_a_join_propagates_and_stops_at_once(tmp_path: Path) -> None:
    before = set(asyncio.all_tasks())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # a bootstrap node that never answers (2 s ping timeout)
        svc = DhtService(("127.0.0.1", 0), [silent.getsockname()], tmp_path / "dht.json")
        start = time.monotonic()
        with anyio.move_on_after(0.2) as scope:
            async with svc.running():
                pytest.fail("joined through a node that never answers")
        assert scope.cancelled_caught  # the cancellation reached the scope that asked for it
        assert time.monotonic() - start < 1.5
    assert not our_tasks(before) and svc.node is None


@pytest.mark.net
async def test_keep_announcing_waits_for_the_node_and_announces_what_is_new_when_poked() -> None:
    key, other = content_key(b"announced"), content_key(b"held later")
    held = [key]
    async with network(5) as nodes:
        svc = DhtService(("127.0.0.1", 0), [addr(nodes[0])])
        rounds = 0
        done = anyio.Event()

        def latest_root() -> None:  # called once per round, after the keys were announced
            nonlocal rounds
            rounds += 1
            done.set()

        async with anyio.create_task_group() as tg:
            # Started before the node: it waits for run(), it does not poll for it.
            tg.start_soon(svc.keep_announcing, lambda: list(held), 7000, latest_root)
            await tg.start(svc.run)
            with anyio.fail_after(10):
                await done.wait()
            assert rounds == 1 and svc.announced > 0
            assert ("127.0.0.1", 7000) in await nodes[3].find_key(key)
            first = svc.announced
            done = anyio.Event()
            svc.poke()  # the next round now, not in ttl/2 ...
            with anyio.fail_after(10):
                await done.wait()
            assert rounds == 2
            assert svc.announced == first  # ... and nothing new: nothing announced again
            held.append(other)
            done = anyio.Event()
            svc.poke()  # something new is held: that, and only that, is announced
            with anyio.fail_after(10):
                await done.wait()
            assert rounds == 3 and 0 < svc.announced - first <= first
            assert ("127.0.0.1", 7000) in await nodes[3].find_key(other)
            tg.cancel_scope.cancel()


def test_capped_table_counts_hosts_through_splits_and_replacements() -> None:
    """The routing table's per-host limits (pure: no socket, a protocol that records pings)."""
    from collections import Counter

    from p2pkg.core.dht_records import RoutingLimits
    from p2pkg.io.dht import CappedTable

    class Heads:
        def __init__(self) -> None:
            self.checked: list[Node] = []

        def check_head(self, node: Node) -> None:
            self.checked.append(node)

    rng = random.Random(3)
    heads = Heads()
    table = CappedTable(heads, 4, Node(b"\x00" * 20), RoutingLimits(per_bucket=2, per_table=4))

    def held() -> list[Node]:
        return [n for b in table.buckets for n in (*b.get_nodes(), *b.replacement_nodes.values())]

    for i in range(50):  # one host, many ports and ids: one bucket so far, 2 of them
        table.add_contact(Node(rng.randbytes(20), "10.6.6.6", 1000 + i))
    assert len(held()) == 2 and table.refused == 48
    for i in range(300):  # many hosts: buckets fill, split, keep replacements
        table.add_contact(Node(rng.randbytes(20), f"10.0.{i // 250}.{i % 250}", 4000))
        if i % 10 == 0:  # and the one host keeps trying
            table.add_contact(Node(rng.randbytes(20), "10.6.6.6", 2000 + i))
    assert len(table.buckets) > 3 and heads.checked  # full far buckets: heads pinged
    for bucket in table.buckets:
        count = Counter(n.ip for n in (*bucket.get_nodes(), *bucket.replacement_nodes.values()))
        assert bucket.hosts == count  # the running count matches what the bucket holds
        assert count["10.6.6.6"] <= 2
        assert not set(bucket.nodes) & set(bucket.replacement_nodes)
    assert table.host_entries("10.6.6.6") == sum(1 for n in held() if n.ip == "10.6.6.6") == 4
    # A known contact is always re-admitted (a refresh), even at its host's cap.
    sybil = next(n for n in held() if n.ip == "10.6.6.6")
    assert table.admits(sybil)
    assert not table.admits(Node(rng.randbytes(20), "10.6.6.6", 9999))
    # Removing a contact promotes a replacement; the counts follow.
    full = next(b for b in table.buckets if b.replacement_nodes)
    gone = full.head()
    table.remove_contact(gone)
    assert gone.id not in full.nodes and len(full.nodes) == 4
    assert full.hosts == Counter(
        n.ip for n in (*full.get_nodes(), *full.replacement_nodes.values())
    )
