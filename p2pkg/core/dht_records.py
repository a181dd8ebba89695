"""What a DHT node stores, with hard bounds (pure; ``now`` is passed in).

* **Provider records** (who holds a file or a namespace bin): per key at most
  ``per_key`` providers, at most ``keys`` keys, one record per source address
  per key (a source refreshes its record, it cannot add many), TTL capped,
  expired records dropped on every access; at most ``per_source`` records
  per source host per key (a flood from one address only replaces its own
  records). The provider's IP is the datagram's source address, never
  something the message claims.
* **Fair shares of the key table.** One source host holds at most
  ``source_records`` records in the whole store: past that, its own oldest
  record makes room for its newest. When the key table is full, a new key
  takes the place of the oldest record of the host holding the most records
  (never of a host holding fewer than the newcomer): a flood from a few
  addresses fills only its share and is the first to give way, so an
  honest announcer's new keys are still accepted. "Oldest" is the order in
  which records were added or last refreshed; honest announcers refresh
  every ttl/2, so their records stay young.
* **Hosts**, the unit of every per-address limit (:func:`host_key`): an IPv4
  address, or an IPv6 /64 (what one subscriber usually gets). The same unit
  caps routing-table entries (:class:`RoutingLimits`) and the provider
  addresses a lookup returns (:mod:`p2pkg.core.lookup`).
* **Root records**: per namespace key, the highest-version signed root whose
  signatures verify against the root's own keys (like BEP 44 mutable items).
  The key is ``BLAKE3(b"p2pkg/root-key/v1" || smallest key)[:20]``, so a
  root can only be stored under the key of its own key set.

A DHT record is a hint: whoever uses a provider verifies every byte, and a
client accepts a root only under its own trust rules (docs/protocol.md §4.3).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice

from p2pkg.core.chunking import b3
from p2pkg.core.root import decode_signed_root
from p2pkg.errors import DecodeError

KEY_LEN = 20  # kademlia's node/key ids are 160-bit

Address = tuple[str, int]


def root_key(first_key: bytes) -> bytes:
    """The DHT key of a namespace's latest root: its (smallest) master key.

    Clients know the key they pinned, not necessarily the namespace's name.
    """
    return b3(b"p2pkg/root-key/v1" + first_key)[:KEY_LEN]


def content_key(object_id: bytes) -> bytes:
    """The DHT key for providers of an object."""
    return b3(b"p2pkg/provider/v1" + object_id)[:KEY_LEN]


def file_key(blake3: bytes) -> bytes:
    """Providers of an archive, by its BLAKE3 (stable across yanks, unlike the manifest id)."""
    return content_key(b"file/" + blake3)


def bin_key(first_key: bytes, slot: int) -> bytes:
    """Providers holding a whole namespace bin (projects whose name hash starts with slot)."""
    return content_key(b"bin/" + first_key + bytes([slot]))


@functools.lru_cache(maxsize=1 << 16)
def host_key(ip: str) -> str:
    """The host an address belongs to, for per-address limits.

    Memoized (bounded): a node checks the hosts of up to ``per_key`` records
    on every ADD_PROVIDER, and parsing them was most of what a busy key cost
    (netsim's pypi-10k: 2/3 of the time spent announcing).

    An IPv4 address is its own host; an IPv6 address counts as its /64 (one
    subscriber commonly holds a whole /64, so counting single IPv6 addresses
    would let one machine pass for billions of hosts); an IPv4-mapped IPv6
    address is its IPv4 address. Anything unparsable is its own string.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return f"{ipaddress.IPv6Network((addr, 64), strict=False).network_address}/64"
    return str(addr)


@dataclass(frozen=True, slots=True)
class RoutingLimits:
    """How many routing-table entries one host may hold (S/Kademlia-style IP limits).

    Node ids are free to choose, so without a per-host limit one machine
    with many ports fills every table it reaches (an eclipse). Replacement
    lists count too: what a bucket remembers at all is bounded.
    """

    per_bucket: int = 2  # node ids per host in one k-bucket
    per_table: int = 4  # node ids per host in the whole table (and per lookup)

    def admits(self, in_bucket: int, in_table: int) -> bool:
        """Whether a host already holding these many entries may add one more."""
        return in_bucket < self.per_bucket and in_table < self.per_table


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """A node's bounds on provider records (docs/protocol.md §9)."""

    per_key: int = 64
    per_source: int = 4  # records one source host may hold per key (peers behind one address)
    keys: int = 20_000
    source_records: int = 5_000  # records one source host may hold in the whole store
    max_ttl: float = 24 * 3600.0
    min_ttl: float = 60.0


#: Records a full key table may drop to take one new key: each eviction is
#: cheap, but one datagram must not buy unbounded work.
EVICTIONS_PER_ADD = 8


@dataclass
class ProviderStore:
    """Bounded provider records: key -> {(ip, port): expires_at}, with per-host shares.

    ``records`` is the table itself; the per-host index (records in the
    order added or refreshed, and hosts by how many records they hold) is
    kept in step by the only two methods that change it, ``_put`` and ``_drop``.
    """

    limits: ProviderLimits = field(default_factory=ProviderLimits)
    records: OrderedDict[bytes, dict[Address, float]] = field(default_factory=OrderedDict)
    refused: int = 0
    evicted: int = 0  # records dropped to make room for another host's (fair eviction)
    # host -> its records, oldest first (added or refreshed)
    _by_host: dict[str, OrderedDict[tuple[bytes, Address], None]] = field(
        default_factory=dict, repr=False
    )
    # n -> hosts holding exactly n records; _top is the largest n in use
    _levels: dict[int, set[str]] = field(default_factory=dict, repr=False)
    _top: int = field(default=0, repr=False)

    def add(self, key: bytes, source_ip: str, port: int, ttl: float, now: float) -> bool:
        """Record that ``source_ip:port`` provides ``key`` until ``now + ttl`` (capped)."""
        if len(key) != KEY_LEN or not 0 < port < 65536:
            self.refused += 1
            return False
        ttl = min(max(ttl, self.limits.min_ttl), self.limits.max_ttl)
        expires = now + ttl
        addr = (source_ip, port)
        host = host_key(source_ip)
        if key in self.records:
            self._expire_key(key, now)
        entry = self.records.get(key)
        if entry is not None and addr in entry:
            self._put(key, addr, host, expires)  # a refresh replaces its own record
            return True
        if entry is not None:
            # A bounded number of records per host per key: one address cannot flood a key.
            mine = sorted((a for a in entry if host_key(a[0]) == host), key=entry.__getitem__)
            for old in mine[: max(0, len(mine) - self.limits.per_source + 1)]:
                self._drop(key, old)
            if len(entry) >= self.limits.per_key:
                # Keep the longest-lived records; a newcomer replaces the soonest to expire.
                soonest = min(entry, key=entry.__getitem__)
                if entry[soonest] >= expires:
                    self.refused += 1
                    return False
                self._drop(key, soonest)
        # A host's share of the whole store: its own oldest record makes room.
        while self.held_by(host) >= self.limits.source_records:
            self._drop(*self._oldest(host))
        if key not in self.records:
            self._expire_some(now)
            if len(self.records) >= self.limits.keys and not self._make_room(host):
                self.refused += 1
                return False
        self._put(key, addr, host, expires)
        return True

    def get(self, key: bytes, want: int, now: float) -> list[Address]:
        """Up to ``want`` live providers of ``key``, the longest-lived first."""
        if key not in self.records:
            return []
        self._expire_key(key, now)
        entry = self.records.get(key)
        if entry is None:
            return []
        best = sorted(entry, key=entry.__getitem__, reverse=True)
        return best[: max(0, min(want, self.limits.per_key))]

    def held_by(self, host: str) -> int:
        """How many records ``host`` (a :func:`host_key`) holds in the whole store."""
        held = self._by_host.get(host)
        return 0 if held is None else len(held)

    def holdings(self) -> dict[str, int]:
        """Records per source host (for status and tests)."""
        return {host: len(held) for host, held in self._by_host.items()}

    # ------------------------------------------------------------------ internals

    def _make_room(self, host: str) -> bool:
        """Free one key slot by fair eviction; False if that would be unfair (or too costly).

        The host holding the most records gives up its oldest, as long as it
        holds more than ``host`` does; ties are broken arbitrarily.
        """
        for _ in range(EVICTIONS_PER_ADD):
            if len(self.records) < self.limits.keys:
                return True
            biggest = next(iter(self._levels[self._top])) if self._top else None
            if biggest is None or self._top <= self.held_by(host):
                return False
            self._drop(*self._oldest(biggest))
            self.evicted += 1
        return len(self.records) < self.limits.keys

    def _oldest(self, host: str) -> tuple[bytes, Address]:
        return next(iter(self._by_host[host]))

    def _put(self, key: bytes, addr: Address, host: str, expires: float) -> None:
        entry = self.records.get(key)
        if entry is None:
            entry = self.records[key] = {}
        held = self._by_host.get(host)
        if held is None:
            held = self._by_host[host] = OrderedDict()
        if addr in entry:
            held.move_to_end((key, addr))  # refreshed: the youngest of its host's
        else:
            self._level(host, len(held), len(held) + 1)
            held[(key, addr)] = None
        entry[addr] = expires
        self.records.move_to_end(key)

    def _drop(self, key: bytes, addr: Address) -> None:
        """Forget one record (and its key once it has none)."""
        entry = self.records[key]
        del entry[addr]
        if not entry:
            del self.records[key]
        host = host_key(addr[0])
        held = self._by_host[host]
        del held[(key, addr)]
        self._level(host, len(held) + 1, len(held))
        if not held:
            del self._by_host[host]

    def _level(self, host: str, before: int, after: int) -> None:
        """Move ``host`` from the hosts holding ``before`` records to those holding ``after``."""
        if before:
            hosts = self._levels[before]
            hosts.discard(host)
            if not hosts:
                del self._levels[before]
        if after:
            self._levels.setdefault(after, set()).add(host)
        self._top = max(self._top, after)
        while self._top and self._top not in self._levels:
            self._top -= 1

    def _expire_key(self, key: bytes, now: float) -> None:
        entry = self.records[key]
        for addr in [a for a, t in entry.items() if t <= now]:
            self._drop(key, addr)

    def _expire_some(self, now: float, budget: int = 64) -> None:
        """Drop expired records of the least recently added keys, a bounded amount per call."""
        for key in list(islice(self.records, budget)):
            self._expire_key(key, now)

    def __len__(self) -> int:
        return sum(len(e) for e in self.records.values())


@dataclass
class RootStore:
    """The highest valid root per namespace key."""

    max_keys: int = 1024
    roots: OrderedDict[bytes, tuple[int, bytes]] = field(default_factory=OrderedDict)
    refused: int = 0

    def put(self, key: bytes, data: bytes) -> bool:
        """Keep ``data`` (canonical signed root) if valid for ``key`` and newest."""
        try:
            signed, root = decode_signed_root(data)
        except DecodeError:
            self.refused += 1
            return False
        if root_key(min(root.keys)) != key:
            self.refused += 1
            return False
        if len(signed.signers(frozenset(root.keys))) < root.threshold:
            self.refused += 1
            return False
        held = self.roots.get(key)
        if held is not None and held[0] >= root.version:
            return held[0] == root.version
        if held is None and len(self.roots) >= self.max_keys:
            self.roots.popitem(last=False)
        self.roots[key] = (root.version, data)
        self.roots.move_to_end(key)
        return True

    def get(self, key: bytes) -> bytes | None:
        held = self.roots.get(key)
        return None if held is None else held[1]
