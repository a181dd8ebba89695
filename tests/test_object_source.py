"""The object source over fake links: batches, GET fallback, bans, commit, LRU, coalescing."""

from __future__ import annotations

import random
import time
from pathlib import Path

import anyio
import pytest
from anyio.lowlevel import checkpoint

from p2pkg.core.objects import Blob, ObjectId, encode, object_id
from p2pkg.errors import FetchError
from p2pkg.io.store import Store
from p2pkg.roles.links import PeerLinks
from p2pkg.roles.objects import CACHE_BYTES, Hedge, ObjectSource
from tests.fakes import FakeClock, FakeLink, frame, until

pytestmark = pytest.mark.anyio


def blobs(n: int, seed: int = 0, size: int = 100) -> dict[ObjectId, bytes]:
    """``n`` objects (canonical bytes by id), ``size + 3`` bytes each."""
    rng = random.Random(seed)
    canonical = [encode(Blob(rng.randbytes(size))) for _ in range(n)]
    return {object_id(c): c for c in canonical}


def source(
    links: list[FakeLink],
    store: Store | None = None,
    *,
    commit: bool = True,
    cache_bytes: int = CACHE_BYTES,
) -> ObjectSource:
    by_url = {link.url: link for link in links}
    peer_links = PeerLinks(by_url, link_factory=by_url.__getitem__, monotonic=FakeClock())
    return ObjectSource(peer_links, store, commit=commit, cache_bytes=cache_bytes)


async def test_a_single_id_goes_straight_to_get() -> None:
    objs = blobs(1)
    (oid,) = objs
    peer = FakeLink("p", objects=objs)
    assert await source([peer]).get(oid) == objs[oid]
    assert (peer.calls["object"], peer.calls["objects"]) == (1, 0)


async def test_batches_first_then_one_get_per_missing_object() -> None:
    objs = blobs(3)
    a, b, c = objs
    partial = FakeLink("partial", objects={a: objs[a], b: objs[b]})
    static = FakeLink("static", objects=objs, mode="static")  # no POST /objects
    src = source([partial, static])
    assert await src.get_many([a, b, c]) == objs
    assert partial.batches == [[a, b, c]] and static.batches == [[c]]
    assert (partial.calls["object"], static.calls["object"]) == (1, 1)  # c: 404, then found
    assert src.requests == 4


async def test_forged_object_in_a_batch_bans_the_peer_and_keeps_nothing(tmp_path: Path) -> None:
    objs = blobs(4)
    a, b, c, other = objs
    lies = {b: frame(objs[other])}  # a sound frame, but not of b
    with Store.open(tmp_path / "s", create=True) as store:
        liar = FakeLink("liar", objects=objs, lies=lies)
        src = source([liar, FakeLink("empty")], store)
        with pytest.raises(FetchError):
            await src.get_many([a, b, c])
        assert src.links.banned == {"liar"}
        assert liar.calls["object"] == 0  # no GET to a banned peer
        for oid in (a, b, c):
            assert src.held(oid) is None and store.find_object(oid) is None
    # With an honest peer too: everything of the lying batch is asked again.
    liar = FakeLink("liar", objects=objs, lies=lies)
    honest = FakeLink("honest", objects=objs)
    src = source([liar, honest])
    assert await src.get_many([a, b, c]) == {o: objs[o] for o in (a, b, c)}
    assert src.links.banned == {"liar"} and honest.batches == [[a, b, c]]


async def test_a_corrupt_get_bans_the_peer_and_tries_the_next() -> None:
    objs = blobs(2)
    a, other = objs
    liar = FakeLink("liar", objects=objs, lies={a: frame(objs[other])})
    honest = FakeLink("honest", objects=objs)
    src = source([liar, honest])
    assert await src.get(a) == objs[a]
    assert src.links.banned == {"liar"}
    assert (liar.calls["object"], honest.calls["object"]) == (1, 1)


@pytest.mark.parametrize("commit", [True, False])
async def test_commit_policy(tmp_path: Path, commit: bool) -> None:
    objs = blobs(3)
    with Store.open(tmp_path / "s", create=True) as store:
        src = source([FakeLink("p", objects=objs)], store, commit=commit)
        assert await src.get_many(objs) == objs
        assert [store.find_object(o) for o in objs] == (
            list(objs.values()) if commit else [None] * 3
        )


async def test_memory_is_a_bounded_lru() -> None:
    objs = blobs(3)
    a, b, c = objs
    peer = FakeLink("p", objects=objs)
    src = source([peer], cache_bytes=2 * 103 + 50)  # room for two
    await src.get(a)
    await src.get(b)
    await src.get(a)  # from memory; now the most recently used
    assert peer.calls["object"] == 2
    await src.get(c)  # evicts b, the least recently used
    assert src.held(b) is None
    assert src.held(a) == objs[a] and src.held(c) == objs[c]
    await src.get(b)
    assert peer.calls["object"] == 4


async def test_concurrent_gets_of_one_id_share_one_fetch() -> None:
    objs = blobs(2)
    x, y = objs
    peer = FakeLink("slow", objects=objs)
    peer.gate = anyio.Event()
    src = source([peer])
    got: list[bytes] = []

    async def one(oid: ObjectId) -> None:
        got.append(await src.get(oid))

    async def many() -> None:
        got.extend((await src.get_many([x, y])).values())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(many)
            tg.start_soon(one, y)
            tg.start_soon(one, x)
            await until(lambda: peer.calls["objects"] > 0)
            peer.gate.set()
    assert (peer.calls["objects"], peer.calls["object"]) == (1, 0)
    assert sorted(got) == sorted([objs[x], objs[y], objs[y], objs[x]])


