"""The pure iterative lookup (p2pkg.core.lookup) over a fake network and fake time.

A network is a dict of node id -> what the node knows (a Kademlia-like
routing table: its closest nodes plus a few per distance bucket) and what it
holds (providers); a seeded ``random.Random`` decides each node's fate: it
answers after a short or a long delay, never, or only after the hard timeout.
Every assertion message names the seed.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pkg.core.lookup import (
    Address,
    Contact,
    HintRules,
    Lookup,
    LookupResult,
    StopReason,
    distance,
)

K = 20
ALPHA = 3
SOFT = 0.25
HARD = 2.0

DEAD = math.inf  # never answers; the transport reports a failure at the hard timeout


@dataclass
class Net:
    """A synthetic network: routing tables, records and fates (answer delays)."""

    ids: list[bytes]
    tables: dict[bytes, list[bytes]]
    delay: dict[bytes, float]  # seconds until the answer, DEAD, or > HARD (too late)
    providers: dict[bytes, list[Address]] = field(default_factory=dict)
    index: dict[bytes, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {node_id: i for i, node_id in enumerate(self.ids)}

    def contact(self, node_id: bytes) -> Contact:
        i = self.index[node_id]
        return Contact(node_id, (f"10.0.{i // 250}.{i % 250 + 1}", 4000 + i))

    def closest(self, among: list[bytes], target: bytes, k: int = K) -> list[bytes]:
        return sorted(among, key=lambda i: distance(i, target))[:k]

    def answer(self, node_id: bytes, target: bytes, k: int = K) -> list[Contact]:
        return [self.contact(i) for i in self.closest(self.tables[node_id], target, k)]


def make_net(
    n: int,
    rng: random.Random,
    *,
    dead: float = 0.0,
    slow: float = 0.0,
    late: float = 0.0,
    per_bucket: int = 3,
    k: int = K,
) -> Net:
    """``n`` nodes; each knows its ``k`` closest and ``per_bucket`` random nodes per bucket."""
    ids = list({rng.randbytes(20) for _ in range(n)})
    ids.sort()  # a set's order is not seeded: sort before the rng picks anything
    tables: dict[bytes, list[bytes]] = {}
    for me in ids:
        others = [i for i in ids if i != me]
        buckets: dict[int, list[bytes]] = {}
        for other in others:
            buckets.setdefault(distance(me, other).bit_length(), []).append(other)
        known = set(sorted(others, key=lambda i: distance(i, me))[:k])
        for members in buckets.values():
            known.update(rng.sample(members, min(per_bucket, len(members))))
        tables[me] = sorted(known)
    delay: dict[bytes, float] = {}
    for node_id in ids:
        roll = rng.random()
        if roll < dead:
            delay[node_id] = DEAD
        elif roll < dead + slow:
            delay[node_id] = rng.uniform(SOFT + 0.01, HARD - 0.01)  # past soft, before hard
        elif roll < dead + slow + late:
            delay[node_id] = HARD + rng.uniform(0.01, 1.0)  # after the hard timeout
        else:
            delay[node_id] = rng.uniform(0.005, 0.05)
    return Net(ids, tables, delay)


@dataclass
class Run:
    result: LookupResult
    asked: list[bytes]
    accepted: set[bytes]  # nodes whose answers the machine took
    steps: int
    max_fresh: int  # outstanding queries within their soft timeout, at most
    max_outstanding: int  # outstanding queries of any age, at most


def drive(
    lookup: Lookup,
    net: Net,
    target: bytes,
    seed: object,
    *,
    alpha: int = ALPHA,
    k: int = K,
) -> Run:
    """The fake driver: what DhtNode.run_lookup does, with a heap of events instead of sockets."""
    events: list[tuple[float, int, str, Contact]] = []
    seq = 0
    sent_at: dict[bytes, float] = {}
    pending: set[bytes] = set()
    asked: list[bytes] = []
    accepted: set[bytes] = set()
    now = 0.0
    steps = max_fresh = max_outstanding = 0
    # Each step delivers an event or reaches a deadline; per query there are at
    # most three (its answer or failure, its soft and its hard timeout), plus the budget.
    bound = 3 * len(net.ids) + 2
    while not lookup.done:
        for contact in lookup.next_requests(now):
            assert contact.id not in sent_at, f"seed {seed}: asked {contact.id.hex()} twice"
            assert contact == net.contact(contact.id), f"seed {seed}: wrong address"
            sent_at[contact.id] = now
            pending.add(contact.id)
            asked.append(contact.id)
            delay = net.delay[contact.id]
            kind, at = ("fail", now + HARD) if delay == DEAD else ("reply", now + delay)
            heapq.heappush(events, (at, seq, kind, contact))
            seq += 1
        # The same comparison as the machine's: a query is fresh until sent + soft.
        fresh = sum(1 for i in pending if now < sent_at[i] + SOFT)
        live = sum(1 for i in pending if now < sent_at[i] + HARD)
        assert fresh <= alpha, f"seed {seed}: {fresh} fresh queries outstanding at {now}"
        max_fresh = max(max_fresh, fresh)
        max_outstanding = max(max_outstanding, live)
        deadline = lookup.next_deadline()
        if deadline is None:
            break
        # Strictly later: a driver sleeping until it always makes progress.
        assert deadline > now, f"seed {seed}: deadline {deadline} not after {now}"
        now = min(deadline, events[0][0]) if events else deadline
        while events and events[0][0] <= now:
            at, _, kind, contact = heapq.heappop(events)
            pending.discard(contact.id)
            if kind == "fail":
                lookup.on_failure(contact, at)
            else:
                nodes = net.answer(contact.id, target, k)
                providers = net.providers.get(contact.id, [])
                if lookup.on_response(contact, nodes, providers, at):
                    accepted.add(contact.id)
        steps += 1
        assert steps <= bound, f"seed {seed}: no end after {steps} steps"
    return Run(lookup.result, asked, accepted, steps, max_fresh, max_outstanding)


def start(net: Net, asker: bytes, target: bytes, want: int | None = None) -> Lookup:
    """A lookup from ``asker``'s routing table, as DhtNode.run_lookup starts one."""
    return Lookup(target, net.answer(asker, target), 0.0, want=want, exclude=(asker,))


