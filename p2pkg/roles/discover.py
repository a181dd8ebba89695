"""Finding peers beyond the configured ones: LAN caches and DHT providers.

The order a client prefers them in is the peer book's tiers: caches found
on the LAN (:attr:`Tier.LAN`), peers the user named (:attr:`Tier.MIRROR`),
providers found through the DHT (:attr:`Tier.DHT`). Both searches are
one-shot and bounded in time; what they find joins a :class:`PeerLinks`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from p2pkg.core.dht_records import bin_key
from p2pkg.core.objects import name_hash
from p2pkg.core.peers import Tier
from p2pkg.roles.links import Peer

if TYPE_CHECKING:  # zeroconf and kademlia cost ~80 ms of start-up: imported when used
    from p2pkg.io.dht_service import DhtService

log = logging.getLogger(__name__)

#: Seconds to listen for DNS-SD answers.
LAN_WAIT = 1.0


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


async def dht_peers(dht: DhtService, pinned: frozenset[bytes], names: Iterable[str]) -> list[Peer]:
    """Providers of the namespace bins holding ``names`` (normalized), as DHT-tier peers.

    Runs the DHT node only for the lookups (one per distinct bin).
    """
    slots = sorted({name_hash(n)[0] for n in names})
    out: dict[str, Peer] = {}
    async with dht.running() as node:
        for slot in slots:
            for host, port in await node.find_key(bin_key(trust_key(pinned), slot)):
                url = f"http://{host}:{port}"
                out.setdefault(url, Peer(url, Tier.DHT))
    return list(out.values())


__all__ = ["LAN_WAIT", "dht_peers", "lan_peers", "trust_key"]
