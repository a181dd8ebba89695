"""The DHT at 200 nodes on loopback (issue: discovery; issue 10 item 5). Run: ``make bench``.

Measures p2pkg's DHT (the kademlia subclass) and, in the same process, the
unmodified ``kademlia`` package as the reference: bootstrap time, lookup
success rate, latency (median / p95) and RPCs per lookup, contacts per node —
with all nodes alive and with 20% of them killed. For p2pkg the lookup is
GET_PROVIDERS (providers announced beforehand); for the package, which has no
provider records, it is ``get`` of a stored value (FIND_VALUE), the closest
thing.

Every run builds a fresh network (new random node ids), announces 10 keys,
runs ``--lookups`` lookups from different nodes, stops 20% of the nodes and
runs ``--dead-lookups`` more. A lookup that finds nothing is counted, not
fatal: the figure to watch is the success rate over all runs (p2pkg must be
100%, alive and with 20% dead). The reference gets fewer runs by default
(its dead-node lookups wait 5 s timeouts in lockstep).

Each node listens on a loopback address of its own (127.10.x.y; Linux routes
all of 127/8 to lo): p2pkg caps what one host may hold in routing tables and
key tables, as the real network would see distinct hosts. p2pkg's nodes run
on one task group (``DhtNode.run``); a killed node is ``stop()``-ped. The
package's nodes use its own ``listen``/``stop``.

    python -m netsim.bench_dht [--runs 10] [--reference-runs 3] [--nodes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from kademlia.network import Server
from rpcudp.protocol import RPCProtocol

from p2pkg.io.dht import DhtNode, DhtProtocol

KEYS = 10


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def loopback(i: int) -> str:
    """Node ``i``'s own address: 127.10.x.y."""
    return f"127.10.{i // 250}.{i % 250 + 1}"


class Counter:
    """Counts outgoing RPCs by wrapping send paths of both implementations."""

    def __init__(self) -> None:
        self.n = 0
        orig_call = DhtProtocol.call
        orig_getattr = RPCProtocol.__getattr__
        counter = self

        def call(self: DhtProtocol, *a: Any, **k: Any) -> Any:
            counter.n += 1
            return orig_call(self, *a, **k)

        def getattr_(self: RPCProtocol, name: str) -> Any:
            value = orig_getattr(self, name)
            if (
                callable(value)
                and not name.startswith(("_", "rpc_"))
                and name in ("find_node", "find_value", "ping", "store")
            ):

                def wrapped(*a: Any) -> Any:
                    counter.n += 1
                    return value(*a)

                return wrapped
            return value

        DhtProtocol.call = call  # type: ignore[method-assign]
        RPCProtocol.__getattr__ = getattr_  # type: ignore[method-assign]


@dataclass
class Phase:
    """Lookups of one phase (alive, or 20% dead) over all runs."""

    times: list[float] = field(default_factory=list)
    rpcs: list[float] = field(default_factory=list)
    failed: int = 0

    def summary(self) -> dict[str, Any]:
        n = len(self.times)
        return {
            "lookups": n,
            "success_pct": round(100 * (n - self.failed) / n, 2) if n else None,
            "failed": self.failed,
            "p50_ms": round(statistics.median(self.times) * 1000, 1),
            "p95_ms": round(pct(self.times, 0.95) * 1000, 1),
            "rpcs_per_lookup_p50": statistics.median(self.rpcs),
        }


@dataclass
class Totals:
    alive: Phase = field(default_factory=Phase)
    dead: Phase = field(default_factory=Phase)
    boot: list[float] = field(default_factory=list)
    contacts: list[float] = field(default_factory=list)
    runs_with_failures: int = 0

    def summary(self, nodes: int) -> dict[str, Any]:
        contacts = statistics.median(self.contacts)
        return {
            "runs": len(self.boot),
            "nodes": nodes,
            "runs_with_failures": self.runs_with_failures,
            "bootstrap_s_p50": round(statistics.median(self.boot), 2),
            "contacts_per_node_p50": contacts,
            "state_bytes_per_node": int(contacts * 64),  # id + address + bookkeeping
            "alive": self.alive.summary(),
            "dead_20pct": self.dead.summary(),
        }


