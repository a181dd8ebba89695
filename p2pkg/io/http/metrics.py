"""Prometheus metrics and a health check for a serving role: ``/metrics``, ``/healthz``.

Values are not kept in ``prometheus_client`` objects: each role already
counts what it does (server stats, the peer book, cache and seed counters),
so a scrape reads those at that moment — a collector per server, never a
global registry, nothing on the hot path but :meth:`RequestMetrics.observe`
(two dict updates per request). The names and labels are listed in
docs/operators.md ("Metrics").
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from p2pkg.io.http import wire

if TYPE_CHECKING:
    from p2pkg.io.http.server import Exchange, PeerServer

#: Upper bounds (seconds) of the request-duration histogram's buckets.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

_PEER_ROUTES = frozenset(
    ["root", "roots", "objects", "chunks", "files", "status", "notify", "subscribe", "stats"]
)


def route_label(path: str) -> str:
    """A bounded label for a request path (``/ns/NAME`` prefixes are dropped)."""
    if path.startswith("/ns/"):
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    if path.startswith(wire.PREFIX + "/"):
        kind = path[len(wire.PREFIX) + 1 :].split("/", 1)[0]
        return "peer_" + (kind if kind in _PEER_ROUTES else "other")
    if path in ("/simple", "/simple/"):
        return "simple_index"
    if path.startswith("/simple/"):
        return "simple_project"
    if path.startswith("/files/"):
        return "files_metadata" if path.endswith(".metadata") else "files"
    if path == "/":
        return "status_page"
    if path in (METRICS_PATH, HEALTH_PATH):
        return path[1:]
    return "other"


class RequestMetrics:
    """Requests by route and status, and a duration histogram by route."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}  # route -> count per bucket (not cumulative)
        self.sums: dict[str, float] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self.buckets.get(route)
        if counts is None:
            counts = self.buckets[route] = [0] * (len(BUCKETS) + 1)
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[route] = self.sums.get(route, 0.0) + seconds


class Families:
    """The metric families of one scrape, built by name (see :meth:`add`)."""

    def __init__(self) -> None:
        self._families: dict[str, Any] = {}

    def add(self, kind: str, name: str, doc: str, value: float | None, **labels: str) -> None:
        """One sample of ``p2pkg_<name>`` (``kind``: gauge or counter); None is left out."""
        if value is None:
            return
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        full = f"p2pkg_{name}"
        family = self._families.get(full)
        if family is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = self._families[full] = cls(full, doc, labels=sorted(labels))
        family.add_metric([labels[k] for k in sorted(labels)], float(value))

    def gauge(self, name: str, doc: str, value: float | None, **labels: str) -> None:
        self.add("gauge", name, doc, value, **labels)

    def counter(self, name: str, doc: str, value: float | None, **labels: str) -> None:
        self.add("counter", name, doc, value, **labels)

    def histogram(self, name: str, doc: str, requests: RequestMetrics) -> None:
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(f"p2pkg_{name}", doc, labels=["route"])
        for route, counts in sorted(requests.buckets.items()):
            cumulative, running = [], 0
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            family.add_metric([route], cumulative, requests.sums[route])
        self._families[family.name] = family

    def all(self) -> list[Any]:
        return list(self._families.values())


def server_metrics(fam: Families, server: PeerServer) -> None:
    """The listening server's own figures: requests, durations, bytes, connections."""
    for (route, status), n in sorted(server.requests.requests.items()):
        fam.counter("http_requests", "Requests answered, by route and status.", n,
                    route=route, status=str(status))  # fmt: skip
    fam.histogram("http_request_duration_seconds", "Time to answer a request.", server.requests)
    st = server.stats
    fam.counter("http_sent_bytes", "Bytes sent (heads, bodies, files).", st.bytes_sent)
    fam.counter("http_busy", "503 answers and refused connections (budgets full).", st.busy)
    fam.gauge("http_connections", "Connections being served now.", st.active)
    fam.gauge("http_max_connections", "The connection budget.", server.max_connections)
    fam.counter("http_send_timeouts", "Connections aborted: the client took nothing.",
                st.send_timeouts)  # fmt: skip
    fam.counter("http_reclaimed_idle", "Idle connections closed to make room.", st.reclaimed)
    fam.counter("http_out_of_descriptors", "EMFILE/ENFILE while accepting or opening.",
                st.out_of_descriptors)  # fmt: skip


def exposition(collect: Callable[[Families], None]) -> bytes:
    """The Prometheus text format of what ``collect`` adds now."""
    from prometheus_client import CollectorRegistry, generate_latest

    class _Collector:
        def collect(self) -> Iterable[Any]:
            fam = Families()
            collect(fam)
            return fam.all()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return bytes(generate_latest(registry))


def install(
    server: PeerServer,
    collect: Callable[[Families], None],
    health: Callable[[], list[str]],
) -> None:
    """Serve ``/metrics`` (``collect`` plus the server's own) and ``/healthz`` on ``server``.

    ``/healthz`` is ``200 ok`` when ``health()`` finds nothing wrong, else
    ``503`` with one problem per line (a load balancer or systemd watchdog
    needs only the status).
    """

    def everything(fam: Families) -> None:
        server_metrics(fam, server)
        collect(fam)

    async def metrics(ex: Exchange) -> bool:
        if ex.path != METRICS_PATH:
            return await ex.reply(404, b"not found")
        return await ex.reply(
            200,
            exposition(everything),
            ctype=PROMETHEUS_TEXT,
            headers=[("Cache-Control", "no-cache")],
        )

    async def healthz(ex: Exchange) -> bool:
        if ex.path != HEALTH_PATH:
            return await ex.reply(404, b"not found")
        problems = health()
        body = ("\n".join(problems) if problems else "ok") + "\n"
        return await ex.reply(
            503 if problems else 200, body.encode(), headers=[("Cache-Control", "no-cache")]
        )

    server.route(METRICS_PATH, metrics)
    server.route(HEALTH_PATH, healthz)


def age(since: float | None, now: float | None = None) -> float | None:
    """Seconds since a wall-clock time (None stays None)."""
    return None if since is None else (now if now is not None else time.time()) - since


__all__ = [
    "BUCKETS",
    "Families",
    "RequestMetrics",
    "exposition",
    "install",
    "route_label",
    "server_metrics",
]
