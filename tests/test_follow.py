"""The root follower over fake links and fake time: trust rules, persistence, follow loop.

No sockets and no sleeps: peers are :class:`tests.fakes.FakeLink`\\ s, the wall
clock and the monotonic clock are :class:`tests.fakes.FakeClock`\\ s, and a test
waits for a condition (:func:`tests.fakes.until`), bounded by :func:`anyio.fail_after`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import pytest

import p2pkg.roles.follow as follow_mod
from p2pkg.core.objects import ObjectId, compress, object_id
from p2pkg.core.root import SignedRoot, decode_signed_root, public_bytes
from p2pkg.core.trust import TrustedRoot, trust_chain
from p2pkg.errors import ExpiredRootError, FetchError
from p2pkg.io.store import Store
from p2pkg.roles.follow import MAX_CHAIN_WALK, RootFollower
from p2pkg.roles.links import PeerLinks
from p2pkg.testing.signer import DAY, NOW, make_root, signed_bytes
from tests.fakes import A, B, F, FakeClock, FakeLink, bogus_root, honest_roots, tree_id, until

pytestmark = pytest.mark.anyio

PIN = frozenset({public_bytes(A)})


def follower(
    links: list[FakeLink],
    store: Store | None = None,
    *,
    persist: bool = True,
    wall: FakeClock | None = None,
    mono: FakeClock | None = None,
) -> RootFollower:
    by_url = {link.url: link for link in links}
    peer_links = PeerLinks(by_url, link_factory=by_url.__getitem__, monotonic=mono or FakeClock())
    return RootFollower(PIN, peer_links, store, persist=persist, clock=wall or FakeClock(NOW))


def held(h: dict[int, bytes], version: int) -> TrustedRoot:
    """The trusted root a node holding ``h`` up to ``version`` has."""
    return trust_chain(PIN, [h[v] for v in range(1, version + 1)], NOW)


def rid(canonical: bytes) -> bytes:
    return object_id(canonical)


# --------------------------------------------------------------------------- trust rules


async def test_bootstrap_from_the_pinned_key_only() -> None:
    h = honest_roots(3)
    f = follower([FakeLink("forger", roots={3: bogus_root(3, keys=[F])}), FakeLink("ok", roots=h)])
    assert f.trusted is None
    assert (await f.refresh()).id == rid(h[3])
    alone = follower([FakeLink("forger", roots={4: bogus_root(4, keys=[F])})])
    with pytest.raises(FetchError, match="trusted key"):
        await alone.refresh()
    assert alone.trusted is None


async def test_updates_only_under_the_trusted_roots_keys() -> None:
    h = honest_roots(2)
    forger = FakeLink("forger", roots={**h, 3: bogus_root(3), 4: bogus_root(4)})  # signed by F
    self_signed = FakeLink("self-signed", roots={3: bogus_root(3, keys=[B], signers=[B])})
    f = follower([forger, self_signed, FakeLink("ok", roots=h)])
    f.adopt(held(h, 1))
    assert (await f.refresh()).id == rid(h[2])
    assert forger.versions_asked == [None, 2, 3]  # the forged chain was walked, then refused
    assert f.unreachable == []


async def test_older_and_forked_offers_keep_the_held_root() -> None:
    h = honest_roots(3)
    fork = bogus_root(3, signers=[A], label="fork")  # the same version, validly signed
    f = follower([FakeLink("old", roots=h, latest=2), FakeLink("fork", roots={3: fork})])
    f.adopt(held(h, 3))
    assert (await f.refresh()).id == rid(h[3])
    assert f.trusted is not None and f.trusted.id == rid(h[3])


async def test_expired_newest_root_falls_back_then_expiry_is_enforced() -> None:
    h = honest_roots(2)
    short = bogus_root(3, signers=[A], label="short-lived", expires=NOW + DAY)
    wall = FakeClock(NOW + 2 * DAY)
    honest = FakeLink("ok", roots=h)
    f = follower([FakeLink("expired", roots={**h, 3: short}), honest], wall=wall)
    assert (await f.refresh()).id == rid(h[2])
    # Nothing newer anywhere: the held root is kept while it is valid ...
    honest.latest = 1
    assert (await f.refresh()).version == 2
    assert (await f.current(0)).version == 2
    # ... and refused once the wall clock passes its expiry.
    wall.t = NOW + 30 * DAY
    with pytest.raises(ExpiredRootError):
        await f.refresh()
    with pytest.raises(ExpiredRootError):
        await f.current(0)


@pytest.mark.parametrize("start", [0, 1])
async def test_key_rotation_is_walked_root_by_root(start: int) -> None:
    h = honest_roots(5, rotate_at=3)
    tip_only = FakeLink("tip-only", roots={5: h[5]})  # cannot show the chain: refused
    full = FakeLink("full", roots=h)
    f = follower([tip_only, full])
    if start:
        f.adopt(held(h, start))
    assert (await f.refresh()).id == rid(h[5])
    assert full.versions_asked == [None, *range(start + 1, 5)]


@pytest.mark.parametrize(("newest", "accepted"), [(7, True), (8, False)])
async def test_chain_walk_is_bounded(
    monkeypatch: pytest.MonkeyPatch, newest: int, accepted: bool
) -> None:
    monkeypatch.setattr(follow_mod, "MAX_CHAIN_WALK", 5)
    h = honest_roots(8, rotate_at=2)
    peer = FakeLink("ok", roots=h, latest=newest)
    f = follower([peer])
    f.adopt(held(h, 1))
    assert (await f.refresh()).version == (newest if accepted else 1)
    # 1 -> 7 walks the 5 roots 2..6; 1 -> 8 would walk 6, so it asks for none.
    assert peer.versions_asked == ([None, *range(2, newest)] if accepted else [None])


async def test_chain_longer_than_max_chain_walk_is_refused() -> None:
    h = honest_roots(1)
    far = MAX_CHAIN_WALK + 3
    peer = FakeLink("ok", roots={**h, far: bogus_root(far, keys=[B], signers=[B])})
    f = follower([peer])
    f.adopt(held(h, 1))
    assert (await f.refresh()).version == 1
    assert peer.versions_asked == [None]


# --------------------------------------------------------------------------- persistence


async def test_persisted_root_protects_against_rollback_across_runs(tmp_path: Path) -> None:
    h = honest_roots(3)
    with Store.open(tmp_path / "s", create=True) as store:
        assert (await follower([FakeLink("ok", roots=h)], store).refresh()).version == 3
        assert store.root_versions() == [3]
        # The next run starts from the store; a peer now offering v2 cannot move it back.
        again = follower([FakeLink("old", roots=h, latest=2)], store)
        assert again.trusted is not None and again.trusted.id == rid(h[3])
        assert (await again.refresh()).id == rid(h[3])
        assert store.root_versions() == [3]


async def test_persist_false_leaves_the_store_untouched(tmp_path: Path) -> None:
    h = honest_roots(3)
    with Store.open(tmp_path / "s", create=True) as store:
        f = follower([FakeLink("ok", roots=h)], store, persist=False)
        assert (await f.refresh()).version == 3
        assert store.root_versions() == []


async def test_persisted_rotation_survives_a_restart(tmp_path: Path) -> None:
    h = honest_roots(4, rotate_at=2)
    with Store.open(tmp_path / "s", create=True) as store:
        assert (await follower([FakeLink("ok", roots=h)], store).refresh()).version == 4
        again = follower([FakeLink("old", roots=h, latest=1)], store)
        assert again.trusted is not None and again.trusted.version == 4


# --------------------------------------------------------------------------- current()


async def test_current_refreshes_only_when_stale() -> None:
    mono = FakeClock()
    peer = FakeLink("ok", roots=honest_roots(2))
    f = follower([peer], mono=mono)
    assert (await f.current(60)).version == 2
    mono.advance(60)
    await f.current(60)
    assert peer.calls["root"] == 1
    mono.advance(1)
    await f.current(60)
    assert peer.calls["root"] == 2


async def test_concurrent_current_calls_share_one_refresh() -> None:
    peer = FakeLink("ok", roots=honest_roots(2))
    peer.gate = anyio.Event()
    f = follower([peer])
    got: list[TrustedRoot] = []

    async def ask() -> None:
        got.append(await f.current(60))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(ask)
            await until(lambda: peer.calls["root"] > 0)  # all three are in current() now
            peer.gate.set()
    assert peer.calls["root"] == 1
    assert [t.version for t in got] == [2, 2, 2]


async def test_current_keeps_the_held_root_while_peers_fail() -> None:
    mono, wall = FakeClock(), FakeClock(NOW)
    peer = FakeLink("ok", roots=honest_roots(2))
    f = follower([peer], mono=mono, wall=wall)
    await f.current(60)
    peer.mode = "drop"
    mono.advance(61)
    assert (await f.current(60)).version == 2
    assert peer.calls["root"] == 2 and f.unreachable
    wall.t = NOW + 30 * DAY
    with pytest.raises(ExpiredRootError):
        await f.current(60)
    with pytest.raises(FetchError):
        await follower([FakeLink("down", mode="drop")]).current(60)


# --------------------------------------------------------------------------- follow()


async def test_follow_backs_off_exponentially_and_resets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="p2pkg.roles.follow")
    peer = FakeLink("p", roots=honest_roots(2), mode="drop")
    f = follower([peer])
    seen: list[int] = []

    async def on_root(t: TrustedRoot) -> None:
        seen.append(t.version)

    def delays() -> list[int]:
        found = (re.search(r"retry in (\d+)s", r.getMessage()) for r in caplog.records)
        return [int(m[1]) for m in found if m]

    state = f.state

    def failures(n: int) -> Callable[[], bool]:
        return lambda: state.failures_in_a_row == n

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(partial(f.follow, on_root, interval=1.0, max_backoff=8.0, min_gap=0))
            for n in range(1, 7):  # a poke stands in for each back-off wait
                await until(failures(n))
                f.poke()
            await until(failures(7))
            assert delays() == [1, 2, 4, 8, 8, 8, 8]
            assert state.last_error is not None and "connection refused" in state.last_error
            peer.mode = "ok"
            f.poke()
            await until(lambda: seen == [2])
            assert state.failures_in_a_row == 0 and state.last_error is None
            peer.mode = "drop"  # a held root, no peer: still a failure, from interval again
            f.poke()
            await until(failures(1))
            assert state.last_error is not None and "no peer reachable" in state.last_error
            assert delays()[-1] == 1 and seen == [2]
            tg.cancel_scope.cancel()


async def test_follow_runs_every_interval() -> None:
    f = follower([FakeLink("ok", roots=honest_roots(1))])
    rounds = 0
    third = anyio.Event()

    async def on_root(t: TrustedRoot) -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            third.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(partial(f.follow, on_root, interval=0.001))
            await third.wait()
            tg.cancel_scope.cancel()
    assert f.state.last_success is not None


async def test_poke_wakes_follow_at_once() -> None:
    h = honest_roots(3)
    peer = FakeLink("ok", roots=h, latest=2)
    f = follower([peer])
    seen: list[int] = []

    async def on_root(t: TrustedRoot) -> None:
        seen.append(t.version)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(partial(f.follow, on_root, interval=3600))
            await until(lambda: f.state.last_success is not None)  # waiting an hour now
            peer.latest = 3  # the master published; a push pokes the follower
            f.poke()
            await until(lambda: len(seen) == 2)
            tg.cancel_scope.cancel()
    assert seen == [2, 3]


async def test_poke_during_a_round_is_not_lost() -> None:
    h = honest_roots(3)
    peer = FakeLink("ok", roots=h, latest=2)
    f = follower([peer])
    seen: list[int] = []
    second = anyio.Event()

    async def on_root(t: TrustedRoot) -> None:
        seen.append(t.version)
        if len(seen) == 1:  # v3 is pushed while v2 is being synced
            peer.latest = 3
            f.poke()
        else:
            second.set()

    with anyio.fail_after(0.5):  # the bug shows as this timeout
        async with anyio.create_task_group() as tg:
            await tg.start(partial(f.follow, on_root, interval=3600, min_gap=0))
            await second.wait()
            tg.cancel_scope.cancel()
    assert seen == [2, 3]


@pytest.mark.parametrize("where", ["refresh", "wait", "on_root"])
async def test_cancelling_follow_propagates(where: str) -> None:
    peer = FakeLink("p", roots=honest_roots(1), mode="stall" if where == "refresh" else "ok")
    f = follower([peer])
    entered = anyio.Event()

    async def on_root(t: TrustedRoot) -> None:
        if where == "on_root":
            entered.set()
            await anyio.Event().wait()  # a sync that never ends

    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                await tg.start(partial(f.follow, on_root, interval=3600))
                await until(
                    {
                        "refresh": lambda: peer.calls["root"] > 0,
                        "on_root": entered.is_set,
                        "wait": lambda: f.state.last_success is not None,
                    }[where]
                )
                scope.cancel()
    assert scope.cancelled_caught
    assert peer.calls["root"] == 1
    assert f.state.failures_in_a_row == 0 and f.state.last_error is None
    assert entered.is_set() == (where == "on_root")


async def test_refresh_does_not_wait_for_a_stalled_peer() -> None:
    h = honest_roots(2)
    f = follower([FakeLink("stall", roots=h, mode="stall"), FakeLink("ok", roots=h)])
    with anyio.fail_after(0.5):  # the bug shows as this timeout
        assert (await f.refresh()).version == 2


async def test_a_refresh_with_only_stalled_peers_ends_at_its_deadline() -> None:
    h = honest_roots(2)
    f = follower([FakeLink("stall", roots=h, mode="stall")])
    f.deadline = 0.2
    with anyio.fail_after(2), pytest.raises(FetchError, match="within the refresh deadline"):
        await f.refresh()
    record = f.links.book.get("stall")
    assert record is not None and record.failures == 1  # deprioritised, not banned
    assert not f.links.banned


async def test_a_slower_peer_with_a_newer_root_within_the_grace_is_still_heard() -> None:
    h = honest_roots(3)
    stale = FakeLink("stale", roots=h, latest=2)
    fresh = FakeLink("fresh", roots=h)
    fresh.gate = anyio.Event()
    f = follower([stale, fresh])
    f.grace = 1.0

    async def open_gate() -> None:
        await until(lambda: stale.calls["root"] > 0)
        fresh.gate.set()  # the fresh peer answers after the stale one, within the grace

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(open_gate)
            assert (await f.refresh()).version == 3


# --------------------------------------------------------------------------- seeded faults

ROOT_FAULTS = ("drop", "reset", "corrupt", "absent", "busy", "old", "forged", "fork", "expired")


def faulty_peer(url: str, mode: str, h: dict[int, bytes], rng: random.Random) -> FakeLink:
    newest = max(h)
    keys = decode_signed_root(h[newest])[1].keys
    current = A if public_bytes(A) in keys else B
    if mode == "old":
        return FakeLink(url, roots=h, latest=rng.randint(1, newest - 1))
    if mode == "forged":  # newer, claims the real keys or the forger's own
        claimed = rng.choice([current, F])
        return FakeLink(url, roots={**h, newest + 1: bogus_root(newest + 1, keys=[claimed])})
    if mode == "fork":  # the honest signatures spliced onto another tree
        signed, root = decode_signed_root(h[newest])
        other = dataclasses.replace(root, tree=ObjectId(tree_id("fork")))
        spliced = SignedRoot(other.encode(), signed.signatures).encode()
        return FakeLink(url, roots={**h, newest: spliced})
    if mode == "expired":  # validly signed, newer, but expired by now
        late = bogus_root(newest + 1, keys=[current], signers=[current], expires=NOW + DAY // 2)
        return FakeLink(url, roots={**h, newest + 1: late})
    return FakeLink(url, roots=h, mode=mode, rng=rng)


@pytest.mark.parametrize("seed", range(30))
async def test_seeded_faults_end_on_the_honest_newest_root(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    newest = rng.randint(2, 6)
    rotate_at = rng.choice([None, *range(2, newest + 1)])
    h = honest_roots(newest, rotate_at=rotate_at)
    modes = ["ok", *rng.choices(ROOT_FAULTS, k=rng.randint(1, 5))]
    rng.shuffle(modes)
    start, start_version = rng.choice(["fresh", "held", "store"]), rng.randint(1, newest)
    why = f"seed {seed}: modes {modes}, rotate_at {rotate_at}, start {start} v{start_version}"
    links = [faulty_peer(f"peer{i}-{m}", m, h, rng) for i, m in enumerate(modes)]
    with Store.open(tmp_path / "s", create=True) as store:
        if start == "store":
            for v in range(1, start_version + 1):
                store.commit(root=h[v])
        f = follower(links, store, wall=FakeClock(NOW + DAY))
        if start == "held":
            f.adopt(held(h, start_version))
        with anyio.fail_after(10):
            for _ in range(2):
                trusted = await f.refresh()
                assert trusted.id == rid(h[newest]), why
        assert store.root_versions()[-1] == newest, why


# --------------------------------------------------------------------------- bad roots (issue 10)


async def test_a_peer_serving_another_root_of_the_held_version_is_banned() -> None:
    h = honest_roots(2)
    fork = bogus_root(2, keys=[A], signers=[A], label="fork")  # validly signed: equivocation
    liar = FakeLink("liar", roots={**h, 2: fork})
    f = follower([liar, FakeLink("ok", roots=h)])
    f.adopt(held(h, 2))
    assert (await f.refresh()).version == 2
    assert f.links.banned == {"liar"}


async def test_a_forged_newer_root_bans_its_peer_so_it_costs_one_refresh() -> None:
    h = honest_roots(2)
    # A "rotation" to the forger's key, served root by root: the walk checks
    # version 2 first, and it is not signed by the trusted key.
    forged = {v: bogus_root(v, keys=[F], signers=[F]) for v in range(2, 10)}
    forger = FakeLink("forger", roots={1: h[1], **forged})
    f = follower([forger, FakeLink("ok", roots=h)])
    f.adopt(held(h, 1))
    assert (await f.refresh()).version == 2
    assert f.links.banned == {"forger"}
    assert forger.versions_asked == [None, 2]  # one bad root, not a walk of 8
    asked = list(forger.versions_asked)
    assert (await f.refresh()).version == 2
    assert forger.versions_asked == asked  # banned: not asked again


async def test_a_chain_walk_stops_at_the_first_root_that_does_not_verify() -> None:
    h = honest_roots(8, rotate_at=3)  # 1..2 under A, 3.. under B: 1 -> 8 needs a walk
    broken = {**h, 3: bogus_root(3, keys=[B], signers=[F])}
    peer = FakeLink("broken", roots=broken)
    f = follower([peer])
    f.adopt(held(h, 2))
    assert (await f.refresh()).version == 2
    assert peer.versions_asked == [None, 3]  # not 3..7: the walk stopped at the bad root
    assert f.links.banned == {"broken"}


async def test_only_an_expired_root_on_offer_is_an_expiry_error_not_a_network_one() -> None:
    old = signed_bytes(
        make_root(1, [A], tree=tree_id("old"), created=NOW - 30 * DAY, expires=NOW - DAY), [A]
    )
    f = follower([FakeLink("stale", roots={1: old})])
    with pytest.raises(ExpiredRootError):  # exit 3 (trust), as docs/operators.md says
        await f.refresh()
    assert not f.links.banned  # a stale seed is not a liar


async def test_verified_pushes_are_served_at_once_and_unverified_ones_are_rate_limited() -> None:
    h = honest_roots(8)
    peer = FakeLink("ok", roots=h, latest=1)
    f = follower([peer])
    seen: list[int] = []

    async def on_root(t: TrustedRoot) -> None:
        seen.append(t.version)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            # A minute between rate-limited rounds: only unlimited pokes finish in time.
            await tg.start(partial(f.follow, on_root, interval=3600, min_gap=60))
            await until(lambda: seen == [1])
            for v in range(2, 9):  # the master's roots, pushed one after another
                peer.latest = v
                assert f.pushed(compress(h[v]), "master")
                await until(lambda v=v: seen[-1] == v)  # type: ignore[misc]
            assert not f.pushed(compress(h[5]), "master")  # known: wakes nothing
            rounds = peer.calls["root"]
            for v in range(100, 110):  # forged "newer" roots: a burst, then one a minute
                assert f.pushed(compress(bogus_root(v)), "mallory")
                await anyio.sleep(0.02)
            await anyio.sleep(0.1)
            assert peer.calls["root"] - rounds <= follow_mod.POKE_BURST
            # (each round reports the root it holds: the forgeries changed nothing)
            assert seen[:8] == [1, 2, 3, 4, 5, 6, 7, 8] and set(seen[8:]) <= {8}
            tg.cancel_scope.cancel()
