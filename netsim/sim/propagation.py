"""How a new release reaches p2pkg's seeds: subscriptions, pushes, the follower's rules.

Seeds subscribe to upstreams (protocol §6.6): the ``ROOTS`` nearest the
master to the master itself, every other seed to two seeds before it in
that order (at most ``2 * FANOUT`` subscribers each), so a release spreads
down a tree instead of every seed asking the master at once (which, pushed
to all at once, made the seeds' syncs 23 % of all bytes the origin served
in pypi-10k). A seed pushes to its own subscribers once it has synced. A
seed that misses a push (it was away) catches up when it is back — its
follower's first round — and pushes on. A failed sync is retried on the
follower's back-off (:data:`p2pkg.roles.follow.RETRY_BASE`, doubling, capped
at ``RootFollower.follow``'s default 300 s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netsim.sim.engine import Sim
from netsim.sim.fetch import Server
from netsim.sim.network import Network
from p2pkg.roles.follow import RETRY_BASE

ROOTS = 8  # seeds subscribed to the master itself (the nearest)
FANOUT = 8  # subscribers per seed, at most 2x (each has two upstreams)
MAX_BACKOFF = 300.0  # RootFollower.follow's default max_backoff


@dataclass
class Release:
    file: str
    size: int
    published: float
    need: int  # seeds that make 95%
    online: set[str]  # seeds up when it was published
    synced: int = 0
    synced_online: int = 0


#: fetch(seed, release, its upstreams, done(ok)): the seed downloads the release's file.
Fetch = Callable[[Server, Release, Sequence[Server], Callable[[bool], None]], None]


class SubscriptionTree:
    """The seeds' subscriptions, and the syncs they set off."""

    def __init__(
        self,
        sim: Sim,
        net: Network,
        master: Server,
        seeds: Sequence[Server],
        held: dict[str, set[str]],
        releases: list[Release],
        fetch: Fetch,
        synced: Callable[[Release, Server], None],
    ) -> None:
        self.sim, self.net, self.master = sim, net, master
        self.held, self.releases = held, releases
        self.fetch, self.synced = fetch, synced
        self.upstreams: dict[str, list[Server]] = {}
        self.subscribers: dict[str, list[Server]] = {}
        self.syncing: set[tuple[str, str]] = set()
        ordered = sorted(seeds, key=lambda s: (net.rtt(master.node, s.node), s.url))
        for i, seed in enumerate(ordered):
            if i < ROOTS:
                ups = [master]
            else:
                first = (i - ROOTS) // FANOUT
                ups = [ordered[first], ordered[min(first + 1, i - 1)]]
            unique = list({u.url: u for u in ups}.values())
            for up in unique:
                self.subscribers.setdefault(up.url, []).append(seed)
            self.upstreams[seed.url] = unique

    def publish(self) -> None:
        """The master signed a root with a new release: it pushes to its subscribers."""
        self.push(self.master)

    def push(self, server: Server) -> None:
        for sub in self.subscribers.get(server.url, []):
            self.sim.after(self.net.rtt(server.node, sub.node), self.catch_up, sub)

    def catch_up(self, seed: Server) -> None:
        """Pushed, or back: sync every release this seed lacks."""
        if not seed.node.online:
            return  # missed: it catches up when it is back
        held = self.held[seed.url]
        for release in self.releases:
            key = (seed.url, release.file)
            if release.file not in held and key not in self.syncing:
                self.syncing.add(key)
                self._sync(seed, release, 0)

    def _sync(self, seed: Server, release: Release, failures: int) -> None:
        key = (seed.url, release.file)
        if not seed.node.online:
            self.syncing.discard(key)  # it catches up when it is back
            return

        def kept(ok: bool) -> None:
            if not ok:  # the follower's back-off: from RETRY_BASE, doubling, capped
                delay = min(MAX_BACKOFF, RETRY_BASE * 2 ** min(failures, 16))
                self.sim.after(delay, self._sync, seed, release, failures + 1)
                return
            self.syncing.discard(key)
            self.held[seed.url].add(release.file)
            self.synced(release, seed)
            self.push(seed)

        self.fetch(seed, release, self.upstreams[seed.url], kept)


__all__ = ["FANOUT", "ROOTS", "Release", "SubscriptionTree"]
