"""The world a scenario describes, run under one distribution strategy.

Nodes: an **origin** (the master / the index), **seeds** with upload budgets
(churning: up and down for exponential times; a fraction malicious:
``corrupt`` bytes, ``liar`` providers that hold nothing, ``slow`` uplinks),
**sites** (N clients behind one LAN cache), standalone **clients**, and
**CDN edges** (one per region). Clients in regions (a round-trip matrix and
access bandwidths) install sets of projects sampled from the real rank
table; new releases appear during the run.

Strategies, on the same workload (same seed, same installs, same churn
and outages — those draw from their own random stream):

* ``origin`` — every download from the origin;
* ``mirrors`` — the 2008 proposal: a static list of mirrors (the seed nodes,
  synced by polling), the nearest first, failover to the next after a
  timeout, the origin last; pages come from the mirror and are unsigned, so
  a corrupt mirror's bytes are installed;
* ``cdn`` — a pull-through edge per region in front of the origin;
* ``p2pkg-list`` — sites through their cache, others directly; every
  download is a :class:`~netsim.sim.fetch.SimFetch` over the nearest seeds
  of the signed mirror list, decided by the product's Scheduler and
  PeerBook, and only if no seed can deliver, a second one from the origin;
  seeds are subscribed in a tree and get each new release by push from an
  upstream, fetching it the same way;
* ``p2pkg`` — the same with the DHT (``[p2pkg] dht = true``): the master,
  seeds and caches announce, standalone clients discover providers through
  it first (:mod:`netsim.sim.dht_roles`).
"""

from __future__ import annotations

import itertools
import math
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netsim.sim.dht_roles import DhtRoles
from netsim.sim.engine import Sim
from netsim.sim.fetch import FetchOutcome, Server, SimFetch
from netsim.sim.network import Network, Node
from netsim.sim.propagation import Release, SubscriptionTree
from netsim.sim.workload import Workload
from p2pkg.core.peers import PeerBook, Tier

MBIT = 1e6 / 8  # bytes/s per Mbit/s
MIRROR_TIMEOUT = 3.0  # seconds a client waits for a dead mirror before the next one
MIRROR_POLL = 300.0  # the 2008 mirrors synced by polling
MIRROR_TRIES = 5  # mirrors a client tries before the origin