def ids(result: LookupResult) -> list[bytes]:
    return [c.id for c in result.nodes]


# ---------------------------------------------------------------------- examples


@pytest.mark.parametrize("seed", range(5))
def test_finds_the_k_closest_of_a_500_node_network(seed: int) -> None:
    rng = random.Random(seed)
    net = make_net(500, rng)
    asker, target = rng.choice(net.ids), rng.randbytes(20)
    run = drive(start(net, asker, target), net, target, seed)
    expected = net.closest([i for i in net.ids if i != asker], target)
    assert ids(run.result) == expected, f"seed {seed}"
    assert run.result.reason is StopReason.CONVERGED, f"seed {seed}"
    assert run.result.queried == len(run.asked) < 100, f"seed {seed}: {run.result}"
    assert run.result.elapsed < 0.5, f"seed {seed}: {run.result}"


@pytest.mark.parametrize("seed", range(5))
def test_twenty_percent_dead_costs_soft_timeouts_not_hard_ones(seed: int) -> None:
    rng = random.Random(100 + seed)
    net = make_net(500, rng, dead=0.2)
    alive = [i for i in net.ids if net.delay[i] != DEAD]
    asker, target = rng.choice(alive), rng.randbytes(20)
    run = drive(start(net, asker, target), net, target, seed)
    expected = net.closest([i for i in alive if i != asker], target)
    assert ids(run.result) == expected, f"seed {seed}"
    assert run.result.reason is StopReason.CONVERGED, f"seed {seed}"
    # Each dead node met holds a slot for 0.25 s, never 2 s: the lookup ends
    # before the first dead node's hard timeout would have.
    assert run.result.elapsed < HARD, f"seed {seed}: {run.result}"


def test_a_dead_node_costs_the_soft_timeout() -> None:
    dead, alive = (Contact(bytes([i]) * 20, ("10.0.0.1", i)) for i in (1, 2))
    lookup = Lookup(b"\x00" * 20, [alive, dead], 0.0, alpha=1)
    assert lookup.next_requests(0.0) == [dead]  # closest first
    assert lookup.next_requests(0.2) == []  # its slot is held until the soft timeout
    assert lookup.next_deadline() == SOFT
    assert lookup.next_requests(SOFT) == [alive]  # at the soft timeout, not the hard one
    assert lookup.next_deadline() == SOFT + SOFT  # alive's soft timeout, before dead's hard one
    assert lookup.on_response(alive, [], [], SOFT + 0.01)
    # `dead` is still outstanding but silent past its soft timeout: it does not hold the end.
    assert lookup.done and lookup.result.reason is StopReason.CONVERGED
    assert lookup.result.elapsed == pytest.approx(0.26)
    assert ids(lookup.result) == [alive.id]


