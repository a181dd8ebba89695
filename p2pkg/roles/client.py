"""The library API for programs: everything ``p2pkg fetch`` does.

::

    async with p2pkg.Client(trust="ed25519:...", peers=["http://seed:8000"]) as c:
        path = await c.fetch("requests==2.32.3", "downloads/")

    # No peer named: caches on the LAN (DNS-SD), then the DHT.
    async with p2pkg.Client(trust=key, lan=True, dht_bootstrap=["seed.example:7000"]) as c:
        results = await c.fetch_many(["requests", "idna>=3"], "downloads/")

    with p2pkg.SyncClient(trust=..., peers=[...]) as c:
        path = c.fetch("requests", "downloads/")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from p2pkg.core.objects import FileManifest
from p2pkg.core.root import parse_pubkey
from p2pkg.core.select import parse_spec
from p2pkg.errors import FetchError, first_p2pkg_error, local_io
from p2pkg.io.fsutil import fsync_path
from p2pkg.io.store import Store
from p2pkg.roles.chunk_batches import prefill
from p2pkg.roles.discover import LAN_WAIT, dht_peers, lan_peers
from p2pkg.roles.download import FetchStats, Progress
from p2pkg.roles.links import Peer
from p2pkg.roles.session import Session

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from p2pkg.io.dht_service import DhtService


def pins_of(trust: str | bytes | Iterable[str | bytes]) -> frozenset[bytes]:
    """Pinned keys from ``ed25519:<hex>`` strings (or raw 32-byte keys)."""
    values = [trust] if isinstance(trust, str | bytes) else list(trust)
    return frozenset(v if isinstance(v, bytes) else parse_pubkey(v) for v in values)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One archive fetched: what it is, where it went, how it came."""

    manifest: FileManifest
    path: Path
    stats: FetchStats


