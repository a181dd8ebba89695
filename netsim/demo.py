"""The README demo: a signed namespace, a master and three seeds on loopback.

Run: ``make demo``. Everything happens under ``demo-out/`` (recreated each
run) with the real ``p2pkg`` CLI in subprocesses, printing each command:
publish and verify; serve the master; three seeds follow it (one mirrors a
single project); a client fetches through the seeds only; a new release is
pushed to the seeds; the master goes away and the seeds keep serving.
Every process started here is stopped before the demo ends.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from netsim.testbed import Testbed, p2pkg_cmd, spawn, wait_synced
from p2pkg.testing.archives import build_sdist, build_wheel

OUT = Path("demo-out")


def p2pkg(*args: str, check: bool = True) -> str:
    cmd = [sys.executable, "-m", "p2pkg.cli", *args]
    print(f"$ p2pkg {shlex.join(args)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    out = (proc.stdout + proc.stderr).rstrip()
    if out:
        print("  " + out.replace("\n", "\n  "))
    if check and proc.returncode != 0:
        raise SystemExit(f"demo step failed with exit code {proc.returncode}")
    return proc.stdout.strip()


def step(title: str) -> None:
    print(f"\n== {title}")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    dist = OUT / "dist"
    dist.mkdir(parents=True)
    store = str(OUT / "master-store")

    step("sample archives: genuine wheels and sdists (a small dependency chain)")
    build_wheel(dist, "demo-base", "1.0", payload=300_000)
    build_wheel(dist, "demo-app", "1.0", requires_dist=["demo-base>=1.0"], payload=50_000)
    # (pip will pick demo-base 2.0 once it is published below)
    build_sdist(dist, "demo-app", "1.0")
    for p in sorted(dist.iterdir()):
        print(f"  {p.name}  {p.stat().st_size} bytes")

    step("the master creates its signing key; the public key is what everyone pins")
    pub = p2pkg("keygen", "--out", str(OUT / "master.key"))

    step("publish: ingest, chunk, hash, sign root version 1")
    p2pkg("publish", "--store", store, "--key", str(OUT / "master.key"), str(dist))

    step("show the namespace, verified against the pinned key")
    p2pkg("show", "--store", store, "--trust", pub)
    p2pkg("show", "--store", store, "--trust", pub, "demo-app")

    step("a new release: only the objects on its path are rewritten")
    build_wheel(dist, "demo-base", "1.1", payload=300_000)
    p2pkg("publish", "--store", store, "--key", str(OUT / "master.key"), "--json", str(dist))

    step("re-publishing the same files is a no-op")
    p2pkg("publish", "--store", store, "--key", str(OUT / "master.key"), str(dist))

    step("verify re-hashes every object and archive")
    p2pkg("verify", "--store", store, "--trust", pub)

    step("tampering is caught: flip one byte of an archive in a copy of the store")
    copy = OUT / "tampered-store"
    shutil.copytree(OUT / "master-store", copy)
    victim = next(p for p in (copy / "files").rglob("*") if p.is_file())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    p2pkg("verify", "--store", str(copy), "--trust", pub, check=False)

    step("a key that is not the master's cannot sign")
    p2pkg("keygen", "--out", str(OUT / "mallory.key"))
    p2pkg("publish", "--store", store, "--key", str(OUT / "mallory.key"), check=False)

    network(store, pub, dist)

    print("\ndemo finished: everything above ran for real under demo-out/ on 127.0.0.1")


def network(store: str, pub: str, dist: Path) -> None:
    key = str(OUT / "master.key")
    with Testbed() as bed:
        step("the master serves its store, keeps it signed and pushes new roots")
        master_proc, master = bed.master(Path(store), Path(key))
        print(f"  $ p2pkg master --store {store} --key {key} --listen 127.0.0.1:0  ->  {master}")

        step("three volunteer seeds subscribe to it (seed-3 mirrors one project)")
        # Polls an hour apart: what arrives below arrives by push.
        seed1, s1 = bed.seed(OUT / "seed-1", pub, [master], "--interval", "1h")
        seed2, s2 = bed.seed(OUT / "seed-2", pub, [master, s1], "--interval", "1h")
        seed3, s3 = bed.seed(
            OUT / "seed-3", pub, [s1, s2], "--interval", "1h", "--project", "demo-app"
        )
        for name, url in (("seed-1", s1), ("seed-2", s2), ("seed-3", s3)):
            st = wait_synced(url, 2)
            version, files, lag = st["synced_version"], st["files"], st["lag_versions"]
            print(f"  {name} {url}: root v{version}, {files} files, lag {lag}")

        step("a client that knows only the seeds fetches, verifying every chunk")
        seeds = ["--peer", s1, "--peer", s2, "--peer", s3]
        p2pkg("fetch", "demo-base", "--trust", pub, *seeds, "--dest", str(OUT / "downloads"))
        p2pkg("fetch", "demo-app==1.0", "--trust", pub, *seeds, "--dest", str(OUT / "downloads"))

        step("a new release: the master pushes it to the seeds, they push it on")
        build_wheel(dist, "demo-base", "2.0", payload=300_000)
        started = time.monotonic()
        p2pkg("publish", "--store", store, "--key", key, str(dist))
        for url in (s1, s2, s3):
            wait_synced(url, 3, timeout=10)
        took = time.monotonic() - started
        print(f"  every seed at root v3 {took:.1f} s after the publish, no --notify, no polling")

        step("a LAN cache in front of the seeds: pip installs from it, unchanged")
        cache_store = str(OUT / "cache")
        cache_cmd = p2pkg_cmd("cache", "--store", cache_store, "--listen", "127.0.0.1:0")
        cache_cmd += ["--trust", pub, "--peer", s1, "--peer", s2]
        _, cache = bed.enter_context(spawn(cache_cmd))
        print(f"  $ p2pkg cache --store {cache_store} --trust ... --peer {s1} --peer {s2}")
        print(f"    -> {cache}/simple/")
        pip_install(cache, "demo-app")

        step("the master goes away: the seeds keep serving")
        master_proc.terminate()
        master_proc.wait(timeout=10)
        p2pkg("fetch", "demo-base", "--trust", pub, *seeds, "--dest", str(OUT / "downloads"))

        step("every seed goes away too: the cache still installs what it holds")
        for proc in (seed1, seed2, seed3):
            proc.terminate()
            proc.wait(timeout=10)
        pip_install(cache, "demo-app", venv="venv-offline")


def pip_install(cache: str, spec: str, venv: str = "venv") -> None:
    """A throwaway venv and a real `pip install --index-url <cache>/simple/`."""
    path = OUT / venv
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [
        str(path / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--isolated",
        "--no-cache-dir",
        "--index-url",
        f"{cache}/simple/",
        spec,
    ]
    print(f"  $ {path}/bin/pip install --index-url {cache}/simple/ {spec}")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in res.stdout.splitlines():
        if line.startswith(("Successfully", "Collecting", "ERROR")):
            print("    " + line)
    if res.returncode != 0:
        raise SystemExit(f"pip failed: {res.stderr.strip()[-500:]}")


if __name__ == "__main__":
    main()
