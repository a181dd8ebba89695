"""How fast a new upload becomes installable through a cache fed by 5 seeds.

Run: ``.venv/bin/python -m netsim.bench_propagation [--uploads N]``.

Real processes on 127.0.0.1: a master, 5 seeds following it (polling only
hourly: anything faster is a push) and a LAN cache whose peers are the
seeds (refreshing hourly). Two sources of new files, N uploads each, one
after the other:

1. **upstream upload**: the master mirrors a local pypiserver
   (``p2pkg master --from-index URL --every 1s``); a new wheel is dropped
   into pypiserver's directory;
2. **local publish**: ``p2pkg publish`` of a new wheel into the master's
   store from another process (the master watches its store).

Measured per upload: the time from the upload (the file appearing upstream,
or the publish command starting) until the cache serves the new file
(``/simple/<project>/`` lists it and ``/files/...`` answers 200 with its
bytes: everything pip needs). Printed: median and max; the last upload of
each source is then installed with a real ``pip download`` as a check.
The reference is the poll interval a mirror would otherwise need
(bandersnatch and devpi setups commonly run every 10–20 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from netsim.common import bench_dir, median
from netsim.testbed import Testbed, p2pkg_cmd, status, wait_synced
from netsim.upstream_index import pypiserver
from p2pkg.core.root import format_pubkey
from p2pkg.io.keys import generate_key_file
from p2pkg.testing.archives import build_wheel

SEEDS = 5
ENV = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _served(cache: str, project: str, filename: str, data: bytes) -> bool:
    page_url = f"{cache}/simple/{project}/"
    accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    try:
        with _OPENER.open(urllib.request.Request(page_url, headers=accept), timeout=10) as r:
            files = json.loads(r.read())["files"]
        (url,) = [f["url"] for f in files if f["filename"] == filename] or [None]
        if url is None:
            return False
        with _OPENER.open(urljoin(page_url, url), timeout=30) as r:
            return bool(r.read() == data)
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False


def _wait_served(cache: str, project: str, wheel: Path, started: float) -> float:
    data = wheel.read_bytes()
    deadline = started + 120
    while time.monotonic() < deadline:
        if _served(cache, project, wheel.name, data):
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"{wheel.name} never reached the cache")


def _pip_check(cache: str, spec: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "--isolated", "--no-cache-dir", "download"]
    cmd += ["--no-deps", "-d", str(out), "--index-url", f"{cache}/simple/", spec]
    subprocess.run(cmd, check=True, capture_output=True, env=ENV, timeout=120)


def _network(bed: Testbed, work: Path, pub: str, master_url: str) -> str:
    version = None
    deadline = time.monotonic() + 60
    while version is None and time.monotonic() < deadline:
        version = status(master_url).get("root_version")
        time.sleep(0.1)
    seeds = [
        bed.seed(work / f"seed{i}", pub, [master_url], "--interval", "1h")[1] for i in range(SEEDS)
    ]
    for url in seeds:
        wait_synced(url, version or 1, timeout=60)
    _, cache = bed.cache(work / "cache", pub, seeds, "--refresh", "1h")
    deadline = time.monotonic() + 60
    while not all(status(u).get("subscribers") == 1 for u in seeds):
        if time.monotonic() > deadline:
            raise TimeoutError("the cache did not subscribe to every seed")
        time.sleep(0.1)
    return cache


def upstream_uploads(work: Path, uploads: int) -> dict[str, Any]:
    packages = work / "packages"
    packages.mkdir(parents=True)
    build_wheel(packages, "bench-prop", "0.1")
    key = work / "master.key"
    pub = format_pubkey(generate_key_file(key))
    times = []
    with pypiserver(packages) as index, Testbed() as bed:
        _, master_url = bed.master(
            work / "store",
            key,
            "--from-index",
            f"{index}/simple/",
            "--project",
            "bench-prop",
            "--every",
            "1s",
        )
        cache = _network(bed, work, pub, master_url)
        built = work / "built"
        built.mkdir()
        for i in range(uploads):
            wheel = build_wheel(built, "bench-prop", f"1.{i}")
            tmp = packages / f".{wheel.name}.tmp"
            tmp.write_bytes(wheel.read_bytes())
            started = time.monotonic()
            tmp.rename(packages / wheel.name)  # the upload, atomically
            times.append(_wait_served(cache, "bench-prop", wheel, started))
            print(f"  upstream upload {i + 1}/{uploads}: {times[-1]:.2f} s", flush=True)
        _pip_check(cache, f"bench-prop==1.{uploads - 1}", work / "pip")
    return _summary(times)


def local_publishes(work: Path, uploads: int) -> dict[str, Any]:
    dist = work / "dist"
    dist.mkdir(parents=True)
    key = work / "master.key"
    pub = format_pubkey(generate_key_file(key))
    store = work / "store"
    first = build_wheel(dist, "bench-local", "0.1")
    publish = p2pkg_cmd("publish", "--store", str(store), "--key", str(key))
    subprocess.run([*publish, str(first)], check=True, capture_output=True)
    times = []
    with Testbed() as bed:
        _, master_url = bed.master(store, key)
        cache = _network(bed, work, pub, master_url)
        for i in range(uploads):
            wheel = build_wheel(dist, "bench-local", f"1.{i}")
            started = time.monotonic()
            subprocess.run([*publish, str(wheel)], check=True, capture_output=True)
            times.append(_wait_served(cache, "bench-local", wheel, started))
            print(f"  local publish {i + 1}/{uploads}: {times[-1]:.2f} s", flush=True)
        _pip_check(cache, f"bench-local==1.{uploads - 1}", work / "pip")
    return _summary(times)


def _summary(times: list[float]) -> dict[str, Any]:
    return {
        "uploads": len(times),
        "median_s": round(median(times), 2),
        "max_s": round(max(times), 2),
        "min_s": round(min(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--uploads", type=int, default=20)
    args = parser.parse_args()
    root = bench_dir("propagation")
    results = {}
    print(f"[upstream upload -> installable through a cache fed by {SEEDS} seeds]")
    results["upstream_upload"] = upstream_uploads(root / "upstream", args.uploads)
    print(f"  {results['upstream_upload']}")
    print(f"[local publish -> installable through a cache fed by {SEEDS} seeds]")
    results["local_publish"] = local_publishes(root / "local", args.uploads)
    print(f"  {results['local_publish']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