async def network(kind: str, n: int, tg: TaskGroup, rng: random.Random) -> tuple[list[Any], float]:
    nodes: list[Any] = []
    start = time.perf_counter()
    for i in range(n):
        if kind == "p2pkg":
            node: Any = DhtNode()
            await tg.start(node.run, loopback(i), 0)
        else:
            node = Server()
            await node.listen(0, loopback(i))
        nodes.append(node)
    addrs = [n.transport.get_extra_info("sockname")[:2] for n in nodes]
    for i, node in enumerate(nodes[1:], 1):
        await node.bootstrap([addrs[0], addrs[rng.randrange(i)]])
    return nodes, time.perf_counter() - start


async def measure(
    kind: str, askers: list[Any], keys: list[bytes], count: int, counter: Counter, phase: Phase
) -> None:
    for i in range(count):
        asker = askers[(i * 13 + 5) % len(askers)]
        key = keys[i % len(keys)]
        before = counter.n
        t0 = time.perf_counter()
        if kind == "p2pkg":
            ok = bool(await asker.find_providers(key))
        else:
            ok = await asyncio.wait_for(asker.get(key.hex()), 60) is not None
        phase.times.append(time.perf_counter() - t0)
        phase.rpcs.append(counter.n - before)
        phase.failed += not ok


async def one_run(
    kind: str, args: argparse.Namespace, counter: Counter, totals: Totals, seed: int
) -> None:
    rng = random.Random(seed)
    async with anyio.create_task_group() as tg:
        nodes, boot = await network(kind, args.nodes, tg, rng)
        keys = [rng.randbytes(32) for _ in range(KEYS)]
        for k in keys:
            announcer = nodes[rng.randrange(len(nodes))]
            if kind == "p2pkg":
                await announcer.announce(k, 8000)
            else:
                await announcer.set(k.hex(), "provider:8000")
        totals.boot.append(boot)
        totals.contacts.extend(
            sum(len(b.get_nodes()) for b in n.protocol.router.buckets) for n in nodes
        )
        failed = totals.alive.failed + totals.dead.failed
        await measure(kind, nodes, keys, args.lookups, counter, totals.alive)
        killed = rng.sample(nodes[1:], len(nodes) // 5)  # 20% dead
        for n in killed:
            n.stop()
        alive = [n for n in nodes if n not in killed]
        await measure(kind, alive, keys, args.dead_lookups, counter, totals.dead)
        totals.runs_with_failures += totals.alive.failed + totals.dead.failed > failed
        for n in alive:
            n.stop()
        tg.cancel_scope.cancel()  # every p2pkg node still running


async def main(args: argparse.Namespace) -> None:
    counter = Counter()
    result: dict[str, Any] = {}
    for kind, name, runs in (
        ("p2pkg", "p2pkg", args.runs),
        ("kademlia", "kademlia_2.2.3", args.reference_runs),
    ):
        if runs <= 0:
            continue
        totals = Totals()
        for run in range(runs):
            await one_run(kind, args, counter, totals, seed=1000 + run)
            print(f"[{name}] run {run + 1}/{runs}: {json.dumps(totals.summary(args.nodes))}")
        result[name] = totals.summary(args.nodes)
    for name, r in result.items():
        print(f"[{name}] " + json.dumps(r))
    if len(result) == 2:
        ours, ref = result["p2pkg"], result["kademlia_2.2.3"]
        ratios = {
            phase: {
                "p50_ratio": round(ours[phase]["p50_ms"] / ref[phase]["p50_ms"], 2),
                "p95_ratio": round(ours[phase]["p95_ms"] / ref[phase]["p95_ms"], 2),
            }
            for phase in ("alive", "dead_20pct")
        }
        print("[p2pkg / kademlia_2.2.3] " + json.dumps(ratios))
        result["ratios"] = ratios
    print(json.dumps(result))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="p2pkg networks built (default 10)")
    parser.add_argument(
        "--reference-runs", type=int, default=3, help="kademlia 2.2.3 networks (default 3)"
    )
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--lookups", type=int, default=40, help="per run, all alive")
    parser.add_argument("--dead-lookups", type=int, default=12, help="per run, 20%% dead")
    return parser.parse_args(argv)


if __name__ == "__main__":
    import logging

    logging.disable(logging.ERROR)  # the package logs every timeout at ERROR
    options = parse()
    anyio.run(main, options)
