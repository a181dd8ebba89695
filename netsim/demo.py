"""The README demo: a master publishes a signed namespace, anyone verifies it.

Run: ``make demo``. Everything happens under ``demo-out/`` (recreated each
run) with the real ``p2pkg`` CLI in subprocesses, printing each command.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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

    step("tampering is caught: flip one byte of a stored archive")
    victim = next(p for p in (OUT / "master-store" / "files").rglob("*") if p.is_file())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    p2pkg("verify", "--store", store, "--trust", pub, check=False)

    step("a key that is not the master's cannot sign")
    p2pkg("keygen", "--out", str(OUT / "mallory.key"))
    p2pkg("publish", "--store", store, "--key", str(OUT / "mallory.key"), check=False)

    print("\ndemo finished: everything above ran for real under demo-out/")


if __name__ == "__main__":
    main()