def test_a_late_answer_is_still_used() -> None:
    target = b"\x00" * 20
    slow, fast, closer = (bytes([0, 0, i]) + b"\xff" * 17 for i in (2, 3, 1))
    a, b, c = (Contact(i, ("10.0.0.1", 4000 + n)) for n, i in enumerate((slow, fast, closer)))
    lookup = Lookup(target, [a, b], 0.0, alpha=1)
    assert lookup.next_requests(0.0) == [a]
    assert lookup.next_requests(SOFT) == [b]
    # `a` answers at 0.4 s, past its soft timeout: its answer still counts.
    assert lookup.on_response(a, [c], [], 0.4)
    assert lookup.next_requests(0.4) == []  # b holds the only slot until 0.5 s
    assert lookup.on_response(b, [], [], 0.45)
    assert lookup.next_requests(0.45) == [c]  # learned from the late answer
    assert lookup.on_response(c, [], [], 0.5)
    assert lookup.done and ids(lookup.result) == [closer, slow, fast]


def test_hard_timeout_fails_a_silent_query_without_the_transport() -> None:
    a = Contact(b"\x01" * 20, ("10.0.0.1", 1))
    lookup = Lookup(b"\x00" * 20, [a], 0.0, budget=100.0)
    assert lookup.next_requests(0.0) == [a]
    # Silent past the soft timeout, and nothing else to ask: converged (with nothing).
    assert lookup.next_deadline() == SOFT
    lookup.next_requests(SOFT)
    assert lookup.done and lookup.result.nodes == ()
    b = Contact(b"\x02" * 20, ("10.0.0.2", 2))
    lookup = Lookup(b"\x00" * 20, [a, b], 0.0, alpha=1, budget=100.0)
    lookup.next_requests(0.0)
    lookup.next_requests(SOFT)  # asks b, a is slow
    assert lookup.next_deadline() == SOFT + SOFT  # b's soft timeout comes first
    assert lookup.on_response(b, [], [], 0.3) is True  # converged: a is slow
    assert lookup.result.failed == 0
    lookup = Lookup(b"\x00" * 20, [a, b], 0.0, alpha=1, soft_timeout=HARD)
    lookup.next_requests(0.0)
    assert lookup.next_deadline() == HARD
    assert lookup.next_requests(HARD) == [b]  # a failed by the machine's own clock
    assert lookup.on_response(a, [], [], HARD + 0.1) is False  # too late: ignored
    assert lookup.on_response(b, [], [], HARD + 0.1)
    assert lookup.result.failed == 1 and ids(lookup.result) == [b.id]


@pytest.mark.parametrize("seed", range(3))
def test_never_more_than_alpha_fresh_queries(seed: int) -> None:
    rng = random.Random(200 + seed)
    net = make_net(300, rng, slow=0.3, dead=0.1)
    asker, target = rng.choice(net.ids), rng.randbytes(20)
    run = drive(start(net, asker, target), net, target, seed)  # drive() checks every step
    assert run.max_fresh == ALPHA, f"seed {seed}"
    # Slow queries stay outstanding without holding a slot.
    assert run.max_outstanding > ALPHA, f"seed {seed}"
    assert len(run.asked) == len(set(run.asked)), f"seed {seed}"


def test_never_asks_a_node_twice() -> None:
    target = b"\x00" * 20
    a, b, c = (Contact(bytes([i]) * 20, ("10.0.0.1", i)) for i in (1, 2, 3))
    me = Contact(b"\x00" * 19 + b"\x01", ("10.0.0.9", 9))
    lookup = Lookup(target, [a, a, b, Contact(a.id, ("10.6.6.6", 6))], 0.0, exclude=[me.id])
    assert lookup.next_requests(0.0) == [a, b]  # duplicates dropped, first address kept
    assert lookup.on_failure(b, 0.1)
    # Answers naming ourselves, a node that failed and one that answered: only c is new.
    assert lookup.on_response(a, [me, a, b, c], [], 0.2)
    assert lookup.next_requests(0.2) == [c]
    assert lookup.on_response(c, [a, b, c, me], [], 0.3)
    assert lookup.next_requests(0.3) == []
    assert lookup.done and ids(lookup.result) == [a.id, c.id]
    assert lookup.result.queried == 3 and lookup.result.failed == 1


