"""Flow-level transfers: max-min fair sharing of each node's uplink and downlink.

A transfer waits one round trip (the request), then its body flows. Every
active flow crosses two links — its sender's uplink and its receiver's
downlink — and rates are the max-min fair allocation over all of them
(water-filling: the link that saturates at the lowest level fixes the rate
of its flows, which leave the others more room). Not packets: no slow
start, no loss, no queues — the calibration against the real testbed
(docs/results.md) says how much that matters.

**Incremental, and still exact.** Recomputing the allocation over every
flow at every start and end costs O(flows) per event, O(N²) for a run —
that is what kept 30,000 nodes from fitting in half an hour. A change can
only move rates through *saturated* links: a flow crossing a link with room
left is held back somewhere else, so more or less traffic beside it changes
nothing for it. So when flows start or end, the allocation is recomputed
over a *region*: the new flows, the saturated links they touch and the ones
that lost a flow, every flow of those links, and (repeatedly) the saturated
links those flows cross; the links at the region's edge keep the rates of
their other flows and offer only what those leave. If a link at the edge
ends up full, it joins the region and the region is solved again. What
comes out is the unique max-min allocation (every flow is held by a full
link on which it is among the fastest), which ``tests/test_sim.py`` checks
against :func:`maxmin` over all flows after random starts and ends.
Each flow keeps its own clock (bytes left at the instant its rate last
changed) and its own completion timer, so only flows whose rate changes
cost anything.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

from netsim.sim.engine import Sim, Timer

#: A flow is done when what is left would take it under this long (or is under
#: a byte): far below any latency here, and far above the float resolution of
#: an hour's worth of seconds, which an exact test could loop on forever.
DONE_WITHIN = 1e-6
#: A link counts as full when its flows use all but this fraction of it.
FULL = 1e-9


class Link:
    """One direction of a node's access link: a capacity shared by its flows."""

    __slots__ = ("cap", "flows", "name", "used")

    def __init__(self, name: str, cap: float) -> None:
        self.name = name
        self.cap = cap
        # dicts, not sets: iteration in insertion order keeps a run deterministic
        # (a set of objects orders by address).
        self.flows: dict[Flow, None] = {}
        self.used = 0.0  # the sum of its flows' rates

    def full(self) -> bool:
        return self.used >= self.cap * (1.0 - FULL)


class Node:
    """An endpoint with an uplink and a downlink (bytes/s) in a region."""

    __slots__ = ("down", "downlink", "name", "online", "region", "up", "uplink")

    def __init__(self, name: str, region: str, up: float, down: float) -> None:
        self.name = name
        self.region = region
        self.up = up
        self.down = down
        self.online = True
        self.uplink = Link(name + "/up", up)
        self.downlink = Link(name + "/down", down)


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
        "timer",
        "updated",
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
        self.updated = 0.0  # `remaining` is as of this instant
        self.timer: Timer | None = None  # its completion at the current rate
        self.state = "requested"  # -> flowing -> done | failed

    def links(self) -> tuple[Link, Link]:
        return self.src.uplink, self.dst.downlink


