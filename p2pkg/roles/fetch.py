"""The fetch engine: trusted root, verified objects, parallel verified file download.

The thin shell around the pure parts: :mod:`p2pkg.core.trust` decides on roots,
:mod:`p2pkg.core.select` on files, :class:`p2pkg.core.schedule.Scheduler` on spans.
This module moves bytes: it asks peers, checks every object against its id
and every chunk against its BLAKE3 before it touches the disk, and writes the
destination only when the whole file's sha256 and BLAKE3 match the manifest
(temp name, fsync, rename).

A download in progress lives in a *partial* file (in the store's
``partial/`` or beside the destination). Re-running a fetch re-hashes the
partial file's chunks and downloads only the ones that do not verify, so
an interrupted fetch resumes; chunks the local store already holds (an older
version of the same wheel) are copied instead of downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import mmap
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import blake3

from p2pkg.config import LIMITS
from p2pkg.core.codec import Reader
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
from p2pkg.core.root import decode_signed_root
from p2pkg.core.schedule import Failure, ScheduleConfig, Scheduler, Span
from p2pkg.core.select import Spec, candidates, parse_spec, python_allows
from p2pkg.core.trust import TrustedRoot, bootstrap, check_expiry, trust_chain, update, update_chain
from p2pkg.errors import (
    BadDataError,
    DecodeError,
    FetchError,
    IntegrityError,
    NotFoundError,
    PeerBusyError,
    PeerError,
    ProtocolError,
    SignatureError,
    TrustError,
)
from p2pkg.io.fsutil import copy_atomic, fsync_path
from p2pkg.io.http import wire
from p2pkg.io.http.client import ClientConfig, PeerClient, Sink, SinkDone, SkipSink
from p2pkg.io.ingest import Hashed
from p2pkg.io.store import Store

log = logging.getLogger(__name__)

MAX_CHAIN_WALK = 1000
OBJECT_CACHE_BYTES = 64 << 20
SMALL_FILE = 1 << 20  # at most this: hashed inline, no helper thread, no fallocate
SYNC_EVERY = 32 << 20  # the hashing thread fdatasyncs the partial file this often
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer's base URL and its locality tier (0 LAN, 1 configured, 2 DHT)."""

    url: str
    tier: int = 1


@dataclass
class FetchStats:
    """What one file download did (for --json, logs and benchmarks)."""

    filename: str = ""
    size: int = 0
    from_network: int = 0
    from_local: int = 0  # chunks reused from the partial file or the store
    seconds: float = 0.0
    peers: dict[str, dict[str, object]] = field(default_factory=dict)


class _Absent(PeerError):
    """The peer answered 404 for this file."""


class _SpanSink:
    """Receives one span: verifies each chunk, writes it at its offset."""

    def __init__(
        self,
        ctx: _Download,
        peer: str,
        span: Span,
    ) -> None:
        self.ctx = ctx
        self.peer = peer
        self.span = span
        self.i = span.first
        self.filled = 0
        self.received = 0
        lengths = ctx.sched.lengths
        self.buf = bytearray(max(lengths[span.first : span.end]))
        self.view = memoryview(self.buf)

    def buffer(self) -> memoryview:
        return self.view[self.filled : self.ctx.sched.lengths[self.i]]

    def advance(self, n: int) -> None:
        ctx = self.ctx
        self.filled += n
        self.received += n
        length = ctx.sched.lengths[self.i]
        if self.filled < length:
            return
        chunk = self.view[:length]
        index = self.i
        if not ctx.sched.done[index]:
            # docs/protocol.md §2.2: a chunk is accepted only if it hashes to its id.
            if blake3.blake3(chunk).digest() != ctx.manifest.chunks[index].id:
                raise BadDataError(
                    self.peer, f"chunk {index} of {ctx.manifest.filename} failed verification"
                )
            os.pwrite(ctx.fd, chunk, ctx.sched.offsets[index])
            ctx.chunk_verified(self.peer, index)
        else:
            ctx.sched.chunk_done(self.peer, index)
            if not ctx.sched.still_needed(self.span):
                raise SinkDone  # a duplicate finished this span first
        self.i += 1
        self.filled = 0