@pytest.mark.parametrize("seed", range(3))
def test_provider_lookup_stops_early_with_enough_providers(seed: int) -> None:
    rng = random.Random(300 + seed)
    net = make_net(500, rng)
    asker, key = rng.choice(net.ids), rng.randbytes(20)
    holders = net.closest(net.ids, key)  # announced to the k closest, like DhtNode.announce
    everyone = [(f"10.1.0.{i}", 8000 + i) for i in range(5)]
    for n, holder in enumerate(holders):
        net.providers[holder] = [everyone[(n + j) % 5] for j in range(3)]
    full = drive(start(net, asker, key), net, key, seed)
    early = drive(start(net, asker, key, want=2), net, key, seed)
    assert early.result.reason is StopReason.ENOUGH_PROVIDERS, f"seed {seed}"
    assert len(early.result.providers) == 2, f"seed {seed}"
    assert set(early.result.providers) <= set(everyone), f"seed {seed}"
    assert early.result.queried < full.result.queried, f"seed {seed}"
    # More wanted than exist: the lookup runs to convergence and finds them all.
    some = drive(start(net, asker, key, want=16), net, key, seed)
    assert some.result.reason is StopReason.CONVERGED, f"seed {seed}"
    assert sorted(some.result.providers) == sorted(everyone), f"seed {seed}"


def test_providers_are_distinct_and_capped_at_want() -> None:
    a, b, c = (Contact(bytes([i]) * 20, (f"10.0.0.{i}", i)) for i in (1, 2, 3))
    lookup = Lookup(b"\x00" * 20, [a, b, c], 0.0, want=3)
    lookup.next_requests(0.0)
    p = [(f"10.9.9.{i}", 1) for i in range(5)]
    assert lookup.on_response(a, [], [p[0], p[0], p[1], p[2]], 0.1)
    assert lookup.on_response(b, [], [p[1], p[2], p[3], p[4]], 0.1)
    assert not lookup.done  # two confirmed (p1, p2): not yet `want`
    assert lookup.on_response(c, [], [p[4], p[0]], 0.1)
    assert lookup.result.reason is StopReason.ENOUGH_PROVIDERS
    assert lookup.result.providers == (p[0], p[1], p[2])  # p4 too: named twice, came later
    assert lookup.result.hints == ()


# ---------------------------------------------------------------------- provider hints

VICTIM = "10.66.0.1"


def test_one_reply_cannot_aim_the_answer_at_a_victim() -> None:
    """16 ports of one host in one reply: at most HintRules.unconfirmed of them come out."""
    liar, honest = (Contact(bytes([i]) * 20, (f"10.0.0.{i}", 4000)) for i in (1, 2))
    lookup = Lookup(b"\x00" * 20, [liar, honest], 0.0, want=16)
    lookup.next_requests(0.0)
    aimed = [(VICTIM, 8000 + i) for i in range(16)]
    assert lookup.on_response(liar, [], aimed, 0.01)
    assert not lookup.done  # unconfirmed addresses never end a lookup
    assert lookup.on_response(honest, [], [], 0.02)
    result = lookup.result
    assert result.reason is StopReason.CONVERGED
    assert len(result.providers) == HintRules().unconfirmed == 2
    assert result.hints == result.providers and {h for h, _ in result.providers} == {VICTIM}


def test_two_liars_confirm_a_victim_but_get_two_ports_of_it() -> None:
    liars = [Contact(bytes([i]) * 20, (f"10.0.0.{i}", 4000)) for i in (1, 2)]
    lookup = Lookup(b"\x00" * 20, liars, 0.0, want=16)
    lookup.next_requests(0.0)
    aimed = [(VICTIM, 8000 + i) for i in range(16)]
    for liar in liars:
        assert lookup.on_response(liar, [], aimed, 0.01)
    # The first two ports are confirmed; the reply's other 14 were never taken.
    assert lookup.result.providers == ((VICTIM, 8000), (VICTIM, 8001))
    assert lookup.result.hints == ()


