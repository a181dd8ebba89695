"""Flow-level transfers: max-min fair sharing of each node's uplink and downlink.

A transfer waits one round trip (the request), then its body flows. Every
active flow crosses two resources — its sender's uplink and its receiver's
downlink — and rates are the max-min fair allocation over all of them
(water-filling: the resource that saturates at the lowest level fixes the
rate of its flows, which leave the others more room), recomputed whenever
a flow starts or ends. Not packets: no slow start, no loss, no queues —
the calibration against the real testbed (docs/results.md) says how much
that matters.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from netsim.sim.engine import Sim, Timer

#: A flow is done when what is left would take it under this long (or is under
#: a byte): far below any latency here, and far above the float resolution of
#: an hour's worth of seconds, which an exact test could loop on forever.
DONE_WITHIN = 1e-6


class Node:
    """An endpoint with an uplink and a downlink (bytes/s) in a region."""

    __slots__ = ("down", "name", "online", "region", "rx", "tx", "up")

    def __init__(self, name: str, region: str, up: float, down: float) -> None:
        self.name = name
        self.region = region
        self.up = up
        self.down = down
        self.online = True
        # Flows it sends and receives; dicts, not sets: iteration in insertion
        # order keeps a run deterministic (a set of objects orders by address).
        self.tx: dict[Flow, None] = {}
        self.rx: dict[Flow, None] = {}


class Flow:
    __slots__ = (
        "dst",
        "on_done",
        "on_fail",
        "on_first_byte",
        "rate",
        "remaining",
        "size",
        "src",
        "started",
        "state",
    )

    def __init__(
        self,
        src: Node,
        dst: Node,
        size: float,
        on_first_byte: Callable[[float], Any] | None,
        on_done: Callable[[float], Any],
        on_fail: Callable[[str], Any],
    ) -> None:
        self.src, self.dst = src, dst
        self.size = self.remaining = float(size)
        self.on_first_byte, self.on_done, self.on_fail = on_first_byte, on_done, on_fail
        self.rate = 0.0
        self.started = 0.0
        self.state = "requested"  # -> flowing -> done | failed


class Network:
    """Every flow of the simulation, and the fair rates they get."""

    def __init__(self, sim: Sim, rtt: Callable[[Node, Node], float]) -> None:
        self.sim = sim
        self.rtt = rtt
        self.active: dict[Flow, None] = {}  # insertion-ordered (determinism)
        self.bytes_sent: dict[str, float] = {}
        self._last = 0.0
        self._next: Timer | None = None
        self._dirty = False
        self.reallocations = 0

    # ---------------------------------------------------------------- transfers

    def transfer(
        self,
        src: Node,
        dst: Node,
        size: float,
        on_done: Callable[[float], Any],
        on_fail: Callable[[str], Any],
        on_first_byte: Callable[[float], Any] | None = None,
    ) -> Flow:
        """Send ``size`` bytes: after one round trip the body flows; ``on_done(now)``."""
        flow = Flow(src, dst, size, on_first_byte, on_done, on_fail)
        self.sim.after(self.rtt(src, dst), self._begin, flow)
        return flow

    def cancel(self, flow: Flow, reason: str = "cancelled") -> None:
        """Stop ``flow`` (the receiver gave up, or an endpoint went away)."""
        if flow.state in ("done", "failed"):
            return
        self._settle()
        was_active = flow in self.active
        self._drop(flow)
        flow.state = "failed"
        flow.on_fail(reason)
        if was_active:
            self._changed()

    def node_down(self, node: Node) -> None:
        """``node`` leaves: every flow it sends or receives fails."""
        node.online = False
        for flow in [*node.tx, *node.rx]:
            self.cancel(flow, f"{node.name} went away")

    def _begin(self, flow: Flow) -> None:
        if flow.state != "requested":
            return
        if not (flow.src.online and flow.dst.online):
            flow.state = "failed"
            flow.on_fail("no answer")
            return
        self._settle()
        flow.state = "flowing"
        flow.started = self.sim.now
        self.active[flow] = None
        flow.src.tx[flow] = None
        flow.dst.rx[flow] = None
        if flow.on_first_byte is not None:
            flow.on_first_byte(self.sim.now)
        if flow.size < 1.0:
            self._finish(flow)
        self._changed()

    # ---------------------------------------------------------------- rates

    def _settle(self) -> None:
        """Account the bytes every active flow moved since the last change."""
        dt = self.sim.now - self._last
        if dt > 0:
            sent = self.bytes_sent
            for flow in self.active:
                moved = min(flow.remaining, flow.rate * dt)
                flow.remaining -= moved
                sent[flow.src.name] = sent.get(flow.src.name, 0.0) + moved
        self._last = self.sim.now

    def _changed(self) -> None:
        # Many flows start or end at one instant: reallocate once for them all.
        if not self._dirty:
            self._dirty = True
            self.sim.after(0.0, self._reallocate)

    def _reallocate(self) -> None:
        self._dirty = False
        self._settle()
        self.reallocations += 1
        maxmin(self.active)
        if self._next is not None:
            self._next.cancel()
            self._next = None
        soonest = min((f.remaining / f.rate for f in self.active if f.rate > 0), default=None)
        if soonest is not None:
            self._next = self.sim.after(max(soonest, DONE_WITHIN), self._complete)

    def _complete(self) -> None:
        self._next = None
        self._settle()
        for flow in [f for f in self.active if _done(f)]:
            self._finish(flow)
        self._changed()

    def _finish(self, flow: Flow) -> None:
        self._drop(flow)
        flow.state = "done"
        flow.remaining = 0.0
        flow.on_done(self.sim.now)

    def _drop(self, flow: Flow) -> None:
        self.active.pop(flow, None)
        flow.src.tx.pop(flow, None)
        flow.dst.rx.pop(flow, None)
        flow.rate = 0.0


def _done(flow: Flow) -> bool:
    return flow.remaining < 1.0 or flow.remaining <= flow.rate * DONE_WITHIN


def maxmin(flows: Iterable[Flow]) -> None:
    """Set each flow's ``rate`` to the max-min fair allocation (water-filling).

    Each resource (a node's uplink or downlink) would saturate at level
    ``(capacity - rates already fixed) / flows not yet fixed``; the lowest
    such level is the next bottleneck, its flows are fixed at it, and the
    other resource of each is updated. Levels only rise, so a heap with
    lazily dropped stale entries finds each bottleneck: O((F + R) log R).
    """
    free: dict[tuple[int, Node], float] = {}
    count: dict[tuple[int, Node], int] = {}
    users: dict[tuple[int, Node], list[Flow]] = {}
    for flow in flows:
        for key, cap in (((0, flow.src), flow.src.up), ((1, flow.dst), flow.dst.down)):
            if key not in free:
                free[key] = cap
                count[key] = 0
                users[key] = []
            count[key] += 1
            users[key].append(flow)
    tie = itertools.count()
    heap = [(free[k] / count[k], next(tie), k) for k in free]
    heapq.heapify(heap)
    fixed: set[Flow] = set()
    while heap:
        level, _, key = heapq.heappop(heap)
        n = count[key]
        if n == 0 or abs(level - free[key] / n) > 1e-9 * max(1.0, level):
            continue  # stale: this resource's level moved (a fresher entry exists)
        for flow in users[key]:
            if flow in fixed:
                continue
            fixed.add(flow)
            flow.rate = level
            for other in ((0, flow.src), (1, flow.dst)):
                free[other] -= level
                count[other] -= 1
                if other != key and count[other] > 0:
                    heapq.heappush(heap, (max(level, free[other] / count[other]), next(tie), other))
        count[key] = 0


__all__ = ["Flow", "Network", "Node", "maxmin"]
