"""One cache namespace's HTTP face: the routes it adds to its (mounted) peer server.

``/simple/`` (PEP 503/691 pages, with PEP 792 project status),
``/files/`` (archives streamed from the verified prefix of a live
download, PEP 658 metadata, PEP 740 provenance; ``410 Gone`` with the
reason for a file the namespace keeps a tombstone of) and the pull-through
wrapper around the peer protocol (``/p2pkg/v1/``). The cache mounts them at
``/ns/NAME/``; its merged index (:mod:`p2pkg.roles.cache_index`) hands each
project to one namespace's :meth:`CacheRoutes.project_page` and
:meth:`CacheRoutes.archive`.
What the pages show and which downloads run is
:class:`~p2pkg.roles.cache_namespace.CacheNamespace`'s business; this module
only turns requests into calls on it and bytes back.
"""

from __future__ import annotations

import contextlib
import logging
from typing import IO, TYPE_CHECKING

from p2pkg.core import simple
from p2pkg.core.objects import Blob, FileManifest, ObjectId, Project, decode_as, normalize_name
from p2pkg.core.select import project_of
from p2pkg.errors import LocalError, NotFoundError, P2pkgError
from p2pkg.io.http import wire
from p2pkg.io.http.server import Exchange, Handler, PeerServer
from p2pkg.roles.disk import http_status

if TYPE_CHECKING:
    from p2pkg.roles.cache_namespace import CacheNamespace, Live

log = logging.getLogger(__name__)

RETRY_AFTER = 10  # seconds an installer is told to wait when no peer can deliver


class SimplePaths:
    """Which simple-API page a path names: ``/``, ``/simple[/]``, ``/simple/<p>/``, ``/files/``.

    Shared by one namespace's routes and the merged index; they differ in
    what the index, a project and a file are (and only the merged index
    has a status page).
    """

    async def _top_page(self, ex: Exchange) -> bool:
        """``/`` (the status page), ``/simple`` without its slash, else 404."""
        if ex.path == "/":
            return await self._status_page(ex)
        if ex.path == "/simple":
            return await self._index(ex)
        return await ex.reply(404, b"not found")

    async def _simple_page(self, ex: Exchange) -> bool:
        """``/simple/`` (the index) and ``/simple/<project>/``."""
        if ex.path == "/simple/":
            return await self._index(ex)
        parts = ex.path.split("/")
        if len(parts) in (3, 4) and (len(parts) == 3 or not parts[3]):
            return await self._project(ex, parts[2])
        return await ex.reply(404, b"not found")

    async def _files_page(self, ex: Exchange) -> bool:
        """``/files/<archive blake3>/<filename>`` (and its ``.metadata``, ``.provenance``)."""
        parts = ex.path.split("/")
        if len(parts) == 4 and wire.HEX64.match(parts[2]):
            return await self.archive(ex, bytes.fromhex(parts[2]), parts[3])
        return await ex.reply(404, b"not found")

    async def _status_page(self, ex: Exchange) -> bool:
        return await ex.reply(404, b"not found")

    async def _index(self, ex: Exchange) -> bool:
        raise NotImplementedError

    async def _project(self, ex: Exchange, raw_name: str) -> bool:
        raise NotImplementedError

    async def archive(self, ex: Exchange, content_id: bytes, filename: str) -> bool:
        raise NotImplementedError


