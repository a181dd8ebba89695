"""Read-ahead for a cache: fetch a project's dependency closure when its page is served.

See :mod:`p2pkg.core.readahead` for what is guessed and why. Here the
guesses are fetched in the cache's task group, bounded three ways: at most
``projects`` projects walked from one page (breadth first), ``walkers``
projects resolved at once and ``downloads`` archives fetched at once; and
under a size cap an archive is fetched ahead only if it fits beside what
is held (a guess never evicts what installers fetched). A project is
walked once per root version; a failure ends its branch and is logged,
never reaching the installer whose page started the walk. A dependency is
looked up in the namespace the cache's search order chooses for it, as the
installer's request for its page will be.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from p2pkg.core.objects import Blob, FileManifest, Node, ObjectId, decode_as
from p2pkg.core.readahead import dependencies, likely_archives, metadata_source, newest_release
from p2pkg.errors import LocalError, P2pkgError

if TYPE_CHECKING:
    from p2pkg.roles.cache import Cache
    from p2pkg.roles.cache_namespace import CacheNamespace

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReadAheadConfig:
    projects: int = 64  # projects walked from one page served (0: read-ahead off)
    walkers: int = 8  # projects resolved at once
    downloads: int = 4  # archives fetched at once


@dataclass
class ReadAheadStats:
    projects: int = 0  # projects resolved ahead of the installer
    archives: int = 0  # archive downloads started ahead of it


class ReadAhead:
    """Walks dependency closures for a :class:`~p2pkg.roles.cache.Cache`."""

    def __init__(self, cache: Cache, config: ReadAheadConfig = ReadAheadConfig()) -> None:
        self.cache = cache
        self.config = config
        self.stats = ReadAheadStats()
        self._seen: set[str] = set()
        self._versions: dict[str, int] = {}  # namespace -> the root version _seen belongs to
        self._walkers = anyio.CapacityLimiter(max(1, config.walkers))
        self._downloads = anyio.CapacityLimiter(max(1, config.downloads))
        self._env: dict[str, str] | None = None

    def page_served(
        self,
        namespace: str,
        name: str,
        manifests: Sequence[FileManifest],
        version: int,
        tg: TaskGroup,
        tree: ObjectId | None = None,
    ) -> None:
        """``name``'s page went out of ``namespace`` under root ``version``: walk its closure.

        ``tree``: the root's tree id; on the first page of a root version the
        tree's interior nodes (the root node and its up to 256 children) are
        fetched in one batch, so every later cold page walks from a leaf.
        """
        if self.config.projects <= 0:
            return
        ns = self.cache.namespaces[namespace]
        if version != self._versions.get(namespace):  # new releases may need other dependencies
            self._versions[namespace] = version
            self._seen.clear()
            if tree is not None:
                tg.start_soon(self._nodes, ns, tree)
        if name in self._seen:
            return
        self._seen.add(name)
        budget = [self.config.projects - 1]
        tg.start_soon(self._visit, ns, name, list(manifests), budget, tg)

    async def _visit(
        self,
        ns: CacheNamespace | None,
        name: str,
        manifests: list[FileManifest] | None,
        budget: list[int],
        tg: TaskGroup,
    ) -> None:
        try:
            async with self._walkers:
                if ns is None:
                    ns = await self.cache.serving(name, record=False)
                    if ns is None:
                        return  # no namespace may serve it: the installer will get a 404
                if manifests is None:
                    manifests = await ns.project_manifests(name) or []
                    self.stats.projects += 1
                release = newest_release(manifests)
                likely = likely_archives(release)  # this interpreter's tags (cached)
                for archive in likely:
                    if not ns.store.has_file(archive.blake3):
                        tg.start_soon(self._download, ns, archive)
                source = metadata_source(release, likely)
                if source is None or source.core_metadata is None:
                    return
                raw = await ns.session.get_object(source.core_metadata.blob)
                wanted = dependencies(decode_as(raw, Blob).data, self._environment())
        except P2pkgError as exc:
            if isinstance(exc, LocalError) and ns is not None:
                ns.disk.note(exc)
            log.info("read-ahead of %s stopped: %s", name, exc)
            return
        for dep in wanted:
            if dep in self._seen or budget[0] <= 0:
                continue
            self._seen.add(dep)
            budget[0] -= 1
            tg.start_soon(self._visit, None, dep, None, budget, tg)

    async def _nodes(self, ns: CacheNamespace, tree: ObjectId) -> None:
        """The tree's two node levels (at PyPI's size, 257 objects of ~8 KB)."""
        try:
            root = decode_as(await ns.session.get_object(tree), Node)
            await ns.session.get_objects(e.child for e in root.children)
        except P2pkgError as exc:
            log.info("read-ahead of the tree's nodes stopped: %s", exc)

    async def _download(self, ns: CacheNamespace, manifest: FileManifest) -> None:
        async with self._downloads:
            if ns.store.has_file(manifest.blake3):
                return
            cap = ns.config.max_size
            if cap is not None and ns.store.stats()[1] + manifest.size > cap:
                return  # a guess never evicts what installers fetched
            self.stats.archives += 1
            # The cache's own live download: an installer asking meanwhile follows it.
            await ns.download(manifest).wait_done()

    def _environment(self) -> dict[str, str]:
        if self._env is None:
            from packaging.markers import default_environment

            self._env = {k: str(v) for k, v in default_environment().items()}
        return self._env


__all__ = ["ReadAhead", "ReadAheadConfig", "ReadAheadStats"]
