"""pip and uv installing 50 wheels through a p2pkg cache, over real links. Run: ``make bench``.

``python -m netsim.bench_pipnet [--reps N] [--rtt MS]`` (root; links as in
:mod:`netsim.netbed`: namespaces, ``tc tbf`` at 25 MiB/s, a user-space
delay proxy adding the RTT).

The site host runs the installers, a ``p2pkg cache`` and a proxpi; two seed
hosts (``p2pkg serve`` of the published store: what a synced seed serves)
and an index host (pypiserver over the same 50 wheels) are ``--rtt`` away.
Fifty genuine wheels (sizes log-normal around ~100 KB with a tail of MBs,
mixed compressible and random payloads): ``app`` needs 9 libraries which
need the other 40, so an installer discovers them level by level.

Each figure is the wall time of ``pip install --target`` (``--isolated
--no-cache-dir``) or ``uv pip install --target`` (``--no-cache
--no-config``) of ``app`` into an empty directory, median of ``--reps``:

* pypiserver — the index 40 ms away, directly;
* proxpi cold / warm — proxpi on the site in front of that pypiserver, with
  a fresh cache directory, then again;
* p2pkg cold / warm — a new ``p2pkg cache`` with an empty store, then again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir, median
from netsim.netbed import Host, NetBed
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

MiB = 1 << 20
RATE = 25 * MiB
SEED_PORT = 8000
INDEX_PORT = 8090
CACHE_PORT = 3141
PROXPI_PORT = 5000
TIMEOUT = 300.0


def build(work: Path) -> tuple[Path, Path, Ed25519PrivateKey]:
    """50 wheels: app -> lib0..lib8 -> leaf00..leaf39; (dist dir, master store, key)."""
    dist = work / "dist"
    dist.mkdir()
    rng = random.Random(50)

    def payload() -> bytes:
        size = min(int(rng.lognormvariate(11.5, 1.2)), 8 * MiB)
        if rng.random() < 0.5:  # code and data compress; some payloads do not
            return (b"def f(x):\n    return x * 2  # a line of code\n" * (size // 44 + 1))[:size]
        return rng.randbytes(size)

    leaves = [f"leaf{i:02d}" for i in range(40)]
    libs = [f"lib{i}" for i in range(9)]
    for name in leaves:
        build_wheel(dist, name, "1.0", payload=payload())
    for i, name in enumerate(libs):
        mine = leaves[i * 40 // 9 : (i + 1) * 40 // 9]
        build_wheel(dist, name, "1.0", payload=payload(), requires_dist=mine)
    build_wheel(dist, "app", "1.0", payload=payload(), requires_dist=libs)
    key = Ed25519PrivateKey.generate()
    store = work / "master"
    with Store.open(store, create=True) as st:
        publish(st, [key], [dist])
    return dist, store, key


ENV = {
    **os.environ,
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "UV_NO_CONFIG": "1",
}


def install(site: Host, tool: str, index: str, target: Path) -> float | None:
    shutil.rmtree(target, ignore_errors=True)
    if tool == "pip":
        cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir"]
    else:
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        cmd = [uv, "pip", "install", "--no-cache", "--no-config", "--python", sys.executable]
    if tool == "pip":  # pip ignores plain-HTTP indexes other than localhost unless told
        cmd += ["--trusted-host", index.split("/")[2].split(":", maxsplit=1)[0]]
    cmd += ["--target", str(target), "--index-url", index, "app"]
    start = time.perf_counter()
    try:
        res = site.run(cmd, capture_output=True, env=ENV, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None
    took = time.perf_counter() - start
    if res.returncode != 0:
        print(f"    ! {tool} via {index}: {res.stderr.decode(errors='replace')[-400:]}")
        return None
    return took


class Site:
    def __init__(self, bed: NetBed, work: Path, dist: Path, store: Path, pub: str, rtt: int):
        delay = rtt / 2000
        self.work = work
        self.pub = pub
        self.site = bed.host("site")
        self.seeds = []
        for name in ("seed1", "seed2"):
            host = bed.host(name, up=RATE)
            host.popen(
                [
                    sys.executable,
                    "-m",
                    "p2pkg",
                    "serve",
                    "--store",
                    str(store),
                    "--listen",
                    f"127.0.0.1:{SEED_PORT}",
                ]
            )
            host.wait_port(SEED_PORT)
            self.seeds.append(f"http://{host.addr}:{host.delayed(SEED_PORT, delay)}")
        index = bed.host("index", up=RATE)
        index.popen(
            [
                sys.executable,
                "-m",
                "pypiserver",
                "run",
                "-p",
                str(INDEX_PORT),
                "-i",
                "127.0.0.1",
                "--disable-fallback",
                "-a",
                ".",
                "-P",
                ".",
                "--log-stream",
                "none",
                str(dist),
            ]
        )
        index.wait_port(INDEX_PORT)
        self.index = f"http://{index.addr}:{index.delayed(INDEX_PORT, delay)}/simple/"
        self.proc: subprocess.Popen[bytes] | None = None

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def p2pkg_cache(self, fresh: Path) -> str:
        self._stop()
        shutil.rmtree(fresh, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "p2pkg",
            "cache",
            "--store",
            str(fresh),
            "--trust",
            self.pub,
            "--listen",
            f"127.0.0.1:{CACHE_PORT}",
            "--no-lan",
        ]
        for seed in self.seeds:
            cmd += ["--peer", seed]
        self.proc = self.site.popen(cmd)
        self.site.wait_port(CACHE_PORT)
        return f"http://127.0.0.1:{CACHE_PORT}/simple/"

    def proxpi(self, fresh: Path) -> str:
        self._stop()
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        env = {**ENV, "PROXPI_INDEX_URL": self.index, "PROXPI_CACHE_DIR": str(fresh)}
        flask = str(Path(sys.executable).parent / "flask")
        self.proc = self.site.popen(
            [
                flask,
                "--app",
                "proxpi.server",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(PROXPI_PORT),
            ],
            env=env,
        )
        self.site.wait_port(PROXPI_PORT)
        return f"http://127.0.0.1:{PROXPI_PORT}/index/"


def ensure_proxpi() -> None:
    try:
        import proxpi  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "proxpi"], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m netsim.bench_pipnet")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rtt", type=int, default=40, help="ms between the site and the rest")
    args = parser.parse_args(argv)
    ensure_proxpi()
    work = bench_dir("pipnet").resolve()
    dist, store, key = build(work)
    pub = format_pubkey(public_bytes(key))
    total = sum(p.stat().st_size for p in dist.iterdir())
    print(
        f"corpus: 50 wheels, {total / MiB:.1f} MiB; app -> 9 libs -> 40 leaves; RTT {args.rtt} ms"
    )
    results: dict[str, Any] = {"wheels": 50, "mib": round(total / MiB, 1), "rtt_ms": args.rtt}
    with NetBed("p2bc") as bed:
        site = Site(bed, work, dist, store, pub, args.rtt)
        try:
            for tool in ("pip", "uv"):
                times: dict[str, list[float]] = {}

                def note(
                    label: str, took: float | None, times: dict[str, list[float]] = times
                ) -> None:
                    if took is not None:
                        times.setdefault(label, []).append(took)

                target = work / "target"
                for _ in range(args.reps):
                    note("pypiserver", install(site.site, tool, site.index, target))
                    url = site.proxpi(work / "proxpi-cache")
                    note("proxpi_cold", install(site.site, tool, url, target))
                    note("proxpi_warm", install(site.site, tool, url, target))
                    url = site.p2pkg_cache(work / "cache")
                    note("p2pkg_cold", install(site.site, tool, url, target))
                    note("p2pkg_warm", install(site.site, tool, url, target))
                row: dict[str, Any] = {f"{k}_s": round(median(v), 3) for k, v in times.items()}
                base = row.get("pypiserver_s")
                if base:
                    for k in ("proxpi_cold", "proxpi_warm", "p2pkg_cold", "p2pkg_warm"):
                        if f"{k}_s" in row:
                            row[f"{k}_vs_pypiserver"] = round(row[f"{k}_s"] / base, 3)
                results[tool] = row
                print(f"[{tool}]")
                for k, v in row.items():
                    print(f"  {k:28s} {v}")
                sys.stdout.flush()
        finally:
            site._stop()
    print(json.dumps(results))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