async def _get_noting_errors(src: ObjectSource, oid: ObjectId, errors: list[Exception]) -> None:
    try:
        await src.get(oid)
    except FetchError as exc:
        errors.append(exc)


async def test_a_failed_fetch_fails_every_waiter() -> None:
    (oid,) = blobs(1)
    peer = FakeLink("down", mode="drop")
    peer.gate = anyio.Event()
    src = source([peer])
    errors: list[Exception] = []

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_get_noting_errors, src, oid, errors)
            tg.start_soon(_get_noting_errors, src, oid, errors)
            await until(lambda: peer.calls["object"] > 0)
            peer.gate.set()
    assert len(errors) == 2 and peer.calls["object"] == 1


async def test_cancelling_the_fetching_caller_does_not_hang_the_waiter() -> None:
    objs = blobs(1)
    (oid,) = objs
    peer = FakeLink("slow", objects=objs)
    peer.gate = anyio.Event()
    src = source([peer])
    errors: list[Exception] = []
    fetching = anyio.CancelScope()

    async def fetcher() -> None:
        with fetching:
            await src.get(oid)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetcher)
            await until(lambda: peer.calls["object"] > 0)
            tg.start_soon(_get_noting_errors, src, oid, errors)
            await checkpoint()  # the waiter runs first: it now waits on the fetch
            fetching.cancel()
    assert errors and "abandoned" in str(errors[0])
    peer.gate.set()  # nothing is left pending: the next get fetches afresh
    assert await src.get(oid) == objs[oid] and peer.calls["object"] == 2


FAULTS = ("drop", "reset", "corrupt", "absent", "busy", "static")


@pytest.mark.parametrize("seed", range(20))
async def test_seeded_faults_never_yield_bad_bytes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    objs = blobs(rng.randint(1, 12), seed)
    modes = ["ok", *rng.choices(FAULTS, k=rng.randint(1, 5))]
    rng.shuffle(modes)
    links = [
        FakeLink(
            f"peer{i}-{m}",
            objects=objs if m == "ok" else {o: d for o, d in objs.items() if rng.random() < 0.7},
            mode=m,
            rng=rng,
        )
        for i, m in enumerate(modes)
    ]
    want = rng.sample(sorted(objs), k=rng.randint(1, len(objs)))
    with Store.open(tmp_path / "s", create=True) as store:
        src = source(links, store)
        with anyio.fail_after(10):
            got = await src.get_many(want)
        assert got == {o: objs[o] for o in want}, f"seed {seed}: modes {modes}"
        assert all(store.find_object(o) == objs[o] for o in want), f"seed {seed}"
    for link in links:
        banned = link.url in src.links.banned
        assert banned == (link.damaged > 0), f"seed {seed}: {link.url} banned={banned}"


async def test_a_trickling_peer_costs_one_hedge_delay_then_is_asked_last() -> None:
    """Slow retrieval: the object source never waits on one peer. The trickler (listed
    first) is raced by the honest peer after a hedge delay, and is backed off, so the
    next request starts with the honest peer."""
    objs = blobs(4)
    a, b, c, d = objs
    trickler = FakeLink("trickler", objects=objs, mode="trickle", trickle_for=30)
    honest = FakeLink("honest", objects=objs)
    src = source([trickler, honest])
    started = time.monotonic()
    with anyio.fail_after(5):
        assert await src.get(a) == objs[a]
    assert time.monotonic() - started < Hedge().first + 0.5
    assert [r.url for r in src.links.live()] == ["honest", "trickler"]
    assert src.links.banned == set()  # slowness is not proof of malice
    with anyio.fail_after(1):
        assert await src.get_many([b, c]) == {o: objs[o] for o in (b, c)}
        assert await src.get(d) == objs[d]
    assert (trickler.calls["object"], trickler.calls["objects"]) == (1, 0)


async def test_a_batch_from_a_trickling_peer_is_raced_too() -> None:
    objs = blobs(3)
    trickler = FakeLink("trickler", objects=objs, mode="trickle", trickle_for=30)
    honest = FakeLink("honest", objects=objs)
    src = source([trickler, honest])
    with anyio.fail_after(Hedge().first + 1):
        assert await src.get_many(objs) == objs
    assert trickler.batches == [list(objs)] and honest.batches == [list(objs)]
    assert src.links.live()[-1].url == "trickler"


async def test_a_peer_cut_off_by_the_rate_floor_is_backed_off_with_its_rate() -> None:
    """A trickle the client cuts off (TooSlowError) before the hedge fires counts too."""
    objs = blobs(1)
    (oid,) = objs
    trickler = FakeLink("trickler", objects=objs, mode="trickle", trickle_for=0.0)
    honest = FakeLink("honest", objects=objs)
    src = source([trickler, honest])
    assert await src.get(oid) == objs[oid]
    record = src.links.book.get("trickler")
    assert record is not None and record.rate == 1.0 and record.failures == 1
    assert [r.url for r in src.links.live()] == ["honest", "trickler"]