class Client:
    """Fetch archives from p2pkg peers, verified against the pinned key(s).

    ``peers``: base URLs to use. ``lan``: also look for caches on the LAN
    (DNS-SD on ``lan_interfaces``; default: only when no peer is named and
    no DHT is used). ``dht_bootstrap``: join the DHT through these
    ``host:port`` nodes and add the providers of each project's namespace
    bin (``dht_listen``: the local UDP address, default ``0.0.0.0:0``).
    ``store``: a directory for a local store (roots remembered across runs
    for rollback protection, objects and archives cached, upgrades reuse
    chunks); None to keep nothing but the files fetched.
    """

    def __init__(
        self,
        trust: str | bytes | Iterable[str | bytes],
        peers: Sequence[str | Peer] = (),
        *,
        store: str | Path | None = None,
        lan: bool | None = None,
        lan_interfaces: Sequence[str] = (),
        lan_wait: float = LAN_WAIT,
        dht_bootstrap: Sequence[str | tuple[str, int]] = (),
        dht_listen: tuple[str, int] = ("0.0.0.0", 0),
        paranoid: bool = False,
    ) -> None:
        self._pins = pins_of(trust)
        self._paranoid = paranoid  # re-hash each whole file too (chunks are always checked)
        self._peers = list(peers)
        self._store_path = Path(store) if store is not None else None
        self._lan = lan if lan is not None else (not peers and not dht_bootstrap)
        self._lan_interfaces = tuple(lan_interfaces)
        self._lan_wait = lan_wait
        self._dht: DhtService | None = None
        if dht_bootstrap:  # the DHT (kademlia) is imported only when used
            from p2pkg.io.dht_service import DhtService, parse_hostport

            bootstrap = [parse_hostport(b) if isinstance(b, str) else b for b in dht_bootstrap]
            self._dht = DhtService(dht_listen, bootstrap, None)
        self._dht_names: set[str] = set()  # names whose bins were looked up already
        self._store: Store | None = None
        self._session: Session | None = None
        self.last_stats: FetchStats | None = None

    async def __aenter__(self) -> Client:
        if self._store_path is not None:
            self._store = Store.open(self._store_path, create=True)
        self._session = Session(self._pins, self._peers, self._store, paranoid=self._paranoid)
        try:
            if self._lan:
                for peer in await lan_peers(self._pins, self._lan_interfaces, self._lan_wait):
                    self._session.add_peer(peer)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            self._session.close()
        if self._store is not None:
            self._store.close()

    @property
    def session(self) -> Session:
        """The parts underneath (peer book, root follower, objects, downloader)."""
        if self._session is None:
            raise RuntimeError("use Client as an async context manager")
        return self._session

    async def _discover(self, specs: Iterable[str]) -> None:
        """Add the DHT providers of the specs' namespace bins (once per name)."""
        names = {parse_spec(s).name for s in specs} - self._dht_names
        if self._dht is not None and names:
            for peer in await dht_peers(self._dht, self._pins, names):
                self.session.add_peer(peer)
            self._dht_names |= names
        if not self.session.peers:
            raise FetchError(
                "no peer to ask: none given, none found on the LAN"
                + (" or through the DHT" if self._dht is not None else "")
            )

    async def refresh(self) -> int:
        """Fetch and verify the newest root; return its version."""
        await self._discover(())
        return (await self.session.refresh_root()).version

    async def resolve(self, spec: str, filename: str | None = None) -> FileManifest:
        """The manifest of the archive ``spec`` means (see ``p2pkg fetch --help``)."""
        await self._discover([spec])
        return await self.session.resolve(spec, filename)

    async def resolve_many(self, specs: Sequence[str]) -> list[FileManifest]:
        """Manifests for many specs, one batch request per tree level."""
        await self._discover(specs)
        return await self.session.resolve_many(specs)

    async def fetch_file(
        self, manifest: FileManifest, dest: str | Path, *, progress: Progress | None = None
    ) -> FetchResult:
        """Download a resolved archive into ``dest``, verified."""
        path, stats = await self.session.fetch_file(manifest, Path(dest), progress=progress)
        self.last_stats = stats
        return FetchResult(manifest, path, stats)

    async def fetch(
        self,
        spec: str,
        dest: str | Path,
        *,
        filename: str | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Download the archive ``spec`` means into ``dest``; return its path."""
        manifest = await self.resolve(spec, filename)
        return (await self.fetch_file(manifest, dest, progress=progress)).path

    async def fetch_many(
        self, specs: Sequence[str], dest: str | Path, *, jobs: int = 8
    ) -> list[FetchResult]:
        """Fetch several specs, ``jobs`` archives at a time; one directory sync at the end."""
        manifests = list(dict.fromkeys(await self.resolve_many(specs)))
        results: dict[FileManifest, FetchResult] = {}
        limiter = anyio.CapacityLimiter(max(1, jobs))
        target = Path(dest)
        # Small archives first travel in chunk batches (a round trip per
        # batch, not per archive). Without a store each is then complete and
        # durable in its partial file: renaming it finishes it. With a store
        # its download finds it in place and commits it (and, paranoid,
        # re-hashes it whole).
        downloader = self.session.downloader
        store = self.session.store
        rename = store is None and not downloader.paranoid
        partials = {m: downloader.partial_path(m, target) for m in manifests}
        batched = await prefill(
            [(m, p) for m, p in partials.items() if store is None or not store.has_file(m.blake3)],
            downloader.links,
            self.session.book,
            self.session.monotonic,
            durable=rename,
        )
        filled = batched.filled

        async def one(manifest: FileManifest) -> None:
            peer, took = filled.get(manifest.blake3, (None, 0.0))
            if peer is not None and rename:
                path = target / manifest.filename
                with local_io(path, "writing"):
                    partials[manifest].replace(path)
                stats = FetchStats(
                    manifest.filename, manifest.size, from_network=manifest.size, seconds=took
                )
            else:
                async with limiter:
                    path, stats = await self.session.fetch_file(manifest, target, sync_dir=False)
                if peer is None or stats.from_local != manifest.size:
                    results[manifest] = FetchResult(manifest, path, stats)
                    return
                # Its bytes came by batch: from the network after all.
                stats.from_local, stats.from_network = 0, manifest.size
            stats.peers = {peer: {"received": manifest.size}}
            results[manifest] = FetchResult(manifest, path, stats)

        try:
            async with anyio.create_task_group() as tg:
                for manifest in manifests:
                    tg.start_soon(one, manifest)
        except BaseExceptionGroup as group:
            # The first archive that failed aborted the rest: raise its error as
            # itself (a caller catches FetchError, not a group of them).
            raise first_p2pkg_error(group) from None
        fsync_path(target)
        return [results[m] for m in manifests]


class SyncClient(AbstractContextManager["SyncClient"]):
    """:class:`Client` for synchronous code (runs an event loop in a thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._client = Client(*args, **kwargs)
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None

    def __enter__(self) -> SyncClient:
        from anyio.from_thread import start_blocking_portal  # not needed by async users

        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._portal.call(self._client.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._portal is not None and self._portal_cm is not None
        try:
            self._portal.call(self._client.__aexit__, exc_type, exc, tb)
        finally:
            self._portal_cm.__exit__(exc_type, exc, tb)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._portal is None:
            raise RuntimeError("use SyncClient as a context manager")
        return self._portal.call(lambda: fn(*args, **kwargs))

    def refresh(self) -> int:
        return int(self._call(self._client.refresh))

    def fetch(self, spec: str, dest: str | Path, *, filename: str | None = None) -> Path:
        return Path(self._call(self._client.fetch, spec, dest, filename=filename))

    def fetch_many(self, specs: Sequence[str], dest: str | Path, *, jobs: int = 8) -> list[Any]:
        return list(self._call(self._client.fetch_many, specs, dest, jobs=jobs))


__all__ = ["Client", "FetchResult", "SyncClient", "first_p2pkg_error", "pins_of"]
