"""netsim's simulator: deterministic, exact on a closed-form case, honest under attack,
and deciding with the product's own classes."""

from __future__ import annotations

import copy
import zlib
from pathlib import Path
from typing import Any

import pytest

from netsim.sim import fetch as sim_fetch
from netsim.sim.engine import Sim
from netsim.sim.network import Network, Node, maxmin
from netsim.sim.run import load, run, table
from netsim.sim.world import World
from p2pkg.core.peers import PeerBook
from p2pkg.core.schedule import Scheduler

SMOKE = Path(__file__).resolve().parent.parent / "netsim" / "scenarios" / "smoke.toml"


def _count_calls(monkeypatch: pytest.MonkeyPatch, *methods: tuple[type, str]) -> dict[str, int]:
    """Count calls of ``methods`` (class, name) while they keep doing what they do."""
    calls = dict.fromkeys((name for _, name in methods), 0)
    for cls, name in methods:
        original = getattr(cls, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(cls, name, spy)
    return calls


def _strip(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in report["results"]]


def test_smoke_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    scenario = load(SMOKE)
    a, b, c = (run(scenario, seed, progress=False) for seed in (3, 3, 4))
    assert _strip(a) == _strip(b)
    assert _strip(a) != _strip(c)
    strategies = [r["strategy"] for r in a["results"]]
    assert strategies == ["origin", "mirrors", "cdn", "p2pkg-list", "p2pkg"]
    md = table(a)
    assert md.startswith("| strategy |") and "| p2pkg |" in md


@pytest.mark.parametrize(("n", "up", "down"), [(10, 100e6, 1e9), (4, 100e6, 10e6), (1, 5e6, 1e9)])
def test_one_server_n_clients_matches_the_formula(n: int, up: float, down: float) -> None:
    """N clients fetch S bytes each from one server at t=0: the fair share is
    min(up/N, down), so all finish at RTT + S / min(up/N, down)."""
    sim = Sim(1)
    rtt = 0.05
    net = Network(sim, lambda _a, _b: rtt)
    server = Node("server", "x", up, up)
    size = 20e6
    done: list[float] = []
    for i in range(n):
        client = Node(f"c{i}", "x", down, down)
        net.transfer(server, client, size, done.append, pytest.fail)
    sim.run(10_000)
    expected = rtt + size / min(up / n, down)
    assert len(done) == n
    assert all(t == pytest.approx(expected, rel=1e-6) for t in done)


def test_maxmin_gives_the_leftover_to_flows_not_held_by_the_bottleneck() -> None:
    a, b, c = Node("a", "x", 10.0, 10.0), Node("b", "x", 100.0, 100.0), Node("c", "x", 4.0, 4.0)
    sim = Sim(1)
    net = Network(sim, lambda _x, _y: 0.0)
    flows = {
        net.transfer(a, b, 1e9, lambda _t: None, lambda _r: None),  # a.up shared with a->c
        net.transfer(a, c, 1e9, lambda _t: None, lambda _r: None),  # c.down = 4: bottleneck
    }
    sim.run(0.0)
    rates = sorted(f.rate for f in flows)
    assert rates == pytest.approx([4.0, 6.0])  # a->c capped at 4; a->b gets the other 6
    maxmin(set())  # nothing to do


def test_with_malicious_seeds_no_corrupt_download_completes() -> None:
    scenario = copy.deepcopy(load(SMOKE))
    scenario["seeds"].update(malicious=0.5, malicious_kinds=["corrupt"], churn_mean_up=0)
    scenario["strategies"] = ["p2pkg", "mirrors"]
    report = run(scenario, 5, progress=False)
    p2pkg, mirrors = report["results"]
    assert p2pkg["downloads"] > 50
    assert p2pkg["corrupt_completed"] == 0
    assert p2pkg["peer_bans"] > 0  # the corrupt seeds were found out and banned
    assert p2pkg["failed_downloads"] == 0
    # Unsigned mirror pages of the 2008 proposal: a corrupt mirror's bytes get installed.
    assert mirrors["corrupt_completed"] > 0


def test_the_simulator_decides_with_the_products_scheduler_and_peer_book(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SimFetch uses p2pkg.core's classes themselves (no re-implementation)."""
    assert sim_fetch.Scheduler is Scheduler and sim_fetch.PeerBook is PeerBook
    calls = _count_calls(
        monkeypatch, (Scheduler, "assign"), (Scheduler, "span_finished"),
        (PeerBook, "observe_transfer"),
    )  # fmt: skip
    scenario = copy.deepcopy(load(SMOKE))
    result = World(scenario, "p2pkg", 2).run()
    assert result["downloads"] > 0
    assert calls["assign"] >= result["downloads"]
    assert calls["span_finished"] > 0 and calls["observe_transfer"] > 0


@pytest.mark.net  # starts processes
def test_a_run_is_the_same_in_another_process_with_another_hash_seed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        subprocess.run(
            [sys.executable, "-m", "netsim", "run", str(SMOKE), "--seed", "9", "--out", str(out)],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            cwd=Path(__file__).resolve().parent.parent,
        )
        outs.append((out / "smoke-seed9.md").read_text())
    assert outs[0] == outs[1]


def test_the_plots_are_written(tmp_path: Path) -> None:
    from netsim.sim.run import plot

    report = run(load(SMOKE), 1, progress=False)
    plot(report, tmp_path / "smoke.png")
    assert (tmp_path / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("seed", range(40))
def test_the_incremental_allocation_is_the_max_min_one_after_any_starts_and_ends(
    seed: int,
) -> None:
    """Flows start, finish and are cancelled at random; after each step every
    flowing rate equals the max-min allocation recomputed over all of them."""
    import random

    rng = random.Random(seed)
    sim = Sim(seed)
    net = Network(sim, lambda _a, _b: 0.0)
    nodes = [
        Node(f"n{i}", "x", rng.choice([1.0, 5.0, 10.0, 100.0]), rng.choice([2.0, 5.0, 20.0]))
        for i in range(10)
    ]
    live: list[Any] = []
    finished = 0
    for _ in range(150):
        if live and rng.random() < 0.3:
            net.cancel(live.pop(rng.randrange(len(live))))
        else:
            a, b = rng.sample(nodes, 2)
            size = rng.choice([5.0, 50.0, 1e12])  # some finish within the run, some never

            def done(_t: float) -> None:
                nonlocal finished
                finished += 1

            live.append(net.transfer(a, b, size, done, lambda _r: None))
        sim.run(sim.now + rng.choice([0.0, 0.3, 2.0]))
        live = [f for f in live if f.state in ("requested", "flowing")]
        flowing = [f for f in live if f.state == "flowing"]
        got = [f.rate for f in flowing]
        maxmin(flowing)
        assert got == pytest.approx([f.rate for f in flowing], rel=1e-6)
        for f, rate in zip(flowing, got, strict=True):
            f.rate = rate  # leave the network's own state as it was
        for link in {id(n.uplink): n.uplink for n in nodes}.values():
            assert link.used <= link.cap * (1 + 1e-9)
    assert finished > 0


def test_the_dht_runs_the_products_lookup_records_and_announce_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Clients' discovery and every announcement go through p2pkg.core's classes."""
    from netsim.sim import dht as sim_dht
    from netsim.sim import dht_roles
    from p2pkg.core.announce import AnnouncePlan
    from p2pkg.core.dht_records import ProviderStore
    from p2pkg.core.lookup import Lookup

    assert sim_dht.Lookup is Lookup and sim_dht.ProviderStore is ProviderStore
    assert dht_roles.AnnouncePlan is AnnouncePlan
    calls = _count_calls(
        monkeypatch, (Lookup, "on_response"), (ProviderStore, "add"), (AnnouncePlan, "due")
    )
    scenario = copy.deepcopy(load(SMOKE))
    scenario["seeds"]["churn_mean_up"] = 0  # every seed up all along
    scenario["releases"]["per_hour"] = 120
    world = World(scenario, "p2pkg", 2)
    result = world.run()
    assert all(calls.values()), calls
    assert world.dht is not None
    assert result["dht_lookups_per_download"] > 0 and result["dht_rpcs_per_download"] > 0
    assert result["dht_providers_per_discovery"] > 0
    # Seeds poke after every sync, but their 256 bins do not change: they are
    # announced at the refresh (ttl/2 after the start phase) and never for a
    # poke — the old rule announced all 256 again at each.
    for a in world.dht.announcers.values():
        if a.role != "seed":
            continue
        phase = zlib.crc32(a.member.id) % int(a.plan.refresh)
        rounds = 1 if a.plan.refresh - phase <= scenario["duration"] else 0
        assert a.announced == 256 * rounds
    assert sum(a.pokes for a in world.dht.announcers.values() if a.role == "seed") > 0


def test_a_provider_lookup_finds_the_announced_providers_despite_dead_nodes() -> None:
    from netsim.sim.dht import SimDht, Traffic

    sim = Sim(1)
    nodes = [Node(f"m{i}", "x", 1e6, 1e6) for i in range(300)]
    dht = SimDht(nodes, lambda _a, _b: 0.05, lambda: sim.now)
    key = bytes(range(20))
    providers = dht.members[:5]
    for member in providers:
        dht.announce(member, key, Traffic())
    for node in nodes[100:160]:  # a fifth of the network goes away afterwards
        node.online = False
    client = Node("client", "x", 1e6, 1e6)
    start = [m.contact for m in dht.members[200:203]]
    run = dht.lookup(client, key, start, Traffic(), want=16)
    assert {m.address for m in providers} <= set(run.result.providers)
    assert run.elapsed < 3.0 and run.rpcs < 60


def test_with_a_quantum_rates_wait_at_most_one_quantum() -> None:
    """The closed form again, rates solved every 10 ms: each client finishes within
    one quantum of the exact time (its rate comes at the quantum's end)."""
    sim = Sim(1)
    net = Network(sim, lambda _a, _b: 0.05, quantum=0.01)
    server = Node("server", "x", 100e6, 100e6)
    done: list[float] = []
    for i in range(10):
        net.transfer(server, Node(f"c{i}", "x", 1e9, 1e9), 20e6, done.append, pytest.fail)
    sim.run(10_000)
    exact = 0.05 + 20e6 / (100e6 / 10)
    assert len(done) == 10
    assert all(exact <= t <= exact + 0.01 + 1e-9 for t in done)
