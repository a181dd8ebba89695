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

import asyncio
import collections
import contextlib
import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pkg.core import simple
from p2pkg.core.objects import (
    TREE_LEVELS,
    Blob,
    FileManifest,
    Kind,
    Leaf,
    Node,
    ObjectId,
    decode_as,
    normalize_name,
)
from p2pkg.core.select import project_of
from p2pkg.core.trust import TrustedRoot
from p2pkg.errors import NotFoundError, P2pkgError
from p2pkg.io.discovery import Lan
from p2pkg.io.http import wire
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles.fetch import Fetcher, Peer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    refresh_interval: float = 60.0  # how stale the root may get before a page refreshes it
    max_size: int | None = None  # bytes of archives kept; None = unlimited
    max_index_projects: int = 100_000  # /simple/ lists at most this many
    lan: bool = False  # announce on, and discover other caches from, the LAN (DNS-SD)
    lan_interfaces: tuple[str, ...] | None = None  # None: every interface


class _Live:
    """A download in progress that responses follow (verified prefix only)."""

    def __init__(self) -> None:
        self.prefix = 0
        self.done = False
        self.error: BaseException | None = None
        self._event = asyncio.Event()

    def advance(self, n: int) -> None:
        self.prefix = max(self.prefix, n)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_beyond(self, sent: int) -> None:
        while not (self.prefix > sent or self.done):
            await self._event.wait()