@dataclass
class Metrics:
    downloads: list[float] = field(default_factory=list)  # completion seconds (ok ones)
    installs: list[float] = field(default_factory=list)
    failed: int = 0
    corrupt_completed: int = 0
    requested_bytes: float = 0.0
    origin_bytes: float = 0.0
    release_reach: list[float] = field(default_factory=list)  # seconds to 95% of seeds
    release_reach_online: list[float] = field(default_factory=list)  # ... of those up then
    peer_bans: int = 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class World:
    """One run: a scenario, a strategy, a seed."""

    def __init__(
        self,
        scenario: dict[str, Any],
        strategy: str,
        seed: int,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.sc = scenario
        self.strategy = strategy
        self.say = progress
        # "p2pkg-list": p2pkg with the signed mirror list alone (no DHT), to show
        # what the DHT adds and costs on the same workload.
        self.kind = "p2pkg" if strategy == "p2pkg-list" else strategy
        self.sim = Sim(seed)
        rng = self.sim.rng
        regions = scenario["regions"]
        self.region_names: list[str] = regions["names"]
        rtt_ms = regions["rtt_ms"]
        index = {name: i for i, name in enumerate(self.region_names)}

        def rtt(a: Node, b: Node) -> float:
            if a is b:
                return 0.0
            if a.region == b.region and (a.name.startswith("site") and b.name.startswith("site")):
                return 0.0005  # the LAN
            return float(rtt_ms[index[a.region]][index[b.region]]) / 1000.0

        self.net = Network(self.sim, rtt, float(scenario.get("network", {}).get("quantum", 0.0)))
        self.workload = Workload(scenario, rng)
        self.metrics = Metrics()
        o = scenario["origin"]
        self.origin = Node("origin", o["region"], o["up_mbps"] * MBIT, o["up_mbps"] * MBIT)
        self.origin_server = Server(self.origin)
        # Seeds (the mirror nodes of the 2008 strategy too).
        s = scenario["seeds"]
        self.seeds: list[Server] = []
        malicious = round(s.get("malicious", 0.0) * s["count"])
        kinds = itertools.cycle(s.get("malicious_kinds", ["corrupt", "liar", "slow"]))
        for i in range(s["count"]):
            region = self._region(rng)
            kind = next(kinds) if i < malicious else "honest"
            up = s["up_mbps"] * MBIT * (0.02 if kind == "slow" else 1.0)
            node = Node(f"seed{i}", region, up, s["down_mbps"] * MBIT)
            server = Server(node, "corrupt" if kind == "corrupt" else kind)
            server.holds = self._holder(node.name)  # type: ignore[method-assign]
            self.seeds.append(server)
        rng.shuffle(self.seeds)  # malicious ones not first in any order
        self.held: dict[str, set[str]] = {srv.url: set() for srv in self.seeds}
        # Clients: standalone, and sites of N clients behind a cache.
        c = scenario["clients"]
        self.clients = [
            Node(f"client{i}", self._region(rng), c["up_mbps"] * MBIT, c["down_mbps"] * MBIT)
            for i in range(c["count"])
        ]
        st = scenario["sites"]
        self.sites: list[tuple[Node, list[Node]]] = []
        for i in range(st["count"]):
            region = self._region(rng)
            cache = Node(f"site{i}-cache", region, st["cache_up_mbps"] * MBIT,
                         st["cache_down_mbps"] * MBIT)  # fmt: skip
            members = [
                Node(f"site{i}-client{j}", region, st["lan_mbps"] * MBIT, st["lan_mbps"] * MBIT)
                for j in range(st["clients_each"])
            ]
            self.sites.append((cache, members))
        self.cache_of = {m.name: cache for cache, members in self.sites for m in members}
        self.cache_held: dict[str, set[str]] = {cache.name: set() for cache, _ in self.sites}
        self.cache_waiting: dict[tuple[str, str], list[Callable[[bool], None]]] = {}
        self.books: dict[str, PeerBook] = {}
        e = scenario.get("cdn", {})
        self.edges = {
            r: Node(
                f"edge-{r}", r, e.get("up_mbps", 10_000) * MBIT, e.get("up_mbps", 10_000) * MBIT
            )
            for r in self.region_names
        }
        self.edge_held: dict[str, set[str]] = {n.name: set() for n in self.edges.values()}
        p2 = scenario.get("p2pkg", {})
        self.peers_per_client = int(p2.get("peers", 8))
        self.dht: DhtRoles | None = None
        if strategy == "p2pkg" and p2.get("dht", False):
            self.dht = DhtRoles(
                self.sim,
                self.net.rtt,
                self.origin_server,
                self.seeds,
                [cache for cache, _ in self.sites],
                self.cache_held,
                float(scenario["duration"]),
            )
        self._nearest: dict[str, list[Server]] = {}
        self.releases: list[Release] = []
        self.churn_rng = random.Random(seed * 7919 + 1)
        self.churned: set[str] = set()
        self.outaged: set[str] = set()
        self.tree: SubscriptionTree | None = None
        if self.kind == "p2pkg":
            self.tree = SubscriptionTree(
                self.sim, self.net, self.origin_server, self.seeds, self.held, self.releases,
                self._sync_fetch, self._synced,
            )  # fmt: skip
        self._groups: dict[str, list[list[Server]]] = {}

    # ---------------------------------------------------------------- set-up

    def _region(self, rng: Any) -> str:
        shares = self.sc["regions"]["client_share"]
        return str(rng.choices(self.region_names, weights=shares)[0])

    def _holder(self, name: str) -> Callable[[str], bool]:
        return lambda file: file in self.held[name] or self.workload.is_initial(file)

    # ---------------------------------------------------------------- running

    def run(self) -> dict[str, Any]:
        duration = float(self.sc["duration"])
        rng = self.sim.rng
        everyone = [*self.clients, *(m for _, members in self.sites for m in members)]
        rate = self.sc["clients"]["installs_per_hour"] / 3600.0
        for node in everyone:  # Poisson installs per client
            t = rng.expovariate(rate)
            while t < duration:
                self.sim.at(t, self._install, node, self.workload.install(rng))
                t += rng.expovariate(rate)
        releases = self.sc.get("releases", {}).get("per_hour", 0) / 3600.0
        t = rng.expovariate(releases) if releases else math.inf
        while t < duration * 0.8:
            self.sim.at(t, self._release, self.workload.new_release(rng))
            t += rng.expovariate(releases)
        if self.dht is not None:
            self.dht.start()
        s = self.sc["seeds"]
        if s.get("churn_mean_up"):
            for seed in self.seeds:
                up = self.churn_rng.expovariate(1 / s["churn_mean_up"])
                self.sim.at(up, self._seed_down, seed)
        outage = self.sc.get("outage")
        if outage:
            self.sim.at(float(outage["at"]), self._outage, float(outage["share"]),
                        float(outage["seconds"]))  # fmt: skip
        last = [time.monotonic()]

        def progress(now: float) -> None:
            if self.say is not None and time.monotonic() - last[0] >= 15.0:
                last[0] = time.monotonic()
                done = len(self.metrics.downloads) + self.metrics.failed
                self.say(
                    f"{self.strategy}: simulated {now:,.0f} of {duration:,.0f} s, "
                    f"{done:,} downloads done, {self.sim.events:,} events"
                )

        # Downloads started near the end may finish late: run until they are done.
        self.sim.run(duration * 3, progress=progress)
        return self._report(duration)

    def _install(self, node: Node, files: list[tuple[str, int]]) -> None:
        started = self.sim.now
        left = [len(files)]
        ok = [True]

        def one_done(success: bool) -> None:
            ok[0] = ok[0] and success
            left[0] -= 1
            if left[0] == 0 and ok[0]:
                self.metrics.installs.append(self.sim.now - started)

        for _, size in files:
            self.metrics.requested_bytes += size
        if self.dht is not None and node.name not in self.cache_of:
            # p2pkg fetch --dht: discovery first, then the downloads with what it found.
            took, found = self.dht.discover(node, [project_of(f) for f, _ in files])
            self.sim.after(took, self._downloads, node, files, one_done, found, started)
            return
        self._downloads(node, files, one_done, [], started)

    def _downloads(
        self,
        node: Node,
        files: list[tuple[str, int]],
        done: Callable[[bool], None],
        found: list[Server],
        started: float,
    ) -> None:
        for name, size in files:
            self._download(node, name, size, done, found, started)

    def _download(
        self,
        node: Node,
        file: str,
        size: int,
        done: Callable[[bool], None],
        found: list[Server],
        started: float,
    ) -> None:

        def finish(success: bool, corrupt: bool = False) -> None:
            if success:
                self.metrics.downloads.append(self.sim.now - started)
                if corrupt:
                    self.metrics.corrupt_completed += 1
            else:
                self.metrics.failed += 1
            done(success)

        if self.kind == "p2pkg":
            self._via_p2pkg(node, file, size, finish, found)
        else:
            getattr(self, f"_via_{self.kind}")(node, file, size, finish)

    # ---------------------------------------------------------------- strategies

    def _from_origin(self, dst: Node, size: int, finish: Callable[[bool], None]) -> None:
        self.metrics.origin_bytes += size
        self.net.transfer(self.origin, dst, size, lambda _t: finish(True), lambda _r: finish(False))

    def _via_origin(self, node: Node, file: str, size: int, finish: Callable[..., None]) -> None:
        self._from_origin(node, size, finish)

    def _via_cdn(self, node: Node, file: str, size: int, finish: Callable[..., None]) -> None:
        edge = self.edges[node.region]

        def serve(ok: bool) -> None:
            if not ok:
                finish(False)
                return
            self.net.transfer(edge, node, size, lambda _t: finish(True), lambda _r: finish(False))

        self._pull(edge, self.edge_held[edge.name], file, size, serve, self._edge_fill)

    def _edge_fill(self, edge: Node, file: str, size: int, done: Callable[[bool], None]) -> None:
        self._from_origin(edge, size, done)

    def _pull(
        self,
        node: Node,
        held: set[str],
        file: str,
        size: int,
        then: Callable[[bool], None],
        fill: Callable[[Node, str, int, Callable[[bool], None]], None],
    ) -> None:
        """``then(ok)`` once ``node`` holds ``file``; concurrent misses share one fill."""
        if file in held:
            then(True)
            return
        key = (node.name, file)
        waiting = self.cache_waiting.get(key)
        if waiting is not None:
            waiting.append(then)
            return
        self.cache_waiting[key] = [then]

        def filled(ok: bool) -> None:
            if ok:
                held.add(file)
                if self.dht is not None:
                    self.dht.poke(node)
            for waiter in self.cache_waiting.pop(key, []):
                waiter(ok)

        fill(node, file, size, filled)

    def _via_mirrors(self, node: Node, file: str, size: int, finish: Callable[..., None]) -> None:
        # A 2008 client knew a handful of mirrors (the PEP 381 list had ~10):
        # the nearest few are tried, then the origin. "Nearest" is the same
        # choice p2pkg's clients make (nearest by round trip, spread over a
        # region's equals), so the strategies differ in what they do with
        # their peers, not in which peers they know.
        order = self._rank_seeds(node, MIRROR_TRIES)

        def attempt(i: int) -> None:
            if i >= len(order):
                self._from_origin(node, size, finish)
                return
            server = order[i]
            if not server.node.online:
                self.sim.after(MIRROR_TIMEOUT, attempt, i + 1)
                return
            if not server.holds(file) or server.kind == "liar":
                self.sim.after(self.net.rtt(server.node, node), attempt, i + 1)  # 404
                return
            self.net.transfer(
                server.node,
                node,
                size,
                # Unsigned pages: a corrupt mirror's hash matches its own page.
                lambda _t: finish(True, server.kind == "corrupt"),
                lambda _r: attempt(i + 1),
            )

        attempt(0)

    def _via_p2pkg(
        self, node: Node, file: str, size: int, finish: Callable[..., None], found: list[Server]
    ) -> None:
        cache = self.cache_of.get(node.name)
        if cache is None:
            self._p2p_fetch(node, file, size, lambda out: finish(out.ok, not out.honest), found)
            return

        def serve(ok: bool) -> None:
            if not ok:
                finish(False)
                return
            self.net.transfer(cache, node, size, lambda _t: finish(True), lambda _r: finish(False))

        def fill(c: Node, f: str, sz: int, done: Callable[[bool], None]) -> None:
            self._p2p_fetch(c, f, sz, lambda out: done(out.ok))

        self._pull(cache, self.cache_held[cache.name], file, size, serve, fill)

    def _p2p_fetch(
        self,
        node: Node,
        file: str,
        size: int,
        done: Callable[[FetchOutcome], None],
        found: Sequence[Server] = (),
        upstreams: Sequence[Server] = (),
    ) -> None:
        """``node`` fetches ``file``: its upstreams and nearest seeds of the signed list
        (mirror tier), then what the DHT found; the master last if none delivers."""
        book = self.books.get(node.name)
        if book is None:
            book = self.books[node.name] = PeerBook()
        mine = {s.url: s for s in [*upstreams, *self._nearest_seeds(node)] if s.node is not node}
        peers = [(s, Tier.MIRROR) for s in mine.values()]
        peers += [(s, Tier.DHT) for s in found if s.url not in mine]

        def counted(outcome: FetchOutcome) -> None:
            self.metrics.origin_bytes += outcome.bytes_by_peer.get("origin", 0.0)
            self.metrics.peer_bans += outcome.bans
            done(outcome)

        def then_origin(outcome: FetchOutcome) -> None:
            if outcome.ok:
                counted(outcome)
                return
            self.metrics.peer_bans += outcome.bans
            # No seed could deliver (a release not synced yet, every seed away or
            # banned): the master, as a configured peer of last resort.
            origin = [(self.origin_server, Tier.MIRROR)]
            SimFetch(self.sim, self.net, node, book, file, size, origin, counted)

        SimFetch(self.sim, self.net, node, book, file, size, peers, then_origin)

    def _nearest_seeds(self, node: Node) -> list[Server]:
        """The seeds a node uses (fixed per node: its configuration)."""
        found = self._nearest.get(node.name)
        if found is None:
            found = self._nearest[node.name] = self._rank_seeds(node, self.peers_per_client)
        return found

    def _rank_seeds(self, node: Node, count: int) -> list[Server]:
        """The ``count`` nearest seeds: by round trip, ties (one region) rotated per node.

        Seeds are grouped by their round trip from the node's region once per
        region; within a group the node starts at its own offset (CRC of its
        name: the same in every run, unlike ``hash()``), so clients of one
        region spread over that region's seeds.
        """
        groups = self._groups.get(node.region)
        if groups is None:
            by_rtt: dict[float, list[Server]] = {}
            for s in sorted(self.seeds, key=lambda s: s.url):
                by_rtt.setdefault(self.net.rtt(s.node, node), []).append(s)
            groups = self._groups[node.region] = [by_rtt[k] for k in sorted(by_rtt)]
        out: list[Server] = []
        start = zlib.crc32(node.name.encode())
        for group in groups:
            for k in range(len(group)):
                out.append(group[(start + k) % len(group)])
                if len(out) == count:
                    return out
        return out

    # ---------------------------------------------------------------- releases and churn

    def _release(self, release: tuple[str, int]) -> None:
        file, size = release
        up = {s.url for s in self.seeds if s.node.online}
        state = Release(file, size, self.sim.now, math.ceil(0.95 * len(self.seeds)), up)
        self.releases.append(state)
        for seed in self.seeds:
            if self.kind == "mirrors":
                delay = self.sim.rng.uniform(0, MIRROR_POLL)  # the next poll
                self.sim.after(delay, self._mirror_sync, seed, state)
        if self.tree is not None:
            self.tree.publish()

    def _reached(self, release: Release, seed: Server) -> None:
        release.synced += 1
        if release.synced == release.need:
            self.metrics.release_reach.append(self.sim.now - release.published)
        if seed.url in release.online:
            # Propagation itself, without waiting for seeds that were away.
            release.synced_online += 1
            if release.synced_online == math.ceil(0.95 * len(release.online)):
                self.metrics.release_reach_online.append(self.sim.now - release.published)

    def _mirror_sync(self, seed: Server, release: Release) -> None:
        """A 2008 mirror's poll: the new file from the origin."""
        if not seed.node.online:
            self.sim.after(60.0, self._mirror_sync, seed, release)  # when back
            return

        def kept(ok: bool) -> None:
            if ok:
                self.held[seed.url].add(release.file)
                self._reached(release, seed)
            else:
                self.sim.after(30.0, self._mirror_sync, seed, release)

        self._from_origin(seed.node, release.size, kept)

    def _synced(self, release: Release, seed: Server) -> None:
        self._reached(release, seed)
        if self.dht is not None:
            self.dht.poke(seed.node)  # a synced root: the seed's DHT round

    def _sync_fetch(
        self, seed: Server, release: Release, ups: Sequence[Server], done: Callable[[bool], None]
    ) -> None:
        self._p2p_fetch(seed.node, release.file, release.size, lambda out: done(out.ok), (), ups)

    # A seed is down while churn has it away or an outage holds it. Churn and
    # outages draw from their own random stream: every strategy sees the same.

    def _seed_down(self, seed: Server) -> None:
        self.churned.add(seed.url)
        self.net.node_down(seed.node)
        down = self.churn_rng.expovariate(1 / self.sc["seeds"]["churn_mean_down"])
        self.sim.after(down, self._seed_up, seed)

    def _seed_up(self, seed: Server) -> None:
        self.churned.discard(seed.url)
        if seed.url not in self.outaged:
            self._bring_up(seed)
        up = self.churn_rng.expovariate(1 / self.sc["seeds"]["churn_mean_up"])
        self.sim.after(up, self._seed_down, seed)

    def _outage(self, share: float, seconds: float) -> None:
        """A correlated failure: ``share`` of the seeds go down at once for ``seconds``."""
        ordered = sorted(self.seeds, key=lambda s: s.url)
        chosen = self.churn_rng.sample(ordered, round(share * len(ordered)))
        for seed in chosen:
            self.outaged.add(seed.url)
            self.net.node_down(seed.node)
        self.sim.after(seconds, self._outage_over, chosen)

    def _outage_over(self, chosen: list[Server]) -> None:
        for seed in chosen:
            self.outaged.discard(seed.url)
            if seed.url not in self.churned:
                self._bring_up(seed)

    def _bring_up(self, seed: Server) -> None:
        seed.node.online = True
        if self.tree is not None:
            self.tree.catch_up(seed)
        if self.dht is not None:
            self.dht.node_up(seed.node)

    # ---------------------------------------------------------------- report

    def _report(self, duration: float) -> dict[str, Any]:
        m = self.metrics
        total = len(m.downloads) + m.failed
        return {
            "strategy": self.strategy,
            "simulated_seconds": duration,
            "events": self.sim.events,
            "nodes": 1
            + len(self.seeds)
            + len(self.clients)
            + sum(1 + len(m_) for _, m_ in self.sites)
            + len(self.edges),
            "downloads": total,
            "failed_downloads": m.failed,
            "failed_share": m.failed / total if total else 0.0,
            "corrupt_completed": m.corrupt_completed,
            "origin_share": m.origin_bytes / m.requested_bytes if m.requested_bytes else 0.0,
            "download_p50": percentile(m.downloads, 0.50),
            "download_p95": percentile(m.downloads, 0.95),
            "download_p99": percentile(m.downloads, 0.99),
            "install_p50": percentile(m.installs, 0.50),
            "install_p95": percentile(m.installs, 0.95),
            "install_p99": percentile(m.installs, 0.99),
            "releases": len(m.release_reach),
            "release_to_95pct_seeds_p50": percentile(m.release_reach, 0.50),
            "release_to_95pct_online_seeds_p50": percentile(m.release_reach_online, 0.50),
            "release_to_95pct_online_seeds_p95": percentile(m.release_reach_online, 0.95),
            "peer_bans": m.peer_bans,  # bans made (a ban lasts an hour, then one more chance)
            **(self.dht.report(total, duration / 3600.0) if self.dht is not None else {}),
        }


def project_of(file: str) -> str:
    """The project of a simulated archive (``p<rank>-<version>``)."""
    return file.rsplit("-", 1)[0]


__all__ = ["Metrics", "World", "percentile", "project_of"]
