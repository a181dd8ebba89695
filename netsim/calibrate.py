"""Calibration: the simulator's prediction beside real p2pkg processes (issue 13).

Run (root: network namespaces): ``python -m netsim.calibrate [--reps 3]``;
``make bench`` runs it. The ``testbed`` scenario (netsim/scenarios/testbed.toml),
twice:

* **real** — a :class:`~netsim.netbed.NetBed`: the origin (``p2pkg serve``)
  and the seeds (``p2pkg serve`` of a synced copy of the origin's store:
  a seed's serving side) each in a namespace with its uplink shaped by
  ``tc tbf`` and a round trip added by the delay proxy; each client in its
  own namespace (downlink shaped) runs ``p2pkg fetch --json`` of its file
  with the origin and every seed as peers, all clients at once. Figures
  from the clients' own reports: each file's transfer seconds (``seconds``,
  after start-up and name resolution) and the bytes each peer sent.
* **sim** — the same nodes, capacities and round trips in
  :mod:`netsim.sim.network`, each client a
  :class:`~netsim.sim.fetch.SimFetch` with the same peers.

Printed: per-download completion time (median, p95) and the origin's share
of the bytes, real vs sim, and the error of each; written to
``docs/results/testbed-calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir
from netsim.netbed import NetBed
from netsim.sim.engine import Sim
from netsim.sim.fetch import FetchOutcome, Server, SimFetch
from netsim.sim.network import Network, Node
from p2pkg.core.peers import PeerBook, Tier
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "netsim" / "scenarios" / "testbed.toml"
MBIT = 1e6 / 8
SERVE_PORT = 8000


def load() -> dict[str, Any]:
    return tomllib.loads(SCENARIO.read_text())


# ---------------------------------------------------------------------------- sim


def simulate(sc: dict[str, Any]) -> dict[str, Any]:
    sim = Sim(1)
    rtt = sc["rtt_ms"] / 1000.0
    net = Network(sim, lambda a, b: 0.0 if a is b else rtt)
    origin = Server(Node("origin", "x", sc["origin_up_mbps"] * MBIT, 1e12))
    seeds = [
        Server(Node(f"seed{i}", "x", sc["seed_up_mbps"] * MBIT, 1e12)) for i in range(sc["seeds"])
    ]
    outcomes: list[FetchOutcome] = []
    for i, size in enumerate(sc["file_sizes"]):
        client = Node(f"client{i}", "x", 1e12, sc["client_down_mbps"] * MBIT)
        peers = [(origin, Tier.MIRROR), *((s, Tier.MIRROR) for s in seeds)]
        SimFetch(sim, net, client, PeerBook(), f"f{i}", size, peers, outcomes.append)
    sim.run(3600)
    return _figures(
        [o.seconds for o in outcomes],
        sum(o.bytes_by_peer.get("origin", 0.0) for o in outcomes),
        sum(sum(o.bytes_by_peer.values()) for o in outcomes),
    )


def _figures(seconds: list[float], origin_bytes: float, total: float) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {
        "download_p50": statistics.median(ordered),
        "download_p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "origin_share": origin_bytes / total if total else 0.0,
        "seconds": ordered,
    }


# ---------------------------------------------------------------------------- real


def testbed(sc: dict[str, Any], work: Path) -> dict[str, Any]:
    dist = work / "dist"
    dist.mkdir()
    for i, size in enumerate(sc["file_sizes"]):
        build_wheel(dist, f"file{i}", "1.0", payload=size)
    key = Ed25519PrivateKey.generate()
    origin_store = work / "origin"
    with Store.open(origin_store, create=True) as st:
        publish(st, [key], [dist])
    pub = format_pubkey(public_bytes(key))
    delay = sc["rtt_ms"] / 2000.0  # the proxy adds 2 x delay per round trip
    with NetBed("p2bc") as bed:
        peers = []
        for name, store, up in [
            ("origin", origin_store, sc["origin_up_mbps"]),
            *((f"seed{i}", work / f"seed{i}", sc["seed_up_mbps"]) for i in range(sc["seeds"])),
        ]:
            if store != origin_store:
                shutil.copytree(origin_store, store)
            host = bed.host(name, up=up * MBIT)
            listen = f"127.0.0.1:{SERVE_PORT}"
            host.popen(
                [sys.executable, "-m", "p2pkg", "serve", "--store", str(store), "--listen", listen],
                cwd=ROOT,
            )
            host.wait_port(SERVE_PORT)
            peers.append((name, f"http://{host.addr}:{host.delayed(SERVE_PORT, delay)}"))
        clients = [
            bed.host(f"client{i}", down=sc["client_down_mbps"] * MBIT)
            for i in range(len(sc["file_sizes"]))
        ]
        procs = []
        for i, host in enumerate(clients):
            cmd = [sys.executable, "-m", "p2pkg", "fetch", f"file{i}", "--json", "--trust", pub]
            cmd += ["--dest", str(work / f"dl{i}"), "--no-lan"]
            for _, url in peers:
                cmd += ["--peer", url]
            procs.append(host.popen(cmd, stdout=subprocess.PIPE, cwd=ROOT))
        seconds, origin_bytes, total = [], 0.0, 0.0
        origin_url = peers[0][1]
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            report = json.loads(out)
            seconds.append(float(report["seconds"]))
            for url, received in report["peers"].items():
                total += received
                if url == origin_url:
                    origin_bytes += received
    return _figures(seconds, origin_bytes, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    sc = load()
    predicted = simulate(sc)
    runs = []
    for rep in range(args.reps):
        work = bench_dir(f"calibrate-{rep}")
        t0 = time.perf_counter()
        runs.append(testbed(sc, work))
        r = runs[-1]
        print(
            f"run {rep}: p50 {r['download_p50']:.2f}s p95 {r['download_p95']:.2f}s "
            f"origin {r['origin_share']:.1%} ({time.perf_counter() - t0:.0f}s)"
        )
    real = {
        k: statistics.median(r[k] for r in runs)
        for k in ("download_p50", "download_p95", "origin_share")
    }
    rows = {}
    print("\n| metric | testbed (median of runs) | sim | error |")
    print("|---|---|---|---|")
    for key in ("download_p50", "download_p95", "origin_share"):
        err = (predicted[key] - real[key]) / real[key] if real[key] else None
        rows[key] = {"testbed": real[key], "sim": predicted[key], "error": err}
        fmt = "{:.1%}" if key == "origin_share" else "{:.2f} s"
        print(
            f"| {key} | {fmt.format(real[key])} | {fmt.format(predicted[key])} | "
            f"{'—' if err is None else f'{err:+.0%}'} |"
        )
    out = ROOT / "docs" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "testbed-calibration.json").write_text(
        json.dumps({"scenario": sc, "runs": runs, "sim": predicted, "compare": rows}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