class _PrefixHasher:
    """sha256 + BLAKE3 of the whole file, on a worker thread, trailing the verified prefix.

    The final whole-file check (docs/protocol.md §3.3) would otherwise be a
    serial pass after the download; this way it overlaps it and only the
    last chunks remain to hash at the end.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.sha = hashlib.sha256()
        self.b3 = blake3.blake3()
        self.pos = 0
        self.synced = 0
        self.target = 0
        self.cond = threading.Condition()
        self.stopped = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="p2pkg-hash", daemon=True)
        self.thread.start()

    def advance(self, target: int) -> None:
        with self.cond:
            if target > self.target:
                self.target = target
                self.cond.notify()

    def _run(self) -> None:
        if self.size == 0:
            return
        try:
            # Hash straight from the page cache through a read-only mapping (no copies).
            with mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    self._hash(view)
                finally:
                    view.release()
        except BaseException as exc:  # re-raised by finish()
            self.error = exc

    def _hash(self, view: memoryview) -> None:
        while self.pos < self.size:
            with self.cond:
                while self.pos >= self.target and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    return
                target = self.target
            while self.pos < target:
                end = min(target, self.pos + (4 << 20))
                block = view[self.pos : end]
                self.sha.update(block)
                self.b3.update(block)
                block.release()
                self.pos = end
                if self.pos - self.synced >= SYNC_EVERY:
                    # Flush as we go (off the event loop) so the final fsync that
                    # makes the file durable only has the tail left to write.
                    os.fdatasync(self.fd)
                    self.synced = self.pos

    def finish(self) -> tuple[bytes, bytes]:
        """Block until the whole file is hashed; (sha256, BLAKE3)."""
        self.advance(self.size)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.sha.digest(), self.b3.digest()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join()


@dataclass
class _Download:
    manifest: FileManifest
    fd: int
    sched: Scheduler
    stats: FetchStats
    progress: Progress | None
    hasher: _PrefixHasher | None  # None for small files: hashed in one go at the end
    watch: Callable[[int], None] | None = None
    done_bytes: int = 0
    prefix: int = 0  # chunks 0..prefix-1 are all verified

    def start(self) -> None:
        s = self.sched
        self.done_bytes = sum(s.lengths[i] for i in range(len(s.lengths)) if s.done[i])
        self._advance_prefix()

    def chunk_verified(self, peer: str, index: int) -> None:
        length = self.sched.lengths[index]
        self.sched.chunk_done(peer, index)
        self.stats.from_network += length
        self.done_bytes += length
        if index == self.prefix:
            self._advance_prefix()
        if self.progress is not None:
            self.progress(self.done_bytes, self.manifest.size)

    def _advance_prefix(self) -> None:
        s = self.sched
        while self.prefix < len(s.lengths) and s.done[self.prefix]:
            self.prefix += 1
        if self.hasher is not None:
            self.hasher.advance(s.offsets[self.prefix])
        if self.watch is not None:
            self.watch(s.offsets[self.prefix])


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
    ) -> None:
        if not pinned:
            raise TrustError("at least one trusted key (--trust) is needed")
        self.pinned = pinned
        self.peers = [p if isinstance(p, Peer) else Peer(p) for p in peers]
        self.store = store
        self.client_config = client_config
        self.clients = {p.url: PeerClient(p.url, client_config) for p in self.peers}
        self.schedule_config = schedule_config
        self.clock = clock
        self.trusted: TrustedRoot | None = None
        self.banned: set[str] = set()
        # A seed serves its store: it records a root only once everything under
        # it is synced, so it turns this off and commits the root itself.
        self.persist_roots = persist_roots
        # Why the last refresh got no root at all (empty when some peer answered).
        self.unreachable: list[str] = []
        # Verified objects, so a batch of fetches resolves shared nodes once.
        self._cache: OrderedDict[ObjectId, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._nodes: dict[ObjectId, Node] = {}

    def close(self) -> None:
        for c in self.clients.values():
            c.close()

    def add_peer(self, peer: str | Peer) -> None:
        """Add a peer; a peer already known keeps the better (lower) tier."""
        p = peer if isinstance(peer, Peer) else Peer(peer)
        for i, known in enumerate(self.peers):
            if known.url == p.url:
                if p.tier < known.tier:
                    self.peers[i] = p
                return
        self.peers.append(p)
        self.clients[p.url] = PeerClient(p.url, self.client_config)

    def _live_peers(self) -> list[Peer]:
        return sorted((p for p in self.peers if p.url not in self.banned), key=lambda p: p.tier)

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

    async def _get_root_bytes(self, peer: Peer, path: str) -> bytes:
        client = self.clients[peer.url]
        status, body, _ = await client.get_bytes(path, 64 * 1024)
        if status != 200:
            raise ProtocolError(peer.url, f"{path}: HTTP {status}", status)
        try:
            return open_root(body)
        except DecodeError as exc:
            raise ProtocolError(peer.url, f"malformed root: {exc}") from None

    async def _walk_chain(self, peer: Peer, first: int, last: int) -> list[bytes]:
        if last - first > MAX_CHAIN_WALK:
            raise FetchError(f"root chain {first}..{last} is longer than {MAX_CHAIN_WALK}")
        return [
            await self._get_root_bytes(peer, wire.root_version_path(v)) for v in range(first, last)
        ]

    async def refresh_root(self) -> TrustedRoot:
        """Ask every peer for its latest root; trust the newest one the rules accept."""
        base = self._local_trusted()
        peers = self._live_peers()
        results = await asyncio.gather(
            *(self._get_root_bytes(p, wire.root_path()) for p in peers), return_exceptions=True
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
            client = self.clients[peer.url]
            try:
                status, body, _ = await client.get_bytes(wire.object_path(oid), 17 << 20)
                if status != 200:
                    errors.append(f"{peer.url}: HTTP {status}")
                    continue
                data = open_object(body, oid)
            except (DecodeError, IntegrityError) as exc:
                log.warning("banning peer %s: object %s: %s", peer.url, oid.hex()[:16], exc)
                self.banned.add(peer.url)
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
        client = self.clients[peer.url]
        for start in range(0, len(want), wire.MAX_OBJECT_BATCH):
            group = want[start : start + wire.MAX_OBJECT_BATCH]
            try:
                status, body = await client.post(
                    wire.OBJECTS_PATH, b"".join(group), wire.MAX_OBJECT_BATCH_BYTES
                )
            except PeerError as exc:
                log.info("object batch from %s failed: %s", peer.url, exc)
                return missing + want[start:]
            if status != 200:
                return missing + want[start:]  # e.g. a static server: no POST
            try:
                r = Reader(body)
                for oid in group:
                    frame = r.bytes_(LIMITS.max_object_size + 1024)
                    if not frame:
                        missing.append(oid)
                        continue
                    fresh[oid] = open_object(frame, oid)
                r.end()
            except (DecodeError, IntegrityError) as exc:
                log.warning("banning peer %s: object batch: %s", peer.url, exc)
                self.banned.add(peer.url)
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
        """Download ``manifest``'s file; return its path (``dest``/filename if given).

        ``sync_dir=False`` leaves the fsync of ``dest`` to the caller (one per
        batch of files rather than one per file). ``watch(n)`` is called each
        time the verified prefix of the partial file grows to ``n`` bytes (a
        cache streams it to an installer while the rest is still arriving).
        """
        started = time.monotonic()
        stats = FetchStats(manifest.filename, manifest.size)
        store = self.store
        if store is None and dest is None:
            raise ValueError("a destination directory or a store is needed")
        if store is not None and store.has_file(manifest.blake3):
            stats.from_local = manifest.size
            path = store.file_path(manifest.blake3)
            if dest is not None:
                path = await anyio.to_thread.run_sync(copy_atomic, path, dest, manifest.filename)
            stats.seconds = time.monotonic() - started
            return path, stats
        if store is not None:
            partial_dir = store.path / "partial"
        else:
            assert dest is not None
            partial_dir = dest
        partial_dir.mkdir(parents=True, exist_ok=True)
        partial = partial_dir / f".{manifest.blake3.hex()}.p2pkg-partial"
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # SQLite stays on this thread; the worker only reads, hashes and copies.
            elsewhere = _store_locations(store, manifest) if store is not None else {}
            small = manifest.size <= SMALL_FILE
            if small:  # microseconds of work: not worth a thread hand-off
                have = _reusable_chunks(fd, manifest, elsewhere)
            else:
                have = await anyio.to_thread.run_sync(_reusable_chunks, fd, manifest, elsewhere)
            stats.from_local = sum(manifest.chunks[i].length for i in have)
            hasher = None if small else _PrefixHasher(fd, manifest.size)
            try:
                await self._download(manifest, fd, have, stats, progress, hasher, watch)
                if hasher is None:
                    sha, b3 = _hash_fd(fd, manifest.size)
                else:
                    sha, b3 = await anyio.to_thread.run_sync(hasher.finish)
            finally:
                if hasher is not None:
                    hasher.stop()
            if sha != manifest.sha256:
                raise IntegrityError(manifest.filename, manifest.sha256.hex(), sha.hex())
            if b3 != manifest.blake3:
                raise IntegrityError(manifest.filename, manifest.blake3.hex(), b3.hex())
            await anyio.to_thread.run_sync(os.fsync, fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if store is not None:
            store.commit(files=[_as_hashed(manifest, partial)])
            path = store.file_path(manifest.blake3)
            if dest is not None:
                path = await anyio.to_thread.run_sync(copy_atomic, path, dest, manifest.filename)
        else:
            assert dest is not None
            path = dest / manifest.filename
            partial.replace(path)
            if sync_dir:
                fsync_path(dest)
        stats.seconds = time.monotonic() - started
        return path, stats

    async def _download(
        self,
        manifest: FileManifest,
        fd: int,
        have: set[int],
        stats: FetchStats,
        progress: Progress | None,
        hasher: _PrefixHasher | None,
        watch: Callable[[int], None] | None = None,
    ) -> None:
        peers = self._live_peers()
        if not peers and len(have) < len(manifest.chunks):
            raise FetchError(f"no peers to fetch {manifest.filename} from")
        sched = Scheduler(
            [c.length for c in manifest.chunks],
            have,
            [(p.url, p.tier) for p in peers],
            time.monotonic(),
            self.schedule_config,
        )
        ctx = _Download(manifest, fd, sched, stats, progress, hasher, watch)
        ctx.start()
        wake = anyio.Event()
        path = wire.file_path(manifest.blake3)

        async def run(peer: str, span: Span) -> None:
            nonlocal wake
            sink = _SpanSink(ctx, peer, span)
            try:
                await self._request_span(peer, path, span, manifest.size, sink)
                sched.span_finished(peer, span, time.monotonic(), sink.received)
            except PeerBusyError as exc:
                log.info("peer %s is busy (503), retry after %gs", peer, exc.retry_after)
                sched.span_failed(peer, span, time.monotonic(), Failure.BUSY, exc.retry_after)
            except BadDataError as exc:
                log.warning("banning peer %s: %s", peer, exc)
                self.banned.add(peer)
                sched.span_failed(peer, span, time.monotonic(), Failure.BAD)
            except _Absent:
                log.info("peer %s does not hold %s", peer, manifest.filename)
                sched.span_failed(peer, span, time.monotonic(), Failure.ABSENT)
            except PeerError as exc:
                log.info("span %d-%d from %s failed: %s", span.first, span.end, peer, exc)
                sched.span_failed(peer, span, time.monotonic(), Failure.ERROR)
            finally:
                wake.set()

        failed = False
        async with anyio.create_task_group() as tg:
            while not sched.complete:
                if sched.failed():
                    failed = True
                    break
                now = time.monotonic()
                for name in sched.ready_peers(now):
                    while (span := sched.assign(name, now)) is not None:
                        tg.start_soon(run, name, span)
                wake = anyio.Event()
                wakeup = sched.next_wakeup(now)
                timeout = math.inf if wakeup is None else max(0.0, wakeup - now)
                with anyio.move_on_after(timeout):
                    await wake.wait()
            tg.cancel_scope.cancel()  # endgame duplicates still running lost the race
        stats.peers = sched.peer_summary()
        if failed:
            summary = "; ".join(f"{n}: {s['dropped']}" for n, s in stats.peers.items())
            raise FetchError(f"no peer could deliver {manifest.filename} ({summary})")

    async def _request_span(
        self, peer: str, path: str, span: Span, size: int, sink: _SpanSink
    ) -> None:
        client = self.clients[peer]
        whole = span.start == 0 and span.stop == size

        def factory(head: wire.ResponseHead) -> Sink:
            if head.status == 206 and not whole:
                if head.content_range != (span.start, span.stop, size):
                    raise ProtocolError(
                        peer, f"asked {span.start}-{span.stop}, got {head.content_range}"
                    )
                return sink
            if head.status == 200:
                if head.content_length != size:
                    raise ProtocolError(
                        peer, f"file is {head.content_length} bytes, expected {size}"
                    )
                # A server that ignores Range sends the whole file: skip to the span.
                return sink if whole else SkipSink(sink, span.start, span.stop - span.start)
            if head.status == 404:
                raise _Absent(peer, "404")
            if head.status == 503:
                raise PeerBusyError(peer, head.retry_after())
            raise ProtocolError(peer, f"unexpected HTTP {head.status}", head.status)

        headers = () if whole else (("Range", f"bytes={span.start}-{span.stop - 1}"),)
        await client.request("GET", path, factory, headers=headers)


# ---------------------------------------------------------------------- helpers


def open_root(wire_bytes: bytes) -> bytes:
    """Canonical bytes of a root served as a zstd frame (bounded by the root limit)."""
    data = decompress(wire_bytes, LIMITS.max_root_size)
    decode_signed_root(data)
    return data


def _store_locations(store: Store, manifest: FileManifest) -> dict[int, tuple[Path, int]]:
    """Chunk index -> (archive path, offset) for chunks the store holds in other files."""
    out = {}
    for i, c in enumerate(manifest.chunks):
        loc = store.chunk_location(c.id)
        if loc is not None:
            out[i] = (store.file_path(loc.file), loc.offset)
    return out


def _reusable_chunks(
    fd: int, manifest: FileManifest, elsewhere: dict[int, tuple[Path, int]]
) -> set[int]:
    """Chunks already verified in the partial file, or copied from other local files."""
    size = os.fstat(fd).st_size
    have: set[int] = set()
    offsets = manifest.chunk_offsets()
    if size == manifest.size and size > 0:
        for i, c in enumerate(manifest.chunks):
            if blake3.blake3(os.pread(fd, c.length, offsets[i])).digest() == c.id:
                have.add(i)
    else:
        os.ftruncate(fd, manifest.size)
        if manifest.size > SMALL_FILE:
            # Reserve the blocks up front: ENOSPC shows now, not mid-transfer.
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, manifest.size)
    for i, (path, offset) in elsewhere.items():
        if i in have:
            continue
        c = manifest.chunks[i]
        try:
            with path.open("rb") as fh:
                data = os.pread(fh.fileno(), c.length, offset)
        except OSError:
            continue
        if len(data) == c.length and blake3.blake3(data).digest() == c.id:
            os.pwrite(fd, data, offsets[i])
            have.add(i)
    return have


def _hash_fd(fd: int, size: int) -> tuple[bytes, bytes]:
    """sha256 and BLAKE3 of a small file, in one read."""
    data = os.pread(fd, size, 0)
    return hashlib.sha256(data).digest(), blake3.blake3(data).digest()


def _as_hashed(manifest: FileManifest, path: Path) -> Hashed:
    return Hashed(manifest.size, manifest.sha256, manifest.blake3, manifest.chunks, path)


__all__ = ["FetchStats", "Fetcher", "Peer", "open_root"]
