"""The scheduler is pure: drive it with a fake clock and simulated peers."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from p2pkg.core.schedule import Failure, ScheduleConfig, Scheduler, Span

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
    max_steps: int = 100_000,
) -> tuple[Scheduler, float]:
    """Discrete-event run: each span takes latency + bytes/rate on its peer."""
    rng = random.Random(seed)
    s = Scheduler(lengths(total), have, [(n, 0) for n in peers], now=0.0)
    now = 0.0
    inflight: list[tuple[float, str, Span]] = []
    for _ in range(max_steps):
        if s.complete:
            return s, now
        assert not s.failed(), f"seed={seed}: failed with peers {s.peer_summary()}"
        for name in s.ready_peers(now):
            while (span := s.assign(name, now)) is not None:
                p = peers[name]
                busy = sum(1 for _, n, _ in inflight if n == name) + 1
                dt = p.latency + (span.stop - span.start) / (p.rate / busy)
                inflight.append((now + dt * rng.uniform(0.9, 1.1), name, span))
        wake = s.next_wakeup(now)
        if not inflight:
            assert wake is not None, "stuck: nothing in flight and nothing to wait for"
            now = wake
            continue
        inflight.sort(key=lambda x: x[0])
        if wake is not None and wake < inflight[0][0]:
            now = wake  # a timer fires before the next request ends
            continue
        t, name, span = inflight.pop(0)
        now = t
        p = peers[name]
        if p.fail is not None:
            s.span_failed(name, span, now, p.fail, retry_after=0.5)
        elif p.bad_chunk:
            s.span_failed(name, span, now, Failure.BAD)
        else:
            for i in range(span.first, span.end):
                s.chunk_done(name, i)
            s.span_finished(name, span, now, span.stop - span.start)
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
