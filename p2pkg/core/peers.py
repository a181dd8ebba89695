"""The peer book: every peer a process knows, and what it has learned of each. Pure.

A node keeps its peers' measured speed (DESIGN.md, "Discovery"): the rate a
peer delivered on one file seeds the scheduler's first assignment on the next,
instead of starting every file from a guess. Peers come in locality tiers
(:class:`Tier`: LAN caches before configured / mirror-list peers before DHT
providers); a peer that sent bad data is banned with a reason and an expiry.

A peer that fails or is too slow (below the client's floor, or outrun by
another peer) is *backed off*, not banned — slowness is not proof of
malice: for a while that doubles with each failure in a row it is asked
after every other peer, whatever its tier, and its rate drops to what it
delivered; after that it is asked after the peers of its tier in good
standing until a transfer from it succeeds.

Everything is driven by the caller's ``now``, so tests and netsim replay it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum


class Tier(IntEnum):
    """Where a peer was learned; lower is preferred."""

    LAN = 0  # a cache found by DNS-SD on the local network
    MIRROR = 1  # configured (--peer, --upstream) or from the signed mirror list
    DHT = 2  # a provider found through the DHT


@dataclass(frozen=True, slots=True)
class PeerBookConfig:
    ban_seconds: float = 3600.0  # bad data: out for an hour, then one more chance
    rate_alpha: float = 0.5  # EWMA weight of the newest throughput sample
    latency_alpha: float = 0.3
    min_sample_bytes: int = 64 * 1024  # smaller transfers measure latency, not rate
    backoff: float = 2.0  # a failing or too-slow peer is asked last this long,
    backoff_cap: float = 300.0  # doubling with each failure in a row up to this


@dataclass(frozen=True, slots=True)
class Ban:
    reason: str
    until: float


@dataclass
class PeerRecord:
    """What the book knows of one peer."""

    url: str
    tier: Tier
    rate: float = 0.0  # bytes/s, EWMA over transfers; 0 = not measured yet
    latency: float | None = None  # seconds to the first byte, EWMA
    received: int = 0
    failures: int = 0  # in a row
    ban: Ban | None = None
    # Asked after every other peer until then. None with failures: reported
    # without a time, so the back-off starts the next time the book is asked.
    backoff_until: float | None = None
    queued: int = 0  # bytes asked of it by requests still running (every download)


class PeerBook:
    """Peers by URL with tiers, bans and measured throughput and latency."""

    def __init__(self, config: PeerBookConfig = PeerBookConfig()) -> None:
        self.config = config
        self._peers: dict[str, PeerRecord] = {}

    def __contains__(self, url: object) -> bool:
        return url in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[PeerRecord]:
        return iter(list(self._peers.values()))

    def get(self, url: str) -> PeerRecord | None:
        return self._peers.get(url)

    def add(self, url: str, tier: Tier = Tier.MIRROR) -> bool:
        """Know ``url``; a peer already known keeps the better tier. True if new."""
        known = self._peers.get(url)
        if known is None:
            self._peers[url] = PeerRecord(url, Tier(tier))
            return True
        if tier < known.tier:
            known.tier = Tier(tier)
        return False

    # ------------------------------------------------------------------ bans

    def ban(self, url: str, reason: str, now: float, seconds: float | None = None) -> None:
        """Keep ``url`` out until ``now + seconds`` (default: the configured ban)."""
        record = self._peers.get(url)
        if record is None:
            return
        duration = self.config.ban_seconds if seconds is None else seconds
        record.ban = Ban(reason, now + duration)

    def is_banned(self, url: str, now: float) -> bool:
        record = self._peers.get(url)
        return record is not None and record.ban is not None and now < record.ban.until

    def banned(self, now: float) -> dict[str, Ban]:
        return {
            r.url: r.ban for r in self._peers.values() if r.ban is not None and now < r.ban.until
        }

    # ------------------------------------------------------------------ choice

    def live(self, now: float) -> list[PeerRecord]:
        """Peers not banned, best first.

        Backed-off peers last; then by tier, peers whose last request failed
        after those in good standing, and faster peers first (unmeasured last).
        """
        return sorted(
            (r for r in self._peers.values() if not self.is_banned(r.url, now)),
            key=lambda r: (self._backing_off(r, now), r.tier, r.failures > 0, -r.rate),
        )

    def rates(self) -> dict[str, float]:
        """Measured rates, to seed a scheduler's first spans."""
        return {r.url: r.rate for r in self._peers.values() if r.rate > 0}

    def reserve(self, url: str, nbytes: int) -> None:
        """A request for ``nbytes`` from ``url`` starts (its queue, for other downloads)."""
        record = self._peers.get(url)
        if record is not None:
            record.queued += nbytes

    def release(self, url: str, nbytes: int) -> None:
        """A request :meth:`reserve` counted ended, however it ended."""
        record = self._peers.get(url)
        if record is not None:
            record.queued = max(0, record.queued - nbytes)

    def queues(self) -> dict[str, int]:
        """Bytes each peer still owes to running requests: downloads starting now
        prefer the peer that would deliver soonest, not one another file keeps busy."""
        return {r.url: r.queued for r in self._peers.values() if r.queued}

    def latencies(self) -> dict[str, float]:
        """Measured latencies (seconds to a first byte), to order a scheduler's first spans."""
        return {r.url: r.latency for r in self._peers.values() if r.latency is not None}

    def backoffs(self, now: float) -> dict[str, float]:
        """Peers backed off at ``now`` and until when (a scheduler defers them)."""
        return {
            r.url: r.backoff_until
            for r in self._peers.values()
            if self._backing_off(r, now) and r.backoff_until is not None
        }

    def _backing_off(self, record: PeerRecord, now: float) -> bool:
        if record.failures and record.backoff_until is None:
            record.backoff_until = now + self._backoff(record.failures)
        return record.backoff_until is not None and now < record.backoff_until

    def _backoff(self, failures: int) -> float:
        cfg = self.config
        return min(cfg.backoff_cap, cfg.backoff * (1 << min(max(failures - 1, 0), 32)))

    # ------------------------------------------------------------------ observations

    def observe_transfer(
        self, url: str, nbytes: int, seconds: float, *, rate_sample: bool = True
    ) -> None:
        """``nbytes`` arrived from ``url`` in ``seconds`` (a span, an object batch).

        ``rate_sample=False``: a success that says nothing of the peer's rate
        (a small answer whose time is mostly the round trip).
        """
        record = self._peers.get(url)
        if record is None:
            return
        record.received += nbytes
        record.failures = 0  # a success: back in good standing
        record.backoff_until = None
        if rate_sample and nbytes >= self.config.min_sample_bytes and seconds > 0:
            sample = nbytes / seconds
            a = self.config.rate_alpha
            record.rate = sample if record.rate <= 0 else a * sample + (1 - a) * record.rate

    def observe_latency(self, url: str, seconds: float) -> None:
        record = self._peers.get(url)
        if record is None or not math.isfinite(seconds) or seconds < 0:
            return
        a = self.config.latency_alpha
        record.latency = (
            seconds if record.latency is None else a * seconds + (1 - a) * record.latency
        )

    def observe_failure(self, url: str, now: float | None = None) -> None:
        """A request to ``url`` failed (refused, reset, stalled, cut off): back it off.

        Without ``now`` the failure counts and the back-off starts the next
        time the book is asked with a time.
        """
        record = self._peers.get(url)
        if record is None:
            return
        record.failures += 1
        record.backoff_until = None if now is None else now + self._backoff(record.failures)

    def observe_slow(self, url: str, now: float, rate: float | None = None) -> None:
        """``url`` was too slow (below the floor, or outrun by another peer): back it off.

        ``rate``: what it delivered (bytes/s), which becomes its rate, so
        a scheduler gives it the smallest spans and duplicates them soonest.
        """
        record = self._peers.get(url)
        if record is None:
            return
        if rate is not None:
            record.rate = max(rate, 1.0)  # measured (0 would read "never measured")
        self.observe_failure(url, now)

    def summary(self, now: float) -> list[dict[str, object]]:
        """One row per peer, for status pages and ``--json``."""
        rows: list[dict[str, object]] = []
        for r in sorted(self._peers.values(), key=lambda r: (r.tier, r.url)):
            banned = self.is_banned(r.url, now)
            until = r.backoff_until if self._backing_off(r, now) else None
            rows.append(
                {
                    "url": r.url,
                    "tier": r.tier.name.lower(),
                    "rate": round(r.rate),
                    "latency": None if r.latency is None else round(r.latency, 4),
                    "received": r.received,
                    "failures_in_a_row": r.failures,
                    "backed_off_for": None if until is None else round(until - now, 1),
                    "banned": r.ban.reason if banned and r.ban is not None else None,
                }
            )
        return rows


__all__ = ["Ban", "PeerBook", "PeerBookConfig", "PeerRecord", "Tier"]
