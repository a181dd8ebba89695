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

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from p2pkg.core.objects import (
    TREE_LEVELS,
    FileManifest,
    Leaf,
    Node,
    ObjectId,
    Project,
    decode_as,
    name_hash,
    normalize_name,
)
from p2pkg.core.root import decode_signed_root
from p2pkg.core.trust import TrustedRoot
from p2pkg.errors import DecodeError, FetchError, P2pkgError
from p2pkg.io.http import wire
from p2pkg.io.http.client import PeerClient
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles.fetch import Fetcher, Peer, open_root

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SeedConfig:
    interval: float = 30.0  # poll period when nothing is pushed
    max_backoff: float = 300.0
    parallel_files: int = 8


@dataclass
class Freshness:
    synced_version: int | None = None
    synced_root_created: int | None = None
    upstream_version: int | None = None
    last_sync: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    files_fetched: int = 0
    bytes_fetched: int = 0
    failures_in_a_row: int = 0
    projects: list[str] = field(default_factory=list)

    def report(self, now: float) -> dict[str, Any]:
        lag = None
        if self.upstream_version is not None and self.synced_version is not None:
            lag = max(0, self.upstream_version - self.synced_version)
        return {
            "role": "seed",
            "synced_version": self.synced_version,
            "upstream_version": self.upstream_version,
            "lag_versions": lag,
            "root_age_seconds": (
                None if self.synced_root_created is None else int(now - self.synced_root_created)
            ),
            "last_sync_age_seconds": (
                None if self.last_sync is None else round(now - self.last_sync, 1)
            ),
            "last_attempt_age_seconds": (
                None if self.last_attempt is None else round(now - self.last_attempt, 1)
            ),
            "last_error": self.last_error,
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
    ) -> None:
        self.on_synced = on_synced
        self.store = Store.open(store_path, create=True)
        self.store_path = store_path
        self.pinned = pinned
        self.projects = [normalize_name(p) for p in projects]
        self.config = config
        self.fetcher = Fetcher(
            pinned, [Peer(u) for u in upstreams], self.store, persist_roots=False
        )
        self.freshness = Freshness(projects=self.projects)
        self.server = PeerServer(
            store_path,
            server_config,
            on_notify=self._notified,
            status_extra=lambda: self.freshness.report(time.time()),
        )
        self._wake = anyio.Event()
        self._limiter = anyio.CapacityLimiter(config.parallel_files)
        self._object_limiter = anyio.CapacityLimiter(4 * config.parallel_files)
        self._prefetched: dict[ObjectId, bytes] = {}
        self._batches = _Coalescer(self._fetch_batch)
        latest = self.store.latest_root()
        if latest is not None:
            self.fetcher.trusted = self.fetcher._local_trusted()
            if self.fetcher.trusted is not None:
                self.freshness.synced_version = self.fetcher.trusted.version
                self.freshness.synced_root_created = self.fetcher.trusted.root.created

    async def close(self) -> None:
        await self.server.close()
        self.fetcher.close()
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
        await self.server.start(host, port)
        task_status.started(self.server.url)
        log.info("seed serving %s on %s", self.store_path, self.server.url)
        while True:
            delay = self.config.interval
            try:
                await self.sync_once()
            except P2pkgError as exc:
                f = self.freshness
                f.failures_in_a_row += 1
                f.last_error = str(exc)
                # Back off from the poll interval up to max_backoff; a push still
                # wakes the seed at once.
                exponent = min(f.failures_in_a_row - 1, 16)
                delay = min(self.config.max_backoff, self.config.interval * 2**exponent)
                log.warning("seed sync failed (retry in %.0fs): %s", delay, exc)
            self._wake = anyio.Event()
            with anyio.move_on_after(delay):
                await self._wake.wait()

    async def _notified(self, body: bytes, peer: str) -> None:
        """A push: a root (zstd frame) or an empty body meaning "poll now"."""
        if body:
            try:
                version = decode_signed_root(open_root(body))[1].version
            except DecodeError as exc:
                log.info("ignoring malformed push from %s: %s", peer, exc)
                return
            current = self.freshness.synced_version or 0
            if version <= current:
                return
            self.freshness.upstream_version = max(self.freshness.upstream_version or 0, version)
        log.info("push from %s: syncing now", peer)
        self._wake.set()

    async def sync_once(self) -> bool:
        """Catch up with the newest root upstream; True if a new root was synced."""
        f = self.freshness
        f.last_attempt = time.time()
        trusted = await self.fetcher.refresh_root()
        if self.fetcher.unreachable:
            # Still serving what we hold; say so and back off.
            raise FetchError("no upstream reachable: " + "; ".join(self.fetcher.unreachable))
        f.upstream_version = max(f.upstream_version or 0, trusted.version)
        if f.synced_version is not None and trusted.version <= f.synced_version:
            f.failures_in_a_row = 0
            f.last_error = None
            f.last_sync = time.time()
            return False
        await self._sync(trusted)
        # A full mirror holds everything under its root (verify holds it to that);
        # a --project subset holds the paths to its projects only.
        self.store.commit(root=trusted.signed.encode(), full=not self.projects)
        f.synced_version = trusted.version
        f.synced_root_created = trusted.root.created
        f.last_sync = time.time()
        f.failures_in_a_row = 0
        f.last_error = None
        log.info("seed synced root version %d", trusted.version)
        if self.on_synced is not None:
            self.on_synced()
        return True

    # ------------------------------------------------------------------ syncing

    async def _object(self, oid: ObjectId) -> bytes:
        data = self._prefetched.pop(oid, None)
        if data is not None:
            return data
        async with self._object_limiter:
            return await self.fetcher.get_object(oid, keep=False)

    async def _prefetch(self, oids: list[ObjectId]) -> None:
        """Fetch missing objects in batches (POST /objects), not one request each.

        Sibling tasks ask at nearly the same moment; their ids are coalesced
        into one batch (see :class:`_Coalescer`). Nothing is committed here:
        commits stay bottom-up (module docstring).
        """
        missing = [o for o in oids if o not in self._prefetched and not self.store.has_object(o)]
        if missing:
            self._prefetched.update(await self._batches.get(missing))

    async def _fetch_batch(self, oids: list[ObjectId]) -> dict[ObjectId, bytes]:
        async with self._object_limiter:
            return await self.fetcher.get_objects(oids, keep=False)

    async def _sync(self, trusted: TrustedRoot) -> None:
        if not self.projects:
            await self._sync_node(trusted.root.tree, 0)
            return
        await self._sync_subset(trusted)

    async def _sync_node(self, oid: ObjectId, depth: int) -> None:
        if self.store.has_object(oid):
            return  # bottom-up commits: held => its subtree is held
        data = await self._object(oid)
        child_sync: Callable[[ObjectId], Awaitable[None]]
        if depth < TREE_LEVELS:
            children = [e.child for e in decode_as(data, Node).children]
            child_sync = functools.partial(self._sync_node, depth=depth + 1)
        else:
            children = [e.project for e in decode_as(data, Leaf).projects]
            child_sync = self._sync_project
        await self._prefetch(children)
        async with anyio.create_task_group() as tg:
            for child in children:
                tg.start_soon(child_sync, child)
        self.store.commit(objects={oid: data})

    async def _sync_project(self, oid: ObjectId) -> None:
        if self.store.has_object(oid):
            return
        data = await self._object(oid)
        manifests = [f.manifest for f in decode_as(data, Project).files]
        await self._prefetch(manifests)
        blobs = []
        for m in manifests:
            raw = self._prefetched.get(m)
            if raw is not None:
                core = decode_as(raw, FileManifest).core_metadata
                if core is not None:
                    blobs.append(core.blob)
        await self._prefetch(blobs)
        async with anyio.create_task_group() as tg:
            for m in manifests:
                tg.start_soon(self._sync_file, m)
        self.store.commit(objects={oid: data})

    async def _sync_file(self, oid: ObjectId) -> None:
        if self.store.has_object(oid):
            return
        data = await self._object(oid)
        manifest = decode_as(data, FileManifest)
        objects = {oid: data}
        if manifest.core_metadata is not None:
            blob = manifest.core_metadata.blob
            objects[blob] = await self._object(blob)
        async with self._limiter:
            _, stats = await self.fetcher.fetch_file(manifest, None)
        self.freshness.files_fetched += 1
        self.freshness.bytes_fetched += stats.from_network
        self.store.commit(objects=objects)

    async def _sync_subset(self, trusted: TrustedRoot) -> None:
        """The tree path to each wanted project, then its files; path nodes last."""
        for name in self.projects:
            h = name_hash(name)
            path: list[tuple[ObjectId, bytes]] = []
            oid = trusted.root.tree
            found = None
            for depth in range(TREE_LEVELS):
                data = await self._object(oid)
                path.append((oid, data))
                child = decode_as(data, Node).child(h[depth])
                if child is None:
                    break
                oid = child
            else:
                data = await self._object(oid)
                path.append((oid, data))
                for entry in decode_as(data, Leaf).projects:
                    if entry.name == name:
                        found = entry.project
            if found is None:
                log.warning("project %r is not in the namespace", name)
            else:
                await self._sync_project(found)
            self.store.commit(objects=dict(path))


