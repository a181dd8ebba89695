"""Verified objects by id: the local store first, then peers, one id fetched once.

An :class:`ObjectSource` answers ``get(oid)`` and ``get_many(oids)`` with
canonical bytes that hash to their id — whoever delivered them. It keeps a
bounded LRU of what it fetched (a batch of resolves shares the tree's
upper nodes), and *coalesces*: while one caller is fetching an id, another
caller asking for it waits for that fetch instead of asking the network
again (a cache serving 30 concurrent installs of one project's page asks
for its project object once).

From peers it asks ``POST /objects`` batches first (one request per 1024
ids) and falls back to one ``GET`` per object for what no batch delivered
(static peers cannot answer a POST; a single id goes straight to GET). A
peer whose bytes fail verification is banned in the shared peer book.

``commit``: the policy for fetched objects. A client or cache commits each
object to its store as soon as it is verified; a seed commits bottom-up
itself (a held object must imply its whole subtree), so it builds its
source with ``commit=False``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

import anyio

from p2pkg.core.objects import ObjectId, open_object
from p2pkg.errors import DecodeError, FetchError, IntegrityError, PeerError
from p2pkg.io.http import wire
from p2pkg.io.store import Store
from p2pkg.roles.links import PeerLinks

log = logging.getLogger(__name__)

#: Bytes of verified objects kept in memory (LRU).
CACHE_BYTES = 64 << 20


class _Pending:
    """One id being fetched; other callers wait on it."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None

    async def wait(self) -> bytes:
        await self.done.wait()
        if self.data is None:
            assert self.error is not None
            raise self.error
        return self.data


class ObjectSource:
    """Canonical bytes of objects, checked against their ids."""

    def __init__(
        self,
        links: PeerLinks,
        store: Store | None = None,
        *,
        commit: bool = True,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.links = links
        self.store = store
        self.commit = commit
        self.cache_bytes = cache_bytes
        self._lru: OrderedDict[ObjectId, bytes] = OrderedDict()
        self._lru_bytes = 0
        self._pending: dict[ObjectId, _Pending] = {}
        self.requests = 0  # requests sent to peers (batches count once)

    # ------------------------------------------------------------------ public

    async def get(self, oid: ObjectId) -> bytes:
        """One object (see :meth:`get_many`)."""
        return (await self.get_many([oid]))[oid]

    async def get_many(self, oids: Iterable[ObjectId]) -> dict[ObjectId, bytes]:
        """``oid -> canonical bytes`` for every id; :class:`FetchError` if one cannot be had."""
        out: dict[ObjectId, bytes] = {}
        mine: list[ObjectId] = []
        theirs: dict[ObjectId, _Pending] = {}
        for oid in dict.fromkeys(oids):
            data = self._local(oid)
            if data is not None:
                out[oid] = data
            elif oid in self._pending:
                theirs[oid] = self._pending[oid]
            else:
                mine.append(oid)
        if mine:
            await self._fetch_mine(mine, out)
        for oid, pending in theirs.items():
            out[oid] = await pending.wait()
        return out

    def held(self, oid: ObjectId) -> bytes | None:
        """The object if it is in memory or in the store (no network)."""
        return self._local(oid)

    # ------------------------------------------------------------------ internals

    def _local(self, oid: ObjectId) -> bytes | None:
        data = self._lru.get(oid)
        if data is not None:
            self._lru.move_to_end(oid)
            return data
        if self.store is not None:
            return self.store.find_object(oid)
        return None

    async def _fetch_mine(self, mine: list[ObjectId], out: dict[ObjectId, bytes]) -> None:
        pending = {oid: _Pending() for oid in mine}
        self._pending.update(pending)
        got: dict[ObjectId, bytes] = {}
        try:
            await self._from_peers(mine, got)
        except Exception as exc:
            for p in pending.values():
                p.error = exc  # waiters see why (a cancelled fetch leaves them "abandoned")
            raise
        finally:
            for oid, p in pending.items():
                p.data = got.get(oid)
                if p.data is None and p.error is None:
                    p.error = FetchError(f"fetch of object {oid.hex()} abandoned")
                del self._pending[oid]
                p.done.set()
        out.update(got)

    async def _from_peers(self, want: list[ObjectId], got: dict[ObjectId, bytes]) -> None:
        if len(want) > 1:
            for peer in self.links.live():
                if not want:
                    break
                want = await self._batch_from(peer.url, want, got)
        for oid in want:
            got[oid] = await self._one(oid)

    async def _one(self, oid: ObjectId) -> bytes:
        errors = []
        for peer in self.links.live():
            self.requests += 1
            try:
                data = open_object(await self.links.link(peer.url).object(oid), oid)
            except (DecodeError, IntegrityError) as exc:
                self.links.ban(peer.url, f"object {oid.hex()[:16]}: {exc}")
                continue
            except PeerError as exc:
                errors.append(str(exc))
                continue
            self._keep({oid: data})
            return data
        raise FetchError(f"no peer served object {oid.hex()}: {'; '.join(errors) or 'no peers'}")

    async def _batch_from(
        self, url: str, want: list[ObjectId], got: dict[ObjectId, bytes]
    ) -> list[ObjectId]:
        """Fetch what ``url`` holds of ``want`` into ``got``; return what is still missing."""
        missing: list[ObjectId] = []
        link = self.links.link(url)
        for start in range(0, len(want), wire.MAX_OBJECT_BATCH):
            group = want[start : start + wire.MAX_OBJECT_BATCH]
            self.requests += 1
            try:
                frames = await link.objects(group)
            except PeerError as exc:  # e.g. a static server: no POST
                log.info("object batch from %s failed: %s", url, exc)
                return missing + want[start:]
            fresh: dict[ObjectId, bytes] = {}
            try:
                for oid, frame in zip(group, frames, strict=True):
                    if frame:
                        fresh[oid] = open_object(frame, oid)
                    else:
                        missing.append(oid)
            except (DecodeError, IntegrityError) as exc:
                # Nothing of a batch with a forgery in it is kept: the peer lied once.
                self.links.ban(url, f"object batch: {exc}")
                return missing + [o for o in want[start:] if o not in got]
            self._keep(fresh)
            got.update(fresh)
        return missing

    def _keep(self, fresh: dict[ObjectId, bytes]) -> None:
        if not fresh:
            return
        if self.store is not None and self.commit:
            self.store.commit(objects=fresh)
        for oid, data in fresh.items():
            self._lru[oid] = data
            self._lru_bytes += len(data)
        while self._lru_bytes > self.cache_bytes and self._lru:
            _, old = self._lru.popitem(last=False)
            self._lru_bytes -= len(old)


__all__ = ["CACHE_BYTES", "ObjectSource"]
