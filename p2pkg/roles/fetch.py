"""The fetch engine: trusted root, verified objects, name resolution, file downloads.

A :class:`Fetcher` composes the parts a client, a seed and a cache share:
the :class:`~p2pkg.core.peers.PeerBook` (tiers, bans, measured rates), one
:class:`~p2pkg.core.link.Link` per peer (HTTP unless a test or netsim
passes ``link_factory``), the trust rules of :mod:`p2pkg.core.trust` for
roots, a bounded cache of verified objects, and the
:class:`~p2pkg.roles.download.FileDownloader` for archives. Everything a
peer hands over is checked against its id before it is used or stored.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pkg.config import LIMITS
from p2pkg.core.link import Link
from p2pkg.core.objects import (
    TREE_LEVELS,
    FileManifest,
    Leaf,
    Node,
    ObjectId,
    Project,
    decode_as,
    decompress,
    name_hash,
    open_object,
)
from p2pkg.core.peers import PeerBook, Tier
from p2pkg.core.root import decode_signed_root
from p2pkg.core.schedule import ScheduleConfig
from p2pkg.core.select import Spec, candidates, parse_spec, python_allows
from p2pkg.core.trust import TrustedRoot, bootstrap, check_expiry, trust_chain, update, update_chain
from p2pkg.errors import (
    DecodeError,
    FetchError,
    IntegrityError,
    NotFoundError,
    PeerError,
    ProtocolError,
    SignatureError,
    TrustError,
)
from p2pkg.io.http import wire
from p2pkg.io.http.client import ClientConfig
from p2pkg.io.http.link import HttpLink
from p2pkg.io.store import Store
from p2pkg.roles.download import FetchStats, FileDownloader, Progress

log = logging.getLogger(__name__)

MAX_CHAIN_WALK = 1000
OBJECT_CACHE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer's base URL and its locality tier (LAN, configured / mirror list, DHT)."""

    url: str
    tier: int = Tier.MIRROR