def test_confirmation_needs_two_hosts_or_the_provider_itself() -> None:
    # Two responders on one host are one voucher.
    same = [Contact(bytes([i]) * 20, ("10.0.0.1", 4000 + i)) for i in (1, 2)]
    lookup = Lookup(b"\x00" * 20, same, 0.0, want=1)
    lookup.next_requests(0.0)
    for responder in same:
        lookup.on_response(responder, [], [("10.5.0.1", 80)], 0.01)
    assert lookup.result.reason is StopReason.CONVERGED
    assert lookup.result.hints == (("10.5.0.1", 80),)
    # A responder naming its own host confirms it: it can only send us to itself.
    me = Contact(b"\x01" * 20, ("10.5.0.1", 4000))
    lookup = Lookup(b"\x00" * 20, [me, *same], 0.0, want=1)
    lookup.next_requests(0.0)
    assert lookup.on_response(me, [], [("10.5.0.1", 80)], 0.01)
    assert lookup.result.reason is StopReason.ENOUGH_PROVIDERS
    assert lookup.result.providers == (("10.5.0.1", 80),) and lookup.result.hints == ()
    # IPv6: one /64 is one host, as responder and as provider.
    v6 = [Contact(bytes([i]) * 20, (f"2001:db8::{i}", 4000)) for i in (1, 2)]
    lookup = Lookup(b"\x00" * 20, v6, 0.0, want=4)
    lookup.next_requests(0.0)
    for responder in v6:
        lookup.on_response(responder, [], [(f"2001:db8:1::{i}", 80) for i in range(4)], 0.01)
    assert lookup.result.providers == tuple((f"2001:db8:1::{i}", 80) for i in range(2))
    assert lookup.result.hints == lookup.result.providers  # 2 ports of the /64, unconfirmed


def test_the_most_vouched_for_come_first_then_a_few_hints() -> None:
    responders = [Contact(bytes([i]) * 20, (f"10.0.0.{i}", 4000)) for i in range(1, 5)]
    lookup = Lookup(b"\x00" * 20, responders, 0.0, alpha=4, want=16)
    lookup.next_requests(0.0)
    p = [(f"10.9.{i}.1", 80) for i in range(6)]
    named = [[p[0], p[1], p[2]], [p[1], p[3]], [p[1], p[0], p[4]], [p[5]]]
    for responder, providers in zip(responders, named, strict=True):
        assert lookup.on_response(responder, [], providers, 0.01)
    result = lookup.result
    assert result.providers == (p[1], p[0], p[2], p[3])  # 3 vouchers, 2, then two hints
    assert result.hints == (p[2], p[3])


def test_one_reply_contributes_want_addresses_and_two_ports_per_host() -> None:
    a, b = (Contact(bytes([i]) * 20, (f"10.0.0.{i}", 4000)) for i in (1, 2))
    lookup = Lookup(b"\x00" * 20, [a, b], 0.0, want=3)
    lookup.next_requests(0.0)
    reply = [("10.7.0.1", 1), ("10.7.0.1", 2), ("10.7.0.1", 3), ("10.7.0.2", 1), ("10.7.0.3", 1)]
    assert lookup.on_response(a, [], reply, 0.01)
    assert lookup.on_response(b, [], reply, 0.01)
    # a's reply gave 10.7.0.1:1, :2 and 10.7.0.2 (want = 3); :3 was over the per-host cap.
    assert lookup.result.providers == (("10.7.0.1", 1), ("10.7.0.1", 2), ("10.7.0.2", 1))
    assert lookup.result.reason is StopReason.ENOUGH_PROVIDERS


def test_one_host_cannot_fill_a_lookup_with_node_ids() -> None:
    target = b"\x00" * 20
    honest = Contact(b"\x7f" * 20, ("10.0.0.1", 4000))
    sybils = [
        Contact(bytes([0, 0, i]) + b"\x00" * 17, ("10.6.6.6", 5000 + i)) for i in range(1, 30)
    ]
    lookup = Lookup(target, [honest], 0.0, per_host=4)
    assert lookup.next_requests(0.0) == [honest]
    assert lookup.on_response(honest, sybils, [], 0.01)
    asked = lookup.next_requests(0.01)
    assert asked == sybils[:3]  # closest first, alpha at a time: only 4 of 29 were learned
    for sybil in asked:
        lookup.on_response(sybil, sybils, [], 0.02)
    assert lookup.next_requests(0.02) == [sybils[3]]
    lookup.on_response(sybils[3], [], [], 0.03)
    assert lookup.done and len(lookup.result.nodes) == 5
    with pytest.raises(ValueError):
        Lookup(target, [honest], 0.0, per_host=0)
    with pytest.raises(ValueError):
        HintRules(per_host=0)


