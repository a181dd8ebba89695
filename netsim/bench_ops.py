"""The cost of the operators' views (issue 15): ``/metrics``, ``/``, ``/healthz``, status.

Run: ``make bench`` (or ``.venv/bin/python -m netsim.bench_ops``).

A ``p2pkg cache`` process on loopback in front of a ``p2pkg serve`` (two
genuine wheels, pages and files fetched once so every figure has a value);
each view is asked 100 times on one keep-alive connection: median and p99.
Also the per-request bookkeeping behind ``/metrics``
(``RequestMetrics.observe``), timed in-process.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
import timeit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir
from netsim.testbed import Testbed
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.http.metrics import RequestMetrics
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

REPS = 100


def main() -> None:
    metrics = RequestMetrics()
    n = 200_000
    observe_ns = timeit.timeit(lambda: metrics.observe("files", 200, 0.003), number=n) / n * 1e9
    work = bench_dir("ops")
    dist = work / "dist"
    dist.mkdir()
    build_wheel(dist, "big", "1.0", payload=100_000)
    build_wheel(dist, "small", "1.0", payload=2_000)
    key = Ed25519PrivateKey.generate()
    with Store.open(work / "master", create=True) as st:
        publish(st, [key], [dist])
    result: dict[str, object] = {"observe_ns": round(observe_ns)}
    with Testbed() as bed:
        _, peer = bed.serve(work / "master")
        _, cache = bed.cache(work / "cache", format_pubkey(public_bytes(key)), [peer], "--no-lan")
        host, port = cache.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        for path in ("/simple/big/", "/simple/small/", "/"):
            conn.request("GET", path)
            conn.getresponse().read()
        for path in ("/metrics", "/", "/healthz", "/p2pkg/v1/status"):
            times, size = [], 0
            for _ in range(REPS):
                t0 = time.perf_counter()
                conn.request("GET", path)
                size = len(conn.getresponse().read())
                times.append(time.perf_counter() - t0)
            times.sort()
            result[path] = {
                "median_ms": round(1000 * statistics.median(times), 2),
                "p99_ms": round(1000 * times[int(0.99 * REPS) - 1], 2),
                "bytes": size,
            }
        conn.close()
    print(f"RequestMetrics.observe: {observe_ns:.0f} ns per request")
    for path, row in result.items():
        if isinstance(row, dict):
            print(f"{path}: median {row['median_ms']} ms, p99 {row['p99_ms']} ms, {row['bytes']} B")
    print(json.dumps({"bench": "ops", **result}))


if __name__ == "__main__":
    main()
