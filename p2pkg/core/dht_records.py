"""What a DHT node stores, with hard bounds (pure; ``now`` is passed in).

* **Provider records** (who holds a file or a namespace bin): per key at most
  ``per_key`` providers, at most ``keys`` keys, one record per source address
  per key (a source refreshes its record, it cannot add many), TTL capped,
  expired records dropped on every access; at most ``per_source`` records
  per source IP per key (a flood from one address only replaces its own
  records). The provider's IP is the datagram's source address, never
  something the message claims.
* **Root records**: per namespace key, the highest-version signed root whose
  signatures verify against the root's own keys (like BEP 44 mutable items).
  The key is ``BLAKE3(b"p2pkg/root-key/v1" || smallest key)[:20]``, so a
  root can only be stored under the key of its own key set.

A DHT record is a hint: whoever uses a provider verifies every byte, and a
client accepts a root only under its own trust rules (docs/protocol.md §4.3).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from p2pkg.core.chunking import b3
from p2pkg.core.root import decode_signed_root
from p2pkg.errors import DecodeError

KEY_LEN = 20  # kademlia's node/key ids are 160-bit


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


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    per_key: int = 64
    per_source: int = 4  # records one source IP may hold per key (peers behind one address)
    keys: int = 20_000
    max_ttl: float = 24 * 3600.0
    min_ttl: float = 60.0


@dataclass
class ProviderStore:
    """Bounded provider records: key -> {(ip, port): expires_at}."""

    limits: ProviderLimits = field(default_factory=ProviderLimits)
    records: OrderedDict[bytes, dict[tuple[str, int], float]] = field(default_factory=OrderedDict)
    refused: int = 0

    def add(self, key: bytes, source_ip: str, port: int, ttl: float, now: float) -> bool:
        """Record that ``source_ip:port`` provides ``key`` until ``now + ttl`` (capped)."""
        if len(key) != KEY_LEN or not 0 < port < 65536:
            self.refused += 1
            return False
        ttl = min(max(ttl, self.limits.min_ttl), self.limits.max_ttl)
        entry = self.records.get(key)
        if entry is None:
            self._expire_some(now)
            if len(self.records) >= self.limits.keys:
                self.refused += 1
                return False
            entry = self.records[key] = {}
        self._expire(entry, now)
        entry.pop((source_ip, port), None)  # a refresh replaces its own record
        # A bounded number of records per source IP: one address cannot flood a key.
        mine = sorted((a for a in entry if a[0] == source_ip), key=entry.__getitem__)
        for addr in mine[: max(0, len(mine) - self.limits.per_source + 1)]:
            del entry[addr]
        if len(entry) >= self.limits.per_key:
            # Keep the longest-lived records; a newcomer replaces the soonest to expire.
            soonest = min(entry, key=entry.__getitem__)
            if entry[soonest] >= now + ttl:
                self.refused += 1
                return False
            del entry[soonest]
        entry[(source_ip, port)] = now + ttl
        self.records.move_to_end(key)
        return True

    def get(self, key: bytes, want: int, now: float) -> list[tuple[str, int]]:
        entry = self.records.get(key)
        if entry is None:
            return []
        self._expire(entry, now)
        if not entry:
            del self.records[key]
            return []
        best = sorted(entry, key=entry.__getitem__, reverse=True)
        return best[: max(0, min(want, self.limits.per_key))]

    def _expire(self, entry: dict[tuple[str, int], float], now: float) -> None:
        for addr in [a for a, t in entry.items() if t <= now]:
            del entry[addr]

    def _expire_some(self, now: float, budget: int = 64) -> None:
        """Drop expired keys from the oldest end, a bounded amount per call."""
        for key in list(self.records)[:budget]:
            self._expire(self.records[key], now)
            if not self.records[key]:
                del self.records[key]

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
