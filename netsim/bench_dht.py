"""The DHT at 200 nodes on loopback (issue: discovery). Run: ``make bench``.

Measures p2pkg's DHT (the kademlia subclass) and, in the same run, the
unmodified ``kademlia`` package as the reference: bootstrap time, lookup
latency (median / p95) and RPCs per lookup, state per node — with all nodes
alive and with 20% of them killed. For p2pkg the lookup is GET_PROVIDERS
(providers announced beforehand); for the package, which has no provider
records, it is ``get`` of a stored value (FIND_VALUE), the closest thing.

p2pkg's nodes run on one task group (``DhtNode.run``); a killed node is
``stop()``-ped, which ends its ``run``. The package's nodes use its own
``listen``/``stop``.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from typing import Any

import anyio
from anyio.abc import TaskGroup
from kademlia.network import Server
from rpcudp.protocol import RPCProtocol

from p2pkg.core.dht_records import ProviderLimits, ProviderStore
from p2pkg.io.dht import DhtNode, DhtProtocol

N = 200
LOOKUPS = 40
DEAD_LOOKUPS = 12
rng = random.Random(11)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


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


async def network(kind: str, tg: TaskGroup) -> tuple[list[Any], float]:
    nodes: list[Any] = []
    start = time.perf_counter()
    for _ in range(N):
        if kind == "p2pkg":
            node: Any = DhtNode(providers=ProviderStore(ProviderLimits(per_source=N)))
            await tg.start(node.run, "127.0.0.1", 0)
        else:
            node = Server()
            await node.listen(0, "127.0.0.1")
        nodes.append(node)
    ports = [n.transport.get_extra_info("sockname")[1] for n in nodes]
    for i, node in enumerate(nodes[1:], 1):
        await node.bootstrap([("127.0.0.1", ports[0]), ("127.0.0.1", ports[rng.randrange(i)])])
    return nodes, time.perf_counter() - start


async def measure(
    kind: str, alive: list[Any], keys: list[bytes], count: int, counter: Counter
) -> dict[str, float]:
    times, rpcs = [], []
    for i in range(count):
        asker = alive[(i * 13 + 5) % len(alive)]
        key = keys[i % len(keys)]
        before = counter.n
        t0 = time.perf_counter()
        if kind == "p2pkg":
            found = await asker.find_providers(key)
            ok = bool(found)
        else:
            ok = await asyncio.wait_for(asker.get(key.hex()), 60) is not None
        times.append(time.perf_counter() - t0)
        rpcs.append(counter.n - before)
        assert ok, f"{kind}: lookup {i} found nothing"
    return {
        "median_ms": round(statistics.median(times) * 1000, 1),
        "p95_ms": round(pct(times, 0.95) * 1000, 1),
        "rpcs_per_lookup": statistics.median(rpcs),
    }


async def run(kind: str, counter: Counter) -> dict[str, Any]:
    async with anyio.create_task_group() as tg:
        result = await run_on(kind, counter, tg)
        tg.cancel_scope.cancel()  # every p2pkg node still running
    return result


async def run_on(kind: str, counter: Counter, tg: TaskGroup) -> dict[str, Any]:
    nodes, boot = await network(kind, tg)
    keys = [rng.randbytes(32) for _ in range(10)]
    for k in keys:
        announcer = nodes[rng.randrange(N)]
        if kind == "p2pkg":
            await announcer.announce(k, 8000)
        else:
            await announcer.set(k.hex(), "provider:8000")
    contacts = [sum(len(b.get_nodes()) for b in n.protocol.router.buckets) for n in nodes]
    alive = await measure(kind, nodes, keys, LOOKUPS, counter)
    killed = rng.sample(nodes[1:], N // 5)  # 20% dead
    for n in killed:
        n.stop()
    dead = await measure(kind, [n for n in nodes if n not in killed], keys, DEAD_LOOKUPS, counter)
    out = {
        "nodes": N,
        "bootstrap_total_s": round(boot, 2),
        "contacts_per_node_median": statistics.median(contacts),
        "state_bytes_per_node": int(statistics.median(contacts) * 64),  # id + address + bookkeeping
        "alive": alive,
        "dead_20pct": dead,
    }
    for n in nodes:
        n.stop()
    return out


async def main() -> None:
    counter = Counter()
    result = {
        "p2pkg": await run("p2pkg", counter),
        "kademlia_2.2.3": await run("kademlia", counter),
    }
    for name, r in result.items():
        print(f"[{name}] " + json.dumps(r))
    print(json.dumps(result))


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # the package logs every timeout at ERROR
    anyio.run(main)