class Network:
    """Every flow of the simulation, and the fair rates they get."""

    def __init__(self, sim: Sim, rtt: Callable[[Node, Node], float], quantum: float = 0.0) -> None:
        self.sim = sim
        self.rtt = rtt
        # 0: rates change at the instant a flow starts or ends (exact). Above 0:
        # the changes of each `quantum` of time are solved together at its end
        # (a flow may wait that long for its rate, a freed link stays unused
        # that long): for a scenario whose largest bursts would otherwise
        # re-solve hundreds of coupled flows at every event (pypi-100k).
        self.quantum = quantum
        self.active = 0
        self.reallocations = 0
        self.region_flows = 0  # flows re-solved, summed over reallocations
        self._new: dict[Flow, None] = {}  # begun since the last reallocation
        self._freed: dict[Link, None] = {}  # full links that lost a flow since then
        self._dirty = False

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
        if flow.state == "flowing":
            self._drop(flow)
        flow.state = "failed"
        flow.on_fail(reason)

    def node_down(self, node: Node) -> None:
        """``node`` leaves: every flow it sends or receives fails."""
        node.online = False
        for flow in [*node.uplink.flows, *node.downlink.flows]:
            self.cancel(flow, f"{node.name} went away")

    def _begin(self, flow: Flow) -> None:
        if flow.state != "requested":
            return
        if not (flow.src.online and flow.dst.online):
            flow.state = "failed"
            flow.on_fail("no answer")
            return
        now = self.sim.now
        flow.state = "flowing"
        flow.started = flow.updated = now
        self.active += 1
        for link in flow.links():
            link.flows[flow] = None
        self._new[flow] = None
        self._changed()
        if flow.on_first_byte is not None:
            flow.on_first_byte(now)
        if flow.size < 1.0 and flow.state == "flowing":
            self._finish(flow)

    def _finish(self, flow: Flow) -> None:
        self._drop(flow)
        flow.state = "done"
        flow.remaining = 0.0
        flow.on_done(self.sim.now)

    def _drop(self, flow: Flow) -> None:
        """Take ``flow`` off its links (settled first)."""
        self._settle(flow)
        self.active -= 1
        self._new.pop(flow, None)
        for link in flow.links():
            # Only a full link's other flows can speed up: on one with room left
            # they are held back elsewhere.
            if link.full():
                self._freed[link] = None
            del link.flows[flow]
            link.used = link.used - flow.rate if link.flows else 0.0
        flow.rate = 0.0
        if flow.timer is not None:
            flow.timer.cancel()
            flow.timer = None
        self._changed()

    # ---------------------------------------------------------------- rates

    def _settle(self, flow: Flow) -> None:
        now = self.sim.now
        if now > flow.updated:
            flow.remaining = max(0.0, flow.remaining - flow.rate * (now - flow.updated))
            flow.updated = now

    def _set_rate(self, flow: Flow, rate: float) -> None:
        self._settle(flow)
        slower = rate <= flow.rate
        flow.rate = rate
        if slower and flow.timer is not None:
            # Its timer now fires early, which is harmless (it is set again
            # then); leaving it saves a heap entry per flow of a link that got
            # one more flow — the common case on a busy link.
            return
        if flow.timer is not None:
            flow.timer.cancel()
            flow.timer = None
        if rate > 0:
            flow.timer = self.sim.after(max(flow.remaining / rate, DONE_WITHIN), self._due, flow)

    def _due(self, flow: Flow) -> None:
        flow.timer = None
        if flow.state != "flowing":
            return
        self._settle(flow)
        if _done(flow):
            self._finish(flow)
        else:  # float rounding left a sliver: due again when it is through
            self._set_rate(flow, flow.rate)

    def _changed(self) -> None:
        # Many flows start or end at one instant: reallocate once for them all.
        if not self._dirty:
            self._dirty = True
            if self.quantum > 0:
                q = self.quantum
                self.sim.at(math.ceil(self.sim.now / q) * q, self._reallocate)
            else:
                self.sim.after(0.0, self._reallocate)

    def _reallocate(self) -> None:
        self._dirty = False
        new, freed = self._new, self._freed
        self._new, self._freed = {}, {}
        if not new and not freed:
            return
        self.reallocations += 1
        region: dict[Flow, None] = {}
        opened: dict[Link, None] = {}
        edge: dict[Link, None] = {}
        todo: list[Link] = [link for link in freed if link.flows]

        def take(flow: Flow) -> None:
            region[flow] = None
            for link in flow.links():
                if link in opened:
                    continue
                if link.full():
                    todo.append(link)
                else:
                    edge[link] = None

        for flow in new:
            take(flow)
        while True:
            while todo:
                link = todo.pop()
                if link in opened:
                    continue
                opened[link] = None
                edge.pop(link, None)
                for flow in link.flows:
                    if flow not in region:
                        take(flow)
            # What each edge link offers the region: what its other flows leave.
            inside: dict[Link, float] = dict.fromkeys(edge, 0.0)
            for flow in region:
                for link in flow.links():
                    if link in inside:
                        inside[link] += flow.rate
            caps = {link: link.cap for link in opened}
            for link, rates in inside.items():
                caps[link] = max(0.0, link.cap - (link.used - rates))
            rates_new, bottlenecks = waterfill(region, caps)
            grown = [link for link in bottlenecks if link in edge]
            if not grown:
                break
            todo.extend(grown)  # an edge link filled up: its other flows are in play
        self.region_flows += len(region)
        for flow, rate in rates_new.items():
            old = flow.rate
            self._set_rate(flow, rate)
            for link in flow.links():
                if link in edge:
                    link.used += rate - old
        for link in opened:
            link.used = sum(f.rate for f in link.flows)


def _done(flow: Flow) -> bool:
    return flow.remaining < 1.0 or flow.remaining <= flow.rate * DONE_WITHIN


def waterfill(
    flows: Iterable[Flow], caps: dict[Link, float]
) -> tuple[dict[Flow, float], dict[Link, None]]:
    """The max-min fair rates of ``flows`` over links of capacity ``caps``.

    Each link would saturate at level ``(capacity - rates already fixed) /
    flows not yet fixed``; the lowest such level is the next bottleneck, its
    flows are fixed at it, and the other link of each is updated. Levels only
    rise, so a heap with lazily dropped stale entries finds each bottleneck:
    O((F + L) log L). Returns the rates and the links that were bottlenecks.
    """
    free: dict[Link, float] = {}
    count: dict[Link, int] = {}
    users: dict[Link, list[Flow]] = {}
    for flow in flows:
        for link in flow.links():
            if link not in free:
                free[link] = caps[link]
                count[link] = 0
                users[link] = []
            count[link] += 1
            users[link].append(flow)
    tie = itertools.count()
    heap = [(free[k] / count[k], next(tie), k) for k in free]
    heapq.heapify(heap)
    rates: dict[Flow, float] = {}
    bottlenecks: dict[Link, None] = {}
    while heap:
        level, _, link = heapq.heappop(heap)
        n = count[link]
        if n == 0 or abs(level - free[link] / n) > 1e-9 * max(1.0, level):
            continue  # stale: this link's level moved (a fresher entry exists)
        bottlenecks[link] = None
        for flow in users[link]:
            if flow in rates:
                continue
            rates[flow] = level
            for other in flow.links():
                free[other] -= level
                count[other] -= 1
                if other is not link and count[other] > 0:
                    heapq.heappush(heap, (max(level, free[other] / count[other]), next(tie), other))
        count[link] = 0
    return rates, bottlenecks


def maxmin(flows: Iterable[Flow]) -> None:
    """Set each flow's ``rate`` to the max-min fair allocation over all of ``flows``.

    The reference the incremental :class:`Network` is checked against.
    """
    flows = list(flows)
    caps = {link: link.cap for flow in flows for link in flow.links()}
    rates, _ = waterfill(flows, caps)
    for flow, rate in rates.items():
        flow.rate = rate


__all__ = ["Flow", "Link", "Network", "Node", "maxmin", "waterfill"]
