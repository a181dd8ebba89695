"""The LAN cache: a simple repository (PEP 503/691/658) backed by the p2p network.

pip and uv install from it as from PyPI; every byte behind it comes from
peers, verified against signed namespaces. It is a peer too: it serves its
stores under ``/p2pkg/v1/``.

A cache trusts one namespace (``--trust``/``--peer``) or several
(``--namespace NAME=KEY``), each with its own keys, peers and store
(:class:`~p2pkg.roles.cache_namespace.CacheNamespace`), and a
:class:`~p2pkg.core.search_order.SearchPolicy` saying which one serves a
project. Routes:

* ``/simple/`` and ``/simple/<project>/`` — the merged index: each project
  from the one namespace the policy chooses (claims, pins, order), every
  file of it from that namespace only; non-normalized names redirect (301);
  ``Accept`` picks HTML or JSON (PEP 691); a page names its namespace
  (``X-P2pkg-Namespace``, and in the page itself).
* ``/files/<archive blake3>/<filename>`` — the archive, served only while
  the chosen namespace's signed tree lists ``filename`` with that BLAKE3;
  streamed while it arrives (see :mod:`p2pkg.roles.cache_http`).
* ``/ns/<name>/simple/``, ``/ns/<name>/files/`` — one namespace alone;
  ``/ns/<name>/p2pkg/v1/`` — its peer protocol (a peer's base URL is
  ``http://HOST:PORT/ns/<name>``).
* ``/p2pkg/v1/`` — the peer protocol of the first namespace in the order.
* ``/`` — a status page for the person running it.

A size cap evicts whole archives, least recently used first. With every
peer gone the cache keeps serving what it holds under the last trusted root
(until that root expires).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from p2pkg.core.objects import FileManifest
from p2pkg.core.peers import Tier
from p2pkg.core.search_order import SearchPolicy
from p2pkg.core.trust import TrustedRoot
from p2pkg.io.dht_service import DhtService, held_file_keys
from p2pkg.io.discovery import Lan, LanAnnouncement, LanPeer
from p2pkg.io.download_counts import DownloadCounts
from p2pkg.io.http import metrics
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles.cache_index import MergedRoutes
from p2pkg.roles.cache_namespace import CacheConfig, CacheNamespace, CacheStats, Live
from p2pkg.roles.disk import DiskCondition
from p2pkg.roles.links import Peer
from p2pkg.roles.namespace_choice import DEFAULT_NAMESPACE, NamespaceSpec, choose_namespace
from p2pkg.roles.readahead import ReadAhead, ReadAheadConfig
from p2pkg.roles.role_metrics import cache_health, cache_metrics
from p2pkg.roles.session import Session

log = logging.getLogger(__name__)

#: Projects the status page lists with the namespace that served them.
RECENT_PROJECTS = 50


class Cache:
    """Namespaces, a search policy and one peer server that speaks simple-API and peer.

    ``Cache(store, pinned, peers)`` trusts one namespace, kept in ``store``;
    ``Cache(store_dir, namespaces=[...], policy=...)`` several, each kept in
    ``store_dir/<name>``. :meth:`run` serves until cancelled; the stores are
    opened here and closed when ``run`` ends.
    """

    def __init__(
        self,
        store_path: Path,
        pinned: frozenset[bytes] = frozenset(),
        peers: Sequence[str | Peer] = (),
        *,
        namespaces: Sequence[NamespaceSpec] = (),
        policy: SearchPolicy | None = None,
        config: CacheConfig = CacheConfig(),  # noqa: B008 - frozen
        server_config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen
        dht: DhtService | None = None,
    ) -> None:
        if namespaces and (pinned or peers):
            raise ValueError("give pinned keys and peers, or namespaces, not both")
        specs = list(namespaces) or [NamespaceSpec(DEFAULT_NAMESPACE, pinned, tuple(peers))]
        self.policy = policy or SearchPolicy.parse([s.name for s in specs])
        self.config = config
        self.store_path = store_path
        self.dht = dht  # announce the first namespace's archives held whole
        self.namespaces: dict[str, CacheNamespace] = {}
        try:
            for spec in specs:
                path = store_path / spec.name if namespaces else store_path
                self.namespaces[spec.name] = CacheNamespace(
                    spec.name,
                    path,
                    spec.pinned,
                    list(spec.peers),
                    config=config,
                    server_config=server_config,
                )
        except BaseException:
            for ns in self.namespaces.values():
                ns.close()
            raise
        #: The first namespace in the search order: it answers ``/p2pkg/v1/``,
        #: is announced on the LAN and the DHT.
        self.primary = self.namespaces[self.policy.order[0]]
        if dht is not None:
            self.primary.on_new_file = dht.poke
        self.read_ahead = ReadAhead(self, ReadAheadConfig(projects=config.read_ahead))
        self.served_from: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.started = time.time()
        self.server = PeerServer(self.primary.store, server_config, status_extra=self.status)
        for ns in self.namespaces.values():
            ns.on_page = self._page_served
            self.server.mount(f"/ns/{ns.name}", ns.server)
        MergedRoutes(self).install(self.server)
        metrics.install(self.server, partial(cache_metrics, self), partial(cache_health, self))
        self.lan: Lan | None = None
        self._tg: TaskGroup | None = None

    # The first namespace's parts, under the names a one-namespace cache had.

    @property
    def store(self) -> Store:
        return self.primary.store

    @property
    def session(self) -> Session:
        return self.primary.session

    @property
    def stats(self) -> CacheStats:
        return self.primary.stats

    @property
    def disk(self) -> DiskCondition:
        return self.primary.disk

    @property
    def live(self) -> dict[bytes, Live]:
        return self.primary.live

    @property
    def counts(self) -> DownloadCounts:
        return self.primary.counts

    @property
    def url(self) -> str:
        """The cache's base URL (once :meth:`run` has started)."""
        return self.server.url

    @property
    def key(self) -> str:
        """The trusted key LAN peers must share (the first namespace's)."""
        return self.primary.key

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on ``host:port`` until cancelled; ``started(url)`` once serving.

        One task group holds the server (and so every connection handler),
        each namespace's root-follow loop, LAN discovery when configured, and
        every live download: a download is a child of ``run``, not of the
        request that started it, so it completes into the store even when
        the installer that asked for it goes away. The stores are closed on
        the way out.
        """
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                url = await tg.start(self.server.run, host, port)
                for ns in self.namespaces.values():
                    ns.start(tg)
                if self.config.lan:
                    self.lan = Lan(self.config.lan_interfaces)
                    announcement = LanAnnouncement(
                        self.server.port, "cache", self.key, listening_on=self.server.host
                    )
                    await tg.start(
                        partial(self.lan.run, announce=announcement, on_peer=self._lan_peer)
                    )
                if self.dht is not None:
                    await self.dht.announce_on(
                        tg, lambda: held_file_keys(self.primary.store), self.server.port
                    )
                log.info(
                    "cache serving %s on %s (namespaces: %s)",
                    self.store_path,
                    url,
                    ", ".join(self.policy.order),
                )
                task_status.started(url)
        finally:
            self._tg = None
            for ns in self.namespaces.values():
                ns.close()

    def _lan_peer(self, peer: LanPeer) -> None:
        """Caches seen on the LAN become preferred (tier 0) peers of our first namespace.

        A LAN cache serves its own first namespace at its base URL; it is a
        peer here only when that namespace's key is ours.
        """
        if peer.key != self.key or peer.url == self.server.url:
            return
        if peer.url not in self.primary.session.book:
            log.info("found LAN cache %s", peer.url)
        self.primary.session.add_peer(Peer(peer.url, Tier.LAN))

    # ------------------------------------------------------------------ the search order

    async def serving(self, name: str, *, record: bool = True) -> CacheNamespace | None:
        """The namespace that serves project ``name`` (normalized), by the policy.

        Raises when a namespace ahead of the one that has it cannot answer
        (an outage never moves a project to the next namespace).
        """
        decided, chosen = self._choose_known(name)
        if not decided:
            chosen = await choose_namespace(
                self.policy, name, lambda ns: self.namespaces[ns].has_project(name)
            )
        if chosen is None or not record:
            return None if chosen is None else self.namespaces[chosen]
        self.served_from[name] = chosen
        self.served_from.move_to_end(name)
        while len(self.served_from) > RECENT_PROJECTS:
            self.served_from.popitem(last=False)
        return self.namespaces[chosen]

    def _choose_known(self, name: str) -> tuple[bool, str | None]:
        """(decided, namespace) from what the namespaces remember for fresh roots.

        The common case once pages are warm: no lookup, no task group.
        """
        for ns in self.policy.candidates(name):
            listed = self.namespaces[ns].known(name)
            if listed is None:
                return False, None
            if listed:
                return True, ns
        return True, None

    async def merged_names(self) -> dict[str, str]:
        """Every project of the merged index -> the namespace that serves it."""
        listed: dict[str, list[str]] = {}

        async def one(ns: CacheNamespace) -> None:
            listed[ns.name] = await ns.project_names()

        async with anyio.create_task_group() as tg:
            for ns in self.namespaces.values():
                tg.start_soon(one, ns)
        merged = self.policy.merge(listed)
        if len(merged) > self.config.max_index_projects:
            keep = sorted(merged)[: self.config.max_index_projects]
            merged = {name: merged[name] for name in keep}
        return merged

    def _page_served(
        self, ns: CacheNamespace, name: str, manifests: list[FileManifest], trusted: TrustedRoot
    ) -> None:
        """An installer got ``name``'s page: fetch what it will ask next (read-ahead)."""
        if self._tg is not None:
            self.read_ahead.page_served(
                ns.name, name, manifests, trusted.version, self._tg, trusted.root.tree
            )

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The status page's and ``/p2pkg/v1/status``'s fields.

        The first namespace's figures at the top level (as a one-namespace
        cache has always reported them), every namespace's under
        ``namespaces``, and the recent projects with the namespace that
        served each.
        """
        out = {
            **self.primary.status(),
            "search_order": list(self.policy.order),
            "pins": dict(self.policy.pins),
            "claims": [f"{ns}={pattern}" for ns, pattern in self.policy.claims],
            # fetched before an installer asked (dependency closures of pages served)
            "read_ahead_projects": self.read_ahead.stats.projects,
            "read_ahead_archives": self.read_ahead.stats.archives,
            "served_from": dict(reversed(self.served_from.items())),
        }
        out["namespaces"] = {name: ns.status() for name, ns in self.namespaces.items()}
        return out


__all__ = ["Cache", "CacheConfig", "CacheNamespace", "CacheStats", "Live"]
