"""Serving a store as it is: the master's own peer, or any full store.

The simplest role: one :class:`~p2pkg.io.http.server.PeerServer` over one
store, and optionally a DHT node announcing every non-empty namespace bin and
the latest root. Nothing is fetched or followed.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from p2pkg.io.dht_service import DhtService, full_store_keys
from p2pkg.io.download_counts import DownloadCounts
from p2pkg.io.http import metrics
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles import role_pages
from p2pkg.roles.role_metrics import health_of_store, serve_metrics

log = logging.getLogger(__name__)


class StoreServer:
    """Serve the store at ``store_path`` (it must exist) until cancelled."""

    def __init__(
        self,
        store_path: Path,
        config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen
        *,
        dht: DhtService | None = None,
    ) -> None:
        self.store_path = store_path
        self.config = config
        self.dht = dht

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the store, serve it, ``started(url)``; close it when cancelled."""
        with Store.open(self.store_path) as store:  # a clear error if there is none
            server = PeerServer(store, self.config)
            counts = DownloadCounts(self.store_path)
            counts.install(server)
            metrics.install(
                server,
                partial(serve_metrics, store, self.dht),
                partial(health_of_store, store),
            )
            role_pages.install(server, lambda _ex: role_pages.serve_page(store, server, counts))
            async with anyio.create_task_group() as tg:
                url = await tg.start(server.run, host, port)
                tg.start_soon(counts.run)
                if self.dht is not None:
                    # A full store: one record per non-empty bin, and the latest root.
                    await self.dht.announce_on(
                        tg, lambda: full_store_keys(store), server.port, store.latest_root
                    )
                log.info("serving %s on %s", self.store_path, url)
                task_status.started(url)


__all__ = ["StoreServer"]
