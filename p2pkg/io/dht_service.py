"""The DHT as the roles use it: join, keep announcements fresh, save identity.

What each role announces (never per chunk, DESIGN.md):

* a full store (the master's ``serve``, a full ``seed``): one record per
  non-empty namespace bin (:func:`p2pkg.core.dht_records.bin_key`) and the latest
  signed root;
* a ``cache`` or a ``seed --project``: one record per archive it holds whole
  (:func:`p2pkg.core.dht_records.file_key`).

Records live ``ttl`` seconds on the nodes and are re-announced every
``ttl / 2``; something new (a poke) announces what is new, not every key
again (:mod:`p2pkg.core.announce`). The node's id and contacts are saved
as JSON (``dht.json`` in the store), so a restarted node keeps its id and
rejoins through its old contacts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus

from p2pkg.core.announce import AnnouncePlan
from p2pkg.core.dht_records import bin_key, file_key
from p2pkg.core.objects import Node as TreeNode
from p2pkg.core.objects import decode_as
from p2pkg.core.root import decode_signed_root
from p2pkg.errors import P2pkgError
from p2pkg.io.dht import DhtNode
from p2pkg.io.store import Store

log = logging.getLogger(__name__)

STATE_FILE = "dht.json"


class DhtService:
    """A DHT node for a role: :meth:`run` it on the role's task group.

    ``listen`` is the UDP address to bind, ``bootstrap`` the nodes to join
    through (with the contacts saved in ``state``, when it exists), ``state``
    where the node's id and contacts are kept (None: a fresh id each run).
    """

    def __init__(
        self,
        listen: tuple[str, int],
        bootstrap: Sequence[tuple[str, int]] = (),
        state: Path | None = None,
        ttl: float = 3600.0,
    ) -> None:
        self.listen = listen
        self.bootstrap = list(bootstrap)
        self.state_path = state
        self.ttl = ttl
        self.node: DhtNode | None = None  # while run() runs
        self.announced = 0
        # Made in the loop (anyio events need one), by whichever task gets there first.
        self._up: anyio.Event | None = None
        self._poked: anyio.Event | None = None

    def poke(self) -> None:
        """Announce again now (something new is held)."""
        if self._poked is not None:
            self._poked.set()

    def _up_event(self) -> anyio.Event:
        if self._up is None:
            self._up = anyio.Event()
        return self._up

    async def run(self, *, task_status: TaskStatus[DhtNode] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled: bind, join, ``started(node)``, refresh.

        The node (its contact checks, its bucket refresh) and the periodic
        self-lookup are children of this call's task group; when it ends the
        socket is closed and the id and contacts are saved to ``state``.
        """
        if self.node is not None:
            raise RuntimeError("the DHT service is already running")
        node_id: bytes | None = None
        contacts: list[tuple[str, int]] = []
        if self.state_path is not None and self.state_path.exists():
            node_id, contacts = DhtNode.load_state_json(self.state_path)
        node = DhtNode(node_id)
        try:
            async with anyio.create_task_group() as tg:
                port = await tg.start(node.run, self.listen[0], self.listen[1])
                self.node = node
                seeds = list(dict.fromkeys([*self.bootstrap, *contacts]))
                if seeds:
                    found = await node.bootstrap(seeds)
                    log.info(
                        "DHT node on %s:%d joined (%d contacts)", self.listen[0], port, len(found)
                    )
                tg.start_soon(node.self_lookups)
                self._up_event().set()
                task_status.started(node)
        finally:
            if self._up is not None and self._up.is_set():
                self._up = None  # down again (an unset one may have waiters: keep it)
            if self.node is node:
                self.node = None
                self._save(node)

    def _save(self, node: DhtNode) -> None:
        if self.state_path is None:
            return
        try:
            node.save_state_json(self.state_path)
        except OSError as exc:
            log.warning("could not save DHT state: %s", exc)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DhtNode]:
        """The node, running for the block (one-shot use: a fetch's lookups).

        An error raised in the block comes out as itself, not wrapped in the
        task group's exception group.
        """
        try:
            async with anyio.create_task_group() as tg:
                node = await tg.start(self.run)
                try:
                    yield node
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            exc = group.exceptions[0]
            raise exc from exc.__cause__

    async def announce_on(
        self,
        tg: TaskGroup,
        keys: Callable[[], Iterable[bytes]],
        port: int,
        latest_root: Callable[[], bytes | None] | None = None,
    ) -> None:
        """Run the node and the announce loop as children of ``tg`` (a role's group).

        Returns once the node has joined; both stop when ``tg`` is cancelled
        (the node saves its state then).
        """
        await tg.start(self.run)
        tg.start_soon(partial(self.keep_announcing, keys, port, latest_root))

    async def keep_announcing(
        self,
        keys: Callable[[], Iterable[bytes]],
        port: int,
        latest_root: Callable[[], bytes | None] | None = None,
        every: float | None = None,
    ) -> None:
        """Announce ``keys()`` (and put ``latest_root()``) as they fall due, until cancelled.

        Waits for :meth:`run` to have started the node (it does not start it).
        Each record is announced when new and again every ttl/2 (``every``
        overrides that period); :meth:`poke` starts a round at once, which
        announces what is new (:class:`~p2pkg.core.announce.AnnouncePlan`).
        """
        plan = AnnouncePlan(self.ttl if every is None else 2 * every)
        while True:
            if self.node is None:
                await self._up_event().wait()
            # A poke while this round runs means: go again right after it.
            self._poked = anyio.Event()
            node = self.node
            if node is not None:
                for key in plan.due(keys(), anyio.current_time()):
                    try:
                        self.announced += await node.announce_key(key, port, self.ttl)
                    except OSError as exc:
                        log.info("DHT announce failed: %s", exc)
                    else:
                        plan.announced(key, anyio.current_time())
                data = latest_root() if latest_root is not None else None
                if data is not None and plan.root_due(data, anyio.current_time()):
                    await self.put_root(data)
                    plan.root_put(data, anyio.current_time())
            now = anyio.current_time()
            with anyio.move_on_after(plan.next_due(now) - now):
                await self._poked.wait()

    async def put_root(self, root: bytes) -> None:
        if self.node is None:
            return
        _, parsed = decode_signed_root(root)
        await self.node.put_root(root, min(parsed.keys))


def full_store_keys(store: Store) -> list[bytes]:
    """Bin records of a store that holds whole bins (its latest root's non-empty bins)."""
    data = store.latest_root()
    if data is None:
        return []
    root = decode_signed_root(data)[1]
    try:
        top = decode_as(store.get_object(root.tree), TreeNode)
    except P2pkgError:
        return []
    first = min(root.keys)
    return [bin_key(first, entry.slot) for entry in top.children]


def held_file_keys(store: Store) -> list[bytes]:
    """One record per archive the store holds whole."""
    return [file_key(f.blake3) for f in store.iter_files()]


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
