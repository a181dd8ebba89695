"""Page latency of a cache's merged index vs one namespace (issue 14).

Run: ``make bench`` (or ``.venv/bin/python -m netsim.bench_merged [--reps N]``).

Two namespaces published for real: ``public`` with 2,000 projects (one
small wheel each) and ``corp`` with 50 (20 of them names public has too,
the rest claimed ``corp-*``). Each is served by a ``p2pkg serve`` process;
two ``p2pkg cache`` processes on loopback use them: *single* trusts public
alone (``--trust``/``--peer``), *merged* trusts both (``--namespace``,
``--order corp,public --claim 'corp=corp-*'``). Every project page of
public is asked of each cache in a random order (JSON, one keep-alive
connection), first cold (nothing held but the root) then warm; p50 and p99
of each pass, median over ``--reps`` runs with fresh caches, and the ratio
merged / single. Read-ahead is off (``--read-ahead 0``): it would fetch
archives in the background and measure them too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir
from netsim.testbed import Testbed, p2pkg_cmd, spawn
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

PUBLIC_PROJECTS = 2_000
CORP_PROJECTS = 50
SHADOWED = 20  # corp projects whose names public has too
JSON = "application/vnd.pypi.simple.v1+json"


def build(work: Path) -> dict[str, tuple[Path, str]]:
    """Publish both namespaces; name -> (store, public key)."""
    out: dict[str, tuple[Path, str]] = {}
    names = {
        "public": [f"project-{i}" for i in range(PUBLIC_PROJECTS)],
        "corp": [f"project-{i}" for i in range(SHADOWED)]
        + [f"corp-{i}" for i in range(CORP_PROJECTS - SHADOWED)],
    }
    rng = random.Random(14)
    for ns, projects in names.items():
        dist = work / f"{ns}-dist"
        dist.mkdir()
        for name in projects:
            build_wheel(dist, name, "1.0", payload=rng.randint(1_000, 5_000))
        key = Ed25519PrivateKey.generate()
        store = work / ns
        with Store.open(store, create=True) as st:
            publish(st, [key], [dist])
        out[ns] = (store, format_pubkey(public_bytes(key)))
    return out


def pages(url: str, names: list[str]) -> list[float]:
    """Seconds for each ``/simple/<name>/`` (JSON), in order, on one connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    out = []
    try:
        for name in names:
            t0 = time.perf_counter()
            conn.request("GET", f"/simple/{name}/", headers={"Accept": JSON})
            resp = conn.getresponse()
            body = resp.read()
            out.append(time.perf_counter() - t0)
            if resp.status != 200 or not json.loads(body)["files"]:
                raise RuntimeError(f"{url}/simple/{name}/: HTTP {resp.status}")
    finally:
        conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_run(
    work: Path, run: int, built: dict[str, tuple[Path, str]], peers: dict[str, str]
) -> dict[str, dict[str, float]]:
    names = [f"project-{i}" for i in range(PUBLIC_PROJECTS)]
    random.Random(run).shuffle(names)
    common = ("--listen", "127.0.0.1:0", "--no-lan", "--read-ahead", "0")
    caches = {
        "single": p2pkg_cmd(
            "cache",
            "--store",
            str(work / f"single-{run}"),
            *common,
            "--trust",
            built["public"][1],
            "--peer",
            peers["public"],
        ),
        "merged": p2pkg_cmd(
            "cache",
            "--store",
            str(work / f"merged-{run}"),
            *common,
            *("--namespace", f"corp={built['corp'][1]}"),
            *("--namespace-peer", f"corp={peers['corp']}"),
            *("--namespace", f"public={built['public'][1]}"),
            *("--namespace-peer", f"public={peers['public']}"),
            *("--order", "corp,public", "--claim", "corp=corp-*"),
        ),
    }
    out: dict[str, dict[str, float]] = {}
    for label, cmd in caches.items():
        with spawn(cmd) as (_, url):
            cold = pages(url, names)
            warm = pages(url, names)
        out[label] = {
            "cold_p50_ms": 1000 * pct(cold, 0.50),
            "cold_p99_ms": 1000 * pct(cold, 0.99),
            "warm_p50_ms": 1000 * pct(warm, 0.50),
            "warm_p99_ms": 1000 * pct(warm, 0.99),
        }
        print(f"  run {run} {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in out[label].items()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    work = bench_dir("merged")
    t0 = time.perf_counter()
    built = build(work)
    print(
        f"published {PUBLIC_PROJECTS} + {CORP_PROJECTS} projects in {time.perf_counter() - t0:.1f}s"
    )
    runs = []
    with Testbed() as bed:
        peers = {ns: bed.serve(store)[1] for ns, (store, _) in built.items()}
        for run in range(args.reps):
            runs.append(one_run(work, run, built, peers))
    result: dict[str, object] = {}
    print(f"\npage latency over {PUBLIC_PROJECTS} projects, median of {args.reps} runs (ms):")
    print("| pass | single p50 | merged p50 | ratio | single p99 | merged p99 | ratio |")
    print("|---|---|---|---|---|---|---|")
    for phase in ("cold", "warm"):
        row = {}
        for stat in ("p50", "p99"):
            for label in ("single", "merged"):
                row[f"{label}_{stat}"] = statistics.median(
                    r[label][f"{phase}_{stat}_ms"] for r in runs
                )
            row[f"ratio_{stat}"] = row[f"merged_{stat}"] / row[f"single_{stat}"]
        result[phase] = row
        print(
            f"| {phase} | {row['single_p50']:.2f} | {row['merged_p50']:.2f} | "
            f"{row['ratio_p50']:.2f}x | {row['single_p99']:.2f} | {row['merged_p99']:.2f} | "
            f"{row['ratio_p99']:.2f}x |"
        )
    print(json.dumps({"bench": "merged", "runs": runs, **result}))


if __name__ == "__main__":
    main()
