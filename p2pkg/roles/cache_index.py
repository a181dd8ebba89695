"""The cache's merged face: ``/``, ``/simple/``, ``/files/`` and ``/p2pkg/v1/``.

Installers see one index. Each project page and each file request is
handed to the one namespace the search policy chooses for that project
(:meth:`~p2pkg.roles.cache.Cache.serving`), through that namespace's own
routes (:class:`~p2pkg.roles.cache_http.CacheRoutes`) — so a page lists
files of one namespace only, and a file URL is answered only from the
namespace that serves its project now. The peer protocol at the top level
is the first namespace's; the others are at ``/ns/NAME/p2pkg/v1/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pkg.core import simple
from p2pkg.core.objects import normalize_name
from p2pkg.core.select import project_of
from p2pkg.io.http.server import Exchange, PeerServer
from p2pkg.roles import role_pages
from p2pkg.roles.cache_http import SimplePaths

if TYPE_CHECKING:
    from p2pkg.roles.cache import Cache


class MergedRoutes(SimplePaths):
    """Request handlers of the merged index, installed on the cache's server."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def install(self, server: PeerServer) -> None:
        guarded = self.cache.primary.routes.guarded
        server.route("/", guarded(self._top_page))
        server.route("/simple/", guarded(self._simple_page))
        server.route("/files/", guarded(self._files_page))
        server.front(self.cache.primary.server)  # /p2pkg/v1/: the first namespace's

    async def _index(self, ex: Exchange) -> bool:
        media = simple.negotiate(ex.req.headers.get("accept"))
        if media is None:
            return await ex.reply(406, b"not acceptable")
        names = await self.cache.merged_names()
        body = simple.index_json(names) if media == simple.JSON_V1 else simple.index_html(names)
        ctype = media if media != simple.HTML else "text/html; charset=utf-8"
        headers = [("Cache-Control", "max-age=60"), ("Vary", "Accept")]
        return await ex.reply(200, body, headers=headers, ctype=ctype)

    async def _project(self, ex: Exchange, raw_name: str) -> bool:
        name = normalize_name(raw_name)
        if name != raw_name:
            return await ex.reply(301, b"", headers=[("Location", f"/simple/{name}/")])
        ns = await self.cache.serving(name)
        if ns is None:
            return await ex.reply(404, self._absent(name))
        return await ns.routes.project_page(ex.within("", ns.server), name)

    async def archive(self, ex: Exchange, content_id: bytes, filename: str) -> bool:
        """A file, from the namespace that serves its project (by the filename) now."""
        archive = filename
        for extra in (".metadata", ".provenance"):
            archive = archive.removesuffix(extra)
        project = project_of(archive)
        ns = await self.cache.serving(project) if project else None
        if ns is None:
            return await ex.reply(404, b"no such file in the namespaces served here")
        return await ns.routes.archive(ex.within("", ns.server), content_id, filename)

    def _absent(self, name: str) -> bytes:
        """Why a project is not served: a one-line body (pip prints only the status)."""
        claimer = self.cache.policy.claimer(name)
        if claimer is not None:
            line = f"p2pkg cache: {name} is claimed by namespace {claimer!r}, which lacks it"
        else:
            order = ", ".join(self.cache.policy.candidates(name))
            line = f"p2pkg cache: no project {name} in {order}"
        return (line[:1000] + "\n").encode()

    async def _status_page(self, ex: Exchange) -> bool:
        host = ex.req.headers.get("host") or "HOST:PORT"
        return await role_pages.reply(ex, role_pages.cache_page(self.cache, host))


__all__ = ["MergedRoutes"]
