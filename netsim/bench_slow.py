"""Slow retrieval benchmark (issue 10): one 1-byte/s peer beside an honest one.

An honest ``p2pkg serve`` and a trickler (``python -m netsim.trickler``: the
honest peer's heads, then every root, object and file body at 1 byte/s) on
127.0.0.1. ``p2pkg fetch`` of a 100 KB and a 10 MB archive, ``REPS`` times
each, with the honest peer alone and with the trickler listed first (the
worst place for it); runs alternate so drift hits both. Prints the medians
and the ratio measured in the same run (target: at most 1.5), for the
whole command (wall) and for the file download alone (the engine's
``seconds``). Run: ``python -m netsim.bench_slow``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir, median
from netsim.testbed import Testbed, spawn
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

REPS = 5
ARCHIVES = {"100 KB": ("slowsmall", 100_000), "10 MB": ("slowbig", 10_000_000)}
TARGET = 1.5


def fetch(work: Path, pub: str, peers: list[str], spec: str) -> tuple[float, float]:
    """One ``p2pkg fetch``: (wall seconds, the engine's seconds for the file)."""
    dest = work / "out"
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [sys.executable, "-m", "p2pkg.cli", "fetch", spec, "--trust", pub, "--json"]
    for peer in peers:
        cmd += ["--peer", peer]
    start = time.perf_counter()
    out = subprocess.run([*cmd, "--dest", str(dest)], capture_output=True, check=True, timeout=300)
    wall = time.perf_counter() - start
    return wall, float(json.loads(out.stdout)["seconds"])


def main() -> None:
    work = bench_dir("slow")
    key = Ed25519PrivateKey.generate()
    pub = format_pubkey(public_bytes(key))
    dist = work / "dist"
    dist.mkdir()
    for name, size in ARCHIVES.values():
        build_wheel(dist, name, "1.0", payload=size)
    store = work / "master"
    with Store.open(store, create=True) as st:
        publish(st, [key], [dist])
    results: dict[str, Any] = {}
    with Testbed() as bed:
        _, honest = bed.serve(store)
        trickle = [sys.executable, "-m", "netsim.trickler", "--upstream", honest, "--rate", "1"]
        _, trickler = bed.enter_context(spawn(trickle))
        for label, (spec, _) in ARCHIVES.items():
            fetch(work, pub, [honest], spec)  # warm: page cache, bytecode
            alone: list[tuple[float, float]] = []
            both: list[tuple[float, float]] = []
            for _ in range(REPS):
                alone.append(fetch(work, pub, [honest], spec))
                both.append(fetch(work, pub, [trickler, honest], spec))
            r = {
                "honest_alone_wall_s": median([w for w, _ in alone]),
                "with_trickler_wall_s": median([w for w, _ in both]),
                "honest_alone_file_s": median([e for _, e in alone]),
                "with_trickler_file_s": median([e for _, e in both]),
            }
            r["ratio_wall"] = r["with_trickler_wall_s"] / r["honest_alone_wall_s"]
            r["ratio_file"] = r["with_trickler_file_s"] / max(r["honest_alone_file_s"], 1e-3)
            r["penalty_wall_s"] = r["with_trickler_wall_s"] - r["honest_alone_wall_s"]
            r["target_ratio"] = TARGET
            results[label] = {k: round(v, 3) for k, v in r.items()}
            print(f"[{label} archive, 1 B/s trickler listed first, {REPS} runs, medians]")
            for k, v in results[label].items():
                print(f"  {k:24s} {v}")
            sys.stdout.flush()
    print(json.dumps(results))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
