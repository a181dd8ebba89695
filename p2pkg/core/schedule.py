"""Which span of a file goes to which peer, and what to do when peers fail. Pure.

The transfer unit is a **span**: a run of consecutive chunks, sized so a peer
needs about ``target_span_seconds`` for it at its measured rate (bounded by
``min_span`` / ``max_span``; a small file is one span). The verification unit
is the chunk: the shell reports each verified chunk with :meth:`chunk_done`.

Peers have ``slots`` concurrent spans. On a long link a request waits a
round trip before its first byte, which would leave the link idle once
per span; so when a peer's latency is worth a real share of its
bandwidth (``latency × rate`` of at least ``pipeline_bytes``) its next
span is *pipelined*: requested one latency before the bytes already asked
of it should have arrived (the scheduler keeps each peer's expected
``queue_end``), up to ``max_slots`` in flight — the link stays busy and
each body still gets the whole of it. Latency and rate are learned within
the file: the latency from each span's first byte (:meth:`first_byte`),
the rate from the time each body took after its first byte (or after the
peer's previous body ended), so a round trip is not counted as slowness.

Ready peers are taken in tier order, then by when they should deliver a
span (latency plus the span at their rate), so the file's first spans —
the prefix a cache streams to an installer — go to the nearest fast peer
even before any rate is known.

Failures are classified:

* ``busy`` (503): the peer is skipped until its Retry-After has passed — or,
  when other spans of it are still running, it keeps those (its open
  connections answer) but gets no more spans at once until then;
* ``absent`` (404): the peer does not hold the file; never asked again here;
* ``error`` (timeout, reset, stall, protocol): exponential back-off, and after
  ``max_failures`` in a row the peer is dropped for this file;
* ``slow`` (below the client's rate floor): an error, and the peer's rate
  becomes what it delivered, so its next spans are the smallest;
* ``bad`` (a chunk that fails its hash): the peer is banned.

Peers the peer book has backed off (too slow or failing lately) are
*deferred*: they get no span before their back-off ends while another peer
can work, so a trickling peer costs a file nothing beside an honest one.

When no chunk is left unassigned, an idle peer duplicates the rest of an
in-flight span it is expected to finish at least ``endgame_factor`` times
sooner than the span's owner; the first copy of a chunk wins and the shell
stops a span whose remaining chunks are all done. The owner's speed is its
measured rate while it keeps to it; an owner that is overdue, or unmeasured
and running for ``stall_after``, is judged by what it delivered of the span
(a trickling or silent peer is found out within ``stall_after``).

Everything is driven by the caller's clock, so tests and netsim replay any
timing exactly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    target_span_seconds: float = 1.0
    min_span: int = 512 * 1024
    max_span: int = 32 * 1024 * 1024
    initial_span: int = 4 * 1024 * 1024
    slots: int = 1  # spans in flight per peer on a short link
    max_slots: int = 4  # ... and at most this many on a long one
    # In-flight spans are added once a round trip costs a peer this many bytes
    # of transfer (latency × rate): on loopback or a LAN one span is enough.
    pipeline_bytes: int = 256 * 1024
    assumed_latency: float = 0.0  # for a peer whose latency is not measured yet
    # An unmeasured peer's first rate comes from this many bytes of its first body.
    probe_bytes: int = 512 * 1024
    max_failures: int = 4
    backoff: float = 0.25
    backoff_cap: float = 8.0
    busy_cap: float = 30.0
    rate_alpha: float = 0.5  # EWMA weight of the newest throughput sample
    latency_alpha: float = 0.3  # ... and of the newest latency sample
    # Endgame: duplicate a span only if an idle peer should finish its rest this
    # many times sooner than its owner. An owner is judged by its progress on the
    # span once overdue, or unmeasured and running for stall_after.
    endgame_factor: float = 2.0
    stall_after: float = 0.25
    assumed_rate: float = 8 * 1024 * 1024  # for a peer not measured yet
    endgame_poll: float = 0.1


class Failure(Enum):
    BUSY = "busy"
    ABSENT = "absent"
    ERROR = "error"
    SLOW = "slow"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Span:
    """Chunks ``first`` .. ``end - 1``, bytes ``start`` .. ``stop - 1`` of the file."""

    id: int
    first: int
    end: int
    start: int
    stop: int
    duplicate: bool = False


@dataclass
class PeerState:
    name: str
    tier: int = 0  # lower is preferred (LAN 0, configured 1, DHT 2)
    rate: float = 0.0  # bytes/s, EWMA over finished spans
    latency: float | None = None  # seconds to a span's first byte (the peer book's)
    inflight: dict[int, float] = field(default_factory=dict)  # span id -> start time
    first_bytes: dict[int, float] = field(default_factory=dict)  # span id -> first byte time
    queue_end: float = 0.0  # when the bytes asked of it should all have arrived
    backlog: int = 0  # bytes other downloads were waiting for from it when this one began
    last_end: float = float("-inf")  # when its last body ended
    last_progress: float = float("-inf")  # when its last chunk came (shells that say)
    busy_until: float = 0.0  # answered 503 beside work in flight: no more than
    busy_limit: int = 0  # ... this many spans at once until then
    failures: int = 0
    not_before: float = 0.0
    deferred_until: float = 0.0  # backed off by the peer book: only if nobody else can
    dropped: str | None = None  # why this peer is out for this file
    received: int = 0


class Scheduler:
    """Plans the download of one file from several peers."""

    def __init__(
        self,
        lengths: Sequence[int],
        have: Iterable[int],
        peers: Sequence[tuple[str, int]],
        now: float,
        config: ScheduleConfig = ScheduleConfig(),
        rates: Mapping[str, float] | None = None,
        deferred: Mapping[str, float] | None = None,
        latencies: Mapping[str, float] | None = None,
        queued: Mapping[str, int] | None = None,
    ) -> None:
        """``rates``: throughput measured on earlier files (the peer book), so the
        first spans are sized for the peer instead of ``initial_span``.
        ``deferred``: peers the book has backed off, and until when.
        ``latencies``: measured seconds to a first byte (orders the first
        assignment and sets spans in flight on long links).
        ``queued``: bytes other downloads are waiting for from each peer
        (several files at once spread over the peers, not all on the best)."""
        self.config = config
        self.lengths = list(lengths)
        self.offsets = [0, *itertools.accumulate(self.lengths)]
        self.size = self.offsets[-1]
        self.done = bytearray(len(self.lengths))
        for i in have:
            self.done[i] = 1
        self.remaining = len(self.lengths) - sum(self.done)
        self.cover = [0] * len(self.lengths)  # in-flight spans covering each chunk
        known = rates or {}
        later = deferred or {}
        lat = latencies or {}
        backlog = queued or {}
        self.peers = {
            name: PeerState(
                name,
                tier,
                known.get(name, 0.0),
                lat.get(name),
                deferred_until=later.get(name, 0.0),
                backlog=backlog.get(name, 0),
            )
            for name, tier in peers
        }
        self.spans: dict[int, tuple[str, Span]] = {}
        self._ids = itertools.count()
        self._duplicated: set[int] = set()
        self._hint = 0  # no unassigned chunk before this index
        self.started = now

    # ------------------------------------------------------------------ queries

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    def usable(self, peer: PeerState) -> bool:
        return peer.dropped is None

    def failed(self) -> bool:
        """True when chunks are missing and no peer can ever deliver them."""
        return (
            not self.complete
            and not self.spans
            and not any(self.usable(p) for p in self.peers.values())
        )

    def ready_peers(self, now: float) -> list[str]:
        """Peers that could take a span now, best first.

        By tier, then by when each should deliver a span of its size
        (latency plus transfer at its rate, or the assumed ones).
        """
        ready = [p for p in self.peers.values() if self._ready(p, now)]
        ready.sort(key=lambda p: (p.tier, self._delivery(p, self._span_bytes(p))))
        return [p.name for p in ready]

    def _latency(self, peer: PeerState) -> float:
        return self.config.assumed_latency if peer.latency is None else peer.latency

    def _rate(self, peer: PeerState) -> float:
        return peer.rate if peer.rate > 0 else self.config.assumed_rate

    def _delivery(self, peer: PeerState, nbytes: int) -> float:
        """Seconds ``peer`` should take to deliver ``nbytes`` from a new request
        (behind what other downloads are waiting for, until its first span here)."""
        waiting = peer.backlog if not peer.received and not peer.inflight else 0
        return self._latency(peer) + (waiting + nbytes) / self._rate(peer)

    def _ready(self, peer: PeerState, now: float) -> bool:
        return (
            self.usable(peer)
            and now >= peer.not_before
            and self._has_room(peer, now)
            and not self._deferred(peer, now)
            and not self._stalled(peer, now)
        )

    def _stalled(self, peer: PeerState, now: float) -> bool:
        """Spans in flight and nothing from it for a while: give it nothing more.

        (The client's rate floor cuts it off in time; until then its spans are
        duplicated by the endgame and it takes no new ones.)
        """
        if not peer.inflight or peer.last_progress == -math.inf:
            return False  # nothing in flight, or a shell that reports no times
        since = max(peer.last_progress, min(peer.inflight.values()))
        quiet = max(self.config.stall_after, 4 * self._latency(peer))
        return now - since > quiet

    def _has_room(self, peer: PeerState, now: float) -> bool:
        """Another span now: a free slot, or time to pipeline the next request."""
        if now < peer.busy_until and len(peer.inflight) >= peer.busy_limit:
            return False
        if len(peer.inflight) < self._slots(peer):
            return True
        return len(peer.inflight) < self.config.max_slots and now >= self._pipeline_at(peer)

    def _pipeline_at(self, peer: PeerState) -> float:
        """When the next request should leave so its bytes follow the queued ones."""
        if peer.rate <= 0:
            return math.inf  # not measured: a guess could queue a slow peer deep
        if self._latency(peer) * peer.rate < self.config.pipeline_bytes:
            return math.inf  # one round trip costs less than it is worth
        return peer.queue_end - self._latency(peer)

    def _deferred(self, peer: PeerState, now: float) -> bool:
        """Backed off by the book while some other peer can still work."""
        return now < peer.deferred_until and any(
            self.usable(p) and now >= p.deferred_until for p in self.peers.values()
        )

    def next_wakeup(self, now: float) -> float | None:
        """When to call :meth:`assign` again even if no request ends before then.

        A back-off, busy pause or deferral ending, or, while spans are in flight
        and a peer sits idle, the next endgame check (a stalled owner is only
        noticed by time).
        """
        times = [
            t
            for p in self.peers.values()
            if self.usable(p)
            for t in (p.not_before, p.deferred_until, p.busy_until)
            if t > now
        ]
        times += [
            t
            for p in self.peers.values()
            if p.inflight and self.usable(p)
            for t in (self._pipeline_at(p),)
            if now < t < math.inf
        ]
        if self.spans and self.ready_peers(now):
            times.append(now + self.config.endgame_poll)
        return min(times) if times else None

    def still_needed(self, span: Span) -> bool:
        """Whether any chunk of ``span`` is still missing (else the shell stops it)."""
        return self.missing(span.first, span.end)

    def missing(self, first: int, end: int) -> bool:
        """Whether any of chunks ``first`` .. ``end - 1`` is still missing."""
        return any(not self.done[i] for i in range(first, end))

    def peer_summary(self) -> dict[str, dict[str, object]]:
        return {
            p.name: {
                "rate": p.rate,
                "latency": p.latency,
                "received": p.received,
                "dropped": p.dropped,
            }
            for p in self.peers.values()
        }

    # ------------------------------------------------------------------ decisions

    def _slots(self, peer: PeerState) -> int:
        return 1 if self.size <= self.config.min_span else self.config.slots

    def _span_bytes(self, peer: PeerState) -> int:
        cfg = self.config
        if peer.rate <= 0:
            return cfg.initial_span
        want = int(peer.rate * cfg.target_span_seconds)
        return max(cfg.min_span, min(cfg.max_span, want))

    def assign(self, name: str, now: float) -> Span | None:
        """The next span for peer ``name``, or None if it has nothing to do now."""
        peer = self.peers[name]
        if not self._ready(peer, now):
            return None
        span = self._fresh_span(peer) or self._endgame_span(peer, now)
        if span is None:
            return None
        for i in range(span.first, span.end):
            self.cover[i] += 1
        peer.inflight[span.id] = now
        body_from = max(now + self._latency(peer), peer.queue_end)
        peer.queue_end = body_from + (span.stop - span.start) / self._rate(peer)
        self.spans[span.id] = (name, span)
        return span

    def _fresh_span(self, peer: PeerState) -> Span | None:
        n = len(self.lengths)
        i = self._hint
        while i < n and (self.done[i] or self.cover[i]):
            i += 1
        self._hint = i
        if i == n:
            return None
        # As the pool drains, spans shrink so that all peers finish together
        # instead of one peer holding a long last span while the others idle.
        usable = sum(1 for p in self.peers.values() if self.usable(p)) or 1
        unassigned = sum(
            self.lengths[j] for j in range(i, n) if not self.done[j] and not self.cover[j]
        )
        budget = min(self._span_bytes(peer), max(self.config.min_span, unassigned // usable))
        first = i
        total = 0
        while i < n and not self.done[i] and not self.cover[i] and (total < budget or i == first):
            total += self.lengths[i]
            i += 1
        return Span(next(self._ids), first, i, self.offsets[first], self.offsets[i])

    def _owner_eta(self, owner: PeerState, span: Span, left: int, now: float) -> float:
        """Seconds the owner of ``span`` is still expected to need for its ``left`` bytes."""
        elapsed = now - owner.inflight.get(span.id, now)
        size = span.stop - span.start
        if owner.rate > 0 and elapsed * owner.rate <= size:
            return size / owner.rate - elapsed  # keeping to its measured rate
        if elapsed < self.config.stall_after:
            return 0.0  # too early to judge
        # Overdue, or unmeasured and running a while: what it delivered of this
        # span, plus the chunk it is on, bounds its rate from above. A peer
        # trickling a byte a second shows no chunk at all.
        current = next(i for i in range(span.first, span.end) if not self.done[i])
        shown = (size - left + self.lengths[current]) / elapsed
        return left / min(shown, owner.rate) if owner.rate > 0 else left / shown

    def _endgame_span(self, peer: PeerState, now: float) -> Span | None:
        """Duplicate the tail of an in-flight span that ``peer`` should finish much sooner."""
        best: tuple[float, int, Span] | None = None  # (time saved, span id, span)
        for sid, (owner_name, span) in self.spans.items():
            # A duplicate can be duplicated in turn: its peer may stall too.
            if owner_name == peer.name or sid in self._duplicated:
                continue
            left_bytes = sum(
                self.lengths[i] for i in range(span.first, span.end) if not self.done[i]
            )
            if not left_bytes:
                continue
            owner_eta = self._owner_eta(self.peers[owner_name], span, left_bytes, now)
            mine = self._delivery(peer, left_bytes)
            saved = owner_eta - mine
            if owner_eta > self.config.endgame_factor * mine and (best is None or saved > best[0]):
                best = (saved, sid, span)
        if best is None:
            return None
        _, sid, span = best
        self._duplicated.add(sid)
        first = next(i for i in range(span.first, span.end) if not self.done[i])
        return Span(
            next(self._ids),
            first,
            span.end,
            self.offsets[first],
            self.offsets[span.end],
            duplicate=True,
        )

    # ------------------------------------------------------------------ events

    def chunk_done(self, name: str, index: int, now: float | None = None) -> bool:
        """A verified chunk from ``name`` was written. False if it was already done.

        With ``now``, a peer not measured yet gets a first rate from its first
        bytes (so its next span can be pipelined before this one ends).
        """
        peer = self.peers[name]
        peer.received += self.lengths[index]
        if now is not None:
            peer.last_progress = now
            if peer.rate <= 0:
                self._first_rate(peer, now)
        if self.done[index]:
            return False
        self.done[index] = 1
        self.remaining -= 1
        return True

    def _owed(self, peer: PeerState) -> int:
        """Bytes of the spans ``peer`` has in flight."""
        return sum(self.spans[sid][1].stop - self.spans[sid][1].start for sid in peer.inflight)

    def _first_rate(self, peer: PeerState, now: float) -> None:
        """A provisional rate from the bytes since the peer's first byte in this file."""
        if not peer.first_bytes:
            return
        since = min(peer.first_bytes.values())
        if peer.received < self.config.probe_bytes or now - since < 0.005:
            return
        peer.rate = peer.received / (now - since)
        peer.queue_end = now + max(0, self._owed(peer) - peer.received) / peer.rate

    def _release(self, name: str, span: Span) -> float:
        self.spans.pop(span.id, None)
        peer = self.peers[name]
        peer.first_bytes.pop(span.id, None)
        started = peer.inflight.pop(span.id, 0.0)
        for i in range(span.first, span.end):
            self.cover[i] -= 1
            if not self.done[i] and not self.cover[i]:
                self._hint = min(self._hint, i)
        return started

    def first_byte(self, name: str, span: Span, now: float) -> None:
        """The first body byte of ``span`` came: the wait since its request is ``name``'s
        latency (learned within the file, so pipelining follows it)."""
        peer = self.peers[name]
        started = peer.inflight.get(span.id)
        if started is None or now < started:
            return
        peer.first_bytes[span.id] = now
        sample = now - started
        a = self.config.latency_alpha
        peer.latency = sample if peer.latency is None else a * sample + (1 - a) * peer.latency

    def span_finished(self, name: str, span: Span, now: float, received: int) -> float:
        """The request for ``span`` ended normally after ``received`` body bytes.

        Returns the seconds its body had the peer to itself: from its first
        byte, or from the end of the peer's previous body if that came later
        (a pipelined span), so a round trip does not count as slowness. A
        span whose body mostly overlapped another's gives no rate sample.
        """
        peer = self.peers[name]
        first = peer.first_bytes.get(span.id)
        started = self._release(name, span)
        peer.failures = 0
        whole = now - started
        previous_end = peer.last_end
        elapsed = now - max(started, previous_end, first if first is not None else started)
        peer.last_end = now
        # A body that began after the last one ended had the peer to itself: a
        # clean sample however short. One that overlapped another is a sample
        # only if it ran long enough for the overlap not to dominate.
        clean = first is not None and first >= previous_end
        if received >= 64 * 1024 and elapsed > 0 and (clean or elapsed >= 0.25 * whole):
            sample = received / elapsed
            a = self.config.rate_alpha
            peer.rate = sample if peer.rate <= 0 else a * sample + (1 - a) * peer.rate
        # What it still owes, at the rate now known: when to pipeline next.
        peer.queue_end = now + self._owed(peer) / self._rate(peer)
        return elapsed if elapsed > 0 else whole

    def span_failed(
        self,
        name: str,
        span: Span,
        now: float,
        failure: Failure,
        retry_after: float = 0.0,
        *,
        rate: float | None = None,
        reason: str = "",
    ) -> None:
        """The request for ``span`` failed; its unfinished chunks go back to the pool.

        ``rate``: for :attr:`Failure.SLOW`, what the peer delivered (bytes/s).
        ``reason``: the error, named when the peer is dropped.
        """
        self._release(name, span)
        peer = self.peers[name]
        if not peer.inflight:
            peer.queue_end = now
        cfg = self.config
        match failure:
            case Failure.BUSY:
                pause = min(max(retry_after, cfg.backoff), cfg.busy_cap)
                if peer.inflight:
                    # Its open connections still answer (a 503 refuses a new
                    # connection or request): stop its growth, not its work.
                    peer.busy_until = now + pause
                    peer.busy_limit = len(peer.inflight)
                else:
                    peer.not_before = now + pause
            case Failure.ABSENT:
                peer.dropped = "does not hold the file"
            case Failure.BAD:
                peer.dropped = "sent data that failed verification (banned)"
            case Failure.ERROR | Failure.SLOW:
                if failure is Failure.SLOW and rate is not None:
                    peer.rate = max(rate, 1.0)  # its next spans are the smallest
                peer.failures += 1
                if peer.failures >= cfg.max_failures:
                    last = f" (last: {reason})" if reason else ""
                    peer.dropped = f"failed {peer.failures} times in a row{last}"
                else:
                    delay = cfg.backoff * 2 ** (peer.failures - 1)
                    peer.not_before = now + min(delay, cfg.backoff_cap)
