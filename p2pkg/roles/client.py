"""The library API for programs.

::

    async with p2pkg.Client(trust="ed25519:...", peers=["http://seed:8000"]) as c:
        path = await c.fetch("requests==2.32.3", "downloads/")

    with p2pkg.SyncClient(trust=..., peers=[...]) as c:
        path = c.fetch("requests", "downloads/")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from p2pkg.core.objects import FileManifest
from p2pkg.core.root import parse_pubkey
from p2pkg.io.store import Store
from p2pkg.roles.fetch import Fetcher, FetchStats, Peer, Progress


def _pins(trust: str | Iterable[str]) -> frozenset[bytes]:
    values = [trust] if isinstance(trust, str) else list(trust)
    return frozenset(parse_pubkey(v) for v in values)


class Client:
    """Fetch archives from p2pkg peers, verified against the pinned key(s).

    ``store``: a directory for a local store (roots remembered across runs
    for rollback protection, objects and archives cached, upgrades reuse
    chunks); None to keep nothing but the files fetched.
    """

    def __init__(
        self,
        trust: str | Iterable[str],
        peers: Sequence[str | Peer],
        *,
        store: str | Path | None = None,
    ) -> None:
        self._pins = _pins(trust)
        self._peers = list(peers)
        self._store_path = Path(store) if store is not None else None
        self._store: Store | None = None
        self._fetcher: Fetcher | None = None
        self.last_stats: FetchStats | None = None

    async def __aenter__(self) -> Client:
        if self._store_path is not None:
            self._store = Store.open(self._store_path, create=True)
        self._fetcher = Fetcher(self._pins, self._peers, self._store)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
        if self._store is not None:
            self._store.close()

    @property
    def fetcher(self) -> Fetcher:
        if self._fetcher is None:
            raise RuntimeError("use Client as an async context manager")
        return self._fetcher

    async def refresh(self) -> int:
        """Fetch and verify the newest root; return its version."""
        return (await self.fetcher.refresh_root()).version

    async def resolve(self, spec: str, filename: str | None = None) -> FileManifest:
        """The manifest of the archive ``spec`` means (see ``p2pkg fetch --help``)."""
        return await self.fetcher.resolve(spec, filename)

    async def fetch(
        self,
        spec: str,
        dest: str | Path,
        *,
        filename: str | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Download the archive ``spec`` means into ``dest``; return its path."""
        path, stats = await self.fetcher.fetch(
            spec, Path(dest), filename=filename, progress=progress
        )
        self.last_stats = stats
        return path


class SyncClient(AbstractContextManager["SyncClient"]):
    """:class:`Client` for synchronous code (runs an event loop in a thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._client = Client(*args, **kwargs)
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None

    def __enter__(self) -> SyncClient:
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