class _Coalescer:
    """Merges the object requests that concurrent tasks make within a few ms.

    A sync walks the tree with one task per subtree; at any level the siblings
    ask for their children at about the same time. Collected for ``delay``
    seconds, those asks become one batch request instead of one each.
    """

    def __init__(
        self,
        fetch: Callable[[list[ObjectId]], Awaitable[dict[ObjectId, bytes]]],
        delay: float = 0.003,
    ) -> None:
        self.fetch = fetch
        self.delay = delay
        self.waiting: dict[ObjectId, asyncio.Future[bytes]] = {}
        self.flushing = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, oids: list[ObjectId]) -> dict[ObjectId, bytes]:
        loop = asyncio.get_running_loop()
        futures = {}
        for oid in oids:
            fut = self.waiting.get(oid)
            if fut is None:
                fut = self.waiting[oid] = loop.create_future()
            futures[oid] = fut
        if not self.flushing:
            self.flushing = True
            task = loop.create_task(self._flush())
            self._tasks.add(task)  # a task nobody references may be collected mid-flight
            task.add_done_callback(self._tasks.discard)
        return {oid: await fut for oid, fut in futures.items()}

    async def _flush(self) -> None:
        await asyncio.sleep(self.delay)
        batch, self.waiting, self.flushing = self.waiting, {}, False
        try:
            got = await self.fetch(list(batch))
        except BaseException as exc:
            for fut in batch.values():
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for oid, fut in batch.items():
            if not fut.done():
                fut.set_result(got[oid])


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
