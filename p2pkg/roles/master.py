"""The long-running master: serve the namespace, keep it signed, push every new root.

``p2pkg publish`` signs a root and exits; a namespace needs more than that
to stay usable: roots expire (a stopped master lets them, and clients then
refuse them: the defence against an indefinite freeze), mirrors should hear
of a new root at once rather than at their next poll, and a mirrored
upstream index has to be polled. :class:`Master` does all of it in one
process:

* serves its store to peers (a :class:`~p2pkg.io.http.server.PeerServer`),
  with ``/p2pkg/v1/subscribe`` for seeds and caches (:mod:`.subscriptions`);
* watches the store for a new root — one it signed itself, or one a
  ``p2pkg publish`` in another process committed — and pushes it to every
  subscriber and to the DHT root record;
* re-signs the current root (same tree, version + 1, fresh expiry) once it
  is within ``resign_before`` of expiring;
* runs ``poll`` (mirroring an upstream index) every ``every`` seconds.

Signing runs on the event loop with the serving store's connection: a
re-sign writes one root, and a mirror run does its heavy work (downloads,
hashing) in its own tasks and threads before one commit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.core.root import decode_signed_root
from p2pkg.errors import P2pkgError
from p2pkg.io.dht_service import DhtService, full_store_keys
from p2pkg.io.download_counts import DownloadCounts
from p2pkg.io.http import metrics
from p2pkg.io.http.server import PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles import role_pages
from p2pkg.roles.publish import publish
from p2pkg.roles.role_metrics import health_of_store, master_metrics
from p2pkg.roles.subscriptions import Subscriptions

log = logging.getLogger(__name__)

#: A mirror run: publishes into the store (one root per batch) and returns anything.
Poll = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class MasterConfig:
    expires: int = 7 * 86400  # lifetime of each root the master signs
    resign_before: int = 2 * 86400  # re-sign when the root expires within this
    every: float = 60.0  # poll the upstream index this often (when there is one)
    # ask each mirror of the signed list for its root version this often (the
    # status page and /metrics show how far behind each is); 0: never
    mirror_check: float = 60.0
    watch: float = 0.5  # look for a root another process published this often


@dataclass
class MasterState:
    pushed_version: int = 0
    resigned: int = 0
    polls: int = 0
    last_poll_error: str | None = None
    last_push: dict[str, str] | None = None
    # mirror URL -> (its root version or None, the error or None, wall time checked)
    mirrors: dict[str, tuple[int | None, str | None, float]] = field(default_factory=dict)


class Master:
    """Serve ``store_path``, keep its root fresh and pushed, poll an upstream."""

    def __init__(
        self,
        store_path: Path,
        keys: Sequence[Ed25519PrivateKey],
        *,
        config: MasterConfig = MasterConfig(),
        server_config: ServerConfig = ServerConfig(),  # noqa: B008 - frozen
        poll: Poll | None = None,
        dht: DhtService | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.resign_before >= config.expires:
            raise ValueError("resign_before must be shorter than expires")
        # A clear error if there is no store, unless the master fills it itself
        # (mirroring an index: the first poll publishes the first root).
        self.store = Store.open(store_path, create=poll is not None)
        self.store_path = store_path
        self.keys = list(keys)
        self.config = config
        self.poll = poll
        self.dht = dht
        self.clock = clock
        self.state = MasterState()
        self.subscriptions = Subscriptions()
        self.server = PeerServer(self.store, server_config, status_extra=self.status)
        self.subscriptions.install(self.server)
        self.counts = DownloadCounts(store_path)
        self.counts.install(self.server)
        metrics.install(
            self.server, partial(master_metrics, self), lambda: health_of_store(self.store)
        )
        role_pages.install(self.server, lambda _ex: role_pages.master_page(self))
        self._new_root = anyio.Event()

    def status(self) -> dict[str, Any]:
        data = self.store.latest_root()
        expires = decode_signed_root(data)[1].expires if data is not None else None
        return {
            "role": "master",
            "root_expires_in_seconds": None if expires is None else int(expires - self.clock()),
            "resigned": self.state.resigned,
            "polls": self.state.polls,
            "last_poll_error": self.state.last_poll_error,
            **self.subscriptions.status(),
        }

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``started(url)`` once serving. Closes the store."""
        try:
            async with anyio.create_task_group() as tg:
                url = await tg.start(self.server.run, host, port)
                tg.start_soon(self.counts.run)
                if self.dht is not None:
                    await self.dht.announce_on(
                        tg,
                        lambda: full_store_keys(self.store),
                        self.server.port,
                        self.store.latest_root,
                    )
                latest = self.store.latest_root_stored()
                self.state.pushed_version = latest[0] if latest else 0  # mirrors poll that one
                tg.start_soon(self._watch)
                tg.start_soon(self._keep_signed)
                if self.config.mirror_check > 0:
                    tg.start_soon(self._check_mirrors)
                if self.poll is not None:
                    tg.start_soon(self._poll_loop)
                log.info("master serving %s on %s", self.store_path, url)
                task_status.started(url)
        finally:
            self.store.close()

    # ------------------------------------------------------------------ loops

    async def _check_mirrors(self) -> None:
        """Ask every mirror of the signed list for its root version (status pages, metrics)."""
        from p2pkg.io.http.client import ClientConfig, PeerClient

        while True:
            data = self.store.latest_root()
            listed = decode_signed_root(data)[1].mirrors if data is not None else ()

            async def one(url: str) -> None:
                client = PeerClient(url, ClientConfig(connect_timeout=5.0))
                try:
                    with anyio.fail_after(10):
                        code, body, _ = await client.get_bytes("/p2pkg/v1/status", 1 << 20)
                    version = json.loads(body).get("root_version") if code == 200 else None
                    error = None if code == 200 else f"HTTP {code}"
                    if version is not None and not isinstance(version, int):
                        version, error = None, "no root version in its status"
                except (P2pkgError, TimeoutError, ValueError) as exc:
                    version, error = None, str(exc) or "timed out"
                finally:
                    client.close()
                self.state.mirrors[url] = (version, error, self.clock())

            async with anyio.create_task_group() as tg:
                for url in listed[:100]:
                    tg.start_soon(one, url)
            for gone in set(self.state.mirrors) - set(listed):
                del self.state.mirrors[gone]
            await anyio.sleep(self.config.mirror_check)

    async def _watch(self) -> None:
        """Push each new root (ours or another process's) to subscribers and the DHT."""
        while True:
            with anyio.move_on_after(self.config.watch):
                await self._new_root.wait()
            self._new_root = anyio.Event()
            latest = self.store.latest_root_stored()
            if latest is None or latest[0] <= self.state.pushed_version:
                continue
            self.state.pushed_version = latest[0]
            if self.dht is not None:
                self.dht.poke()
            if self.subscriptions.live():
                self.state.last_push = await self.subscriptions.push(latest[2])
                failed = {u: r for u, r in self.state.last_push.items() if r != "ok"}
                log.info(
                    "pushed root version %d to %d subscriber(s)%s",
                    latest[0],
                    len(self.state.last_push),
                    f"; failed: {failed}" if failed else "",
                )

    async def _keep_signed(self) -> None:
        """Re-sign the current root before it expires (same tree, version + 1)."""
        while True:
            data = self.store.latest_root()
            if data is None:
                await anyio.sleep(self.config.watch)
                continue
            expires = decode_signed_root(data)[1].expires
            due = expires - self.config.resign_before - self.clock()
            if due > 0:
                # Bounded so a root published meanwhile (another expiry) is seen.
                await anyio.sleep(min(due, 60.0))
                continue
            try:
                result = publish(self.store, self.keys, [], expires_in=self.config.expires)
            except P2pkgError as exc:
                log.error("cannot re-sign the root: %s (retrying in 60 s)", exc)
                await anyio.sleep(60.0)
                continue
            self.state.resigned += 1
            log.info("re-signed: root version %d", result.version)
            self._new_root.set()

    async def _poll_loop(self) -> None:
        assert self.poll is not None
        while True:
            try:
                await self.poll()
                self.state.last_poll_error = None
            except P2pkgError as exc:
                self.state.last_poll_error = str(exc)
                log.warning("upstream poll failed: %s", exc)
            self.state.polls += 1
            self._new_root.set()
            await anyio.sleep(self.config.every)


__all__ = ["Master", "MasterConfig", "MasterState", "Poll"]
