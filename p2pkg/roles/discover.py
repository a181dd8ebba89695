"""Finding peers beyond the configured ones: LAN caches and DHT providers.

The order a client prefers them in is the peer book's tiers: caches found
on the LAN (:attr:`Tier.LAN`), peers the user named (:attr:`Tier.MIRROR`),
providers found through the DHT (:attr:`Tier.DHT`). Both searches are
one-shot and bounded in time; what they find joins a :class:`PeerLinks`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from p2pkg.core.objects import name_hash
from p2pkg.core.peers import Tier
from p2pkg.roles.links import Peer

if TYPE_CHECKING:  # zeroconf and kademlia cost ~80 ms of start-up: imported when used
    from p2pkg.core.lookup import LookupResult
    from p2pkg.io.dht_service import DhtService

log = logging.getLogger(__name__)

#: Seconds to listen for DNS-SD answers when none comes (one that comes ends the
#: wait soon after: see :meth:`Lan.browse`).
LAN_WAIT = 3.0


def trust_key(pinned: frozenset[bytes]) -> bytes:
    """The key peers of one namespace share on the LAN and in the DHT (the first pinned)."""
    return min(pinned)


async def lan_peers(
    pinned: frozenset[bytes], interfaces: Sequence[str] | None = None, wait: float = LAN_WAIT
) -> list[Peer]:
    """Caches announced on the LAN for this namespace (DNS-SD), as LAN-tier peers."""
    from p2pkg.io.discovery import Lan

    found = await Lan(interfaces or None).browse(wait, key=trust_key(pinned).hex())
    for peer in found:
        log.info("found LAN cache %s", peer.url)
    return [Peer(p.url, Tier.LAN) for p in found]


#: Unconfirmed provider addresses (:attr:`LookupResult.hints`) one discovery
#: returns in all: each lookup yields a few, and one discovery runs a lookup
#: per bin, so the total is capped again here.
MAX_HINTS = 4
#: Ports of one host one discovery returns in all (seeds sharing an address).
PER_HOST = 2


def provider_url(host: str, port: int) -> str:
    """The peer URL of a provider address (an IPv6 host in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bin_slots(names: Iterable[str]) -> list[int]:
    """The namespace bins (first byte of the name hash) holding ``names`` (normalized)."""
    return sorted({name_hash(n)[0] for n in names})


def choose_providers(results: Iterable[LookupResult]) -> list[tuple[str, int]]:
    """The provider addresses a discovery keeps from its lookups' answers, best first.

    Provider addresses are hints a liar can aim at anyone (docs/security.md,
    "DHT"), and each becomes a connection: the confirmed providers first, then
    at most :data:`MAX_HINTS` unconfirmed ones, and at most :data:`PER_HOST`
    ports of any one host, over all the lookups together.
    """
    from p2pkg.core.dht_records import host_key  # lazy: only DHT lookups need it

    confirmed: list[tuple[str, int]] = []
    unconfirmed: list[tuple[str, int]] = []
    for result in results:
        hints = set(result.hints)
        for address in result.providers:
            (unconfirmed if address in hints else confirmed).append(address)
    vouched = set(confirmed)
    per_host: Counter[str] = Counter()
    out: dict[tuple[str, int], None] = {}
    hinted = 0
    for address in [*confirmed, *unconfirmed]:
        host = host_key(address[0])
        if address in out or per_host[host] >= PER_HOST:
            continue
        if address not in vouched:
            if hinted >= MAX_HINTS:
                continue
            hinted += 1
        per_host[host] += 1
        out[address] = None
    return list(out)


async def dht_peers(dht: DhtService, pinned: frozenset[bytes], names: Iterable[str]) -> list[Peer]:
    """Providers of the namespace bins holding ``names`` (normalized), as DHT-tier peers.

    Runs the DHT node only for the lookups: one per distinct bin, all at once
    (one after another, ten bins cost ten lookups' time before the first
    byte; netsim measured it), kept by :func:`choose_providers`.
    """
    import anyio

    from p2pkg.core.dht_records import bin_key  # lazy: only DHT lookups need it

    slots = bin_slots(names)
    results: dict[int, LookupResult] = {}
    async with dht.running() as node:

        async def one(slot: int) -> None:
            results[slot] = await node.lookup_providers(bin_key(trust_key(pinned), slot))

        async with anyio.create_task_group() as tg:
            for slot in slots:
                tg.start_soon(one, slot)
    chosen = choose_providers(results[slot] for slot in slots)
    return [Peer(provider_url(*address), Tier.DHT) for address in chosen]


__all__ = [
    "LAN_WAIT",
    "MAX_HINTS",
    "PER_HOST",
    "bin_slots",
    "choose_providers",
    "dht_peers",
    "lan_peers",
    "provider_url",
    "trust_key",
]