RECENT_ERRORS = 20  # failures the status page lists
RETRY_AFTER = 10  # seconds an installer is told to wait when no peer can deliver


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
    """A store, a fetcher and an HTTP server that speaks both simple-API and peer."""

    def __init__(
        self,
        store_path: Path,
        pinned: frozenset[bytes],
        peers: list[str | Peer],
        *,
        config: CacheConfig = CacheConfig(),
        server_config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen
    ) -> None:
        self.store = Store.open(store_path, create=True)
        self.store_path = store_path
        self.config = config
        self.fetcher = Fetcher(pinned, peers, self.store)
        self.stats = CacheStats()
        self.live: dict[bytes, _Live] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshed = 0.0
        self.started = time.time()
        self.server = _CacheServer(self, store_path, server_config)
        self.lan: Lan | None = None
        self.by_blake3: dict[bytes, FileManifest] = {}
        self.on_new_file: Callable[[], None] | None = None  # e.g. re-announce to the DHT
        self._refresh_lock = asyncio.Lock()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        bound_host, bound = await self.server.start(host, port)
        self._spawn(self._keep_fresh())
        if self.config.lan:
            self.lan = Lan(self.config.lan_interfaces)
            await self.lan.announce(bound, "cache", self.key, listening_on=bound_host)
            self.lan.watch()
            self._spawn(self._adopt_lan_peers())
        return self.server.url

    async def _keep_fresh(self) -> None:
        """Follow the root in the background: as a peer the cache serves it too."""
        while True:
            try:
                await self.trusted()
            except P2pkgError as exc:
                log.warning("cache: no trusted root yet: %s", exc)
            await asyncio.sleep(min(self.config.refresh_interval, 30.0))

    @property
    def key(self) -> str:
        """The trusted key LAN peers must share (hex of the first pinned key)."""
        return min(self.fetcher.pinned).hex()

    async def _adopt_lan_peers(self) -> None:
        """Caches seen on the LAN become preferred (tier 0) peers."""
        assert self.lan is not None
        while True:
            for peer in list(self.lan.peers.values()):
                if peer.key == self.key and peer.url != self.server.url:
                    if peer.url not in self.fetcher.book:
                        log.info("found LAN cache %s", peer.url)
                    self.fetcher.add_peer(Peer(peer.url, tier=0))
            await asyncio.sleep(1.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.lan is not None:
            await self.lan.close()
        await self.server.close()
        self.fetcher.close()
        self.store.close()

    # ------------------------------------------------------------------ namespace

    async def trusted(self) -> TrustedRoot:
        """The current root, refreshed from peers when older than the interval."""
        async with self._refresh_lock:  # one refresh at a time; others reuse its result
            now = time.monotonic()
            stale = now - self._refreshed > self.config.refresh_interval
            if self.fetcher.trusted is None or stale:
                try:
                    await self.fetcher.refresh_root()
                except P2pkgError:
                    if self.fetcher.trusted is None:
                        raise
                self._refreshed = now
        assert self.fetcher.trusted is not None
        return self.fetcher.trusted

    async def project_manifests(self, name: str) -> list[FileManifest] | None:
        await self.trusted()
        project = await self.fetcher.project(name)
        if project is None:
            return None
        raw = await self.fetcher.get_objects(f.manifest for f in project.files)
        return [decode_as(raw[f.manifest], FileManifest) for f in project.files]

    async def listed_manifest(self, content_id: bytes, filename: str) -> FileManifest | None:
        """The manifest the current signed tree lists for ``filename``, if it matches.

        ``content_id`` is the archive's BLAKE3 (the stable URL form) or, for
        URLs handed out before that form, the manifest id. Anything else —
        an unsigned object, another file's id, a name the tree lacks — is None.
        """
        await self.trusted()
        project_name = project_of(filename)
        project = await self.fetcher.project(project_name) if project_name else None
        oid = project.lookup(filename) if project is not None else None
        if oid is None:
            return None
        manifest = decode_as(await self.fetcher.get_object(oid), FileManifest)
        if content_id not in (manifest.blake3, oid):
            return None
        return manifest

    async def project_names(self) -> list[str]:
        trusted = await self.trusted()
        level: list[ObjectId] = [trusted.root.tree]
        for _depth in range(TREE_LEVELS):
            raw = await self.fetcher.get_objects(level)
            level = [e.child for oid in level for e in decode_as(raw[oid], Node).children]
        raw = await self.fetcher.get_objects(level)
        names = [e.name for oid in level for e in decode_as(raw[oid], Leaf).projects]
        return names[: self.config.max_index_projects]

    # ------------------------------------------------------------------ files

    def download(self, manifest: FileManifest) -> _Live:
        """The live download of ``manifest`` (started if needed)."""
        live = self.live.get(manifest.blake3)
        if live is not None:
            return live
        live = _Live()
        self.live[manifest.blake3] = live
        self._spawn(self._download(manifest, live))
        return live

    async def _download(self, manifest: FileManifest, live: _Live) -> None:
        try:
            _, stats = await self.fetcher.fetch_file(manifest, None, watch=live.advance)
            self.stats.bytes_fetched += stats.from_network
            live.advance(manifest.size)
            live.finish()
            if self.on_new_file is not None:
                self.on_new_file()
            self._evict(keep=frozenset({manifest.blake3}))
        except BaseException as exc:
            live.finish(exc)
            if not isinstance(exc, P2pkgError):
                raise
            log.warning("cache could not fetch %s: %s", manifest.filename, exc)
            self.stats.failed_downloads += 1
            self.stats.recent_errors.append(
                {"time": int(time.time()), "file": manifest.filename, "error": str(exc)}
            )
        finally:
            self.live.pop(manifest.blake3, None)

    def _evict(self, keep: frozenset[bytes]) -> None:
        if self.config.max_size is None:
            return
        gone = self.store.evict_lru(self.config.max_size, keep | frozenset(self.live))
        self.stats.evicted += len(gone)

    def remember_manifest(self, oid: ObjectId, data: bytes) -> None:
        """Note which archive a manifest names, so peer-protocol file requests can be pulled."""
        if data[:1] == bytes([Kind.FILE]):
            manifest = decode_as(data, FileManifest)
            if len(self.by_blake3) > 100_000:
                self.by_blake3.clear()
            self.by_blake3[manifest.blake3] = manifest

    def partial_path(self, manifest: FileManifest) -> Path:
        return self.store_path / "partial" / f".{manifest.blake3.hex()}.p2pkg-partial"

    def status(self) -> dict[str, Any]:
        trusted = self.fetcher.trusted
        files, held = self.store.stats()
        served = self.stats.bytes_from_cache + self.stats.bytes_fetched
        requests = self.stats.hits + self.stats.misses
        return {
            "role": "cache",
            "root_version": trusted.version if trusted else None,
            "root_age_seconds": int(time.time() - trusted.root.created) if trusted else None,
            "peers": [p.url for p in self.fetcher.peers],
            "lan_peers": [p.url for p in self.fetcher.peers if p.tier == 0],
            "banned_peers": sorted(self.fetcher.banned),
            # what the peer book has measured: tier, rate, latency, failures, bans
            "peer_book": self.fetcher.book.summary(self.fetcher.monotonic()),
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
        }


class _CacheServer(PeerServer):
    """The peer server plus the simple API, file downloads and a status page."""

    def __init__(self, cache: Cache, store_path: Path, config: ServerConfig) -> None:
        super().__init__(store_path, config, status_extra=cache.status)
        self.cache = cache

    async def _dispatch(
        self, req: wire.RequestHead, body: bytes, writer: asyncio.StreamWriter, peer: object
    ) -> bool:
        path = req.target.split("?", 1)[0]
        if path.startswith(wire.PREFIX + "/"):
            return await self._peer_route(req, body, writer, peer)
        if req.method not in ("GET", "HEAD"):
            return await self._simple(writer, 405, b"method not allowed", keep=False)
        head_only = req.method == "HEAD"
        try:
            if path == "/":
                return await self._status_page(writer, head_only)
            if path in ("/simple", "/simple/"):
                return await self._index(writer, req, head_only)
            parts = path.split("/")
            if len(parts) in (3, 4) and parts[1] == "simple" and (len(parts) == 3 or not parts[3]):
                return await self._project(writer, req, parts[2], head_only)
            if len(parts) == 4 and parts[1] == "files" and wire.HEX64.match(parts[2]):
                content_id = bytes.fromhex(parts[2])
                return await self._archive(writer, req, content_id, parts[3], head_only)
        except NotFoundError:
            return await self._simple(writer, 404, b"not found")
        except P2pkgError as exc:
            log.warning("cache: %s: %s", path, exc)
            return await self._simple(writer, 502, f"upstream: {exc}".encode()[:500])
        return await self._simple(writer, 404, b"not found")

    async def _peer_route(
        self, req: wire.RequestHead, body: bytes, writer: asyncio.StreamWriter, peer: object
    ) -> bool:
        """The peer protocol, pulling through what the cache does not hold yet.

        A client that found this cache on the LAN may know no other peer: objects
        are fetched (verified) and kept; an archive is fetched once a manifest
        naming it has passed through, and streamed like on the simple API.
        """
        route = wire.parse_target(req.target)
        if route is not None and req.method == "GET":
            try:
                if route.kind is wire.Kind.OBJECT and not self.store.has_object(ObjectId(route.id)):
                    await self.cache.trusted()
                    data = await self.cache.fetcher.get_object(ObjectId(route.id))
                    self.cache.remember_manifest(ObjectId(route.id), data)
                elif route.kind is wire.Kind.FILE and not self.store.has_file(route.id):
                    known = self.cache.by_blake3.get(route.id)
                    if known is not None:
                        return await self._pull_file(writer, req, known, False)
            except P2pkgError as exc:
                log.info("cache: pull-through of %s failed: %s", req.target, exc)
        return await super()._dispatch(req, body, writer, peer)

    async def _pull_file(
        self,
        writer: asyncio.StreamWriter,
        req: wire.RequestHead,
        manifest: FileManifest,
        head_only: bool,
    ) -> bool:
        """Serve an archive not held yet: stream it whole, or a range once it is in."""
        self.cache.stats.misses += 1
        live = self.cache.download(manifest)
        if "range" in req.headers:
            while not live.done:
                await live.wait_beyond(manifest.size)
            if live.error is not None or not self.store.has_file(manifest.blake3):
                return await self._cannot_fetch(writer, manifest, live.error)
            return await super()._file(writer, manifest.blake3, req, head_only)
        return await self._stream(writer, manifest, live, head_only)

    async def _cannot_fetch(
        self, writer: asyncio.StreamWriter, manifest: FileManifest, error: BaseException | None
    ) -> bool:
        """502 Bad Gateway + Retry-After, one line naming why (pip prints the status)."""
        reason = str(error) if error is not None else "the download did not complete"
        line = f"p2pkg cache: cannot fetch {manifest.filename} from any peer: {reason}"
        return await self._simple(
            writer,
            502,
            (line[:1000] + "\n").encode(),
            headers=[("Retry-After", str(RETRY_AFTER)), ("Cache-Control", "no-store")],
        )

    async def _index(
        self, writer: asyncio.StreamWriter, req: wire.RequestHead, head_only: bool
    ) -> bool:
        media = simple.negotiate(req.headers.get("accept"))
        if media is None:
            return await self._simple(writer, 406, b"not acceptable")
        names = await self.cache.project_names()
        body = simple.index_json(names) if media == simple.JSON_V1 else simple.index_html(names)
        return await self._page(writer, body, media, head_only)

    async def _project(
        self, writer: asyncio.StreamWriter, req: wire.RequestHead, raw_name: str, head_only: bool
    ) -> bool:
        name = normalize_name(raw_name)
        if name != raw_name:
            location = f"/simple/{name}/"
            return await self._simple(writer, 301, b"", headers=[("Location", location)])
        media = simple.negotiate(req.headers.get("accept"))
        if media is None:
            return await self._simple(writer, 406, b"not acceptable")
        manifests = await self.cache.project_manifests(name)
        if manifests is None:
            return await self._simple(writer, 404, b"no such project")
        render = simple.project_json if media == simple.JSON_V1 else simple.project_html
        return await self._page(writer, render(name, manifests), media, head_only)

    async def _page(
        self, writer: asyncio.StreamWriter, body: bytes, media: str, head_only: bool
    ) -> bool:
        ctype = media if media != simple.HTML else "text/html; charset=utf-8"
        headers = [("Cache-Control", "max-age=60"), ("Vary", "Accept")]
        return await self._simple(
            writer, 200, body, headers=headers, head_only=head_only, ctype=ctype
        )

    async def _archive(
        self,
        writer: asyncio.StreamWriter,
        req: wire.RequestHead,
        content_id: bytes,
        filename: str,
        head_only: bool,
    ) -> bool:
        metadata = filename.endswith(".metadata")
        archive = filename[: -len(".metadata")] if metadata else filename
        # Serve only what the signed namespace lists: the filename names the
        # project, and the project must list this filename with this content.
        # (An id alone could name any object some peer holds, signed or not.)
        manifest = await self.cache.listed_manifest(content_id, archive)
        if manifest is None:
            return await self._simple(writer, 404, b"no such file in the namespace")
        if metadata:
            if manifest.core_metadata is None:
                return await self._simple(writer, 404, b"no core metadata")
            blob = decode_as(await self.cache.fetcher.get_object(manifest.core_metadata.blob), Blob)
            return await self._simple(
                writer,
                200,
                blob.data,
                head_only=head_only,
                ctype="text/plain; charset=utf-8",
                headers=[("Cache-Control", wire.IMMUTABLE)],
            )
        store = self.store
        if store.has_file(manifest.blake3):
            self.cache.stats.hits += 1
            store.touch(manifest.blake3)
            return await super()._file(
                writer, manifest.blake3, req, head_only, on_sent=self._count_from_cache
            )
        return await self._pull_file(writer, req, manifest, head_only)

    def _count_from_cache(self, n: int) -> None:
        # Per response, not a difference of the server-wide counter: installers
        # send many concurrent (range) requests, and a difference would count
        # every other connection's bytes too.
        self.cache.stats.bytes_from_cache += n

    async def _stream(
        self, writer: asyncio.StreamWriter, manifest: FileManifest, live: _Live, head_only: bool
    ) -> bool:
        # No status line before a peer is actually delivering verified bytes: a
        # 200 followed by nothing reads as tampering to pip ("do not match the
        # hashes") and as a retryable glitch to uv. A download that dies after
        # this point is cut (the installer sees a short body), as it must be.
        await live.wait_beyond(0)
        if live.error is not None and live.prefix == 0:
            return await self._cannot_fetch(writer, manifest, live.error)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(manifest.size)),
            ("Cache-Control", wire.IMMUTABLE),
        ]
        writer.write(self._head(200, headers, True))
        if head_only:
            await writer.drain()
            return True
        loop = asyncio.get_running_loop()
        sent = 0
        fh = None
        try:
            while sent < manifest.size:
                await live.wait_beyond(sent)
                if live.error is not None:
                    writer.transport.abort()  # the installer sees a short body, never bad bytes
                    return False
                if fh is None:
                    fh = self._open_growing(manifest)
                end = manifest.size if live.done else live.prefix
                await writer.drain()
                await loop.sendfile(writer.transport, fh, sent, end - sent)
                self.stats.bytes_sent += end - sent
                sent = end
        finally:
            if fh is not None:
                fh.close()
        return True

    def _open_growing(self, manifest: FileManifest) -> Any:
        # The partial file is renamed into the store when complete; an open
        # descriptor follows the rename, a later open uses the final name.
        for path in (self.cache.partial_path(manifest), self.store.file_path(manifest.blake3)):
            with contextlib.suppress(FileNotFoundError):
                return path.open("rb")
        raise NotFoundError(f"{manifest.filename} vanished while streaming")

    async def _status_page(self, writer: asyncio.StreamWriter, head_only: bool) -> bool:
        st = self.cache.status()
        rows = "\n".join(
            f"<tr><th>{html.escape(k.replace('_', ' '))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in st.items()
        )
        body = (
            "<!DOCTYPE html><html><head><title>p2pkg cache</title>"
            '<meta http-equiv="refresh" content="10"></head><body>'
            "<h1>p2pkg cache</h1><p>pip: <code>pip install --index-url "
            "http://THIS-HOST/simple/ PACKAGE</code></p>"
            f"<table>{rows}</table></body></html>"
        ).encode()
        return await self._simple(
            writer,
            200,
            body,
            head_only=head_only,
            ctype="text/html; charset=utf-8",
            headers=[("Cache-Control", "no-cache")],
        )
