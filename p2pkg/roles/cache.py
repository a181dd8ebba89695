"""The LAN cache: a simple repository (PEP 503/691/658) backed by the p2p network.

pip and uv install from it as from PyPI; every byte behind it comes from
peers, verified against the master's signed namespace. It is a peer too:
it serves its store under ``/p2pkg/v1/``.

Routes besides the peer protocol:

* ``/simple/`` and ``/simple/<project>/`` — pages built from verified
  manifests; non-normalized names redirect (301) to the normalized one;
  ``Accept`` picks HTML or JSON (PEP 691).
* ``/files/<archive blake3>/<filename>`` — the archive, served only while
  the signed tree lists ``filename`` with that BLAKE3 (the URL outlives
  yanks, so lockfiles keep working). Held: served with ``sendfile`` and
  Range support. Not held: fetched from peers and **streamed while it
  arrives** — only the verified prefix of the download is ever sent, so the
  installer gets its first byte long before the last and never an
  unverified one; the response head waits for the first verified bytes, so
  when no peer can deliver the installer gets ``502`` with ``Retry-After``
  and a one-line reason, never a ``200`` with no body. Concurrent requests
  share one download.
* ``/files/<archive blake3>/<filename>.metadata`` — PEP 658 core metadata.
* ``/`` — a status page for the person running it.

A size cap evicts whole archives, least recently used first. With every
peer gone the cache keeps serving what it holds under the last trusted root
(until that root expires).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from p2pkg.core.objects import FileManifest, Leaf, Node, ObjectId, Project, decode, decode_as
from p2pkg.core.peers import Tier
from p2pkg.core.select import project_of
from p2pkg.core.trust import TrustedRoot
from p2pkg.core.walk import manifest_blobs
from p2pkg.errors import LocalError, P2pkgError
from p2pkg.io.dht_service import DhtService, held_file_keys
from p2pkg.io.discovery import Lan, LanAnnouncement, LanPeer
from p2pkg.io.download_counts import DownloadCounts
from p2pkg.io.http import wire
from p2pkg.io.http.client import ClientConfig
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles.cache_http import CacheRoutes
from p2pkg.roles.discover import trust_key
from p2pkg.roles.disk import DiskCondition
from p2pkg.roles.links import Peer
from p2pkg.roles.readahead import ReadAhead, ReadAheadConfig
from p2pkg.roles.session import Session
from p2pkg.roles.subscriptions import keep_subscribed

log = logging.getLogger(__name__)

#: Ids (and archives) noted as signed before the sets start over.
MAX_NOTED = 200_000


@dataclass(frozen=True, slots=True)
class CacheConfig:
    refresh_interval: float = 60.0  # how stale the root may get before a page refreshes it
    max_size: int | None = None  # bytes of archives kept; None = unlimited
    max_index_projects: int = 100_000  # /simple/ lists at most this many
    lan: bool = False  # announce on, and discover other caches from, the LAN (DNS-SD)
    lan_interfaces: tuple[str, ...] | None = None  # None: every interface
    subscribe: bool = True  # ask the configured peers to push new roots (§6.6)
    # Projects fetched ahead of installers from one page served (their
    # dependency closure: pages, metadata, likely archives); 0 turns it off.
    read_ahead: int = 64


class Live:
    """A download in progress that responses follow (verified prefix only)."""

    def __init__(self) -> None:
        self.prefix = 0
        self.done = False
        self.error: BaseException | None = None
        self._event = anyio.Event()

    def advance(self, n: int) -> None:
        self.prefix = max(self.prefix, n)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        event, self._event = self._event, anyio.Event()
        event.set()

    async def wait_beyond(self, sent: int) -> None:
        while not (self.prefix > sent or self.done):
            await self._event.wait()

    async def wait_done(self) -> None:
        while not self.done:
            await self._event.wait()


RECENT_ERRORS = 20  # failures the status page lists


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_from_cache: int = 0
    bytes_fetched: int = 0
    evicted: int = 0
    failed_downloads: int = 0
    recent_errors: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_ERRORS)
    )


class Cache:
    """A store, a session and a peer server that speaks both simple-API and peer.

    :meth:`run` serves until cancelled; it owns the store (opened here, closed
    when ``run`` ends) and hands that one store to its server.
    """

    def __init__(
        self,
        store_path: Path,
        pinned: frozenset[bytes],
        peers: list[str | Peer],
        *,
        config: CacheConfig = CacheConfig(),
        server_config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen
        dht: DhtService | None = None,
    ) -> None:
        self.dht = dht  # announce the archives held whole, again after each new one
        self.store = Store.open(store_path, create=True)
        self.store_path = store_path
        self.config = config
        # Every request this cache sends says only-if-cached: a sibling cache
        # answers from what it holds and never pulls through back to us.
        self.session = Session(
            pinned,
            peers,
            self.store,
            client_config=ClientConfig(extra_headers=(wire.ONLY_IF_CACHED,)),
        )
        self.stats = CacheStats()
        self.disk = DiskCondition(store_path)  # shown on the status page
        self.live: dict[bytes, Live] = {}
        self.started = time.time()
        self.server = PeerServer(
            self.store, server_config, on_notify=self._notified, status_extra=self.status
        )
        CacheRoutes(self).install(self.server)
        self.counts = DownloadCounts(store_path)  # downloads it served, for the master's stats
        self.counts.install(self.server)
        self.lan: Lan | None = None
        self.by_blake3: dict[bytes, FileManifest] = {}  # archives signed manifests name
        self.signed_ids: set[ObjectId] = set()  # ids below objects served (may be pulled)
        self.on_new_file: Callable[[], None] | None = dht.poke if dht is not None else None
        self.read_ahead = ReadAhead(self, ReadAheadConfig(projects=config.read_ahead))
        self._tg: TaskGroup | None = None

    @property
    def url(self) -> str:
        """The cache's base URL (once :meth:`run` has started)."""
        return self.server.url

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on ``host:port`` until cancelled; ``started(url)`` once serving.

        One task group holds the server (and so every connection handler),
        the root-follow loop, LAN discovery when configured, and every live
        download: a download is a child of ``run``, not of the request that
        started it, so it completes into the store even when the installer
        that asked for it goes away. The store is closed on the way out.
        """
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                url = await tg.start(self.server.run, host, port)
                tg.start_soon(self.counts.run)
                # As a peer the cache serves the root too: follow it in the background.
                tg.start_soon(
                    partial(
                        self.session.follower.follow,
                        interval=self.config.refresh_interval,
                        max_backoff=max(self.config.refresh_interval, 300.0),
                    )
                )
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
                        tg, lambda: held_file_keys(self.store), self.server.port
                    )
                if self.config.subscribe:
                    upstreams = [p.url for p in self.session.peers if p.tier == Tier.MIRROR]
                    tg.start_soon(partial(keep_subscribed, upstreams, lambda: self.server.port))
                log.info("cache serving %s on %s", self.store_path, url)
                task_status.started(url)
        finally:
            self._tg = None
            self.session.close()
            self.store.close()

    async def _notified(self, body: bytes, peer: str) -> None:
        """A push (a root frame, or empty): refresh the root now, not at the next page."""
        self.session.follower.pushed(body, peer)

    @property
    def key(self) -> str:
        """The trusted key LAN peers must share (hex of the first pinned key)."""
        return trust_key(self.session.pinned).hex()

    def _lan_peer(self, peer: LanPeer) -> None:
        """Caches seen on the LAN become preferred (tier 0) peers."""
        if peer.key != self.key or peer.url == self.server.url:
            return
        if peer.url not in self.session.book:
            log.info("found LAN cache %s", peer.url)
        self.session.add_peer(Peer(peer.url, Tier.LAN))

    # ------------------------------------------------------------------ namespace

    async def trusted(self) -> TrustedRoot:
        """The current root, refreshed from peers when older than the interval."""
        return await self.session.follower.current(self.config.refresh_interval)

    async def project_manifests(self, name: str) -> list[FileManifest] | None:
        await self.trusted()
        project = await self.session.project(name)
        if project is None:
            return None
        raw = await self.session.get_objects(f.manifest for f in project.files)
        return [decode_as(raw[f.manifest], FileManifest) for f in project.files]

    async def listed_manifest(self, content_id: bytes, filename: str) -> FileManifest | None:
        """The manifest the current signed tree lists for ``filename``, if it matches.

        ``content_id`` is the archive's BLAKE3 (the stable URL form) or, for
        URLs handed out before that form, the manifest id. Anything else —
        an unsigned object, another file's id, a name the tree lacks — is None.
        """
        await self.trusted()
        project_name = project_of(filename)
        project = await self.session.project(project_name) if project_name else None
        oid = project.lookup(filename) if project is not None else None
        if oid is None:
            return None
        manifest = decode_as(await self.session.get_object(oid), FileManifest)
        if content_id not in (manifest.blake3, oid):
            return None
        return manifest

    def page_served(self, name: str, manifests: list[FileManifest], trusted: TrustedRoot) -> None:
        """An installer got ``name``'s page: fetch what it will ask next (read-ahead)."""
        if self._tg is not None:
            self.read_ahead.page_served(
                name, manifests, trusted.version, self._tg, trusted.root.tree
            )

    async def project_names(self) -> list[str]:
        await self.trusted()
        return await self.session.project_names(self.config.max_index_projects)

    # ------------------------------------------------------------------ files

    def download(self, manifest: FileManifest) -> Live:
        """The live download of ``manifest`` (started if needed, as a child of :meth:`run`)."""
        live = self.live.get(manifest.blake3)
        if live is not None:
            return live
        if self._tg is None:
            raise RuntimeError("the cache is not running")
        live = Live()
        self.live[manifest.blake3] = live
        self._tg.start_soon(self._download, manifest, live)
        return live

    async def _download(self, manifest: FileManifest, live: Live) -> None:
        try:
            _, stats = await self.session.fetch_file(manifest, None, watch=live.advance)
            self.stats.bytes_fetched += stats.from_network
            live.advance(manifest.size)
            live.finish()
            if self.on_new_file is not None:
                self.on_new_file()
            self._evict(keep=frozenset({manifest.blake3}))
        except Exception as exc:
            # A failed download fails its responses, never the cache: the
            # installer gets a 502 (or a short body) and may retry.
            live.finish(exc)
            if isinstance(exc, LocalError):
                self.disk.note(exc)  # our disk, not the peers: the status page says so
            if isinstance(exc, P2pkgError):
                log.warning("cache could not fetch %s: %s", manifest.filename, exc)
            else:
                log.exception("cache: unexpected error fetching %s", manifest.filename)
            self.stats.failed_downloads += 1
            self.stats.recent_errors.append(
                {"time": int(time.time()), "file": manifest.filename, "error": str(exc)}
            )
        except BaseException as exc:
            live.finish(exc)  # cancelled: the cache is stopping
            raise
        finally:
            self.live.pop(manifest.blake3, None)

    def _evict(self, keep: frozenset[bytes]) -> None:
        if self.config.max_size is None:
            return
        gone = self.store.evict_lru(self.config.max_size, keep | frozenset(self.live))
        self.stats.evicted += len(gone)

    def note_signed(self, data: bytes) -> None:
        """Note what a verified, signed object points to: those ids may be pulled through.

        Peers walk the tree top-down through the cache (the root's tree id,
        then each level's children), so "a child of an object already served"
        is "signed under a root this cache trusts" without a reverse index. A
        manifest also names its archive, which may then be pulled through.
        """
        obj = decode(data)
        children: list[ObjectId] = []
        if isinstance(obj, Node):
            children = [e.child for e in obj.children]
        elif isinstance(obj, Leaf):
            children = [e.project for e in obj.projects]
        elif isinstance(obj, Project):
            children = [f.manifest for f in obj.files]
        elif isinstance(obj, FileManifest):
            children = manifest_blobs(obj)
            if len(self.by_blake3) > MAX_NOTED:
                self.by_blake3.clear()
            self.by_blake3[obj.blake3] = obj
        if len(self.signed_ids) + len(children) > MAX_NOTED:
            self.signed_ids.clear()  # bounded: a client re-walks from the root
        self.signed_ids.update(children)

    def may_pull(self, oid: ObjectId) -> bool:
        """Whether ``oid`` is signed: the trusted tree's top, or noted below a served object."""
        trusted = self.session.trusted
        return (trusted is not None and oid == trusted.root.tree) or oid in self.signed_ids

    def status(self) -> dict[str, Any]:
        trusted = self.session.trusted
        files, held = self.store.stats()
        served = self.stats.bytes_from_cache + self.stats.bytes_fetched
        requests = self.stats.hits + self.stats.misses
        return {
            "role": "cache",
            "root_version": trusted.version if trusted else None,
            "root_age_seconds": int(time.time() - trusted.root.created) if trusted else None,
            "peers": [p.url for p in self.session.peers],
            "lan_peers": [p.url for p in self.session.peers if p.tier == Tier.LAN],
            "banned_peers": sorted(self.session.banned),
            # what the peer book has measured: tier, rate, latency, failures, bans
            "peer_book": self.session.book.summary(self.session.monotonic()),
            # each peer's root at the last refresh: how far behind it is
            "peer_roots": {
                url: {
                    "root_version": version,
                    "versions_behind": max(0, trusted.version - version) if trusted else None,
                }
                for url, version in sorted(self.session.follower.peer_versions.items())
            },
            "files_held": files,
            "bytes_held": held,
            "max_size": self.config.max_size,
            "hits": self.stats.hits,
            "misses": self.stats.misses,
            "hit_ratio": round(self.stats.hits / requests, 3) if requests else None,
            "bytes_served_from_cache": self.stats.bytes_from_cache,
            "bytes_fetched": self.stats.bytes_fetched,
            "bytes_total": served,
            # fetched before an installer asked (dependency closures of pages served)
            "read_ahead_projects": self.read_ahead.stats.projects,
            "read_ahead_archives": self.read_ahead.stats.archives,
            "downloads_in_progress": len(self.live),
            "evicted": self.stats.evicted,
            "failed_downloads": self.stats.failed_downloads,
            "recent_errors": list(self.stats.recent_errors),
            **self.disk.report(),
        }
