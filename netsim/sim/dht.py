"""The DHT in simulated time: the product's lookup machine and records over simulated RPCs.

What is the product's, used as is: :class:`p2pkg.core.lookup.Lookup` decides
whom to ask, when a query is late, when to stop and what the answer is
(with the product's ``k``, ``alpha``, timeouts, per-host cap and hint
rules); :class:`p2pkg.core.dht_records.ProviderStore` holds each node's
provider records with the product's limits; :class:`p2pkg.core.announce.AnnouncePlan`
says which keys a node announces when; :func:`~p2pkg.core.dht_records.bin_key`
and :func:`~p2pkg.core.objects.name_hash` name the records.

What is simulated: the nodes' routing tables and the network. A member's
table is modelled as a full Kademlia table: for each bucket (the ids that
share exactly ``b`` leading bits with its own) it knows ``k`` of them —
all, when the bucket holds fewer — picked by a fixed per-member rotation,
regardless of whether they are up (a table keeps dead entries until a
newcomer replaces them, so churn leaves stale contacts, which is what the
lookup's timeouts are for). FIND_NODE and GET_PROVIDERS answer the ``k``
contacts of that table closest to the key, like ``p2pkg.io.dht._nearest``.
A query to a node that is down gets no answer (the machine's timeouts
apply); one to a node that is up is answered after the round trip.

Lookups run *at once* in simulated time: the machine is driven through its
own events (replies at send time + round trip, its deadlines) on a local
clock, and the caller continues at the instant the lookup ended. That is
the same sequence the global event loop would run, except that nothing
else changes in the DHT during the lookup's second or so (a node going
down mid-lookup answers anyway). It keeps the 256 bin announcements per
seed affordable at 10,000 nodes.

Datagram sizes are the product's encoding (``umsgpack`` of the same
payloads, plus the 21-byte header and 28 bytes of IPv4 and UDP).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import umsgpack  # type: ignore[import-untyped]

from netsim.sim.network import Node
from p2pkg.core.dht_records import KEY_LEN, ProviderStore, RoutingLimits
from p2pkg.core.lookup import Contact, HintRules, Lookup, LookupResult
from p2pkg.core.objects import b3

# The product's DhtNode defaults (p2pkg/io/dht.py).
K = 20
ALPHA = 3
SOFT_TIMEOUT = 0.25
HARD_TIMEOUT = 2.0
WANT = 16  # providers a GET_PROVIDERS asks for (DhtNode.lookup_providers)
TTL = 3600.0  # DhtService's record lifetime
PORT = 8000
UDP_IP = 28  # IPv4 + UDP headers
ID_BITS = 8 * KEY_LEN
ANSWERS_KEPT = 500_000  # remembered FIND_NODE answers (about 200 bytes each)


def node_id(name: str) -> bytes:
    return b3(b"netsim/dht/" + name.encode())[:KEY_LEN]


SAMPLE_IP = "10.100.100.100"  # as long as the longest member address


_SIZES: dict[tuple[str, int, int], int] = {}


def datagram(kind: str, nodes: int = 0, providers: int = 0) -> int:
    """Bytes on the wire of one request or reply, encoded as the product encodes it."""
    key = (kind, nodes, providers)
    size = _SIZES.get(key)
    if size is None:
        ident = bytes(KEY_LEN)
        contacts = [[ident, SAMPLE_IP, PORT]] * nodes
        payload: Any
        if kind == "find_node":
            payload = ["find_node", [ident, ident]]
        elif kind == "get_providers":
            payload = ["get_providers", [ident, ident, WANT]]
        elif kind == "add_provider":
            payload = ["add_provider", [ident, ident, PORT, TTL]]
        elif kind == "nodes":
            payload = contacts
        elif kind == "providers":
            payload = {"providers": [[SAMPLE_IP, PORT]] * providers, "nodes": contacts}
        else:  # "ok": ADD_PROVIDER's answer
            payload = True
        size = _SIZES[key] = 1 + 20 + len(umsgpack.packb(payload)) + UDP_IP
    return size


@dataclass
class Traffic:
    """RPCs and bytes, sent and received, of one node or one kind of work."""

    rpcs: int = 0
    sent: int = 0
    received: int = 0

    def add(self, rpcs: int, sent: int, received: int) -> None:
        self.rpcs += rpcs
        self.sent += sent
        self.received += received


class Member:
    """A node that runs the DHT for as long as it is up (a seed, a cache, the master)."""

    __slots__ = ("address", "contact", "id", "ival", "node", "providers", "served")

    def __init__(self, node: Node, index: int) -> None:
        self.node = node
        self.id = node_id(node.name)
        self.ival = int.from_bytes(self.id, "big")
        self.address = (f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}", PORT)
        self.contact = Contact(self.id, self.address)
        self.providers = ProviderStore()
        self.served = Traffic()  # answering others' lookups and storing their records


@dataclass
class LookupRun:
    result: LookupResult
    elapsed: float
    rpcs: int


class SimDht:
    """Members, their routing tables and records, and lookups among them."""

    def __init__(
        self, members: Sequence[Node], rtt: Callable[[Node, Node], float], now: Callable[[], float]
    ) -> None:
        self.rtt = rtt
        self.now = now
        self.members = [Member(node, i + 1) for i, node in enumerate(members)]
        self.by_id = {m.id: m for m in self.members}
        self.by_address = {m.address: m for m in self.members}
        self.by_node = {m.node.name: m for m in self.members}
        ordered = sorted(self.members, key=lambda m: m.ival)
        self._ivals = [m.ival for m in ordered]
        self._sorted = ordered
        self._buckets: dict[tuple[int, int], list[Member]] = {}
        self._depths: dict[int, int] = {}
        self._answers: dict[tuple[int, bytes, bytes | None], list[Contact]] = {}
        self.limits = RoutingLimits()
        self.hints = HintRules()

    # ---------------------------------------------------------------- routing tables

    def _range(self, lo: int, hi: int) -> tuple[int, int]:
        return bisect.bisect_left(self._ivals, lo), bisect.bisect_left(self._ivals, hi)

    def _bucket(self, member: Member, b: int) -> list[Member]:
        """What ``member`` knows of the ids sharing exactly ``b`` leading bits with its own."""
        key = (member.ival, b)
        found = self._buckets.get(key)
        if found is None:
            shift = ID_BITS - 1 - b
            lo = ((member.ival >> shift) ^ 1) << shift
            i, j = self._range(lo, lo + (1 << shift))
            size = j - i
            if size <= K:
                found = self._sorted[i:j]
            else:  # a full bucket: k of them, spread by a rotation of its own
                start = zlib.crc32(member.id + bytes([b]))
                found = [self._sorted[i + (start + n * size // K) % size] for n in range(K)]
            self._buckets[key] = found
        return found

    def _depth(self, member: Member) -> int:
        """The first prefix length from which no other member shares ``member``'s bits."""
        found = self._depths.get(member.ival)
        if found is None:
            found = self._depths[member.ival] = self._measure_depth(member)
        return found

    def _measure_depth(self, member: Member) -> int:
        b = 0
        while b < ID_BITS:
            shift = ID_BITS - b
            lo = (member.ival >> shift) << shift if shift < ID_BITS else 0
            i, j = self._range(lo, lo + (1 << shift))
            if j - i <= 1:
                return b
            b += 1
        return b

    def nearest(self, member: Member, key: bytes, exclude: bytes | None = None) -> list[Contact]:
        """The ``k`` contacts of ``member``'s table closest to ``key`` (FIND_NODE's answer).

        Remembered per (member, key): tables do not change during a run, and
        every seed announcing a bin asks the same nodes the same question.
        """
        memo = (member.ival, key, exclude)
        found = self._answers.get(memo)
        if found is None:
            if len(self._answers) >= ANSWERS_KEPT:
                self._answers.clear()  # crude but bounded; refilled as asked
            found = self._answers[memo] = self._nearest(member, key, exclude)
        return found

    def _nearest(self, member: Member, key: bytes, exclude: bytes | None) -> list[Contact]:
        target = int.from_bytes(key, "big")
        shared = ID_BITS - (member.ival ^ target).bit_length()
        depth = self._depth(member)
        seen: list[Member] = []
        # The key's own bucket and the deeper ones hold the closest; then outwards.
        for b in range(min(shared, depth), depth):
            seen.extend(self._bucket(member, b))
        b = min(shared, depth) - 1
        while len(seen) < K + 1 and b >= 0:
            seen.extend(self._bucket(member, b))
            b -= 1
        seen.sort(key=lambda m: m.ival ^ target)
        return [m.contact for m in seen if m.id != exclude][:K]

    # ---------------------------------------------------------------- lookups

    def lookup(
        self,
        asker: Node,
        key: bytes,
        contacts: Sequence[Contact],
        traffic: Traffic,
        *,
        want: int | None = None,
        exclude: bytes | None = None,
    ) -> LookupRun:
        """One lookup of ``key`` by ``asker`` from ``contacts``, run to its end now."""
        start = self.now()
        machine = Lookup(
            key,
            contacts,
            start,
            k=K,
            alpha=ALPHA,
            soft_timeout=SOFT_TIMEOUT,
            hard_timeout=HARD_TIMEOUT,
            want=want,
            exclude=() if exclude is None else (exclude,),
            per_host=self.limits.per_table,
            hints=self.hints,
        )
        kind = "find_node" if want is None else "get_providers"
        replies: list[tuple[float, int, Contact, list[Contact], list[tuple[str, int]]]] = []
        seq = itertools.count()
        now = start
        rpcs = 0
        for _ in range(10_000):  # bounded: the machine's own budget ends it far sooner
            for contact in machine.next_requests(now):
                rpcs += 1
                request = datagram(kind)
                traffic.add(1, request, 0)
                member = self.by_id.get(contact.id)
                if member is None or not member.node.online:
                    continue  # no answer: the machine's timeouts decide
                member.served.add(1, 0, request)
                nodes = self.nearest(member, key, exclude=exclude)
                found: list[tuple[str, int]] = []
                if want is not None:
                    found = member.providers.get(key, min(want, WANT), now)
                    reply = datagram("providers", len(nodes), len(found))
                else:
                    reply = datagram("nodes", len(nodes))
                member.served.add(0, reply, 0)
                traffic.add(0, 0, reply)
                arrival = now + self.rtt(asker, member.node)
                heapq.heappush(replies, (arrival, next(seq), contact, nodes, found))
            deadline = machine.next_deadline()
            if deadline is None:
                break
            if replies and replies[0][0] <= deadline:
                now, _, contact, nodes, found = heapq.heappop(replies)
                machine.on_response(contact, nodes, found, now)
            else:
                now = max(now, deadline)  # the loop's next_requests applies the timeouts
        else:
            machine.stop(now)
        return LookupRun(machine.result, now - start, rpcs)

    def announce(self, member: Member, key: bytes, traffic: Traffic, port: int = PORT) -> int:
        """``DhtNode.announce_key``: a lookup of ``key``, then ADD_PROVIDER to the k closest.

        ``traffic`` gets the announcer's side of it; returns the records stored.
        """
        run = self.lookup(member.node, key, self.nearest(member, key), traffic, exclude=member.id)
        stored = 0
        at = self.now() + run.elapsed
        request, ok = datagram("add_provider"), datagram("ok")
        for contact in run.result.nodes:
            holder = self.by_id[contact.id]
            traffic.add(1, request, 0)
            if holder.node.online:
                holder.served.add(1, ok, request)
                traffic.add(0, 0, ok)
                stored += holder.providers.add(key, member.address[0], port, TTL, at)
        return stored

    def join(self, asker: Node, bootstrap: Sequence[Member], traffic: Traffic) -> LookupRun:
        """A fresh node's join: a lookup of its own id from its bootstrap nodes."""
        own = node_id(asker.name)
        return self.lookup(asker, own, [m.contact for m in bootstrap], traffic, exclude=own)


__all__ = ["Member", "SimDht", "Traffic", "datagram", "node_id"]
