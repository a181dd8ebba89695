"""Publish throughput vs. ``b3sum --num-threads 1`` on the same bytes (issue: foundation).

Run: ``make bench`` (or ``.venv/bin/python -m netsim.bench_publish``).

Builds a few hundred MB of genuine wheels with incompressible payloads,
warms the page cache, then measures in the same run:

* the reference: ``b3sum --num-threads 1`` over all files (Debian ``b3sum``);
* ``publish()`` into a fresh store (copy + fsync + sha256 + BLAKE3 + FastCDC +
  chunk ids + index commit + signed root), in-process;
* the same through the CLI (interpreter start included);
* each stage alone, single-threaded, to show where the time goes.

Prints medians (MiB/s) and the ratio publish / b3sum.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir, ensure_debian_tool, median, timed, warm
from p2pkg.core.chunking import make_chunker
from p2pkg.io.ingest import hash_path
from p2pkg.io.keys import generate_key_file
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

MiB = 1 << 20
# (count, payload size): large wheels dominate bytes, as on PyPI (p90 ~1.9 MB,
# a long tail of 10-200 MB wheels).
MIX = [(6, 32 * MiB), (30, 4 * MiB), (100, 512 * 1024), (200, 64 * 1024)]
REPS = 5


def main() -> None:
    work = bench_dir("publish")
    dist = work / "dist"
    dist.mkdir()
    n = 0
    for count, size in MIX:
        for _ in range(count):
            build_wheel(dist, f"bench-{n}", "1.0", payload=size)
            n += 1
    files = sorted(dist.iterdir())
    total = sum(p.stat().st_size for p in files)
    warm(files)
    mib = total / MiB
    print(f"corpus: {len(files)} wheels, {mib:.0f} MiB")

    b3sum = ensure_debian_tool("b3sum", "b3sum")
    ref = None
    if b3sum:
        cmd = [b3sum, "--num-threads", "1", *map(str, files)]
        ref = median(timed(lambda: subprocess.run(cmd, check=True, capture_output=True), REPS))
        print(f"b3sum --num-threads 1: {mib / ref:8.0f} MiB/s  (median of {REPS})")
    else:
        print("b3sum unavailable (not root / no apt): ratio not computed")

    # Our hashing pipeline alone (2 threads, no copy, no fsync): the CPU part.
    def hash_only() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(hash_path, files))

    hashing = median(timed(hash_only, REPS))
    print(f"p2pkg hashing only (2 threads): {mib / hashing:6.0f} MiB/s  (median of {REPS})")

    # Disk reference: what copying the same bytes durably costs on this machine.
    copy_dir = work / "copy"

    def copy_sync() -> None:
        shutil.copytree(dist, copy_dir)
        subprocess.run(["sync"], check=True)

    def clean_copy() -> None:
        if copy_dir.exists():
            shutil.rmtree(copy_dir)

    copying = median(timed(copy_sync, 3, setup=clean_copy))
    clean_copy()
    print(f"cp + sync (disk reference):     {mib / copying:6.0f} MiB/s  (median of 3)")

    key = Ed25519PrivateKey.generate()
    store_dir = work / "store"

    def fresh() -> None:
        if store_dir.exists():
            shutil.rmtree(store_dir)

    def run_publish() -> None:
        with Store.open(store_dir, create=True) as st:
            publish(st, [key], [dist])

    pub = median(timed(run_publish, REPS, setup=fresh))
    print(f"p2pkg publish (library): {mib / pub:6.0f} MiB/s  (median of {REPS})")

    keyfile = work / "master.key"
    generate_key_file(keyfile)
    cli = [sys.executable, "-m", "p2pkg.cli", "publish", "--store", str(store_dir)]
    cli += ["--key", str(keyfile), str(dist)]
    cli_t = median(timed(lambda: subprocess.run(cli, check=True, capture_output=True), 3, fresh))
    print(f"p2pkg publish (CLI):     {mib / cli_t:6.0f} MiB/s  (median of 3)")

    # Stage costs, single-threaded, on the largest file held in memory.
    big = max(files, key=lambda p: p.stat().st_size).read_bytes()
    bmib = len(big) / MiB
    chunker = make_chunker()
    stages = {
        "sha256": lambda: hashlib.sha256(big).digest(),
        "blake3 whole file": lambda: blake3.blake3(big).digest(),
        "fastcdc cut": lambda: sum(1 for _ in chunker.cut_buf(big)),
        "cut + blake3 per chunk": lambda: [
            blake3.blake3(c.data).digest() for c in chunker.cut_buf(big)
        ],
    }
    stage_rates = {}
    for name, fn in stages.items():
        t = median(timed(fn, REPS))
        stage_rates[name] = bmib / t
        print(f"  stage {name:24s} {bmib / t:8.0f} MiB/s")

    result = {
        "corpus_mib": round(mib, 1),
        "files": len(files),
        "b3sum_mib_s": round(mib / ref) if ref else None,
        "publish_mib_s": round(mib / pub),
        "publish_cli_mib_s": round(mib / cli_t),
        "ratio_publish_vs_b3sum": round(ref / pub, 3) if ref else None,
        "hash_only_mib_s": round(mib / hashing),
        "ratio_hash_only_vs_b3sum": round(ref / hashing, 3) if ref else None,
        "cp_sync_mib_s": round(mib / copying),
        "stages_mib_s": {k: round(v) for k, v in stage_rates.items()},
    }
    if ref:
        print(f"ratio publish / b3sum: {ref / pub:.2f}  (aim >= 0.5)")
        print(f"ratio hashing only / b3sum: {ref / hashing:.2f}")
    print(json.dumps(result))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
