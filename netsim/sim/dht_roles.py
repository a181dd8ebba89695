"""What the roles do with the DHT in the p2pkg strategy, as the product does it.

* **Announcing** (``p2pkg.io.dht_service.DhtService.keep_announcing``): the
  master's ``serve`` and every full seed announce one record per namespace
  bin (:func:`~p2pkg.core.dht_records.bin_key`, 256 bins); a cache announces
  one record per archive it holds (:func:`~p2pkg.core.dht_records.file_key`).
  Which keys go out when is :class:`~p2pkg.core.announce.AnnouncePlan`'s
  decision: new keys at once, every key again at ttl/2; a seed pokes after
  each sync, a cache when it holds something new. A node coming back up
  announces what fell due while it was away. Before the run starts every
  announcer has announced once (a network that has been running; not
  counted), so the hour's figures are the steady state.
* **Discovery** (``p2pkg.roles.discover.dht_peers``): a standalone client
  (``p2pkg fetch --dht``) joins through its bootstrap nodes, looks up the
  bins of the projects it installs, all at once, and keeps the providers
  :func:`~p2pkg.roles.discover.choose_providers` keeps; they join its
  peers at :attr:`~p2pkg.core.peers.Tier.DHT`, behind the signed mirror list.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netsim.sim.dht import Member, SimDht, Traffic
from netsim.sim.engine import Sim, Timer
from netsim.sim.fetch import Server
from netsim.sim.network import Node
from p2pkg.core.announce import AnnouncePlan
from p2pkg.core.dht_records import bin_key, file_key
from p2pkg.core.objects import b3
from p2pkg.roles.discover import bin_slots, choose_providers

NAMESPACE_KEY = bytes(32)  # the namespace's (first) master key
BINS = 256


@dataclass
class Announcer:
    member: Member
    keys: Callable[[], list[bytes]]
    role: str  # "seed" | "cache" | "master"
    plan: AnnouncePlan = field(default_factory=AnnouncePlan)
    timer: Timer | None = None
    pokes: int = 0
    announced: int = 0
    traffic: Traffic = field(default_factory=Traffic)


class DhtRoles:
    """The DHT of one p2pkg run: its members, their announcements, clients' lookups."""

    def __init__(
        self,
        sim: Sim,
        rtt: Callable[[Node, Node], float],
        origin: Server,
        seeds: Sequence[Server],
        caches: Sequence[Node],
        cache_held: dict[str, set[str]],
        until: float,
    ) -> None:
        self.sim = sim
        self.until = until  # no announcement rounds after the run's last install
        servers = [origin, *seeds]
        self.dht = SimDht([s.node for s in servers] + list(caches), rtt, lambda: sim.now)
        self.server_at = {self.dht.by_node[s.node.name].address: s for s in servers}
        bins = [bin_key(NAMESPACE_KEY, slot) for slot in range(BINS)]
        self.announcers: dict[str, Announcer] = {}
        for server in servers:
            role = "master" if server is origin else "seed"
            member = self.dht.by_node[server.node.name]
            self.announcers[server.node.name] = Announcer(member, lambda: bins, role)
        for cache in caches:
            held = cache_held[cache.name]
            member = self.dht.by_node[cache.name]
            self.announcers[cache.name] = Announcer(
                member, lambda held=held: [held_key(f) for f in held], "cache"
            )
        ordered = sorted(seeds, key=lambda s: s.url)
        self.bootstrap = [self.dht.by_node[s.node.name] for s in [origin, *ordered[:2]]]
        self.client_traffic = Traffic()
        self.client_lookups = 0
        self.clients_discovering = 0
        self.providers_found = 0

    # ---------------------------------------------------------------- announcing

    def start(self) -> None:
        """Every announcer has announced once (not counted), at its own phase of the
        refresh period (nodes started at different times), so the hour's rounds
        are spread out as in a network that has been running; then rounds as
        they fall due."""
        for a in self.announcers.values():
            scratch = Traffic()
            phase = zlib.crc32(a.member.id) % int(a.plan.refresh)
            for key in a.plan.due(a.keys(), self.sim.now):
                self.dht.announce(a.member, key, scratch)
                a.plan.announced(key, self.sim.now - phase)
            self._schedule(a)

    def _schedule(self, a: Announcer) -> None:
        if a.timer is not None:
            a.timer.cancel()
        at = a.plan.next_due(self.sim.now)
        a.timer = self.sim.at(at, self._round, a) if at <= self.until else None

    def _round(self, a: Announcer) -> None:
        a.timer = None
        if not a.member.node.online:
            return  # node_up() starts a round when it is back
        for key in a.plan.due(a.keys(), self.sim.now):
            self.dht.announce(a.member, key, a.traffic)
            a.plan.announced(key, self.sim.now)
            a.announced += 1
        self._schedule(a)

    def poke(self, node: Node) -> None:
        """Something new is held (a seed synced a root, a cache filled an archive)."""
        a = self.announcers.get(node.name)
        if a is not None and self.sim.now <= self.until:
            a.pokes += 1
            self._round(a)

    def node_up(self, node: Node) -> None:
        self.poke(node)

    # ---------------------------------------------------------------- discovery

    def discover(self, client: Node, projects: Sequence[str]) -> tuple[float, list[Server]]:
        """A client's discovery: (seconds it took, the providers it keeps, best first)."""
        self.clients_discovering += 1
        join = self.dht.join(client, self.bootstrap, self.client_traffic)
        # The client's table after joining: its bootstrap nodes and what it met.
        known = {c.id: c for c in (m.contact for m in self.bootstrap)}
        known.update((c.id, c) for c in join.result.nodes)
        results = []
        slowest = 0.0
        for slot in bin_slots(projects):
            key = bin_key(NAMESPACE_KEY, slot)
            target = int.from_bytes(key, "big")
            start = sorted(known.values(), key=lambda c: int.from_bytes(c.id, "big") ^ target)
            run = self.dht.lookup(client, key, start[:20], self.client_traffic, want=16)
            results.append(run.result)
            slowest = max(slowest, run.elapsed)  # the lookups run at once
        self.client_lookups += 1 + len(results)
        chosen = [self.server_at[a] for a in choose_providers(results) if a in self.server_at]
        self.providers_found += len(chosen)
        return join.elapsed + slowest, chosen

    # ---------------------------------------------------------------- report

    def report(self, downloads: int, hours: float) -> dict[str, Any]:
        def per_hour(role: str) -> dict[str, float]:
            group = [a for a in self.announcers.values() if a.role == role]
            if not group:
                return {}
            n = len(group) * hours
            return {
                "announces": sum(a.announced for a in group) / n,
                "rpcs": sum(a.traffic.rpcs for a in group) / n,
                "bytes": sum(a.traffic.sent + a.traffic.received for a in group) / n,
                # The old rule (a poke announced every key again), counted, not run:
                # pokes x the keys held at the end — exact for seeds (their 256
                # bins), an upper bound for caches (they held fewer earlier).
                "announces_if_poke_sent_all": sum(a.pokes * len(a.keys()) for a in group) / n
                + sum(a.announced for a in group) / n,
            }

        busiest = max(self.dht.members, key=lambda m: m.served.sent + m.served.received)
        return {
            "dht_members": len(self.dht.members),
            "dht_lookups_per_download": self.client_lookups / downloads if downloads else 0.0,
            "dht_rpcs_per_download": self.client_traffic.rpcs / downloads if downloads else 0.0,
            "dht_providers_per_discovery": self.providers_found / self.clients_discovering
            if self.clients_discovering
            else 0.0,
            "announce_per_seed_per_hour": per_hour("seed"),
            "announce_per_cache_per_hour": per_hour("cache"),
            "dht_busiest_member_bytes_per_hour": (busiest.served.sent + busiest.served.received)
            / hours,
        }


@functools.lru_cache(maxsize=1 << 18)
def held_key(file: str) -> bytes:
    """The record a cache announces for an archive it holds (by its BLAKE3).

    Remembered: a cache lists every key it holds at each round, as the
    product's ``held_file_keys`` does, and hashing them all again each time
    was most of a ``pypi-10k`` run.
    """
    return file_key(b3(file.encode()))


__all__ = ["Announcer", "DhtRoles", "held_key"]
