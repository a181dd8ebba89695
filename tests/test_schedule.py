"""The scheduler is pure: drive it with a fake clock and simulated peers."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from p2pkg.core.schedule import Failure, ScheduleConfig, Scheduler

KiB = 1024
MiB = 1024 * KiB


def lengths(total: int, chunk: int = 80 * KiB) -> list[int]:
    out = [chunk] * (total // chunk)
    if total % chunk:
        out.append(total % chunk)
    return out


@dataclass
class SimPeer:
    rate: float  # bytes/s
    latency: float = 0.001
    fail: Failure | None = None  # how every request to it ends
    bad_chunk: bool = False


def simulate(
    total: int,
    peers: dict[str, SimPeer],
    have: set[int] = frozenset(),  # type: ignore[assignment]
    seed: int = 1,
    max_steps: int = 200_000,
    *,
    known: dict[str, float] | None = None,
    config: ScheduleConfig = ScheduleConfig(),  # noqa: B008 - frozen
    learn: bool = True,
) -> tuple[Scheduler, float]:
    """Discrete-event run at flow level: a span's body starts ``latency`` after
    its request, and a peer's rate is shared fairly by its bodies in flight.

    ``known``: latencies the peer book already measured; ``learn``: report
    each span's first byte, so the scheduler learns latencies as it goes.
    """
    rng = random.Random(seed)
    s = Scheduler(
        lengths(total), have, [(n, 0) for n in peers], now=0.0, config=config, latencies=known
    )
    now = 0.0
    # span id -> [peer, span, body starts at, bytes left, next chunk to report]
    flows: dict[int, list] = {}  # type: ignore[type-arg]
    for _ in range(max_steps):
        if s.complete:
            return s, now
        assert not s.failed(), f"seed={seed}: failed with peers {s.peer_summary()}"
        for name in s.ready_peers(now):
            while (span := s.assign(name, now)) is not None:
                lat = peers[name].latency * rng.uniform(0.9, 1.1)
                flows[span.id] = [name, span, now + lat, span.stop - span.start, span.first]

        def sharing(name: str, at: float) -> int:
            return sum(1 for f in flows.values() if f[0] == name and f[2] <= at)

        events = [f[2] for f in flows.values() if f[2] > now]
        for f in flows.values():
            if f[2] <= now:
                share = peers[f[0]].rate / sharing(f[0], now)
                events.append(now + f[3] / share)  # its end
                if f[4] < f[1].end:  # its next chunk's last byte (reported as it comes)
                    delivered = f[1].stop - f[1].start - f[3]
                    events.append(now + (s.offsets[f[4] + 1] - f[1].start - delivered) / share)
        wake = s.next_wakeup(now)
        if wake is not None:
            events.append(wake)
        assert events, "stuck: nothing in flight and nothing to wait for"
        t = min(events)
        for f in flows.values():  # bodies move at their fair share until t
            if f[2] <= now:
                f[3] -= (t - now) * peers[f[0]].rate / sharing(f[0], now)
        now = t
        for sid, flow in list(flows.items()):
            name, span, body_at, left, _ = flow
            p = peers[name]
            if body_at == now:
                if p.fail is not None or p.bad_chunk:
                    del flows[sid]
                    failure = Failure.BAD if p.bad_chunk else p.fail
                    assert failure is not None
                    s.span_failed(name, span, now, failure, retry_after=0.5)
                elif learn:
                    s.first_byte(name, span, now)
                continue
            if body_at > now:
                continue
            # Chunks are reported as their last byte arrives, as the shell does.
            delivered = span.stop - span.start - max(left, 0.0)
            while flow[4] < span.end and s.offsets[flow[4] + 1] - span.start <= delivered + 1e-6:
                s.chunk_done(name, flow[4], now if learn else None)
                flow[4] += 1
            if left <= 1e-6 * total or not s.still_needed(span):
                del flows[sid]  # done, or another peer's copy finished it (SinkDone)
                s.span_finished(name, span, now, int(delivered))
    raise AssertionError("did not finish")


def test_single_peer_downloads_everything_in_big_spans() -> None:
    s, t = simulate(256 * MiB, {"a": SimPeer(500 * MiB)})
    assert s.complete
    assert t == pytest.approx(256 / 500, rel=0.25)


def test_four_peers_share_the_work() -> None:
    peers = {n: SimPeer(25 * MiB) for n in "abcd"}
    s, t = simulate(256 * MiB, peers)
    assert t < 256 / 100 * 1.15  # within 15% of the aggregate 100 MiB/s
    received = [s.peers[n].received for n in "abcd"]
    assert min(received) > 0.15 * 256 * MiB
    assert sum(received) < 1.1 * 256 * MiB  # endgame duplicates little


def test_endgame_rescues_a_stalling_peer() -> None:
    peers = {"ok": SimPeer(50 * MiB), "crawl": SimPeer(0.2 * MiB)}
    _s, t = simulate(16 * MiB, peers)
    # Without endgame the crawler's first 4 MiB span alone would take 20 s; an
    # unmeasured owner is suspected after stall_after (1 s), then "ok" takes over.
    assert t < ScheduleConfig().stall_after + 16 / 50 * 2


def test_fast_peer_gets_more() -> None:
    s, _ = simulate(128 * MiB, {"fast": SimPeer(200 * MiB), "slow": SimPeer(10 * MiB)})
    assert s.peers["fast"].received > 5 * s.peers["slow"].received


@pytest.mark.parametrize("failure", [Failure.ERROR, Failure.BUSY, Failure.ABSENT, Failure.BAD])
def test_failing_peer_is_routed_around(failure: Failure) -> None:
    peers = {"good": SimPeer(50 * MiB), "bad": SimPeer(500 * MiB, fail=failure)}
    s, _ = simulate(32 * MiB, peers)
    assert s.complete
    if failure in (Failure.ABSENT, Failure.BAD):
        assert s.peers["bad"].dropped is not None


def test_all_peers_failing_is_detected() -> None:
    s = Scheduler(lengths(4 * MiB), (), [("a", 0)], 0.0)
    for _ in range(ScheduleConfig().max_failures):
        now = s.next_wakeup(0.0) or 0.0
        span = s.assign("a", now + 100)
        assert span is not None
        s.span_failed("a", span, now + 100, Failure.ERROR)
    assert s.failed()


def test_resume_skips_chunks_we_have() -> None:
    n = len(lengths(16 * MiB))
    have = set(range(0, n, 2))
    s = Scheduler(lengths(16 * MiB), have, [("a", 0)], 0.0)
    assigned = set()
    while (span := s.assign("a", 0.0)) is not None:
        assigned |= set(range(span.first, span.end))
    assert not (assigned & have)


def test_endgame_duplicates_the_slow_span() -> None:
    s = Scheduler(lengths(1 * MiB), (), [("slow", 0), ("fast", 0)], 0.0)
    slow = s.assign("slow", 0.0)
    fast = s.assign("fast", 0.0)
    assert slow is not None and fast is not None and not fast.duplicate
    for i in range(fast.first, fast.end):
        s.chunk_done("fast", i)
    s.span_finished("fast", fast, 0.05, fast.stop - fast.start)
    assert s.assign("fast", 0.1) is None  # too early to suspect the slow owner
    assert s.next_wakeup(0.1) is not None  # but the shell is told to look again
    dup = s.assign("fast", 2.0)
    assert dup is not None and dup.duplicate and (dup.first, dup.end) == (slow.first, slow.end)
    for i in range(dup.first, dup.end):
        assert s.chunk_done("fast", i)
    s.span_finished("fast", dup, 2.1, dup.stop - dup.start)
    assert s.complete and not s.still_needed(slow)
    assert not s.chunk_done("slow", slow.first)  # a late duplicate chunk changes nothing


def test_small_file_is_one_request() -> None:
    s = Scheduler([40 * KiB], (), [("a", 0), ("b", 0)], 0.0)
    span = s.assign("a", 0.0)
    assert span is not None and (span.first, span.end) == (0, 1)
    assert s.assign("a", 0.0) is None  # one slot for small files


def test_busy_peer_waits_for_retry_after() -> None:
    s = Scheduler(lengths(8 * MiB), (), [("a", 0)], 0.0)
    span = s.assign("a", 0.0)
    assert span is not None
    s.span_failed("a", span, 1.0, Failure.BUSY, retry_after=3.0)
    assert s.ready_peers(2.0) == []
    assert s.next_wakeup(2.0) == 4.0
    assert s.ready_peers(4.0) == ["a"]


def test_a_peer_the_book_backed_off_waits_while_another_can_work() -> None:
    """Slow retrieval: a peer backed off for slowness gets no span beside an honest one."""
    s = Scheduler(lengths(8 * MiB), (), [("trickler", 0), ("ok", 0)], 0.0, deferred={"trickler": 5})
    assert s.ready_peers(0.0) == ["ok"] and s.assign("trickler", 0.0) is None
    span = s.assign("ok", 0.0)
    assert span is not None
    assert s.next_wakeup(0.0) == 5  # its back-off ends then: it may join the work
    assert s.ready_peers(5.0) == ["trickler"]
    # Deferred only while somebody else can work: alone, it is asked at once.
    s.span_failed("ok", span, 1.0, Failure.ABSENT)
    assert s.ready_peers(1.0) == ["trickler"]
    alone = Scheduler(lengths(MiB), (), [("trickler", 0)], 0.0, deferred={"trickler": 5})
    assert alone.ready_peers(0.0) == ["trickler"]


def _drain(name: str, s: Scheduler, now: float) -> float:
    """``name`` fetches every chunk nobody else holds, 10 ms a span; returns the time after."""
    while (span := s.assign(name, now)) is not None:
        assert not span.duplicate
        for i in range(span.first, span.end):
            s.chunk_done(name, i)
        now += 0.01
        s.span_finished(name, span, now, span.stop - span.start)
    return now


def test_a_measured_peer_that_goes_silent_is_duplicated_once_overdue() -> None:
    """A Content-Length liar measured fast before: its span is taken over, not waited on."""
    rates = {"liar": 100 * MiB, "ok": 100 * MiB}
    s = Scheduler(lengths(4 * MiB), (), [("liar", 0), ("ok", 0)], 0.0, rates=rates)
    liar = s.assign("liar", 0.0)
    assert liar is not None
    s.chunk_done("liar", liar.first)  # one chunk, then nothing
    _drain("ok", s, 0.0)
    assert s.assign("ok", 0.1) is None  # overdue, but too early to judge
    dup = s.assign("ok", ScheduleConfig().stall_after + 0.01)
    assert dup is not None and dup.duplicate and (dup.first, dup.end) == (liar.first + 1, liar.end)


def test_an_unmeasured_trickler_is_duplicated_within_stall_after() -> None:
    s = Scheduler(lengths(2 * MiB), (), [("trickler", 0), ("ok", 0)], 0.0)
    trickle = s.assign("trickler", 0.0)
    assert trickle is not None
    _drain("ok", s, 0.0)
    assert s.assign("ok", 0.1) is None
    dup = s.assign("ok", ScheduleConfig().stall_after)
    assert dup is not None and (dup.first, dup.end) == (trickle.first, trickle.end)
    assert ScheduleConfig().stall_after <= 0.25


def test_a_peer_too_slow_gets_the_smallest_spans_then_is_dropped_saying_why() -> None:
    cfg = ScheduleConfig()
    s = Scheduler(lengths(64 * MiB), (), [("slow", 0)], 0.0, cfg)
    now = 0.0
    for n in range(cfg.max_failures):
        span = s.assign("slow", now)
        assert span is not None
        if n:  # after the first: sized for what it showed (1 B/s), i.e. the smallest
            assert span.stop - span.start < cfg.min_span + 80 * KiB
        reason = "peer slow: too slow: 1 B/s below the floor 32768 B/s"
        s.span_failed("slow", span, now, Failure.SLOW, rate=1.0, reason=reason)
        now = s.next_wakeup(now) or now
    assert s.failed()
    dropped = str(s.peer_summary()["slow"]["dropped"])
    assert "failed 4 times in a row" in dropped and "too slow: 1 B/s" in dropped


@pytest.mark.parametrize("rtt", [0.02, 0.04, 0.08, 0.15])
def test_long_links_keep_several_spans_in_flight(rtt: float) -> None:
    """A round trip per span would idle each link; pipelined requests cover it.

    Each peer's first rate comes from its first bytes, so its second span
    is asked for before the first ends: what is left is the first round
    trip and a little of the endgame.
    """
    peers = {n: SimPeer(25 * MiB, latency=rtt) for n in "abcd"}
    _, one_at_a_time = simulate(256 * MiB, peers, learn=False)
    s, t = simulate(256 * MiB, peers)
    ideal = 256 / 100
    assert t < ideal * 1.03 + rtt, (t, one_at_a_time)
    assert t < one_at_a_time - 2 * rtt
    for p in s.peers.values():
        assert p.latency == pytest.approx(rtt, rel=0.1)
        # the round trip is not counted as slowness (overlapping bodies blur it)
        assert 0.6 * 25 * MiB < p.rate < 1.4 * 25 * MiB


def test_short_links_keep_one_span_in_flight() -> None:
    s = Scheduler(lengths(64 * MiB), (), [("lan", 0)], 0.0, latencies={"lan": 0.0005})
    assert s.assign("lan", 0.0) is not None
    for t in (0.0, 0.4, 0.6, 5.0):  # 0.5 ms x 8 MiB/s: never worth a second request
        assert s.assign("lan", t) is None


def test_the_next_request_leaves_one_latency_before_the_link_frees() -> None:
    rates = {"far": 10 * MiB}
    s = Scheduler(lengths(64 * MiB), (), [("far", 0)], 0.0, rates=rates, latencies={"far": 0.1})
    first = s.assign("far", 0.0)
    assert first is not None  # 10 MiB: its body should arrive from 0.1 s to 1.1 s
    assert s.assign("far", 0.9) is None
    assert s.next_wakeup(0.9) == pytest.approx(1.0)
    assert s.assign("far", 1.0) is not None


def test_in_flight_spans_are_bounded() -> None:
    cfg = ScheduleConfig()
    s = Scheduler(
        lengths(256 * MiB), (), [("far", 0)], 0.0, rates={"far": MiB}, latencies={"far": 5.0}
    )
    got = [s.assign("far", 100.0 * i) for i in range(cfg.max_slots + 2)]
    assert sum(span is not None for span in got) == cfg.max_slots


def test_the_first_span_goes_to_the_nearest_peer_of_the_best_tier() -> None:
    """Latency orders peers before any rate is known (the prefix streams first)."""
    peers = [("far", 1), ("near", 1), ("dht-near", 2)]
    lat = {"far": 0.15, "near": 0.01, "dht-near": 0.001}
    s = Scheduler(lengths(64 * MiB), (), peers, 0.0, latencies=lat)
    assert s.ready_peers(0.0) == ["near", "far", "dht-near"]
    first = s.assign(s.ready_peers(0.0)[0], 0.0)
    assert first is not None and first.start == 0


def test_a_peer_other_downloads_keep_busy_is_asked_after_an_idle_one() -> None:
    """Several files at once spread over the peers instead of queueing on the first."""
    s = Scheduler(lengths(200 * KiB), (), [("a", 1), ("b", 1)], 0.0, queued={"a": 2 * MiB})
    assert s.ready_peers(0.0) == ["b", "a"]
    s = Scheduler(lengths(200 * KiB), (), [("a", 1), ("b", 1)], 0.0, queued={"b": 2 * MiB})
    assert s.ready_peers(0.0) == ["a", "b"]


def test_an_unmeasured_peer_is_not_pipelined() -> None:
    """A guessed rate could queue a 2 MiB/s peer seconds deep: wait for its first bytes."""
    s = Scheduler(lengths(64 * MiB), (), [("far", 0)], 0.0, latencies={"far": 0.15})
    first = s.assign("far", 0.0)
    assert first is not None
    assert s.assign("far", 5.0) is None
    s.first_byte("far", first, 0.15)
    for i in range(first.first, first.first + 8):  # 640 KiB in 0.025 s: 25 MiB/s
        s.chunk_done("far", i, 0.15 + 0.003 * (i - first.first + 1))
    assert s.peers["far"].rate > 20 * MiB
    assert s.assign("far", 0.18) is not None  # pipelined now


def test_a_peer_that_went_quiet_gets_no_more_spans() -> None:
    s = Scheduler(
        lengths(64 * MiB), (), [("a", 0), ("b", 0)], 0.0, rates={"a": 25 * MiB, "b": 25 * MiB}
    )
    span = s.assign("a", 0.0)
    assert span is not None
    s.chunk_done("a", span.first, 0.1)
    s.span_finished("a", span, 0.2, span.stop - span.start)
    stuck = s.assign("a", 0.2)
    assert stuck is not None
    s.chunk_done("a", stuck.first, 0.3)  # then nothing more from "a"
    assert "a" not in s.ready_peers(1.0)
    # Its span is duplicated by "b" once the pool is empty.
    while (fresh := s.assign("b", 1.0)) is not None and not fresh.duplicate:
        for i in range(fresh.first, fresh.end):
            s.chunk_done("b", i, 1.0)
        s.span_finished("b", fresh, 1.0, fresh.stop - fresh.start)
    assert fresh is not None and fresh.duplicate


def test_a_short_span_on_a_long_link_is_a_rate_sample() -> None:
    """800 KiB in 31 ms after a 150 ms wait: 25 MiB/s, not 4 (nor no sample at all)."""
    s = Scheduler(lengths(64 * MiB), (), [("far", 0)], 0.0, rates={"far": 0.7 * MiB})
    span = s.assign("far", 0.0)
    assert span is not None
    s.first_byte("far", span, 0.15)
    nbytes = span.stop - span.start
    s.span_finished("far", span, 0.15 + nbytes / (25 * MiB), nbytes)
    assert s.peers["far"].rate > 12 * MiB  # EWMA halfway from 0.7 to 25 at once


def test_a_503_beside_running_spans_stops_the_peers_growth_not_its_work() -> None:
    """The refused request was a new connection: the open ones keep answering."""
    rates = {"p": 25 * MiB}
    s = Scheduler(lengths(128 * MiB), (), [("p", 0)], 0.0, rates=rates, latencies={"p": 0.1})
    first = s.assign("p", 0.0)
    assert first is not None
    s.first_byte("p", first, 0.1)
    second = s.assign("p", 1.0)  # pipelined
    assert second is not None
    s.span_failed("p", second, 1.1, Failure.BUSY, retry_after=1.0)
    assert s.assign("p", 1.2) is None  # not a second span at once during Retry-After
    s.span_finished("p", first, 1.2, first.stop - first.start)
    assert s.assign("p", 1.2) is not None  # but its work goes on
    # Alone, a 503 pauses the peer for the Retry-After.
    alone = Scheduler(lengths(128 * MiB), (), [("q", 0)], 0.0)
    only = alone.assign("q", 0.0)
    assert only is not None
    alone.span_failed("q", only, 0.1, Failure.BUSY, retry_after=1.0)
    assert alone.assign("q", 0.5) is None and alone.assign("q", 1.2) is not None