class Fetcher:
    """Peers, trust state and an optional local store, shared by many fetches."""

    def __init__(
        self,
        pinned: frozenset[bytes],
        peers: Sequence[str | Peer],
        store: Store | None = None,
        *,
        client_config: ClientConfig = ClientConfig(),  # noqa: B008 - frozen
        schedule_config: ScheduleConfig = ScheduleConfig(),  # noqa: B008 - frozen
        clock: Callable[[], float] = time.time,
        persist_roots: bool = True,
        book: PeerBook | None = None,
        link_factory: Callable[[str], Link] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not pinned:
            raise TrustError("at least one trusted key (--trust) is needed")
        self.pinned = pinned
        self.store = store
        self.client_config = client_config
        self.clock = clock  # wall clock: root expiry
        self.monotonic = monotonic  # intervals: rates, bans, back-off
        self.book = book if book is not None else PeerBook()
        for p in peers:
            peer = p if isinstance(p, Peer) else Peer(p)
            self.book.add(peer.url, Tier(peer.tier))
        self._link_factory = link_factory or (lambda url: HttpLink(url, client_config))
        self._links: dict[str, Link] = {}
        self.downloader = FileDownloader(
            self.link, self.book, store, schedule_config=schedule_config, clock=monotonic
        )
        self.trusted: TrustedRoot | None = None
        # A seed serves its store: it records a root only once everything under
        # it is synced, so it turns this off and commits the root itself.
        self.persist_roots = persist_roots
        # Why the last refresh got no root at all (empty when some peer answered).
        self.unreachable: list[str] = []
        # Verified objects, so a batch of fetches resolves shared nodes once.
        self._cache: OrderedDict[ObjectId, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._nodes: dict[ObjectId, Node] = {}

    def link(self, url: str) -> Link:
        """The link to peer ``url`` (made on first use)."""
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = self._link_factory(url)
        return link

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

    def add_peer(self, peer: str | Peer) -> None:
        """Add a peer; a peer already known keeps the better (lower) tier."""
        p = peer if isinstance(peer, Peer) else Peer(peer)
        self.book.add(p.url, Tier(p.tier))

    @property
    def peers(self) -> list[Peer]:
        """Every known peer, best tier first."""
        return [Peer(r.url, r.tier) for r in sorted(self.book, key=lambda r: r.tier)]

    @property
    def banned(self) -> set[str]:
        """Peers banned now (for data that failed verification)."""
        return set(self.book.banned(self.monotonic()))

    def _ban(self, url: str, reason: str) -> None:
        log.warning("banning peer %s: %s", url, reason)
        self.book.ban(url, reason, self.monotonic())

    def _live_peers(self) -> list[Peer]:
        return [Peer(r.url, r.tier) for r in self.book.live(self.monotonic())]

    # ------------------------------------------------------------------ roots

    def _local_trusted(self) -> TrustedRoot | None:
        if self.trusted is not None:
            return self.trusted
        if self.store is None:
            return None
        versions = self.store.root_versions()
        if not versions:
            return None
        chain = [self.store.root_at(v) for v in versions]
        try:
            return trust_chain(self.pinned, chain, float("-inf"))
        except TrustError as exc:
            log.warning("local store's roots are not trusted by the pinned keys: %s", exc)
            return None

    async def _get_root_bytes(self, peer: Peer, version: int | None = None) -> bytes:
        frame = await self.link(peer.url).root(version)
        try:
            return open_root(frame)
        except DecodeError as exc:
            raise ProtocolError(peer.url, f"malformed root: {exc}") from None

    async def _walk_chain(self, peer: Peer, first: int, last: int) -> list[bytes]:
        if last - first > MAX_CHAIN_WALK:
            raise FetchError(f"root chain {first}..{last} is longer than {MAX_CHAIN_WALK}")
        return [await self._get_root_bytes(peer, v) for v in range(first, last)]

    async def refresh_root(self) -> TrustedRoot:
        """Ask every peer for its latest root; trust the newest one the rules accept."""
        base = self._local_trusted()
        peers = self._live_peers()
        results = await asyncio.gather(
            *(self._get_root_bytes(p) for p in peers), return_exceptions=True
        )
        offers: list[tuple[int, bytes, Peer]] = []
        problems: list[str] = []
        for peer, res in zip(peers, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, PeerError):
                    raise res
                log.info("no root from %s: %s", peer.url, res)
                problems.append(str(res))
                continue
            offers.append((decode_signed_root(res)[1].version, res, peer))
        offers.sort(key=lambda o: -o[0])
        self.unreachable = [] if offers else problems
        now = self.clock()
        for version, data, peer in offers:
            if base is not None and version <= base.version:
                if version < base.version:
                    log.warning("peer %s serves old root version %d (rollback?)", peer.url, version)
                continue
            try:
                accepted = await self._accept(base, data, version, peer, now)
            except (TrustError, PeerError, FetchError) as exc:
                log.warning("peer %s: root version %d rejected: %s", peer.url, version, exc)
                problems.append(f"peer {peer.url}: root version {version} rejected: {exc}")
                continue
            self._remember_root(accepted)
            return accepted
        if base is not None:
            trusted = check_expiry(base, now)
            self.trusted = trusted
            return trusted
        detail = "; ".join(problems) or "no peers"
        raise FetchError(f"no peer served a root signed by the trusted key(s): {detail}")

    async def _accept(
        self, base: TrustedRoot | None, data: bytes, version: int, peer: Peer, now: float
    ) -> TrustedRoot:
        if base is None:
            try:
                return bootstrap(self.pinned, data, now)
            except SignatureError:
                # The pinned key may have been rotated away: walk from version 1.
                chain = [*await self._walk_chain(peer, 1, version), data]
                return trust_chain(self.pinned, chain, now)
        try:
            return update(base, data, now)
        except SignatureError:
            chain = [*await self._walk_chain(peer, base.version + 1, version), data]
            return update_chain(base, chain, now)

    def _remember_root(self, trusted: TrustedRoot) -> None:
        self.trusted = trusted
        if self.store is not None and self.persist_roots:
            self.store.commit(root=trusted.signed.encode())

    # ------------------------------------------------------------------ objects

    async def get_object(self, oid: ObjectId, *, keep: bool = True) -> bytes:
        """Canonical bytes of object ``oid``: from the store, else any peer (verified).

        With a store and ``keep``, a fetched object is committed to the store
        at once; a seed passes ``keep=False`` and commits bottom-up itself.
        """
        cached = self._cache.get(oid)
        if cached is not None:
            self._cache.move_to_end(oid)
            return cached
        if self.store is not None and self.store.has_object(oid):
            return self.store.get_object(oid)
        errors = []
        for peer in self._live_peers():
            try:
                data = open_object(await self.link(peer.url).object(oid), oid)
            except (DecodeError, IntegrityError) as exc:
                self._ban(peer.url, f"object {oid.hex()[:16]}: {exc}")
                continue
            except PeerError as exc:
                errors.append(str(exc))
                continue
            if self.store is not None and keep:
                self.store.commit(objects={oid: data})
            self._remember(oid, data)
            return data
        raise FetchError(f"no peer served object {oid.hex()}: {'; '.join(errors) or 'no peers'}")

    async def get_objects(
        self, oids: Iterable[ObjectId], *, keep: bool = True
    ) -> dict[ObjectId, bytes]:
        """Several objects at once (docs/protocol.md §6.2, batch): id -> canonical bytes.

        Asks peers with ``POST /objects`` (up to 1024 ids a request), checks every
        object against its id, and falls back to one GET per object for what no
        batch delivered (static peers cannot answer POST).
        """
        out: dict[ObjectId, bytes] = {}
        want: list[ObjectId] = []
        for oid in dict.fromkeys(oids):
            cached = self._cache.get(oid)
            if cached is not None:
                out[oid] = cached
            elif self.store is not None and self.store.has_object(oid):
                out[oid] = self.store.get_object(oid)
            else:
                want.append(oid)
        for peer in self._live_peers():
            if not want:
                break
            want = await self._batch_from(peer, want, out, keep)
        for oid in want:
            out[oid] = await self.get_object(oid, keep=keep)
        return out

    async def _batch_from(
        self, peer: Peer, want: list[ObjectId], out: dict[ObjectId, bytes], keep: bool = True
    ) -> list[ObjectId]:
        """Fetch what ``peer`` holds of ``want`` into ``out``; return what is still missing."""
        missing: list[ObjectId] = []
        fresh: dict[ObjectId, bytes] = {}
        link = self.link(peer.url)
        for start in range(0, len(want), wire.MAX_OBJECT_BATCH):
            group = want[start : start + wire.MAX_OBJECT_BATCH]
            try:
                frames = await link.objects(group)
            except PeerError as exc:  # e.g. a static server: no POST
                log.info("object batch from %s failed: %s", peer.url, exc)
                return missing + want[start:]
            try:
                for oid, frame in zip(group, frames, strict=True):
                    if not frame:
                        missing.append(oid)
                        continue
                    fresh[oid] = open_object(frame, oid)
            except (DecodeError, IntegrityError) as exc:
                self._ban(peer.url, f"object batch: {exc}")
                return missing + [o for o in want[start:] if o not in fresh]
        if self.store is not None and fresh and keep:
            self.store.commit(objects=fresh)
        for oid, data in fresh.items():
            self._remember(oid, data)
        out.update(fresh)
        return missing

    def _remember(self, oid: ObjectId, data: bytes) -> None:
        self._cache[oid] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > OBJECT_CACHE_BYTES and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    async def _node(self, oid: ObjectId) -> Node:
        # Interior nodes are shared by every lookup: keep them decoded (they are
        # immutable, addressed by hash; at most 257 exist).
        node = self._nodes.get(oid)
        if node is None:
            node = decode_as(await self.get_object(oid), Node)
            if len(self._nodes) >= 4 * 257:  # nodes of older roots: start over
                self._nodes.clear()
            self._nodes[oid] = node
        return node

    async def project(self, name: str) -> Project | None:
        """Resolve a project through the trusted tree (docs/protocol.md §3.5)."""
        trusted = self.trusted or await self.refresh_root()
        h = name_hash(name)
        oid = trusted.root.tree
        for depth in range(TREE_LEVELS):
            child = (await self._node(oid)).child(h[depth])
            if child is None:
                return None
            oid = child
        for entry in decode_as(await self.get_object(oid), Leaf).projects:
            if entry.name == name:
                return decode_as(await self.get_object(entry.project), Project)
        return None

    async def manifest(self, oid: ObjectId) -> FileManifest:
        return decode_as(await self.get_object(oid), FileManifest)

    async def resolve_many(self, specs: Sequence[str]) -> list[FileManifest]:
        """Resolve many specs together, one batch request per tree level."""
        trusted = self.trusted or await self.refresh_root()
        parsed = [parse_spec(s) for s in specs]
        names = list(dict.fromkeys(p.name for p in parsed))
        hashes = {n: name_hash(n) for n in names}
        top = await self._node(trusted.root.tree)
        level1 = {n: top.child(hashes[n][0]) for n in names}
        nodes = await self.get_objects(o for o in level1.values() if o is not None)
        leaf_ids: dict[str, ObjectId | None] = {}
        for n, oid in level1.items():
            leaf_ids[n] = None if oid is None else decode_as(nodes[oid], Node).child(hashes[n][1])
        leaves = await self.get_objects(o for o in leaf_ids.values() if o is not None)
        project_ids: dict[str, ObjectId] = {}
        for n, oid in leaf_ids.items():
            if oid is not None:
                for entry in decode_as(leaves[oid], Leaf).projects:
                    if entry.name == n:
                        project_ids[n] = entry.project
        projects_raw = await self.get_objects(project_ids.values())
        projects = {n: decode_as(projects_raw[oid], Project) for n, oid in project_ids.items()}
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
        manifests = await self.get_objects(first.values())
        out = []
        for text in specs:
            m = decode_as(manifests[first[text]], FileManifest) if text in first else None
            if m is None or not self._acceptable(m, parse_spec(text)):
                m = await self.resolve(text)  # the best candidate was yanked/excluded
            out.append(m)
        return out

    @staticmethod
    def _acceptable(m: FileManifest, spec: Spec) -> bool:
        """PEP 592 (yanked only when pinned) and Requires-Python for this interpreter."""
        python = ".".join(str(v) for v in sys.version_info[:3])
        if m.yanked is not None and not spec.pinned:
            return False
        return python_allows(m.requires_python, python)

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
            if self._acceptable(m, spec):
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
        manifest = await self.resolve(spec, filename)
        return await self.fetch_file(manifest, dest, progress=progress)

    async def fetch_file(
        self,
        manifest: FileManifest,
        dest: Path | None,
        *,
        progress: Progress | None = None,
        sync_dir: bool = True,
        watch: Callable[[int], None] | None = None,
    ) -> tuple[Path, FetchStats]:
        """Download ``manifest``'s file (see :meth:`FileDownloader.fetch_file`)."""
        return await self.downloader.fetch_file(
            manifest, dest, progress=progress, sync_dir=sync_dir, watch=watch
        )


# ---------------------------------------------------------------------- helpers


def open_root(wire_bytes: bytes) -> bytes:
    """Canonical bytes of a root served as a zstd frame (bounded by the root limit)."""
    data = decompress(wire_bytes, LIMITS.max_root_size)
    decode_signed_root(data)
    return data


__all__ = ["FetchStats", "Fetcher", "Peer", "Progress", "open_root"]
