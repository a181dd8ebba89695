"""The peers a process talks to: the :class:`~p2pkg.core.peers.PeerBook` and one link each.

Every part that asks peers for something — the root follower, the object
source, the file downloader — shares one :class:`PeerLinks`, so a ban for
bad data, a measured rate, a back-off for a slow peer or a newly discovered
peer is seen by all of them, and a peer's HTTP connections are reused
across files. Links are made by ``link_factory`` (HTTP in the product;
fakes in unit tests and netsim).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from p2pkg.core.link import Link
from p2pkg.core.peers import PeerBook, PeerRecord, Tier
from p2pkg.errors import PeerError, TooSlowError, TransportError
from p2pkg.io.http.client import ClientConfig
from p2pkg.io.http.link import HttpLink

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer's base URL and its locality tier (LAN, configured / mirror list, DHT)."""

    url: str
    tier: int = Tier.MIRROR


class PeerLinks:
    """A peer book plus a link per peer, made on first use and reused."""

    def __init__(
        self,
        peers: Iterable[str | Peer] = (),
        *,
        book: PeerBook | None = None,
        link_factory: Callable[[str], Link] | None = None,
        client_config: ClientConfig = ClientConfig(),  # noqa: B008 - frozen
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = book if book is not None else PeerBook()
        self.monotonic = monotonic  # bans and rates run on intervals, never wall time
        self._factory = link_factory or (lambda url: HttpLink(url, client_config))
        self._links: dict[str, Link] = {}
        for p in peers:
            self.add(p)

    def add(self, peer: str | Peer) -> None:
        """Add a peer; a peer already known keeps the better (lower) tier."""
        p = peer if isinstance(peer, Peer) else Peer(peer)
        self.book.add(p.url, Tier(p.tier))

    def link(self, url: str) -> Link:
        """The link to peer ``url`` (made on first use)."""
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = self._factory(url)
        return link

    def live(self) -> list[PeerRecord]:
        """Peers not banned now, best first (backed-off peers last; see :meth:`PeerBook.live`)."""
        return self.book.live(self.monotonic())

    def failed(self, url: str, exc: PeerError) -> None:
        """Note what a request to ``url`` ended with: a transport failure backs it off.

        A peer that was too slow also gets the rate it showed. A 404, a 503
        or a peer that cannot answer a batch (a static server) is no failure.
        """
        now = self.monotonic()
        if isinstance(exc, TooSlowError):
            self.book.observe_slow(url, now, exc.rate)
        elif isinstance(exc, TransportError):
            self.book.observe_failure(url, now)

    def outrun(self, url: str) -> None:
        """``url`` had not answered when another peer's answer came: back it off."""
        log.info("peer %s was outrun by another peer: asked last for a while", url)
        self.book.observe_slow(url, self.monotonic())

    def ban(self, url: str, reason: str) -> None:
        """Ban ``url`` for data that failed verification (every part stops asking it)."""
        log.warning("banning peer %s: %s", url, reason)
        self.book.ban(url, reason, self.monotonic())

    @property
    def peers(self) -> list[Peer]:
        """Every known peer, best tier first."""
        return [Peer(r.url, r.tier) for r in sorted(self.book, key=lambda r: r.tier)]

    @property
    def banned(self) -> set[str]:
        """Peers banned now."""
        return set(self.book.banned(self.monotonic()))

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()


__all__ = ["Peer", "PeerLinks"]
