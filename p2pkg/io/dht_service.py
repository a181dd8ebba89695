"""The DHT as the roles use it: join, keep announcements fresh, save identity.

What each role announces (never per chunk, DESIGN.md):

* a full store (the master's ``serve``, a full ``seed``): one record per
  non-empty namespace bin (:func:`p2pkg.core.dht_records.bin_key`) and the latest
  signed root;
* a ``cache`` or a ``seed --project``: one record per archive it holds whole
  (:func:`p2pkg.core.dht_records.file_key`).

Records live ``ttl`` seconds on the nodes and are re-announced every
``ttl / 2``. The node's id and contacts are saved as JSON (``dht.json`` in the
store), so a restarted node keeps its id and rejoins through its old contacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

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
    def __init__(
        self,
        listen: tuple[str, int],
        bootstrap: Sequence[tuple[str, int]] = (),
        state_path: Path | None = None,
        ttl: float = 3600.0,
    ) -> None:
        self.listen = listen
        self.bootstrap = list(bootstrap)
        self.state_path = state_path
        self.ttl = ttl
        self.node: DhtNode | None = None
        self.announced = 0
        self._poked: asyncio.Event | None = None
        self._refresher: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """Announce again now (something new is held)."""
        if self._poked is not None:
            self._poked.set()

    async def start(self) -> DhtNode:
        node_id: bytes | None = None
        contacts: list[tuple[str, int]] = []
        if self.state_path is not None and self.state_path.exists():
            node_id, contacts = DhtNode.load_state_json(self.state_path)
        node = DhtNode(node_id)
        await node.listen(self.listen[1], self.listen[0])
        self.node = node
        seeds = list(dict.fromkeys([*self.bootstrap, *contacts]))
        if seeds:
            found = await node.bootstrap(seeds)
            log.info(
                "DHT node on %s:%d joined (%d contacts)", self.listen[0], node.port, len(found)
            )
        self._refresher = asyncio.get_running_loop().create_task(node.self_lookups())
        return node

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self.node is None:
            return
        if self.state_path is not None:
            try:
                self.node.save_state_json(self.state_path)
            except OSError as exc:
                log.warning("could not save DHT state: %s", exc)
        self.node.stop()
        self.node = None

    async def keep_announcing(
        self,
        keys: Callable[[], Iterable[bytes]],
        port: int,
        root: Callable[[], bytes | None] | None = None,
        every: float | None = None,
    ) -> None:
        """Announce ``keys()`` (and put ``root()``) every ttl/2, until cancelled."""
        while True:
            if self.node is not None:
                for key in list(keys()):
                    try:
                        self.announced += await self.node.announce_key(key, port, self.ttl)
                    except OSError as exc:
                        log.info("DHT announce failed: %s", exc)
                data = root() if root is not None else None
                if data is not None:
                    await self.put_root(data)
            self._poked = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), every or self.ttl / 2)

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