class CacheRoutes(SimplePaths):
    """Request handlers for one cache namespace, installed on its server's route table."""

    def __init__(self, cache: CacheNamespace) -> None:
        self.cache = cache

    def install(self, server: PeerServer) -> None:
        server.route("/", self.guarded(self._top_page))
        server.route("/simple/", self.guarded(self._simple_page))
        server.route("/files/", self.guarded(self._files_page))
        server.route(wire.PREFIX + "/", self._peer_route)

    def guarded(self, handler: Handler) -> Handler:
        """A simple-API route: GET/HEAD only; namespace errors become 404 / 502."""

        async def guarded(ex: Exchange) -> bool:
            if ex.req.method not in ("GET", "HEAD"):
                return await ex.reply(405, b"method not allowed", keep=False)
            try:
                return await handler(ex)
            except NotFoundError:
                return await ex.reply(404, b"not found")
            except LocalError as exc:  # this machine's disk (a commit), not upstream
                self.cache.disk.note(exc)
                log.warning("cache: %s: %s", ex.path, exc)
                return await ex.reply(http_status(exc), f"p2pkg cache: {exc}".encode()[:500])
            except P2pkgError as exc:
                log.warning("cache: %s: %s", ex.path, exc)
                return await ex.reply(502, f"upstream: {exc}".encode()[:500])

        return guarded

    async def _peer_route(self, ex: Exchange) -> bool:
        """The peer protocol, pulling through what the cache does not hold yet.

        A client that found this cache on the LAN may know no other peer: objects
        are fetched (verified) and kept; an archive is fetched once a manifest
        naming it has passed through, and streamed like on the simple API.
        Another cache's requests (``only-if-cached``) get only what is held.
        """
        route = wire.parse_target(ex.req.target)
        if route is None or wire.only_if_cached(ex.req.headers):
            return await self.cache.server.peer_protocol(ex)
        known = None
        try:
            if route.kind is wire.Kind.OBJECT and ex.req.method == "GET":
                await self._pull_object(ObjectId(route.id))
            elif route.kind is wire.Kind.OBJECT_BATCH and len(ex.body) % 32 == 0:
                for i in range(0, min(len(ex.body), 32 * wire.MAX_OBJECT_BATCH), 32):
                    held = self.cache.store.find_object(ObjectId(ex.body[i : i + 32]))
                    if held is not None:
                        self.cache.note_signed(held)
            elif (
                route.kind is wire.Kind.FILE
                and ex.req.method == "GET"
                and not self.cache.store.has_file(route.id)
            ):
                known = self.cache.by_blake3.get(route.id)
        except P2pkgError as exc:
            if isinstance(exc, LocalError):
                self.cache.disk.note(exc)
            log.info("cache: pull-through of %s failed: %s", ex.req.target, exc)
        if known is not None:
            return await self._pull_file(ex, known)
        return await self.cache.server.peer_protocol(ex)

    async def _pull_object(self, oid: ObjectId) -> None:
        """Make ``oid`` held if it is signed (fetched, verified), and note what it points to.

        Only ids under the trusted root are pulled through: an id alone could
        name any object some peer holds, signed or not, and the cache would
        keep it and pass it on. Anything else is left to the peer protocol's 404.
        """
        data = self.cache.store.find_object(oid)
        if data is None:
            await self.cache.trusted()
            if not self.cache.may_pull(oid):
                return
            data = await self.cache.session.get_object(oid)
        self.cache.note_signed(data)

    async def _pull_file(self, ex: Exchange, manifest: FileManifest) -> bool:
        """Serve an archive not held yet: stream it whole, or a range once it is in."""
        self.cache.stats.misses += 1
        live = self.cache.download(manifest)
        if "range" in ex.req.headers:
            return await self._range_of_arriving(ex, manifest, live)
        return await self._stream(ex, manifest, live)

    async def _range_of_arriving(self, ex: Exchange, manifest: FileManifest, live: Live) -> bool:
        """A Range of an archive still arriving: answered as soon as that range is verified.

        Installers read a wheel's metadata by Range (uv reads the zip's central
        directory at the end) long before the whole file is in: the covering
        chunks are fetched from a peer and checked on their own, while the
        whole download goes on. If that fails, the answer waits for the file.
        """
        try:
            rng = wire.parse_range(ex.req.headers.get("range"), manifest.size)
        except wire.Unsatisfiable:
            rng = None  # the held-file path answers 416 once the file is in
        if rng is not None and not ex.head_only:
            start, end = rng
            try:
                data = await self.cache.session.downloader.fetch_range(manifest, start, end)
            except P2pkgError as exc:
                log.info("cache: early range of %s failed, waiting: %s", manifest.filename, exc)
            else:
                headers = [
                    ("Content-Range", f"bytes {start}-{end - 1}/{manifest.size}"),
                    ("Accept-Ranges", "bytes"),
                    ("Cache-Control", wire.IMMUTABLE),
                ]
                return await ex.reply(206, data, headers=headers, ctype="application/octet-stream")
        while not live.done:
            await live.wait_beyond(manifest.size)
        if live.error is not None or not self.cache.store.has_file(manifest.blake3):
            return await self._cannot_fetch(ex, manifest, live.error)
        return await ex.send_file(manifest.blake3)

    async def _cannot_fetch(
        self, ex: Exchange, manifest: FileManifest, error: BaseException | None
    ) -> bool:
        """502 Bad Gateway + Retry-After, one line naming why (pip prints the status).

        When the cache's own disk failed (full), 507 Insufficient Storage (500
        for other local failures): the peers were fine, and the installer's
        message should say where the trouble is.
        """
        reason = str(error) if error is not None else "the download did not complete"
        status = 502
        line = f"p2pkg cache: cannot fetch {manifest.filename} from any peer: {reason}"
        if isinstance(error, LocalError):
            status = http_status(error)
            line = f"p2pkg cache: cannot store {manifest.filename}: {reason}"
        return await ex.reply(
            status,
            (line[:1000] + "\n").encode(),
            headers=[("Retry-After", str(RETRY_AFTER)), ("Cache-Control", "no-store")],
        )

    async def _index(self, ex: Exchange) -> bool:
        media = simple.negotiate(ex.req.headers.get("accept"))
        if media is None:
            return await ex.reply(406, b"not acceptable")
        names = await self.cache.project_names()
        body = simple.index_json(names) if media == simple.JSON_V1 else simple.index_html(names)
        return await self._page(ex, body, media)

    async def _project(self, ex: Exchange, raw_name: str) -> bool:
        name = normalize_name(raw_name)
        if name != raw_name:
            where = f"{ex.site.base_path}/simple/{name}/"
            return await ex.reply(301, b"", headers=[("Location", where)])
        return await self.project_page(ex, name)

    async def project_page(self, ex: Exchange, name: str) -> bool:
        """``name``'s page (normalized) from this namespace, labelled with its name."""
        media = simple.negotiate(ex.req.headers.get("accept"))
        if media is None:
            return await ex.reply(406, b"not acceptable")
        manifests = await self.cache.project_manifests(name)
        project = await self.cache.project(name)  # remembered: no second walk
        if manifests is None or project is None:
            return await ex.reply(404, b"no such project")
        render = simple.project_json if media == simple.JSON_V1 else simple.project_html
        body = render(name, manifests, project.status, project.status_reason, self.cache.name)
        trusted = self.cache.session.trusted
        if trusted is not None and project.status != "quarantined":
            # The installer's next requests (this release's metadata and archive,
            # its dependencies' pages): fetched while this answer travels.
            self.cache.page_served(name, manifests, trusted)
        return await self._page(ex, body, media, [(wire.NAMESPACE_HEADER, self.cache.name)])

    async def _page(
        self, ex: Exchange, body: bytes, media: str, extra: list[tuple[str, str]] | None = None
    ) -> bool:
        ctype = media if media != simple.HTML else "text/html; charset=utf-8"
        headers = [("Cache-Control", "max-age=60"), ("Vary", "Accept"), *(extra or [])]
        return await ex.reply(200, body, headers=headers, ctype=ctype)

    async def archive(self, ex: Exchange, content_id: bytes, filename: str) -> bool:
        """``/files/<content id>/<filename>[.metadata|.provenance]`` from this namespace."""
        if filename.endswith(".metadata"):
            archive, extra = filename[: -len(".metadata")], "metadata"
        elif filename.endswith(".provenance"):
            archive, extra = filename[: -len(".provenance")], "provenance"
        else:
            archive, extra = filename, ""
        # Serve only what the signed namespace lists: the filename names the
        # project, and the project must list this filename with this content.
        # (An id alone could name any object some peer holds, signed or not.)
        manifest = await self.cache.listed_manifest(content_id, archive)
        if manifest is None:
            return await self._not_listed(ex, archive)
        # Listed, so the filename names its project (resolved just now: held).
        project = await self.cache.project(project_of(archive) or archive)
        if project is not None and project.status == "quarantined":
            # PEP 792: no file of a quarantined project is offered for download.
            return await ex.reply(403, _reason_line("quarantined", project.status_reason))
        if extra == "metadata":
            if manifest.core_metadata is None:
                return await ex.reply(404, b"no core metadata")
            return await self._blob(ex, manifest.core_metadata.blob, "text/plain; charset=utf-8")
        if extra == "provenance":
            if manifest.provenance is None:
                return await ex.reply(404, b"no provenance")
            return await self._blob(ex, manifest.provenance.blob, simple.PROVENANCE_TYPE)
        if self.cache.store.has_file(manifest.blake3):
            self.cache.stats.hits += 1
            try:
                self.cache.store.touch(manifest.blake3)
            except LocalError as exc:
                # The LRU order is a hint; serving what is held must not need
                # a write (a full disk would stop a cache serving anything).
                self.cache.disk.note(exc)
            return await ex.send_file(manifest.blake3, on_sent=self._count_from_cache)
        return await self._pull_file(ex, manifest)

    async def _blob(self, ex: Exchange, oid: ObjectId, ctype: str) -> bool:
        """A signed blob (core metadata, provenance), immutable like the file it describes."""
        blob = decode_as(await self.cache.session.get_object(oid), Blob)
        return await ex.reply(
            200, blob.data, ctype=ctype, headers=[("Cache-Control", wire.IMMUTABLE)]
        )

    async def _not_listed(self, ex: Exchange, filename: str) -> bool:
        """404, or 410 Gone with the reason when the project keeps a tombstone of it."""
        name = project_of(filename)
        project: Project | None = await self.cache.project(name) if name else None
        for gone in project.tombstones if project is not None else ():
            if gone.filename == filename:
                return await ex.reply(410, _reason_line("removed", gone.reason))
        return await ex.reply(404, b"no such file in the namespace")

    def _count_from_cache(self, n: int) -> None:
        # Per response, not a difference of the server-wide counter: installers
        # send many concurrent (range) requests, and a difference would count
        # every other connection's bytes too.
        self.cache.stats.bytes_from_cache += n

    async def _stream(self, ex: Exchange, manifest: FileManifest, live: Live) -> bool:
        # No status line before a peer is actually delivering verified bytes: a
        # 200 followed by nothing reads as tampering to pip ("do not match the
        # hashes") and as a retryable glitch to uv. A download that dies after
        # this point is cut (the installer sees a short body), as it must be.
        await live.wait_beyond(0)
        if live.error is not None and live.prefix == 0:
            return await self._cannot_fetch(ex, manifest, live.error)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(manifest.size)),
            ("Cache-Control", wire.IMMUTABLE),
        ]
        ex.write_head(200, headers)
        if ex.head_only:
            await ex.drain()
            return True
        sent = 0
        with contextlib.ExitStack() as files:
            fh: IO[bytes] | None = None
            while sent < manifest.size:
                await live.wait_beyond(sent)
                if live.error is not None:
                    ex.abort()  # the installer sees a short body, never bad bytes
                    return False
                if fh is None:
                    fh = self._open_growing(manifest)
                    if fh is None:
                        log.warning("cache: %s vanished while streaming", manifest.filename)
                        ex.abort()
                        return False
                    files.enter_context(fh)
                end = manifest.size if live.done else live.prefix
                await ex.sendfile(fh, sent, end - sent)
                sent = end
        self.cache.counts.count(manifest.blake3)  # a whole download, streamed as it arrived
        return True

    def _open_growing(self, manifest: FileManifest) -> IO[bytes] | None:
        # The partial file is renamed into the store when complete; an open
        # descriptor follows the rename, a later open uses the final name.
        paths = (
            self.cache.store.partial_path(manifest.blake3),
            self.cache.store.file_path(manifest.blake3),
        )
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                return path.open("rb")
        return None


def _reason_line(what: str, reason: str | None) -> bytes:
    """A one-line body naming why (an installer prints it)."""
    line = f"p2pkg cache: {what}" + (f": {reason}" if reason else "")
    return (" ".join(line.split())[:1000] + "\n").encode()
