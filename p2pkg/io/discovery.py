"""LAN discovery with DNS-SD over mDNS (``_p2pkg._tcp``), python-zeroconf.

A cache announces itself with TXT properties ``role`` and ``key`` (the hex of
the first master key it trusts); caches and clients browse and keep the peers
that trust the same key. An announcement is only a hint: everything a LAN
peer serves is verified like any other peer's bytes, so a spoofed announcement
costs at most a failed request.

``interfaces`` limits where mDNS is sent and listened for: None means every
interface (a site's LAN); tests and the demo pass ``["127.0.0.1"]`` so that
nothing is multicast beyond loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE = "_p2pkg._tcp.local."


@dataclass(frozen=True, slots=True)
class LanPeer:
    url: str
    role: str
    key: str


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


class Lan:
    """One mDNS responder/browser for a process."""

    def __init__(self, interfaces: Sequence[str] | None = None) -> None:
        self.interfaces = list(interfaces) if interfaces else None
        choice: list[str] | InterfaceChoice = self.interfaces or InterfaceChoice.All
        self.zc = AsyncZeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
        self._registered: list[AsyncServiceInfo] = []
        self._browser: AsyncServiceBrowser | None = None
        self.peers: dict[str, LanPeer] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def announce(
        self, port: int, role: str, key: str, *, listening_on: str | None = None
    ) -> bool:
        """Announce a service on ``port``; False when no reachable address is left.

        ``listening_on`` is the address the server bound: a server bound to one
        address is announced with that address only, and one bound to loopback
        is not announced on a LAN at all (nobody there could reach it).
        """
        local = [] if self.interfaces else _interface_addresses()
        addresses = announce_addresses(listening_on, self.interfaces, local)
        if not addresses:
            log.info("not announcing on the LAN: listening on %s only", listening_on)
            return False
        name = f"{role}-{uuid.uuid4().hex[:12]}.{SERVICE}"
        info = AsyncServiceInfo(
            SERVICE,
            name,
            addresses=[socket.inet_aton(a) for a in addresses],
            port=port,
            properties={"role": role, "key": key, "path": "/"},
        )
        await self.zc.async_register_service(info)
        self._registered.append(info)
        log.info("announced %s on the LAN at %s port %d", name, ", ".join(addresses), port)
        return True

    def watch(self) -> None:
        """Keep :attr:`peers` up to date in the background."""
        if self._browser is None:
            self._browser = AsyncServiceBrowser(self.zc.zeroconf, SERVICE, handlers=[self._changed])

    def _changed(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self.peers.pop(name, None)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(SERVICE, name)
        if not await info.async_request(self.zc.zeroconf, 2000):
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        addresses = info.parsed_addresses()
        if not addresses or info.port is None:
            return
        url = f"http://{addresses[0]}:{info.port}"
        self.peers[name] = LanPeer(url, props.get("role", ""), props.get("key", ""))

    async def browse(self, wait: float, key: str | None = None) -> list[LanPeer]:
        """Peers seen within ``wait`` seconds (those trusting ``key`` if given)."""
        self.watch()
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._pending:
            await asyncio.wait(self._pending, timeout=1.0)
        own = {i.name for i in self._registered}
        return [
            p for name, p in self.peers.items() if name not in own and (key is None or p.key == key)
        ]

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        for info in self._registered:
            await self.zc.async_unregister_service(info)
        await self.zc.async_close()