def test_unsolicited_responses_are_ignored() -> None:
    target = b"\x00" * 20
    a, b, stranger, planted = (Contact(bytes([i]) * 20, ("10.0.0.1", i)) for i in (1, 2, 3, 4))
    lookup = Lookup(target, [a, b], 0.0, alpha=1, want=5)
    assert lookup.on_response(stranger, [planted], [("10.6.6.6", 6)], 0.0) is False
    assert lookup.on_response(a, [planted], [], 0.0) is False  # not asked yet
    assert lookup.on_failure(a, 0.0) is False
    assert lookup.next_requests(0.0) == [a]
    spoofed = Contact(a.id, ("10.6.6.6", 1))
    assert lookup.on_response(spoofed, [planted], [("10.6.6.6", 6)], 0.01) is False
    assert lookup.on_failure(spoofed, 0.01) is False
    assert lookup.on_response(a, [], [], 0.02) is True
    assert lookup.on_response(a, [planted], [("10.6.6.6", 6)], 0.03) is False  # a replay
    assert lookup.next_requests(0.03) == [b]  # `planted` was never learned
    assert lookup.on_response(b, [], [], 0.04)
    assert lookup.done and ids(lookup.result) == [a.id, b.id]
    assert lookup.result.providers == ()
    assert lookup.on_response(b, [planted], [], 0.05) is False  # after the end
    assert lookup.next_requests(0.05) == [] and lookup.next_deadline() is None


def test_budget_ends_a_lookup_with_what_it_has() -> None:
    rng = random.Random(9)
    dead = [Contact(rng.randbytes(20), ("10.0.0.1", i + 1)) for i in range(100)]
    lookup = Lookup(b"\x00" * 20, dead, 0.0, budget=1.0)
    now = 0.0
    while not lookup.done:
        lookup.next_requests(now)
        deadline = lookup.next_deadline()
        assert deadline is not None
        now = deadline
        lookup.next_requests(now)
    assert lookup.result.reason is StopReason.DEADLINE and lookup.result.elapsed == 1.0
    # 3 asked at 0, 0.25, 0.5 and 0.75 s: a silent query frees its slot at its soft timeout.
    assert lookup.result.nodes == () and lookup.result.queried == 12
    default = Lookup(b"\x00" * 20, dead, 0.0, hard_timeout=2.0)
    default.next_requests(0.0)
    default.next_requests(9.99)
    assert not default.done
    default.next_requests(10.0)  # 4 × hard + 2 s, as before the machine
    assert default.result.reason is StopReason.DEADLINE


def test_stop_and_empty_starts() -> None:
    assert Lookup(b"\x00" * 20, [], 5.0).result.reason is StopReason.CONVERGED
    assert Lookup(b"\x00" * 20, [], 5.0).next_deadline() is None
    a = Contact(b"\x01" * 20, ("10.0.0.1", 1))
    assert Lookup(b"\x00" * 20, [a], 0.0, exclude=[a.id]).done  # only ourselves known
    lookup = Lookup(b"\x00" * 20, [a], 0.0)
    lookup.next_requests(0.0)
    with pytest.raises(RuntimeError):
        _ = lookup.result
    lookup.stop(0.1)
    assert lookup.result.reason is StopReason.STOPPED and lookup.result.elapsed == 0.1
    assert lookup.on_response(a, [], [], 0.2) is False
    with pytest.raises(ValueError):
        Lookup(b"\x00" * 20, [a], 0.0, alpha=0)
    with pytest.raises(ValueError):
        Lookup(b"\x00" * 20, [a], 0.0, soft_timeout=3.0, hard_timeout=2.0)


def test_time_never_goes_backwards() -> None:
    a, b = (Contact(bytes([i]) * 20, ("10.0.0.1", i)) for i in (1, 2))
    lookup = Lookup(b"\x00" * 20, [a, b], 10.0, alpha=1)
    assert lookup.next_requests(10.0) == [a]
    assert lookup.next_requests(10.3) == [b]  # a is slow
    assert lookup.on_response(b, [], [], 3.0)  # an earlier clock reading counts as 10.3
    assert lookup.done and lookup.result.elapsed == pytest.approx(0.3)


