"""The seeding node: follow the master's namespace, mirror it, serve it.

A seed polls its upstreams (the master, other seeds) for a newer signed root
and also takes pushes (``POST /p2pkg/v1/notify``). A root is accepted only
under the trust rules; then everything under it that the seed lacks is
fetched and verified — objects by id, archives chunk by chunk, from all
upstreams in parallel — and committed **bottom-up** (archive, then manifest,
project, leaf, nodes), so "I hold this object" always implies "I hold what it
points to". The root is recorded, and served, last: a client that reads a
seed's root can get everything under it from that seed.

With ``projects`` the seed mirrors a subset: the tree path to each project
(so clients can resolve through it) and the projects' files.

If every upstream is gone the seed keeps serving what it has and retries
with exponential back-off; nothing unverified is ever stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from p2pkg.core.objects import FileManifest, ObjectId, decode_as, normalize_name
from p2pkg.core.trust import TrustedRoot
from p2pkg.core.walk import FILE_DEPTH, SyncWalk, run_async
from p2pkg.errors import FetchError, LocalError, P2pkgError, first_p2pkg_error
from p2pkg.io.dht_service import DhtService, full_store_keys, held_file_keys
from p2pkg.io.download_counts import DownloadCounts
from p2pkg.io.http import metrics, wire
from p2pkg.io.http.client import PeerClient
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles import role_pages
from p2pkg.roles.disk import DiskCondition
from p2pkg.roles.follow import FollowState
from p2pkg.roles.links import Peer
from p2pkg.roles.namespace_choice import DEFAULT_NAMESPACE
from p2pkg.roles.role_metrics import seed_health, seed_metrics
from p2pkg.roles.session import Session
from p2pkg.roles.subscriptions import Subscriptions, keep_subscribed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SeedConfig:
    interval: float = 30.0  # poll period when nothing is pushed
    max_backoff: float = 300.0
    parallel_files: int = 8
    subscribe: bool = True  # ask the upstreams to push new roots (§6.6)


@dataclass
class Freshness:
    """What a seed has synced; :meth:`report` adds how following upstream goes."""

    synced_version: int | None = None
    synced_root_created: int | None = None
    upstream_version: int | None = None
    files_fetched: int = 0
    bytes_fetched: int = 0
    projects: list[str] = field(default_factory=list)

    def report(self, now: float, follow: FollowState) -> dict[str, Any]:
        lag = None
        if self.upstream_version is not None and self.synced_version is not None:
            lag = max(0, self.upstream_version - self.synced_version)

        def age(t: float | None) -> float | None:
            return None if t is None else round(now - t, 1)

        return {
            "role": "seed",
            "synced_version": self.synced_version,
            "upstream_version": self.upstream_version,
            "lag_versions": lag,
            "root_age_seconds": (
                None if self.synced_root_created is None else int(now - self.synced_root_created)
            ),
            "last_sync_age_seconds": age(follow.last_success),
            "last_attempt_age_seconds": age(follow.last_attempt),
            "last_error": follow.last_error,
            "failures_in_a_row": follow.failures_in_a_row,
            "files_fetched": self.files_fetched,
            "bytes_fetched": self.bytes_fetched,
            "mirrors": self.projects or "all",
        }


class Seeder:
    """Syncs a store from upstream peers and serves it."""

    def __init__(
        self,
        store_path: Path,
        pinned: frozenset[bytes],
        upstreams: Sequence[str],
        *,
        projects: Sequence[str] = (),
        config: SeedConfig = SeedConfig(),
        server_config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen
        on_synced: Callable[[], None] | None = None,
        dht: DhtService | None = None,
    ) -> None:
        self.on_synced = on_synced
        self.dht = dht  # announce what this seed holds, re-announced after each sync
        self.store = Store.open(store_path, create=True)
        self.store_path = store_path
        self.pinned = pinned
        self.projects = [normalize_name(p) for p in projects]
        self.config = config
        # A seed records a root, and the objects under it, only bottom-up once
        # everything under the root is synced: both parts leave the store to it.
        self.session = Session(
            pinned,
            [Peer(u) for u in upstreams],
            self.store,
            persist_roots=False,
            commit_objects=False,
        )
        self.follower = self.session.follower
        self.freshness = Freshness(projects=self.projects)
        self.disk = DiskCondition(store_path)
        self.upstreams = list(upstreams)
        self.server = PeerServer(
            self.store,
            server_config,
            on_notify=self._notified,
            status_extra=self.status,
        )
        # Caches (and seeds) below this one subscribe here: each synced root is
        # pushed on to them, so a new upload travels master -> seeds -> caches.
        self.subscriptions = Subscriptions()
        self.subscriptions.install(self.server)
        self.counts = DownloadCounts(store_path)  # downloads it served, for the master's stats
        self.counts.install(self.server)
        one = {DEFAULT_NAMESPACE: self}
        metrics.install(self.server, partial(seed_metrics, one), partial(seed_health, one))
        role_pages.install(self.server, lambda _ex: role_pages.seed_page(one))
        self._limiter = anyio.CapacityLimiter(config.parallel_files)
        self._batch_limiter = anyio.CapacityLimiter(config.parallel_files)
        synced = self.follower.trusted  # the store's chain: what this seed serves
        if synced is not None:
            self.freshness.synced_version = synced.version
            self.freshness.synced_root_created = synced.root.created

    def status(self) -> dict[str, Any]:
        """The status page's fields: freshness, how following goes, the disk."""
        return {
            **self.freshness.report(time.time(), self.follower.state),
            **self.disk.report(),
            **self.subscriptions.status(),
        }

    async def close(self) -> None:
        # The server stops with run (cancelled); its store is this one, closed here.
        self.session.close()
        self.counts.close()
        self.store.close()

    # ------------------------------------------------------------------ running

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve and follow upstream until cancelled."""
        async with anyio.create_task_group() as tg:
            url = await tg.start(self.server.run, host, port)
            await self._start(tg)
            task_status.started(url)
            log.info("seed serving %s on %s", self.store_path, url)
            await self._follow()

    async def run_mounted(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow upstream until cancelled, served by the server this seed's is mounted on."""
        async with anyio.create_task_group() as tg:
            await self._start(tg)
            task_status.started()
            log.info("seed serving %s on %s", self.store_path, self.server.url)
            await self._follow()

    async def _start(self, tg: TaskGroup) -> None:
        if self.dht is not None:
            # Whole bins for a full mirror, archive by archive for a subset.
            keys = held_file_keys if self.projects else full_store_keys
            await self.dht.announce_on(
                tg, lambda: keys(self.store), self.server.port, self.store.latest_root
            )
        tg.start_soon(self.counts.run)
        if self.config.subscribe:
            tg.start_soon(
                partial(
                    keep_subscribed,
                    self.upstreams,
                    lambda: self.server.port,
                    path=self.server.base_path,
                )
            )

    async def _follow(self) -> None:
        await self.follower.follow(
            self._catch_up, interval=self.config.interval, max_backoff=self.config.max_backoff
        )

    async def _notified(self, body: bytes, peer: str) -> None:
        """A push: a root (zstd frame) or an empty body meaning "poll now"."""
        if self.follower.pushed(body, peer):
            announced = self.follower.announced
            self.freshness.upstream_version = max(self.freshness.upstream_version or 0, announced)

    async def sync_once(self) -> bool:
        """Catch up with the newest root upstream; True if a new root was synced."""
        trusted = await self.follower.refresh()
        if self.follower.unreachable:
            # Still serving what we hold; say so (the follow loop backs off).
            raise FetchError("no upstream reachable: " + "; ".join(self.follower.unreachable))
        return await self._catch_up(trusted)

    async def _catch_up(self, trusted: TrustedRoot) -> bool:
        """Sync everything under ``trusted`` unless it is what the store already serves."""
        f = self.freshness
        f.upstream_version = max(f.upstream_version or 0, trusted.version)
        if f.synced_version is not None and trusted.version <= f.synced_version:
            return False
        try:
            try:
                await self._sync(trusted)
            except BaseExceptionGroup as group:
                # Files and wide levels are fetched in parallel: one failed child
                # is the sync's error (the follow loop handles p2pkg errors).
                raise first_p2pkg_error(group) from None
            # A full mirror holds everything under its root (verify holds it to
            # that); a --project subset holds the paths to its projects only.
            if self.follower.trusted is trusted:  # with the roots a rotation walked through
                self.follower.record(self.store, full=not self.projects)
            else:
                self.store.commit(root=trusted.signed.encode(), full=not self.projects)
        except LocalError as exc:
            # Our disk, not upstream: the follow loop backs off and retries, the
            # store keeps serving the last root it synced, the status says why.
            self.disk.note(exc)
            raise
        f.synced_version = trusted.version
        f.synced_root_created = trusted.root.created
        log.info("seed synced root version %d", trusted.version)
        latest = self.store.latest_root_stored()
        if latest is not None and self.subscriptions.live():
            await self.subscriptions.push(latest[2])
        if self.dht is not None:
            self.dht.poke()
        if self.on_synced is not None:
            self.on_synced()
        return True

    # ------------------------------------------------------------------ syncing

    async def _sync(self, trusted: TrustedRoot) -> None:
        """Fetch what the store lacks under ``trusted``'s tree, then commit it bottom-up.

        The walk (:class:`SyncWalk`) asks for each tree level as one batch and
        skips every subtree the store holds. Archives come next, each committed
        with its manifest (and core metadata); then projects, leaves and nodes,
        one transaction per level, deepest first — so a held object always has
        its whole subtree held, and a sync that fails part-way keeps the files
        it committed for the next one.
        """
        fetched: dict[ObjectId, bytes] = {}

        async def get_level(oids: list[ObjectId]) -> dict[ObjectId, bytes]:
            got = await self._fetch_level(oids)
            fetched.update(got)
            return got

        walk = SyncWalk(trusted.root.tree, self.store.has_object, self.projects or None)
        plan = await run_async(walk, get_level)
        if plan.missing:  # get_objects raises first; this keeps the invariant explicit
            raise FetchError(f"no peer served object {plan.missing[0].hex()}")
        for name in sorted(plan.absent):
            log.warning("project %r is not in the namespace", name)
        async with anyio.create_task_group() as tg:
            for oid in plan.level(FILE_DEPTH):
                tg.start_soon(self._sync_file, oid, fetched, plan.children.get(oid, ()))
        for depth in reversed(range(FILE_DEPTH)):
            level = plan.level(depth)
            if level:
                self.store.commit(objects={oid: fetched.pop(oid) for oid in level})

    async def _fetch_level(self, oids: list[ObjectId]) -> dict[ObjectId, bytes]:
        """One tree level: ``POST /objects`` batches, several in flight on a wide level."""
        if len(oids) <= wire.MAX_OBJECT_BATCH:
            return await self.session.get_objects(oids)
        out: dict[ObjectId, bytes] = {}

        async def group(ids: list[ObjectId]) -> None:
            async with self._batch_limiter:
                out.update(await self.session.get_objects(ids))

        async with anyio.create_task_group() as tg:
            for start in range(0, len(oids), wire.MAX_OBJECT_BATCH):
                tg.start_soon(group, oids[start : start + wire.MAX_OBJECT_BATCH])
        return out

    async def _sync_file(
        self, oid: ObjectId, fetched: dict[ObjectId, bytes], blobs: tuple[ObjectId, ...]
    ) -> None:
        """One archive, then its manifest and core metadata in one commit."""
        data = fetched.pop(oid)
        manifest = decode_as(data, FileManifest)
        async with self._limiter:
            _, stats = await self.session.fetch_file(manifest, None)
        self.freshness.files_fetched += 1
        self.freshness.bytes_fetched += stats.from_network
        # A blob may be shared by several manifests (identical METADATA): get, not pop.
        self.store.commit(objects={oid: data, **{b: fetched[b] for b in blobs}})


async def notify(urls: Sequence[str], root_frame: bytes) -> dict[str, str]:
    """Push a new root to seeds (best effort); url -> "ok" or the error."""
    out: dict[str, str] = {}

    async def one(url: str) -> None:
        client = PeerClient(url)
        try:
            status, _ = await client.post(wire.NOTIFY_PATH, root_frame)
            out[url] = "ok" if status == 202 else f"HTTP {status}"
        except P2pkgError as exc:
            out[url] = str(exc)
        finally:
            client.close()

    async with anyio.create_task_group() as tg:
        for url in urls:
            tg.start_soon(one, url)
    return out


__all__ = ["Freshness", "SeedConfig", "Seeder", "notify"]
