"""A session: the parts a client, a seed and a cache compose to use the network.

::

    PeerLinks ──┬── RootFollower   trusted root: local chain, refresh, persistence
    (book +     ├── ObjectSource   verified objects: store, LRU, batches, coalescing
     a Link     └── FileDownloader archives: the pure scheduler over the links
     per peer)
                    Session        names -> manifests (core.walk), files -> paths

Each part has one job and talks to peers only through
:class:`~p2pkg.core.link.Link`\\ s, so tests and netsim drive the real parts
over fake links and fake time (``link_factory``, ``monotonic``, ``clock``).
Everything a peer hands over is checked against its id before it is used
or stored; a peer that sends bad bytes is banned in the shared book, and
every part stops asking it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from p2pkg.core.link import Link
from p2pkg.core.objects import FileManifest, ObjectId, Project, decode_as
from p2pkg.core.peers import PeerBook
from p2pkg.core.schedule import ScheduleConfig
from p2pkg.core.select import Spec, candidates, parse_spec, python_allows
from p2pkg.core.trust import TrustedRoot
from p2pkg.core.walk import ListWalk, ResolveWalk, run_async
from p2pkg.errors import NotFoundError
from p2pkg.io.http.client import ClientConfig
from p2pkg.io.store import Store
from p2pkg.roles.download import FetchStats, FileDownloader, Progress
from p2pkg.roles.follow import RootFollower, open_root
from p2pkg.roles.links import Peer, PeerLinks
from p2pkg.roles.objects import ObjectSource


class Session:
    """Peers, trust state and an optional local store, shared by many fetches.

    ``persist_roots`` and ``commit_objects`` are the policies of the parts
    (see :class:`RootFollower` and :class:`ObjectSource`): a seed turns
    both off, because it records a root and its objects bottom-up itself.
    """

    def __init__(
        self,
        pinned: frozenset[bytes],
        peers: Iterable[str | Peer],
        store: Store | None = None,
        *,
        client_config: ClientConfig = ClientConfig(),  # noqa: B008 - frozen
        schedule_config: ScheduleConfig = ScheduleConfig(),  # noqa: B008 - frozen
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        book: PeerBook | None = None,
        link_factory: Callable[[str], Link] | None = None,
        persist_roots: bool = True,
        commit_objects: bool = True,
        learn_mirrors: bool = True,
        paranoid: bool = False,
    ) -> None:
        self.store = store
        self.links = PeerLinks(
            peers,
            book=book,
            link_factory=link_factory,
            client_config=client_config,
            monotonic=monotonic,
        )
        self.follower = RootFollower(
            pinned,
            self.links,
            store,
            persist=persist_roots,
            clock=clock,
            learn_mirrors=learn_mirrors,
        )
        self.objects = ObjectSource(self.links, store, commit=commit_objects)
        self.downloader = FileDownloader(
            self.links.link,
            self.links.book,
            store,
            schedule_config=schedule_config,
            clock=monotonic,
            paranoid=paranoid,
        )
        #: Download a resolved manifest's file (:meth:`FileDownloader.fetch_file`).
        self.fetch_file = self.downloader.fetch_file

    # ------------------------------------------------------------------ parts

    @property
    def pinned(self) -> frozenset[bytes]:
        return self.follower.pinned

    @property
    def book(self) -> PeerBook:
        return self.links.book

    @property
    def monotonic(self) -> Callable[[], float]:
        return self.links.monotonic

    @property
    def peers(self) -> list[Peer]:
        """Every known peer, best tier first."""
        return self.links.peers

    @property
    def banned(self) -> set[str]:
        """Peers banned now (for data that failed verification)."""
        return self.links.banned

    def add_peer(self, peer: str | Peer) -> None:
        """Add a peer; a peer already known keeps the better (lower) tier."""
        self.links.add(peer)

    def link(self, url: str) -> Link:
        return self.links.link(url)

    def close(self) -> None:
        self.links.close()

    # ------------------------------------------------------------------ roots

    @property
    def trusted(self) -> TrustedRoot | None:
        return self.follower.trusted

    @property
    def unreachable(self) -> list[str]:
        return self.follower.unreachable

    async def refresh_root(self) -> TrustedRoot:
        """Fetch and verify the newest root (see :meth:`RootFollower.refresh`)."""
        return await self.follower.refresh()

    async def _root(self) -> TrustedRoot:
        return self.follower.trusted or await self.follower.refresh()

    # ------------------------------------------------------------------ objects

    async def get_object(self, oid: ObjectId) -> bytes:
        """Canonical bytes of object ``oid`` (store, memory, else a peer; verified)."""
        return await self.objects.get(oid)

    async def get_objects(self, oids: Iterable[ObjectId]) -> dict[ObjectId, bytes]:
        """Several objects, one ``POST /objects`` batch per peer (docs/protocol.md §6.2)."""
        return await self.objects.get_many(oids)

    async def manifest(self, oid: ObjectId) -> FileManifest:
        return decode_as(await self.objects.get(oid), FileManifest)

    # ------------------------------------------------------------------ names

    async def projects(self, names: Iterable[str]) -> dict[str, Project | None]:
        """Resolve normalized names through the trusted tree, one batch per level (§3.5)."""
        trusted = await self._root()
        walk = ResolveWalk(trusted.root.tree, names)
        resolved = await run_async(walk, self.objects.get_many)
        return {n: f.project if f is not None else None for n, f in resolved.projects.items()}

    async def project(self, name: str) -> Project | None:
        """One project through the trusted tree, or None if the namespace lacks it."""
        return (await self.projects([name])).get(name)

    async def project_names(self, limit: int | None = None) -> list[str]:
        """Every project name the tree lists, in tree order (at most ``limit``)."""
        trusted = await self._root()
        listing = await run_async(ListWalk(trusted.root.tree), self.objects.get_many)
        names = [e.name for e in listing.projects]
        return names if limit is None else names[:limit]

    async def resolve_many(self, specs: Sequence[str]) -> list[FileManifest]:
        """Resolve many specs together: one batch request per tree level, one for manifests."""
        parsed = [parse_spec(s) for s in specs]
        projects = await self.projects(p.name for p in parsed)
        first: dict[str, ObjectId] = {}
        for text, spec in zip(specs, parsed, strict=True):
            project = projects.get(spec.name)
            if project is None:
                raise NotFoundError(f"no project {spec.name!r} in the namespace")
            best = next(iter(candidates((f.filename for f in project.files), spec)), None)
            if best is not None:
                oid = project.lookup(best.filename)
                assert oid is not None
                first[text] = oid
        manifests = await self.objects.get_many(first.values())
        out = []
        for text, spec in zip(specs, parsed, strict=True):
            m = decode_as(manifests[first[text]], FileManifest) if text in first else None
            if m is None or not _acceptable(m, spec):
                m = await self.resolve(text)  # the best candidate was yanked/excluded
            out.append(m)
        return out

    async def resolve(self, spec_text: str, filename: str | None = None) -> FileManifest:
        """The manifest of the file ``spec_text`` (and ``filename``) means."""
        spec = parse_spec(spec_text)
        project = await self.project(spec.name)
        if project is None:
            raise NotFoundError(f"no project {spec.name!r} in the namespace")
        if filename is not None:
            oid = project.lookup(filename)
            if oid is None:
                raise NotFoundError(f"project {spec.name!r} has no file {filename!r}")
            return await self.manifest(oid)
        for cand in candidates((f.filename for f in project.files), spec):
            oid = project.lookup(cand.filename)
            assert oid is not None
            m = await self.manifest(oid)
            if _acceptable(m, spec):
                return m
        raise NotFoundError(f"no file of {spec.name!r} matches {spec_text!r} for this interpreter")

    # ------------------------------------------------------------------ files

    async def fetch(
        self,
        spec: str,
        dest: Path | None,
        *,
        filename: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[Path, FetchStats]:
        """Resolve ``spec`` and download its file into ``dest`` (None: the store)."""
        manifest = await self.resolve(spec, filename)
        return await self.fetch_file(manifest, dest, progress=progress)


def _acceptable(m: FileManifest, spec: Spec) -> bool:
    """PEP 592 (yanked only when pinned) and Requires-Python for this interpreter."""
    python = ".".join(str(v) for v in sys.version_info[:3])
    if m.yanked is not None and not spec.pinned:
        return False
    return python_allows(m.requires_python, python)


__all__ = ["FetchStats", "Peer", "Progress", "Session", "open_root"]
