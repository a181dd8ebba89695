"""LAN discovery with DNS-SD over mDNS (``_p2pkg._tcp``), python-zeroconf.

A cache announces itself with TXT properties ``role`` and ``key`` (the hex of
the first master key it trusts); caches and clients browse and keep the peers
that trust the same key. An announcement is only a hint: everything a LAN
peer serves is verified like any other peer's bytes, so a spoofed announcement
costs at most a failed request.

``interfaces`` limits where mDNS is sent and listened for: None means every
interface (a site's LAN); tests and the demo pass ``["127.0.0.1"]`` so that
nothing is multicast beyond loopback.

:meth:`Lan.run` is the long-running form (a cache: announce, and watch for
other caches); :meth:`Lan.browse` the one-shot form (``p2pkg fetch``). Every
task either starts — resolving a service a browser saw — is a child of
``run``'s task group, and zeroconf is closed on the way out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from zeroconf import DNSQuestionType, InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE = "_p2pkg._tcp.local."
RESOLVE_MS = 2000  # how long one service's SRV/TXT/A query may take
MAX_RESOLVING = 64  # services resolved at once; names beyond it (a flood) are skipped
RESOLVE_GRACE = 1.0  # browse: how long to wait for resolutions under way at its deadline
CLOSE_TIMEOUT = 2.0  # the bound on goodbyes and closing zeroconf on the way out
# Ask for multicast answers (QM), never unicast ones (QU, zeroconf's default for a first
# query): several mDNS sockets share port 5353 on one host (two caches, a cache and a
# fetch, avahi), and the kernel hands a unicast answer to only one of them — often not
# the one that asked, so a fresh browser would see nothing.
QUESTION = DNSQuestionType.QM


@dataclass(frozen=True, slots=True)
class LanPeer:
    url: str
    role: str
    key: str


@dataclass(frozen=True, slots=True)
class LanAnnouncement:
    """What :meth:`Lan.run` announces: a service on ``port``.

    ``listening_on`` is the address the server bound: a server bound to one
    address is announced with that address only, and one bound to loopback
    is not announced on a LAN at all (nobody there could reach it).
    """

    port: int
    role: str
    key: str
    listening_on: str | None = None


def _interface_addresses() -> list[str]:
    import ifaddr  # a zeroconf dependency

    return [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def announce_addresses(
    listening_on: str | None, interfaces: Sequence[str] | None, local: Sequence[str]
) -> list[str]:
    """The IPv4 addresses to put in an announcement: only those a peer can reach.

    ``listening_on`` is the address the server bound (``0.0.0.0``/``""`` for
    every interface, None when unknown); ``interfaces`` the mDNS interfaces
    (None: all); ``local`` this host's non-loopback addresses. A server bound
    to loopback is reachable from this host only, so it is announced only
    when mDNS itself is pinned to loopback (tests, demos); an empty list
    means: do not announce.
    """
    if listening_on in (None, "", "0.0.0.0", "::"):
        return list(interfaces) if interfaces else list(local)
    assert listening_on is not None
    if ":" in listening_on:
        return []  # an IPv6-only listener: the announcement carries IPv4 addresses only
    if _is_loopback(listening_on):
        pinned_to_loopback = bool(interfaces) and all(_is_loopback(i) for i in interfaces or ())
        return [listening_on] if pinned_to_loopback else []
    return [listening_on]


#: Seconds a browse goes on after the first matching peer, for the others.
SETTLE = 0.3


def _text(value: bytes | None) -> str:
    # TXT values come from anyone on the LAN: undecodable bytes must not raise.
    return (value or b"").decode("utf-8", "replace")


class Lan:
    """One mDNS responder/browser; :meth:`run` it on a task group (or :meth:`browse` once)."""

    def __init__(self, interfaces: Sequence[str] | None = None) -> None:
        self.interfaces = list(interfaces) if interfaces else None
        #: Every peer seen while running with ``on_peer`` (by service name), own included.
        self.peers: dict[str, LanPeer] = {}
        self._own: set[str] = set()
        self._running = False
        # Set while run() browses; the zeroconf handler hands work to them.
        self._tg: TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._zc: AsyncZeroconf | None = None
        self._on_peer: Callable[[LanPeer], None] | None = None
        self._resolving: set[str] = set()
        self._idle: anyio.Event | None = None  # browse waits on it: set when none is resolving

    async def run(
        self,
        *,
        announce: LanAnnouncement | None = None,
        on_peer: Callable[[LanPeer], None] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Announce ``announce`` and, given ``on_peer``, watch the LAN, until cancelled.

        ``started()`` once the announcement is registered (and the browser
        started). ``on_peer`` is called in the event loop for each peer found
        or updated, other than this one's own announcement; :attr:`peers`
        holds them all. On the way out — cancelled or not — the browser
        stops, the announcement is withdrawn (goodbye packets) and zeroconf
        closes, shielded from the cancellation and bounded by
        :data:`CLOSE_TIMEOUT`.
        """
        if self._running:
            raise RuntimeError("this Lan is already running")
        self._running = True
        choice: list[str] | InterfaceChoice = self.interfaces or InterfaceChoice.All
        # Made here, in the running loop: zeroconf then uses this loop (and calls
        # the browser's handler in it) instead of starting a thread of its own.
        zc = AsyncZeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
        info: AsyncServiceInfo | None = None
        pending: list[Awaitable[Any]] = []  # zeroconf's broadcast tasks
        browser: AsyncServiceBrowser | None = None
        try:
            if announce is not None:
                info, broadcast = await self._register(zc, announce)
                if broadcast is not None:
                    pending.append(broadcast)
            async with anyio.create_task_group() as tg:
                if on_peer is not None:
                    self._tg, self._zc, self._on_peer = tg, zc, on_peer
                    self._loop = asyncio.get_running_loop()
                    browser = AsyncServiceBrowser(
                        zc.zeroconf, SERVICE, handlers=[self._changed], question_type=QUESTION
                    )
                task_status.started()
                await anyio.sleep_forever()
        finally:
            # No await before this: a handler running after the group ended sees None.
            self._tg = self._zc = self._on_peer = self._idle = None
            self._loop = None
            self._resolving.clear()
            try:
                await self._close(zc, browser, info, pending)
            finally:
                self._own.clear()
                self._running = False

    async def _register(
        self, zc: AsyncZeroconf, announce: LanAnnouncement
    ) -> tuple[AsyncServiceInfo | None, Awaitable[Any] | None]:
        local = [] if self.interfaces else _interface_addresses()
        addresses = announce_addresses(announce.listening_on, self.interfaces, local)
        if not addresses:
            log.info("not announcing on the LAN: listening on %s only", announce.listening_on)
            return None, None
        name = f"{announce.role}-{uuid.uuid4().hex[:12]}.{SERVICE}"
        info = AsyncServiceInfo(
            SERVICE,
            name,
            addresses=[socket.inet_aton(a) for a in addresses],
            port=announce.port,
            properties={"role": announce.role, "key": announce.key, "path": "/"},
        )
        self._own.add(name)
        broadcast = await zc.async_register_service(info)
        log.info("announced %s on the LAN at %s port %d", name, ", ".join(addresses), announce.port)
        return info, broadcast

    async def _close(
        self,
        zc: AsyncZeroconf,
        browser: AsyncServiceBrowser | None,
        info: AsyncServiceInfo | None,
        pending: list[Awaitable[Any]],
    ) -> None:
        """Stop browsing, say goodbye, close zeroconf: shielded, bounded, always closed."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT):
                if browser is not None:
                    await browser.async_cancel()
                for broadcast in pending:  # announcements still being repeated
                    if isinstance(broadcast, asyncio.Future):
                        broadcast.cancel()
                if info is not None:
                    goodbye = await zc.async_unregister_service(info)
                    await goodbye  # peers drop us now instead of at the record's expiry
            with anyio.move_on_after(CLOSE_TIMEOUT) as scope:
                await zc.async_close()
            if scope.cancelled_caught:
                log.warning("zeroconf did not close within %.0f s", CLOSE_TIMEOUT)
                zc.zeroconf.close()  # sockets and engine, without the goodbyes

    # ------------------------------------------------------------------ browsing

    def _changed(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """zeroconf's handler: get back to the loop, then hand the work to run's group."""
        loop = self._loop
        if loop is None:
            return
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:  # another thread
            in_loop = False
        if in_loop:
            self._on_change(name, state_change)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._on_change, name, state_change)

    def _on_change(self, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self.peers.pop(name, None)
            return
        tg = self._tg
        if tg is None or name in self._resolving or len(self._resolving) >= MAX_RESOLVING:
            return  # not running (any more), already being resolved, or a flood
        self._resolving.add(name)
        tg.start_soon(self._resolve, name)

    async def _resolve(self, name: str) -> None:
        try:
            peer = await self._lookup(name)
        finally:
            self._resolving.discard(name)
            if not self._resolving and self._idle is not None:
                self._idle.set()
        on_peer = self._on_peer
        if peer is None or on_peer is None:
            return
        self.peers[name] = peer
        if name not in self._own:
            on_peer(peer)

    async def _lookup(self, name: str) -> LanPeer | None:
        zc = self._zc
        if zc is None:
            return None
        try:
            info = AsyncServiceInfo(SERVICE, name)
            if not await info.async_request(zc.zeroconf, RESOLVE_MS, question_type=QUESTION):
                return None
        except ZeroconfError as exc:  # a malformed name, or zeroconf shutting down
            log.debug("could not resolve %s: %s", name, exc)
            return None
        props = {_text(k): _text(v) for k, v in info.properties.items()}
        addresses = info.parsed_addresses()
        if not addresses or info.port is None:
            return None
        return LanPeer(
            f"http://{addresses[0]}:{info.port}", props.get("role", ""), props.get("key", "")
        )

    async def browse(
        self, wait: float, key: str | None = None, *, settle: float = SETTLE
    ) -> list[LanPeer]:
        """Peers seen within ``wait`` seconds (those trusting ``key`` if given).

        One shot: runs a browser until ``settle`` seconds after the first
        matching peer was resolved (others on the LAN answer the same query
        within milliseconds), or ``wait`` seconds when none is found — no
        polling — then gives services whose resolution is under way up to
        :data:`RESOLVE_GRACE` more, and closes. So a LAN with a cache costs
        a fraction of ``wait``, and a busy machine still has all of it.
        """
        self.peers.clear()
        found = anyio.Event()

        def on_peer(peer: LanPeer) -> None:
            if key is None or peer.key == key:
                found.set()

        async with anyio.create_task_group() as tg:
            await tg.start(partial(self.run, on_peer=on_peer))
            with anyio.move_on_after(wait):
                await found.wait()
                await anyio.sleep(settle)
            if self._resolving:
                self._idle = anyio.Event()
                with anyio.move_on_after(RESOLVE_GRACE):
                    await self._idle.wait()
            tg.cancel_scope.cancel()
        return [p for p in self.peers.values() if key is None or p.key == key]


__all__ = ["SERVICE", "Lan", "LanAnnouncement", "LanPeer", "announce_addresses"]
