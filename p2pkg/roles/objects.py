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

Peers are asked in the book's order (backed-off peers last), one at a
time, but never waited on alone (slow retrieval, TUF's attack): when the
peer asked has not answered within its *hedge delay* (a few times its usual
latency), the next one is asked too, and the first good answer wins. The
peer still silent then is *outrun*: backed off in the book, so the next
request does not start with it. A peer that trickles an object, or lies
about its Content-Length and goes quiet, costs one hedge delay, once.

``commit``: the policy for fetched objects. A client or cache commits each
object to its store as soon as it is verified; a seed commits bottom-up
itself (a held object must imply its whole subtree), so it builds its
source with ``commit=False``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from p2pkg.core.objects import ObjectId, open_object
from p2pkg.errors import DecodeError, FetchError, IntegrityError, PeerError
from p2pkg.io.http import wire
from p2pkg.io.store import Store
from p2pkg.roles.links import PeerLinks

log = logging.getLogger(__name__)

#: Bytes of verified objects kept in memory (LRU).
CACHE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Hedge:
    """When a request for objects also goes to the next peer.

    After ``factor`` times the asked peer's latency (the peer book's EWMA;
    ``first`` while it is unknown), bounded by ``least`` and ``most``.
    """

    first: float = 0.1
    factor: float = 4.0
    least: float = 0.05
    most: float = 1.0


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
        hedge: Hedge = Hedge(),
    ) -> None:
        self.links = links
        self.store = store
        self.commit = commit
        self.cache_bytes = cache_bytes
        self.hedge = hedge
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

            async def batch(url: str) -> bool:
                await self._batch_from(url, [o for o in want if o not in got], got)
                return all(o in got for o in want)

            await self._race([p.url for p in self.links.live()], batch)
        for oid in want:
            if oid not in got:
                got[oid] = await self._one(oid)

    async def _one(self, oid: ObjectId) -> bytes:
        found: list[bytes] = []
        errors: list[str] = []

        async def get(url: str) -> bool:
            self.requests += 1
            started = self.links.monotonic()
            try:
                frame = await self.links.link(url).object(oid)
                data = open_object(frame, oid)
            except (DecodeError, IntegrityError) as exc:
                self.links.ban(url, f"object {oid.hex()[:16]}: {exc}")
                return False
            except PeerError as exc:
                errors.append(str(exc))
                self.links.failed(url, exc)
                return False
            self._answered(url, len(frame), started)
            if not found:
                found.append(data)
                self._keep({oid: data})
            return True

        await self._race([p.url for p in self.links.live()], get)
        if found:
            return found[0]
        raise FetchError(f"no peer served object {oid.hex()}: {'; '.join(errors) or 'no peers'}")

    async def _batch_from(self, url: str, want: list[ObjectId], got: dict[ObjectId, bytes]) -> None:
        """Fetch what ``url`` holds of ``want`` into ``got``."""
        link = self.links.link(url)
        for start in range(0, len(want), wire.MAX_OBJECT_BATCH):
            group = want[start : start + wire.MAX_OBJECT_BATCH]
            self.requests += 1
            started = self.links.monotonic()
            try:
                frames = await link.objects(group)
            except PeerError as exc:  # e.g. a static server: no POST
                log.info("object batch from %s failed: %s", url, exc)
                self.links.failed(url, exc)
                return
            try:
                opened = {
                    oid: open_object(frame, oid)
                    for oid, frame in zip(group, frames, strict=True)
                    if frame
                }
            except (DecodeError, IntegrityError) as exc:
                # Nothing of a batch with a forgery in it is kept: the peer lied once.
                self.links.ban(url, f"object batch: {exc}")
                return
            self._answered(url, sum(map(len, frames)), started)
            fresh = {oid: data for oid, data in opened.items() if oid not in got}  # a race
            self._keep(fresh)
            got.update(fresh)

    async def _race(self, peers: Sequence[str], attempt: Callable[[str], Awaitable[bool]]) -> None:
        """``attempt(url)`` on ``peers`` in order until one returns True (it got everything).

        The next peer starts once every attempt running has ended without
        success, or when the newest has run for its hedge delay. When one
        succeeds the others are cancelled; those started before it are outrun.
        """
        queue = list(peers)
        starts: dict[str, float] = {}
        running: set[str] = set()
        outrun: list[str] = []
        fatal: list[Exception] = []
        changed = anyio.Event()

        async def run(url: str, tg: TaskGroup) -> None:
            ok = False
            try:
                ok = await attempt(url)
            except Exception as exc:  # not a peer's fault (the store failed): stop
                fatal.append(exc)
                tg.cancel_scope.cancel()
            finally:
                running.discard(url)
                changed.set()
            if ok and not tg.cancel_scope.cancel_called:
                outrun.extend(u for u in running if starts[u] < starts[url])
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            hedge_at = 0.0
            # cancel_called: a winner or a local failure; the wait it woke may return
            # before the cancellation lands, and nobody else must be asked then.
            while (queue or running) and not tg.cancel_scope.cancel_called:
                now = anyio.current_time()
                if queue and (not running or now >= hedge_at):
                    url = queue.pop(0)
                    starts[url] = now
                    running.add(url)
                    hedge_at = now + self._hedge_delay(url)
                    tg.start_soon(run, url, tg)
                    continue
                changed = anyio.Event()
                with anyio.move_on_after(hedge_at - now if queue else math.inf):
                    await changed.wait()
        if fatal:
            raise fatal[0]
        for url in outrun:
            self.links.outrun(url)

    def _hedge_delay(self, url: str) -> float:
        record = self.links.book.get(url)
        h = self.hedge
        if record is None or record.latency is None:
            return h.first
        return min(h.most, max(h.least, h.factor * record.latency))

    def _answered(self, url: str, nbytes: int, started: float) -> None:
        """A good answer from ``url``: its latency, and back in good standing."""
        elapsed = self.links.monotonic() - started
        self.links.book.observe_latency(url, elapsed)
        # Not a rate sample: an object answer's time is mostly the round trip,
        # and a rate taken from it would size a far peer's spans far too small.
        self.links.book.observe_transfer(url, nbytes, elapsed, rate_sample=False)

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


__all__ = ["CACHE_BYTES", "Hedge", "ObjectSource"]
