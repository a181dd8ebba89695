"""The DHT: the ``kademlia`` package extended by subclassing (pinned 2.2.3 / rpcudp 5.0.1).

What the subclass changes (docs/security.md, "DHT"):

* Every datagram is at most :data:`MAX_DATAGRAM` bytes, both ways; anything
  undecodable, oversized or unexpected is dropped and counted, never raised.
* A response is accepted only for an outstanding request, from the address it
  was sent to; node lists in responses are filtered to well-formed contacts.
* RPCs are cancel-safe: a cancelled call forgets its request and timer.
* A contact survives a single missed reply (removed after two in a row).
* A request's sender is added to the routing table only after it answers a
  ping with the id it claimed (one id per address): a node cannot fill
  others' tables with made-up ids.
* Per-host limits, S/Kademlia-style (:class:`CappedTable`,
  :class:`~p2pkg.core.dht_records.RoutingLimits`): one host (an IPv4
  address, an IPv6 /64) holds at most 2 entries per bucket and 4 per table,
  and a lookup learns at most 4 node ids per host; contact checks in flight
  are capped per host too. Ids are free, addresses are not: one machine
  with many ports gets a share, not the table.
* FIND_NODE and GET_PROVIDERS answer with the k contacts closest to the key
  in the whole table (kademlia's ``find_neighbors`` can miss some).
* Provider addresses in GET_PROVIDERS replies are hints, weighed by the
  lookup (:class:`~p2pkg.core.lookup.HintRules`): confirmed by two hosts
  (or by the provider's own) first, a few unconfirmed ones, two ports per
  host, so one lying reply cannot aim a client's connections at a victim.
* Generic STORE / FIND_VALUE of arbitrary values are disabled. The records
  are provider records (ADD_PROVIDER / GET_PROVIDERS, the provider's address
  taken from the packet's source) and namespace roots (PUT_ROOT / GET_ROOT,
  highest valid version), both bounded (:mod:`p2pkg.core.dht_records`).
* Node identity comes from :mod:`secrets` and is saved with the contacts as
  JSON (no pickle).
* Lookups are :class:`p2pkg.core.lookup.Lookup` (a pure state machine) driven
  here: this module sends the queries it asks for and feeds it replies,
  failures and the loop's clock; every decision is the machine's.

Structured concurrency: a node runs as ``await tg.start(node.run, host, port)``.
Requests are answered in ``datagram_received`` itself (every handler is
synchronous and bounded), and the only work that outlives a datagram —
checking a new contact's id, pinging a full bucket's head, the hourly bucket
refresh — runs as children of
``run``'s task group. Cancelling ``run`` stops them and closes the socket;
a datagram arriving after that starts nothing. kademlia's own ``listen``
(which schedules free tasks) is not used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import anyio
import umsgpack
from anyio.abc import TaskGroup, TaskStatus
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import KBucket, RoutingTable

from p2pkg.core.dht_records import (
    KEY_LEN,
    ProviderStore,
    RootStore,
    RoutingLimits,
    content_key,
    host_key,
    root_key,
)
from p2pkg.core.lookup import Address, Contact, HintRules, Lookup, LookupResult

log = logging.getLogger(__name__)

MAX_DATAGRAM = 1200  # real networks fragment above ~1,200 bytes
MAX_ARGS = 8
HEADER = 21  # kind byte + 20-byte message id
MAX_CHECKS = 64  # contact checks (pings) in flight
CHECKS_PER_HOST = 2  # of which one host may cause at most this many


def _valid_contact(item: Any) -> bool:
    if not isinstance(item, (list, tuple)) or len(item) != 3:
        return False
    node_id, ip, port = item
    if not isinstance(node_id, bytes) or len(node_id) != KEY_LEN:
        return False
    if not isinstance(port, int) or not 0 < port < 65536 or not isinstance(ip, str):
        return False
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


def _sanitize(payload: Any) -> Any:
    """Keep only well-formed contacts in a node list (a malformed one must not break lookups).

    Every list reply is a node list (no other RPC answers with a list), so every
    list is filtered, whatever its first item.
    """
    if isinstance(payload, list):
        return [tuple(c) for c in payload if _valid_contact(c)]
    if isinstance(payload, dict) and "nodes" in payload:
        nodes = payload["nodes"]
        return {**payload, "nodes": _sanitize(nodes) if isinstance(nodes, list) else []}
    return payload


def _reply(payload: Any, want: int | None) -> tuple[list[Contact], list[Address]] | None:
    """A lookup reply as (closer nodes, providers); None if it carries no node list.

    The contacts were checked by :func:`_sanitize` as the datagram arrived.
    """
    contacts = payload.get("nodes") if isinstance(payload, dict) else payload
    if not isinstance(contacts, list):
        return None
    nodes = [Contact(c[0], (c[1], c[2])) for c in contacts]
    providers: list[Address] = []
    raw = payload.get("providers") if isinstance(payload, dict) else None
    if want is not None and isinstance(raw, list):
        # We asked for `want`: read no more than that from one reply.
        for p in raw[:want]:
            if isinstance(p, (list, tuple)) and _valid_contact((bytes(KEY_LEN), *p)):
                providers.append((p[0], p[1]))
    return nodes, providers


def _nearest(
    router: Any, key: bytes, k: int, exclude: tuple[str, int] | None = None
) -> list[Contact]:
    """The ``k`` contacts of the routing table closest to ``key`` (none at ``exclude``).

    Where a lookup starts, and what FIND_NODE / GET_PROVIDERS answer. Not
    ``router.find_neighbors``: its traversal (kademlia 2.2.3) stops one
    bucket to the left once the buckets to the right run out, so for a key in
    the last buckets it can return few contacts, or none, from a full table
    (bmuller/kademlia#28, #52): a lookup would end before it began, and a
    reply would steer the asker away from the closest nodes we know.
    """
    index = router.get_bucket_for(Node(key))
    if index is not None:  # like find_neighbors: the hourly refresh skips buckets in use
        router.buckets[index].touch_last_updated()
    target = int.from_bytes(key, "big")
    nodes = [
        n
        for bucket in router.buckets
        for n in bucket.get_nodes()
        if exclude is None or (n.ip, n.port) != exclude
    ]
    nodes.sort(key=lambda n: n.long_id ^ target)
    return [Contact(n.id, (n.ip, n.port)) for n in nodes[:k]]


class CappedBucket(KBucket):  # type: ignore[misc]
    """A k-bucket that counts its entries per host, its replacement list included.

    ``add_node`` and ``remove_node`` are the package's, rewritten to keep the
    count (and to hold a node in one list only: the package leaves a
    replacement that moves up in both).
    """

    def __init__(self, range_lower: int, range_upper: int, ksize: int) -> None:
        super().__init__(range_lower, range_upper, ksize)
        self.hosts: Counter[str] = Counter()

    def _count(self, node: Node, delta: int) -> None:
        host = host_key(node.ip)
        self.hosts[host] += delta
        if self.hosts[host] <= 0:
            del self.hosts[host]

    def add_node(self, node: Node) -> bool:
        """Add or refresh ``node``; False if it went to the replacement list (bucket full)."""
        held = self.nodes.pop(node.id, None)
        if held is None:
            held = self.replacement_nodes.pop(node.id, None)
            was_main = False
        else:
            was_main = True
        if held is not None:
            self._count(held, -1)
        self._count(node, +1)
        if was_main or len(self.nodes) < self.ksize:
            self.nodes[node.id] = node
            return True
        self.replacement_nodes[node.id] = node
        while len(self.replacement_nodes) > self.max_replacement_nodes:
            _, gone = self.replacement_nodes.popitem(last=False)
            self._count(gone, -1)
        return False

    def remove_node(self, node: Node) -> None:
        """Forget ``node``; the newest replacement takes a freed place."""
        gone = self.replacement_nodes.pop(node.id, None)
        if gone is None:
            gone = self.nodes.pop(node.id, None)
            if gone is not None and self.replacement_nodes:
                new_id, new = self.replacement_nodes.popitem()
                self.nodes[new_id] = new
        if gone is not None:
            self._count(gone, -1)

    def split(self) -> tuple[CappedBucket, CappedBucket]:
        midpoint = (self.range[0] + self.range[1]) // 2
        one = CappedBucket(self.range[0], midpoint, self.ksize)
        two = CappedBucket(midpoint + 1, self.range[1], self.ksize)
        for node in chain(self.nodes.values(), self.replacement_nodes.values()):
            (one if node.long_id <= midpoint else two).add_node(node)
        return one, two


class CappedTable(RoutingTable):  # type: ignore[misc]
    """kademlia's routing table with per-host limits (:class:`RoutingLimits`).

    A node id is free to choose, an address is not: one host (an IPv4
    address, an IPv6 /64) holds at most ``per_bucket`` entries in a bucket
    and ``per_table`` in the table, replacements included; a contact beyond
    that is not added (``refused`` counts them). A full bucket's head is
    pinged through the protocol (a child of the node's task group), not as
    the package's free task.
    """

    def __init__(self, protocol: Any, ksize: int, node: Node, limits: RoutingLimits) -> None:
        self.limits = limits
        self.refused = 0
        super().__init__(protocol, ksize, node)

    def flush(self) -> None:
        self.buckets = [CappedBucket(0, 2**160, self.ksize)]

    def host_entries(self, host: str) -> int:
        """Entries (replacements included) that ``host`` holds in the whole table."""
        return sum(bucket.hosts[host] for bucket in self.buckets)

    def admits(self, node: Node) -> bool:
        """Whether :meth:`add_contact` would keep ``node`` (it is known, or its host has room)."""
        bucket = self.buckets[self.get_bucket_for(node)]
        if node.id in bucket.nodes or node.id in bucket.replacement_nodes:
            return True
        host = host_key(node.ip)
        return bool(self.limits.admits(bucket.hosts[host], self.host_entries(host)))

    def add_contact(self, node: Node) -> None:
        if not self.admits(node):
            self.refused += 1
            return
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return
        # Per section 4.2 of the paper (as the package): split if the bucket
        # holds our own id, or if its depth is not congruent to 0 mod 5.
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
        else:
            self.protocol.check_head(bucket.head())


class _Replies:
    """A lookup's calls in flight; their futures' callbacks wake the driver."""

    def __init__(self) -> None:
        self.pending: dict[asyncio.Future[Any], Contact] = {}
        self._done: list[asyncio.Future[Any]] = []
        self._wake = anyio.Event()

    def add(self, call: asyncio.Future[Any], contact: Contact) -> None:
        self.pending[call] = contact
        call.add_done_callback(self._finished)

    def _finished(self, call: asyncio.Future[Any]) -> None:
        if call in self.pending and not call.cancelled():
            self._done.append(call)
            self._wake.set()

    async def wait(self, timeout: float) -> list[tuple[asyncio.Future[Any], Contact]]:
        """The calls answered (or timed out) so far, waiting up to ``timeout`` for one."""
        if not self._done:
            with anyio.move_on_after(timeout):
                await self._wake.wait()
        # The callbacks run in this loop: nothing finishes between these lines.
        self._wake = anyio.Event()
        done, self._done = self._done, []
        return [(call, self.pending.pop(call)) for call in done]

    def drain(self) -> list[asyncio.Future[Any]]:
        """The calls still in flight, no longer waited for."""
        calls = list(self.pending)
        self.pending.clear()
        return calls


def _fit(msg_id: bytes, response: Any) -> bytes | None:
    """Encode a reply within MAX_DATAGRAM, dropping the farthest contacts if needed."""
    while True:
        data: bytes = b"\x01" + msg_id + umsgpack.packb(response)
        if len(data) <= MAX_DATAGRAM:
            return data
        if isinstance(response, list) and response:
            response = response[:-1]
        elif isinstance(response, dict) and response.get("nodes"):
            response = {**response, "nodes": response["nodes"][:-1]}
        else:
            return None


class DhtProtocol(KademliaProtocol):  # type: ignore[misc]
    """Kademlia with hardened datagrams and p2pkg's two record types."""

    def __init__(
        self,
        source_node: Node,
        storage: Any,
        ksize: int,
        providers: ProviderStore,
        roots: RootStore,
        clock: Callable[[], float] = time.time,
        wait_timeout: float = 2.0,
        routing: RoutingLimits | None = None,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self.router = CappedTable(self, ksize, source_node, routing or RoutingLimits())
        self._wait_timeout = wait_timeout
        self.providers = providers
        self.roots = roots
        self.clock = clock
        self.dropped = 0
        self.rpcs_answered = 0  # requests from other nodes answered (for /metrics)
        self.rpcs_sent = 0  # calls this node sent
        self.misses: dict[bytes, int] = {}
        # The running node's task group (DhtNode.run attaches it): contact checks
        # are its children. None before run and after it: nothing is started then.
        self._tg: TaskGroup | None = None
        self.closed = anyio.Event()  # set once the socket is closed
        self._sent_to: dict[bytes, tuple[str, int]] = {}
        self._addr_ids: dict[tuple[str, int], bytes] = {}
        self._verifying: set[tuple[str, int]] = set()
        self._verifying_hosts: Counter[str] = Counter()

    def attach(self, tg: TaskGroup) -> None:
        """Start background work (contact checks) as children of ``tg`` from now on."""
        self._tg = tg

    def detach(self) -> None:
        """Start nothing more: the node is stopping."""
        self._tg = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._tg = None
        self.closed.set()

    # ------------------------------------------------------------------ datagrams

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not HEADER + 1 <= len(data) <= MAX_DATAGRAM:
            self.dropped += 1
            return
        try:
            payload = umsgpack.unpackb(data[HEADER:])
        except Exception:  # umsgpack raises many types for bad input: all mean "drop"
            self.dropped += 1
            return
        kind, msg_id = data[:1], data[1:HEADER]
        if kind == b"\x00":
            if (
                not isinstance(payload, list)
                or len(payload) != 2
                or not isinstance(payload[0], str)
                or not isinstance(payload[1], list)
                or len(payload[1]) > MAX_ARGS
            ):
                self.dropped += 1
                return
            self._request(msg_id, payload, addr)
        elif kind == b"\x01":
            if msg_id not in self._outstanding or self._sent_to.get(msg_id) != addr:
                self.dropped += 1
                return
            future, timer = self._outstanding.pop(msg_id)
            self._sent_to.pop(msg_id, None)
            timer.cancel()
            if not future.done():
                future.set_result((True, _sanitize(payload)))
        else:
            self.dropped += 1

    def _request(self, msg_id: bytes, payload: list[Any], addr: tuple[str, int]) -> None:
        """Answer a request at once: every ``rpc_*`` handler is synchronous and bounded.

        (rpcudp makes a task per datagram; answering in the callback starts
        none, so a flood of requests cannot pile up tasks.)
        """
        name, args = payload
        handler = getattr(self, f"rpc_{name}", None) if name.isidentifier() else None
        if handler is None or self.transport is None or self.transport.is_closing():
            self.dropped += 1
            return
        try:
            data = _fit(msg_id, handler(addr, *args))
        except Exception:  # wrong arity or types from a remote: drop, never crash
            self.dropped += 1
            return
        if data is not None:
            self.rpcs_answered += 1
            self.transport.sendto(data, addr)

    def call(self, address: tuple[str, int], name: str, *args: Any) -> asyncio.Future[Any]:
        """Send RPC ``name``; a future of (answered, payload). Cancel-safe, size-checked."""
        loop = asyncio.get_running_loop()
        msg_id = secrets.token_bytes(20)
        data = b"\x00" + msg_id + umsgpack.packb([name, list(args)])
        future: asyncio.Future[Any] = loop.create_future()
        if len(data) > MAX_DATAGRAM or self.transport is None or self.transport.is_closing():
            future.set_result((False, None))  # too big, or the node has stopped: no answer
            return future
        timer = loop.call_later(self._wait_timeout, self._expire, msg_id)
        self._outstanding[msg_id] = (future, timer)
        self._sent_to[msg_id] = (address[0], address[1])
        future.add_done_callback(lambda f: self._forget(msg_id) if f.cancelled() else None)
        self.rpcs_sent += 1
        self.transport.sendto(data, address)
        return future

    def abandon(self, calls: Iterable[asyncio.Future[Any]]) -> None:
        """Cancel calls nobody waits for and forget them now (not a loop turn later)."""
        gone = set(calls)
        for call in gone:
            call.cancel()
        for msg_id, (future, _) in list(self._outstanding.items()):
            if future in gone:
                self._forget(msg_id)

    def _expire(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        self._sent_to.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def _forget(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        self._sent_to.pop(msg_id, None)
        if entry is not None:
            entry[1].cancel()

    # The parent class routes ping/find_node/... through rpcudp's __getattr__;
    # send them through the hardened `call` instead.
    def ping(self, address: tuple[str, int], nodeid: bytes) -> asyncio.Future[Any]:
        return self.call(address, "ping", nodeid)

    def find_node(self, address: tuple[str, int], nodeid: bytes, key: bytes) -> asyncio.Future[Any]:
        return self.call(address, "find_node", nodeid, key)

    def find_value(
        self, address: tuple[str, int], nodeid: bytes, key: bytes
    ) -> asyncio.Future[Any]:
        return self.call(address, "find_node", nodeid, key)  # values are disabled

    # ------------------------------------------------------------------ contacts

    def welcome_if_new(self, node: Node) -> None:
        # No generic values to hand over (STORE is disabled): just learn the contact.
        if self.router.is_new_node(node):
            self.router.add_contact(node)

    def handle_call_response(self, result: Any, node: Node) -> Any:
        if result[0] and node.ip is not None:
            self._addr_ids.setdefault((node.ip, node.port), node.id)
        if not result[0]:
            misses = self.misses.get(node.id, 0) + 1
            self.misses[node.id] = misses
            if misses >= 2:  # a contact survives a single miss
                self.router.remove_contact(node)
                self.misses.pop(node.id, None)
            return result
        self.misses.pop(node.id, None)
        self.welcome_if_new(node)
        return result

    def _source(self, sender: tuple[str, int], nodeid: Any) -> None:
        """Learn the sender of a request, but only once it proves the id it claims.

        A message can claim any node id; inserting claims directly lets one
        address fill the routing table with fake contacts (an eclipse). So the
        sender is pinged and added only if it answers with the same id; one id
        per address, and the table's per-host limits on top (one host with
        many ports gets its share, no more). At most ``MAX_CHECKS`` checks are
        in flight, ``CHECKS_PER_HOST`` per host (one host cannot hold them all),
        and none for a sender its host's share would refuse anyway.
        """
        if not isinstance(nodeid, bytes) or len(nodeid) != KEY_LEN or self._tg is None:
            return
        addr = (sender[0], sender[1])
        known = self._addr_ids.get(addr)
        if known is not None or addr in self._verifying or len(self._verifying) >= MAX_CHECKS:
            return
        host = host_key(addr[0])
        if self._verifying_hosts[host] >= CHECKS_PER_HOST:
            return
        node = Node(nodeid, *addr)
        if not self.router.is_new_node(node) or not self.router.admits(node):
            return
        self._verifying.add(addr)
        self._verifying_hosts[host] += 1
        self._tg.start_soon(self._verify, addr, nodeid)

    async def _verify(self, addr: tuple[str, int], claimed: bytes) -> None:
        try:
            ok, answer = await self.call(addr, "ping", self.source_node.id)
            if ok and answer == claimed:
                self._addr_ids[addr] = claimed
                self.welcome_if_new(Node(claimed, addr[0], addr[1]))
        finally:
            self._verifying.discard(addr)
            host = host_key(addr[0])
            self._verifying_hosts[host] -= 1
            if self._verifying_hosts[host] <= 0:
                del self._verifying_hosts[host]

    def check_head(self, node: Node) -> None:
        """Ping a full bucket's least recently seen contact (it goes after two misses).

        The package does this as a free task; here it is a child of the running
        node's task group, counted with the contact checks, and skipped when
        none can start (not running, or too many in flight).
        """
        addr = (node.ip, node.port)
        if self._tg is None or addr in self._verifying or len(self._verifying) >= MAX_CHECKS:
            return
        self._verifying.add(addr)
        self._tg.start_soon(self._check_head, node)

    async def _check_head(self, node: Node) -> None:
        try:
            await self.call_ping(node)  # answer or miss: handle_call_response
        finally:
            self._verifying.discard((node.ip, node.port))

    # ------------------------------------------------------------------ RPCs

    def rpc_ping(self, sender: tuple[str, int], nodeid: bytes) -> bytes:
        self._source(sender, nodeid)
        return bytes(self.source_node.id)

    def rpc_store(self, sender: tuple[str, int], *args: Any) -> bool:
        return False  # arbitrary values are not stored (provider and root records only)

    def rpc_find_node(self, sender: tuple[str, int], nodeid: bytes, key: bytes) -> list[Any]:
        if not isinstance(key, bytes) or len(key) != KEY_LEN:
            raise ValueError("bad key")
        self._source(sender, nodeid)
        return self._neighbours(key, sender)

    def _neighbours(self, key: bytes, sender: tuple[str, int]) -> list[tuple[bytes, str, int]]:
        """The k contacts closest to ``key`` we know, not the asker itself."""
        nearest = _nearest(self.router, key, self.router.ksize, exclude=(sender[0], sender[1]))
        return [(c.id, c.address[0], c.address[1]) for c in nearest]

    def rpc_find_value(self, sender: tuple[str, int], nodeid: bytes, key: bytes) -> list[Any]:
        return self.rpc_find_node(sender, nodeid, key)

    def rpc_add_provider(
        self, sender: tuple[str, int], nodeid: bytes, key: bytes, port: int, ttl: float
    ) -> bool:
        self._source(sender, nodeid)
        if not isinstance(key, bytes) or not isinstance(port, int):
            return False
        if not isinstance(ttl, (int, float)):
            return False
        return self.providers.add(key, sender[0], port, float(ttl), self.clock())

    def rpc_get_providers(
        self, sender: tuple[str, int], nodeid: bytes, key: bytes, want: int
    ) -> dict[str, Any]:
        self._source(sender, nodeid)
        if not isinstance(key, bytes) or len(key) != KEY_LEN:
            raise ValueError("bad key")
        found = self.providers.get(key, min(int(want), 16), self.clock())
        # Like FIND_VALUE: also the closest nodes we know, so a lookup can go on.
        return {"providers": [list(p) for p in found], "nodes": self._neighbours(key, sender)}

    def rpc_put_root(self, sender: tuple[str, int], nodeid: bytes, key: bytes, data: bytes) -> bool:
        self._source(sender, nodeid)
        if not isinstance(key, bytes) or not isinstance(data, bytes):
            return False
        return self.roots.put(key, data)

    def rpc_get_root(self, sender: tuple[str, int], nodeid: bytes, key: bytes) -> dict[str, Any]:
        self._source(sender, nodeid)
        data = self.roots.get(key) if isinstance(key, bytes) else None
        return {"root": data} if data is not None else {}


class DhtNode(Server):  # type: ignore[misc]
    """A DHT node: join, announce providers and roots, look them up.

    ``routing`` caps what one host may hold in the routing table (and learn
    in a lookup); ``hints`` says how provider addresses in replies become a
    provider lookup's answer. Both default to the protocol's values.
    """

    protocol_class = DhtProtocol

    def __init__(
        self,
        node_id: bytes | None = None,
        *,
        ksize: int = 20,
        alpha: int = 3,
        providers: ProviderStore | None = None,
        roots: RootStore | None = None,
        wait_timeout: float = 2.0,
        soft_timeout: float = 0.25,
        routing: RoutingLimits | None = None,
        hints: HintRules | None = None,
    ) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id or secrets.token_bytes(20))
        self.soft_timeout = soft_timeout
        self.routing = routing or RoutingLimits()
        self.hints = hints or HintRules()
        # `is None`, not `or`: an empty store is falsy (it has a length).
        self.providers = providers if providers is not None else ProviderStore()
        self.roots = roots if roots is not None else RootStore()
        self.wait_timeout = wait_timeout
        self.transport: asyncio.DatagramTransport | None = None
        self._scope: anyio.CancelScope | None = None

    def _create_protocol(self) -> DhtProtocol:
        return DhtProtocol(
            self.node,
            self.storage,
            self.ksize,
            self.providers,
            self.roots,
            wait_timeout=self.wait_timeout,
            routing=self.routing,
        )

    @property
    def port(self) -> int:
        """The UDP port the node is bound to (while :meth:`run` runs)."""
        if self.transport is None:
            raise RuntimeError("the DHT node is not running")
        return int(self.transport.get_extra_info("sockname")[1])

    async def run(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        refresh_every: float = 3600.0,
        task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind UDP ``host:port`` and answer the DHT until cancelled; ``started(port)``.

        Contact checks and the bucket refresh (every ``refresh_every``
        seconds, what kademlia's ``listen`` schedules as free tasks) are
        children of this call. On the way out nothing more is started, the
        socket is closed, and this returns once it is. :meth:`stop` ends it
        from outside (a node leaving, in tests and netsim).
        """
        if self.transport is not None:
            raise RuntimeError("the DHT node is already running")
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            self._create_protocol, local_addr=(host, port)
        )
        self.transport, self.protocol = transport, protocol
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as tg:
                    protocol.attach(tg)
                    try:
                        tg.start_soon(self._refresh_buckets, refresh_every)
                        task_status.started(self.port)
                        await anyio.sleep_forever()
                    finally:
                        protocol.detach()
        finally:
            self._scope = None
            transport.close()  # the socket closes in connection_lost, one loop turn later
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await protocol.closed.wait()
            self.transport = None

    async def listen(self, port: int, interface: str = "0.0.0.0") -> None:
        """Not supported: kademlia's ``listen`` starts free tasks. Use :meth:`run`."""
        raise NotImplementedError("run the node on a task group: await tg.start(node.run, ...)")

    def stop(self) -> None:
        """End :meth:`run` (the node leaves the network); no-op when not running."""
        if self._scope is not None:
            self._scope.cancel()

    async def _refresh_buckets(self, every: float) -> None:
        """Look up a random id in each bucket idle for an hour (kademlia's table refresh)."""
        while True:
            await anyio.sleep(every)
            for node_id in self.protocol.get_refresh_ids():
                try:
                    await self.lookup(node_id)
                except OSError as exc:
                    log.info("bucket refresh failed: %s", exc)

    async def bootstrap_node(self, addr: tuple[str, int]) -> Node | None:
        ok, node_id = await self.protocol.ping(addr, self.node.id)
        if not ok or not isinstance(node_id, bytes) or len(node_id) != KEY_LEN:
            return None  # no answer, or an answer that is not a node id
        return Node(node_id, addr[0], addr[1])

    async def bootstrap(self, addrs: list[tuple[str, int]]) -> list[Node]:
        """Ping ``addrs`` (at once), add those that answer, then look up our own id."""
        found: list[Node | None] = [None] * len(addrs)

        async def one(i: int, addr: tuple[str, int]) -> None:
            found[i] = await self.bootstrap_node(addr)

        async with anyio.create_task_group() as tg:
            for i, addr in enumerate(addrs):
                tg.start_soon(one, i, addr)
        for node in found:  # in the order given
            if node is not None:
                self.protocol.router.add_contact(node)
        return await self.lookup(self.node.id)

    async def lookup(
        self,
        key: bytes,
        rpc: str = "find_node",
        args: tuple[Any, ...] = (),
        on_reply: Callable[[Any], bool] | None = None,
    ) -> list[Node]:
        """The ``ksize`` live nodes closest to ``key``: an iterative, non-lockstep lookup.

        See :mod:`p2pkg.core.lookup` for the rules (alpha queries in flight, the
        soft and hard timeouts, when it stops). ``on_reply(payload)`` sees each
        answer; returning True ends the lookup there.
        """
        result = await self.run_lookup(key, rpc, args, on_reply=on_reply)
        return [Node(c.id, c.address[0], c.address[1]) for c in result.nodes]

    async def run_lookup(
        self,
        key: bytes,
        rpc: str = "find_node",
        args: tuple[Any, ...] = (),
        *,
        want: int | None = None,
        on_reply: Callable[[Any], bool] | None = None,
    ) -> LookupResult:
        """Drive a :class:`~p2pkg.core.lookup.Lookup` of ``key`` with RPC ``rpc``.

        Sends the queries the machine asks for, then waits for the next reply
        or the machine's next deadline, whichever comes first, and feeds it
        what happened, with the loop's clock. ``want`` makes it a provider
        lookup (GET_PROVIDERS replies).
        """
        machine = Lookup(
            key,
            _nearest(self.protocol.router, key, self.ksize),
            anyio.current_time(),
            k=self.ksize,
            alpha=self.alpha,
            soft_timeout=self.soft_timeout,
            hard_timeout=self.wait_timeout,
            want=want,
            exclude=(self.node.id,),
            per_host=self.routing.per_table,
            hints=self.hints,
        )
        calls = _Replies()
        try:
            while not machine.done:
                for contact in machine.next_requests(anyio.current_time()):
                    calls.add(
                        self.protocol.call(contact.address, rpc, self.node.id, key, *args), contact
                    )
                deadline = machine.next_deadline()
                if deadline is None:
                    break
                for call, contact in await calls.wait(max(0.0, deadline - anyio.current_time())):
                    ok, payload = call.result()
                    now = anyio.current_time()
                    node = Node(contact.id, contact.address[0], contact.address[1])
                    self.protocol.handle_call_response((ok, payload), node)
                    reply = _reply(payload, want) if ok else None
                    if reply is None:
                        machine.on_failure(contact, now)
                    elif (
                        machine.on_response(contact, *reply, now)
                        and on_reply is not None
                        and on_reply(payload)
                    ):
                        machine.stop(now)
        finally:
            self.protocol.abandon(calls.drain())  # queries the lookup no longer waits for
        result = machine.result
        log.debug(
            "lookup %s via %s: %s after %.3f s, %d queried, %d answered, %d failed",
            key.hex(),
            rpc,
            result.reason.value,
            result.elapsed,
            result.queried,
            result.answered,
            result.failed,
        )
        return result

    async def _closest(self, key: bytes) -> list[Node]:
        return await self.lookup(key)

    async def self_lookups(self, every: float = 600.0) -> None:
        """Look up our own id periodically, until cancelled.

        Keeps the neighbourhood fresh (new close nodes learned, dead ones noticed),
        which the package only does for buckets idle for an hour.
        """
        while True:
            await anyio.sleep(every)
            try:
                await self.lookup(self.node.id)
            except OSError as exc:
                log.info("self-lookup failed: %s", exc)

    async def announce(self, object_id: bytes, port: int, ttl: float = 3600.0) -> int:
        """Tell the nodes closest to ``object_id`` that we serve it on ``port``."""
        return await self.announce_key(content_key(object_id), port, ttl)

    async def announce_key(self, key: bytes, port: int, ttl: float = 3600.0) -> int:
        """Provider record under a ready-made DHT key (see :mod:`p2pkg.core.dht_records`)."""
        nodes = await self._closest(key)
        calls = [
            self.protocol.call((n.ip, n.port), "add_provider", self.node.id, key, port, ttl)
            for n in nodes
        ]
        results = await asyncio.gather(*calls)
        return sum(1 for ok, value in results if ok and value is True)

    async def find_providers(self, object_id: bytes, want: int = 16) -> list[tuple[str, int]]:
        """Providers of ``object_id`` known to the nodes closest to it."""
        return await self.find_key(content_key(object_id), want)

    async def find_key(self, key: bytes, want: int = 16) -> list[tuple[str, int]]:
        """Providers recorded under a ready-made DHT key: :meth:`lookup_providers`' answer."""
        return list((await self.lookup_providers(key, want)).providers)

    async def lookup_providers(self, key: bytes, want: int = 16) -> LookupResult:
        """One lookup with GET_PROVIDERS (which also returns closer nodes).

        It stops once ``want`` confirmed providers are known, or after the
        closest nodes answered. ``providers`` is the answer (confirmed first,
        then at most ``hints.unconfirmed`` unconfirmed ones, ``hints.per_host``
        ports per host); ``hints`` says which of them are unconfirmed
        (:mod:`p2pkg.core.lookup`).
        """
        return await self.run_lookup(key, "get_providers", (want,), want=want)

    async def put_root(self, data: bytes, first_key: bytes) -> int:
        key = root_key(first_key)
        self.roots.put(key, data)
        nodes = await self._closest(key)
        calls = [
            self.protocol.call((n.ip, n.port), "put_root", self.node.id, key, data) for n in nodes
        ]
        return sum(1 for ok, value in await asyncio.gather(*calls) if ok and value is True)

    async def get_root(self, first_key: bytes) -> bytes | None:
        """The highest-version root, validly signed by its own keys, that the closest
        nodes hold for ``first_key``. Nodes may lag behind; the best reply wins. The
        caller still applies its own trust rules (docs/protocol.md §4.3)."""
        key = root_key(first_key)
        nodes = await self._closest(key)
        calls = [self.protocol.call((n.ip, n.port), "get_root", self.node.id, key) for n in nodes]
        best = RootStore()
        if (mine := self.roots.get(key)) is not None:
            best.put(key, mine)
        for ok, value in await asyncio.gather(*calls):
            if ok and isinstance(value, dict) and isinstance(value.get("root"), bytes):
                best.put(key, value["root"])  # keeps only the highest valid version
        return best.get(key)

    # ------------------------------------------------------------------ state

    def save_state_json(self, path: Path) -> None:
        """Node id and contacts as JSON, written atomically (no pickle)."""
        state = {
            "id": self.node.id.hex(),
            "contacts": [[ip, port] for ip, port in self.bootstrappable_neighbors()],
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)

    @staticmethod
    def load_state_json(path: Path) -> tuple[bytes | None, list[tuple[str, int]]]:
        try:
            state = json.loads(path.read_text())
            node_id = bytes.fromhex(state["id"])
            contacts = [(str(ip), int(port)) for ip, port in state["contacts"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None, []
        if len(node_id) != KEY_LEN:
            return None, []
        return node_id, contacts


__all__ = ["MAX_DATAGRAM", "CappedBucket", "CappedTable", "DhtNode", "DhtProtocol"]
