"""Push subscriptions: who is told at once when a node has a new root (protocol §6.6).

Polling every 30 s keeps a mirror at most 30 s behind and costs the
upstream one request per mirror per interval; a push brings a new root to
every subscribed mirror within a round trip, and nobody keeps ``--notify``
lists. A seed or cache subscribes to each of its upstreams when it starts
and renews at half the subscription's lifetime, with back-off when the
upstream is away.

``POST /p2pkg/v1/subscribe`` with the body ``<port>`` (decimal), or
``<port> /ns/<name>`` for a namespace mounted under that path on a node
serving several: the upstream pushes to ``http://<the address the request
came from>:<port>[/ns/<name>]``.
A node can therefore subscribe only itself — the list cannot aim pushes at
a third party — and needs no idea of its own public address. Subscriptions
expire after their ``ttl`` (answered as JSON ``{"ttl": seconds}``), are
capped per client address and in total, and a subscriber that fails
several pushes in a row is dropped. A push is the existing ``notify``: the
signed root frame, only a hint (the subscriber still polls its upstreams
and checks everything).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from p2pkg.errors import P2pkgError
from p2pkg.io.http import wire
from p2pkg.io.http.client import ClientConfig, PeerClient
from p2pkg.io.http.server import Exchange, PeerServer, address_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubscriptionConfig:
    ttl: float = 3600.0  # a subscription lasts this long unless renewed
    per_address: int = 8  # subscriptions one client address may hold
    total: int = 4096
    max_failures: int = 3  # pushes failed in a row before a subscriber is dropped
    parallel: int = 32  # pushes in flight
    push_timeout: float = 5.0


@dataclass
class _Subscriber:
    url: str
    address: str
    expires: float
    failures: int = 0


#: ``<port>`` or ``<port> /ns/<namespace name>``.
SUBSCRIBE_BODY = re.compile(r"([0-9]{1,5})(?: (/ns/[a-z0-9][a-z0-9_-]{0,31}))?")


@dataclass
class Subscriptions:
    """The subscribers of one node, and pushing a root to them."""

    config: SubscriptionConfig = field(default_factory=SubscriptionConfig)
    clock: Callable[[], float] = time.monotonic
    pushes: int = 0
    push_failures: int = 0
    _subs: dict[str, _Subscriber] = field(default_factory=dict)

    def install(self, server: PeerServer) -> None:
        """Serve ``/p2pkg/v1/subscribe`` on ``server``."""
        server.route(wire.SUBSCRIBE_PATH, self.handle)

    def subscribe(self, host: str, port: int, path: str = "") -> str:
        """Subscribe ``http://host:port[path]`` (``host``: the request's source); its URL.

        Raises ValueError when the address or the whole list is full.
        """
        now = self.clock()
        self._expire(now)
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        url = f"http://[{ip}]:{port}" if ip.version == 6 else f"http://{ip}:{port}"
        url += path
        address = address_key(str(ip))
        sub = self._subs.get(url)
        if sub is None:
            if sum(s.address == address for s in self._subs.values()) >= self.config.per_address:
                raise ValueError(f"at most {self.config.per_address} subscriptions per address")
            if len(self._subs) >= self.config.total:
                raise ValueError("the subscription list is full")
            sub = self._subs[url] = _Subscriber(url, address, 0.0)
            log.info("subscribed %s", url)
        sub.expires = now + self.config.ttl
        sub.failures = 0
        return url

    def live(self) -> list[str]:
        """The subscribers' URLs now."""
        self._expire(self.clock())
        return sorted(self._subs)

    def _expire(self, now: float) -> None:
        for url in [u for u, s in self._subs.items() if s.expires <= now]:
            del self._subs[url]

    async def handle(self, ex: Exchange) -> bool:
        """``POST /p2pkg/v1/subscribe``: 202 ``{"ttl": s}``, 400 bad port, 429 over a cap."""
        if ex.path != wire.SUBSCRIBE_PATH or ex.req.method != "POST":
            return await ex.reply(404, b"not found")
        match = SUBSCRIBE_BODY.fullmatch(ex.body.decode("ascii", "replace").strip())
        if match is None or not 1 <= int(match[1]) <= 65535:
            return await ex.reply(
                400, b"body must be the port (1-65535) to push to, then optionally ' /ns/NAME'"
            )
        try:
            self.subscribe(ex.peer_host, int(match[1]), match[2] or "")
        except ValueError as exc:
            return await ex.reply(429, str(exc).encode(), headers=[("Retry-After", "60")])
        body = json.dumps({"ttl": int(self.config.ttl)}).encode()
        return await ex.reply(202, body, ctype="application/json")

    async def push(self, frame: bytes) -> dict[str, str]:
        """POST ``frame`` (a signed root) to every subscriber: url -> "ok" or why not."""
        out: dict[str, str] = {}
        limiter = anyio.CapacityLimiter(self.config.parallel)
        cfg = ClientConfig(connect_timeout=self.config.push_timeout)

        async def one(sub: _Subscriber) -> None:
            async with limiter:
                client = PeerClient(sub.url, cfg)
                try:
                    with anyio.fail_after(self.config.push_timeout):
                        status, _ = await client.post(wire.NOTIFY_PATH, frame)
                    out[sub.url] = "ok" if status == 202 else f"HTTP {status}"
                except (P2pkgError, TimeoutError) as exc:
                    out[sub.url] = str(exc) or "timed out"
                finally:
                    client.close()
            if out[sub.url] == "ok":
                sub.failures = 0
            else:
                sub.failures += 1
                if sub.failures >= self.config.max_failures:
                    log.info("dropping subscriber %s: %s", sub.url, out[sub.url])
                    self._subs.pop(sub.url, None)

        self._expire(self.clock())
        async with anyio.create_task_group() as tg:
            for sub in list(self._subs.values()):
                tg.start_soon(one, sub)
        self.pushes += len(out)
        self.push_failures += sum(v != "ok" for v in out.values())
        return out

    def status(self) -> dict[str, object]:
        return {
            "subscribers": len(self.live()),
            "pushes": self.pushes,
            "push_failures": self.push_failures,
        }