# ---------------------------------------------------------------------- properties


@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
    k=st.integers(1, 8),
    alpha=st.integers(1, 4),
    dead=st.floats(0, 0.5),
    slow=st.floats(0, 0.3),
    late=st.floats(0, 0.2),
    want=st.none() | st.integers(1, 4),
)
def test_any_network_terminates_and_returns_only_nodes_that_answered(
    seed: int, n: int, k: int, alpha: int, dead: float, slow: float, late: float, want: int | None
) -> None:
    rng = random.Random(seed)
    net = make_net(n, rng, dead=dead, slow=slow, late=late, per_bucket=rng.randint(0, 3), k=k)
    for node_id in net.ids:
        if rng.random() < 0.3:
            net.providers[node_id] = [(f"10.2.0.{rng.randrange(6)}", 1)]
    asker, target = rng.choice(net.ids), rng.randbytes(20)
    contacts = net.answer(asker, target, k)
    lookup = Lookup(target, contacts, 0.0, k=k, alpha=alpha, want=want, exclude=(asker,))
    run = drive(lookup, net, target, seed, alpha=alpha, k=k)  # bounded steps, alpha, never twice
    result = run.result
    got = ids(result)
    assert set(got) <= run.accepted, f"seed {seed}: a node that never answered"
    assert got == net.closest(list(run.accepted), target, k), f"seed {seed}"
    assert run.accepted <= {i for i in run.asked if net.delay[i] < HARD}, f"seed {seed}"
    assert len(got) == len(set(got)) <= k, f"seed {seed}"
    assert got == sorted(got, key=lambda i: distance(i, target)), f"seed {seed}"
    assert asker not in run.asked, f"seed {seed}"
    assert result.queried == len(run.asked), f"seed {seed}"
    assert result.elapsed <= 4 * HARD + 2, f"seed {seed}"
    if want is None:
        assert result.providers == (), f"seed {seed}"
    else:
        assert len(result.providers) <= want, f"seed {seed}"
        assert len(result.hints) <= HintRules().unconfirmed, f"seed {seed}"
        assert set(result.hints) <= set(result.providers), f"seed {seed}"
        enough = len(result.providers) - len(result.hints) == want
        assert (result.reason is StopReason.ENOUGH_PROVIDERS) == enough, f"seed {seed}"
    if not (dead or slow or late):
        # Everyone answers within 50 ms: no soft timeout, no budget.
        assert result.reason is not StopReason.DEADLINE, f"seed {seed}"
        assert result.elapsed < SOFT * n, f"seed {seed}"
        assert len(got) == min(k, len(run.accepted)), f"seed {seed}"


# ---------------------------------------------------------------------- the driver's start


@pytest.mark.anyio
async def test_a_lookup_starts_from_the_closest_contacts_of_the_whole_table() -> None:
    """DhtNode's starting contacts come from every bucket, not kademlia's traverser,
    which can return none for a key in the last bucket (bmuller/kademlia#28)."""
    from kademlia.node import Node
    from kademlia.routing import RoutingTable

    from p2pkg.io.dht import _nearest

    class NoPings:
        async def call_ping(self, node: Node) -> None:
            return None

    rng = random.Random(21)
    table = RoutingTable(NoPings(), 3, Node(b"\x00" * 20))
    contacts = [
        Node(bytes([0, i % 7 + 1]) + rng.randbytes(18), "10.0.0.1", 1 + i) for i in range(40)
    ]
    for node in contacts:
        table.add_contact(node)  # a full bucket pings its head (a no-op here)
    await asyncio.sleep(0)  # let those pings finish
    held = [n for bucket in table.buckets for n in bucket.get_nodes()]
    assert len(held) > 5
    for key in (b"\xff" * 20, b"\x00\x03" + b"\x00" * 18, rng.randbytes(20)):
        expected = sorted(held, key=lambda n: distance(n.id, key))[:5]
        got = _nearest(table, key, 5)
        assert [c.id for c in got] == [n.id for n in expected], key.hex()
        assert all(c.address == (n.ip, n.port) for c, n in zip(got, expected, strict=True))
