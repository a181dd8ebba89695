"""Seeding several namespaces from one process and one port (``p2pkg seed --namespace``).

Each namespace is a :class:`~p2pkg.roles.seed.Seeder` of its own — keys,
upstreams, store (``STORE/NAME``), freshness, subscribers — whose server is
mounted at ``/ns/NAME/`` on the one that listens: a peer of namespace
``corp`` uses ``http://HOST:PORT/ns/corp`` as its base URL. The first
namespace is also served at the top level (``/p2pkg/v1/``), so peers that
know one namespace keep working; ``/p2pkg/v1/status`` reports every
namespace under ``namespaces``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from p2pkg.io.dht_service import DhtService
from p2pkg.io.http import metrics
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.roles import role_pages
from p2pkg.roles.namespace_choice import NamespaceSpec
from p2pkg.roles.role_metrics import seed_health, seed_metrics
from p2pkg.roles.seed import SeedConfig, Seeder

log = logging.getLogger(__name__)


class SeedGroup:
    """One seeder per namespace behind one listening server (see the module doc)."""

    def __init__(
        self,
        store_dir: Path,
        namespaces: Sequence[NamespaceSpec],
        *,
        projects: Sequence[str] = (),
        config: SeedConfig = SeedConfig(),  # noqa: B008 - frozen
        server_config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen
        dht: DhtService | None = None,
    ) -> None:
        if not namespaces:
            raise ValueError("at least one namespace")
        self.seeders: dict[str, Seeder] = {}
        try:
            for i, spec in enumerate(namespaces):
                self.seeders[spec.name] = Seeder(
                    store_dir / spec.name,
                    spec.pinned,
                    [str(p) for p in spec.peers],
                    projects=projects,
                    config=config,
                    server_config=server_config,
                    dht=dht if i == 0 else None,  # the DHT names one namespace's bins
                )
        except BaseException:
            for seeder in self.seeders.values():
                seeder.store.close()
            raise
        self.primary = self.seeders[namespaces[0].name]
        self.server = PeerServer(self.primary.store, server_config, status_extra=self.status)
        for name, seeder in self.seeders.items():
            self.server.mount(f"/ns/{name}", seeder.server)
        self.server.front(self.primary.server)
        metrics.install(
            self.server,
            partial(seed_metrics, self.seeders),
            partial(seed_health, self.seeders),
        )
        role_pages.install(self.server, lambda _ex: role_pages.seed_page(self.seeders))

    def status(self) -> dict[str, Any]:
        return {
            **self.primary.status(),
            "namespaces": {name: s.server.status() for name, s in self.seeders.items()},
        }

    async def close(self) -> None:
        for seeder in self.seeders.values():
            await seeder.close()

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve every namespace and follow each one's upstreams until cancelled."""
        async with anyio.create_task_group() as tg:
            url = await tg.start(self.server.run, host, port)
            for seeder in self.seeders.values():
                await tg.start(seeder.run_mounted)
            log.info("seed serving %s on %s", ", ".join(self.seeders), url)
            task_status.started(url)


__all__ = ["SeedGroup"]