async def keep_subscribed(
    upstreams: Sequence[str],
    port: Callable[[], int],
    *,
    path: str = "",
    retry: float = 5.0,
    max_backoff: float = 300.0,
    client_config: ClientConfig = ClientConfig(),  # noqa: B008 - frozen
) -> None:
    """Subscribe to each upstream and renew at half its ttl, until cancelled.

    An upstream that refuses (404: it takes no subscriptions, e.g. a static
    server) is left alone for ``max_backoff``; one that is away is retried
    from ``retry`` seconds doubling up to ``max_backoff``. ``path``: where
    this node serves the namespace (``/ns/NAME`` on a node serving several).
    """

    async def one(url: str) -> None:
        delay = retry
        while True:
            client = PeerClient(url, client_config)
            try:
                body = f"{port()} {path}".strip().encode()
                status, body = await client.post(wire.SUBSCRIBE_PATH, body)
            except P2pkgError as exc:
                log.info("cannot subscribe to %s (retry in %.0fs): %s", url, delay, exc)
                status, body = 0, b""
            finally:
                client.close()
            if status == 202:
                try:
                    ttl = float(json.loads(body)["ttl"])
                except (ValueError, KeyError, TypeError):
                    ttl = 2 * max_backoff
                delay = retry
                await anyio.sleep(max(1.0, min(ttl / 2, 3600.0)))
                continue
            if status == 404:
                await anyio.sleep(max_backoff)
                continue
            await anyio.sleep(delay)
            delay = min(max_backoff, delay * 2)

    async with anyio.create_task_group() as tg:
        for url in upstreams:
            tg.start_soon(one, url)


__all__ = ["SubscriptionConfig", "Subscriptions", "keep_subscribed"]
