"""One namespace of a LAN cache: its store, session, live downloads and counters.

A :class:`~p2pkg.roles.cache.Cache` holds one per trusted namespace (a
site's private packages beside a mirrored public index). Each has its own
keys, peers and store, and a :class:`~p2pkg.io.http.server.PeerServer`
(never listening itself) mounted on the cache's server at ``/ns/NAME/``:
its simple pages, files and peer protocol answer from this namespace only.
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
from anyio.abc import TaskGroup

from p2pkg.core.objects import FileManifest, Leaf, Node, ObjectId, Project, decode, decode_as
from p2pkg.core.peers import Tier
from p2pkg.core.select import project_of
from p2pkg.core.trust import TrustedRoot
from p2pkg.core.walk import manifest_blobs
from p2pkg.errors import LocalError, P2pkgError
from p2pkg.io.download_counts import DownloadCounts
from p2pkg.io.http import wire
from p2pkg.io.http.client import ClientConfig
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles.cache_http import CacheRoutes
from p2pkg.roles.discover import trust_key
from p2pkg.roles.disk import DiskCondition
from p2pkg.roles.links import Peer
from p2pkg.roles.session import Session
from p2pkg.roles.subscriptions import keep_subscribed

log = logging.getLogger(__name__)

#: Ids (and archives) noted as signed before the sets start over.
MAX_NOTED = 200_000
#: Projects (with their manifests) remembered per root version.
MAX_RESOLVED = 4096


@dataclass(frozen=True, slots=True)
class CacheConfig:
    refresh_interval: float = 60.0  # how stale the root may get before a page refreshes it
    max_size: int | None = None  # bytes of archives kept (per namespace); None = unlimited
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


class CacheNamespace:
    """One trusted namespace of a cache (see the module doc).

    The store is opened here and closed by :meth:`close`; :meth:`start`
    runs its background work (root following, subscriptions, counting) in
    the cache's task group, which also holds its live downloads.
    """

    def __init__(
        self,
        name: str,
        store_path: Path,
        pinned: frozenset[bytes],
        peers: list[str | Peer],
        *,
        config: CacheConfig = CacheConfig(),
        server_config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen
    ) -> None:
        self.name = name
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
        # Never listens: mounted on the cache's server (the budgets are the cache's).
        self.server = PeerServer(
            self.store, server_config, on_notify=self._notified, status_extra=self.status
        )
        self.routes = CacheRoutes(self)
        self.routes.install(self.server)
        self.counts = DownloadCounts(store_path)  # downloads it served, for the master's stats
        self.counts.install(self.server)
        self.by_blake3: dict[bytes, FileManifest] = {}  # archives signed manifests name
        self.signed_ids: set[ObjectId] = set()  # ids below objects served (may be pulled)
        self.on_new_file: Callable[[], None] | None = None
        self.on_page: Callable[[CacheNamespace, str, list[FileManifest], TrustedRoot], None] | None
        self.on_page = None  # read-ahead (the cache's, which follows the search order)
        self._resolved_memo: collections.OrderedDict[
            tuple[int, str], tuple[Project | None, list[FileManifest] | None]
        ] = collections.OrderedDict()
        self._tg: TaskGroup | None = None

    def start(self, tg: TaskGroup) -> None:
        """Follow the root, count downloads, keep subscribed; downloads run in ``tg`` too."""
        self._tg = tg
        tg.start_soon(self.counts.run)
        # As a peer the cache serves the root too: follow it in the background.
        tg.start_soon(
            partial(
                self.session.follower.follow,
                interval=self.config.refresh_interval,
                max_backoff=max(self.config.refresh_interval, 300.0),
            )
        )
        if self.config.subscribe:
            upstreams = [p.url for p in self.session.peers if p.tier == Tier.MIRROR]
            tg.start_soon(
                partial(
                    keep_subscribed,
                    upstreams,
                    lambda: self.server.port,
                    path=self.server.base_path,
                )
            )

    def close(self) -> None:
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

    # ------------------------------------------------------------------ namespace

    async def trusted(self) -> TrustedRoot:
        """The current root, refreshed from peers when older than the interval."""
        return await self.session.follower.current(self.config.refresh_interval)

    def known(self, name: str) -> bool | None:
        """Whether this namespace lists ``name``, if that is remembered for a fresh root."""
        trusted = self.session.follower.fresh(self.config.refresh_interval)
        found = self._resolved_memo.get((trusted.version, name)) if trusted else None
        return None if found is None else found[0] is not None

    async def project(self, name: str) -> Project | None:
        """Project ``name`` under the current root (None: the namespace lacks it).

        Remembered per root version (a tree is immutable): the merged index
        asks every candidate namespace, then the page and each file request
        ask the chosen one again.
        """
        return (await self._resolved(name))[1][0]

    async def _resolved(
        self, name: str
    ) -> tuple[tuple[int, str], tuple[Project | None, list[FileManifest] | None]]:
        """(memo key, (project, manifests or None)) under the current root."""
        trusted = await self.trusted()
        key = (trusted.version, name)
        found = self._resolved_memo.get(key)
        if found is None:
            found = (await self.session.project(name), None)
            self._remember(key, found)
        else:
            self._resolved_memo.move_to_end(key)
        return key, found

    def _remember(
        self, key: tuple[int, str], value: tuple[Project | None, list[FileManifest] | None]
    ) -> None:
        self._resolved_memo[key] = value
        while len(self._resolved_memo) > MAX_RESOLVED:
            self._resolved_memo.popitem(last=False)

    async def project_manifests(self, name: str) -> list[FileManifest] | None:
        key, (project, manifests) = await self._resolved(name)
        if project is None:
            return None
        if manifests is None:
            raw = await self.session.get_objects(f.manifest for f in project.files)
            manifests = [decode_as(raw[f.manifest], FileManifest) for f in project.files]
            # Under the key the project was found with: the root may have moved on meanwhile.
            self._remember(key, (project, manifests))
        return manifests

    async def listed_manifest(self, content_id: bytes, filename: str) -> FileManifest | None:
        """The manifest the current signed tree lists for ``filename``, if it matches.

        ``content_id`` is the archive's BLAKE3 (the stable URL form) or, for
        URLs handed out before that form, the manifest id. Anything else —
        an unsigned object, another file's id, a name the tree lacks — is None.
        """
        project_name = project_of(filename)
        project = await self.project(project_name) if project_name else None
        oid = project.lookup(filename) if project is not None else None
        if oid is None:
            return None
        manifest = decode_as(await self.session.get_object(oid), FileManifest)
        if content_id not in (manifest.blake3, oid):
            return None
        return manifest

    def page_served(self, name: str, manifests: list[FileManifest], trusted: TrustedRoot) -> None:
        """An installer got ``name``'s page: fetch what it will ask next (read-ahead)."""
        if self.on_page is not None:
            self.on_page(self, name, manifests, trusted)

    async def has_project(self, name: str) -> bool:
        """Whether this namespace lists ``name`` (raises when it cannot say)."""
        return await self.project(name) is not None

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
            "namespace": self.name,
            "base_url": self.server.url if self.server.parent is not None else None,
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
            "downloads_in_progress": len(self.live),
            "evicted": self.stats.evicted,
            "failed_downloads": self.stats.failed_downloads,
            "recent_errors": list(self.stats.recent_errors),
            **self.disk.report(),
        }
