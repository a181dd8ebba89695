"""pip through the LAN cache vs a plain PEP 503 directory (issue: LAN cache).

Run: ``make bench`` (or ``.venv/bin/python -m netsim.bench_cache``).

30 genuine wheels (sizes drawn around the top-60's median of ~100 KB with a
few MB-sized ones) where ``app`` depends on the 29 others. Each measurement is
``pip install --no-cache-dir --index-url URL app`` into a fresh venv (venv
creation not timed):

* plain   — a static PEP 503 directory (same pages, files and .metadata) behind
            ``python -m http.server``;
* warm    — ``p2pkg cache`` already holding every file;
* cold    — a new ``p2pkg cache`` fetching from three seeds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir, median
from netsim.testbed import Testbed, p2pkg_cmd, spawn, wait_synced
from p2pkg.core.objects import Blob, decode_as
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.core.simple import index_html, project_html
from p2pkg.io.store import Store
from p2pkg.roles.namespace import open_store_namespace
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

COUNT = 30
REPS = 3
ENV = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def build(work: Path) -> tuple[Path, Ed25519PrivateKey]:
    dist = work / "dist"
    dist.mkdir()
    rng = random.Random(3)
    names = [f"lib{i:02d}" for i in range(COUNT - 1)]
    for name in names:
        size = int(rng.lognormvariate(11.5, 1.2))  # median ~100 KB, a tail of MBs
        build_wheel(dist, name, "1.0", payload=min(size, 8 << 20))
    build_wheel(dist, "app", "1.0", requires_dist=names)
    key = Ed25519PrivateKey.generate()
    store = work / "master"
    with Store.open(store, create=True) as st:
        publish(st, [key], [dist])
    return store, key


def static_index(store: Path, out: Path) -> None:
    """The same pages, archives and .metadata files as plain files (a PEP 503 directory)."""
    with Store.open(store) as st:
        ns = open_store_namespace(st)
        names = []
        for entry in ns.projects():
            names.append(entry.name)
            project = ns.require_project(entry.name)
            manifests = ns.manifests(project)
            page = out / "simple" / entry.name
            page.mkdir(parents=True)
            (page / "index.html").write_bytes(project_html(entry.name, manifests))
            for m in manifests:
                target = out / "files" / m.blake3.hex()
                target.mkdir(parents=True)
                shutil.copy(st.file_path(m.blake3), target / m.filename)
                if m.core_metadata is not None:
                    blob = decode_as(st.get_object(m.core_metadata.blob), Blob)
                    (target / f"{m.filename}.metadata").write_bytes(blob.data)
        (out / "simple" / "index.html").write_bytes(index_html(names))


def pip_install(work: Path, index: str, tag: str) -> float:
    venv = work / f"venv-{tag}"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    cmd = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--isolated",
        "--no-cache-dir",
        "--index-url",
        index,
        "app",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=ENV)
    return time.perf_counter() - start


def main() -> None:
    work = bench_dir("cache")
    store, key = build(work)
    pub = format_pubkey(public_bytes(key))
    static = work / "static"
    static_index(store, static)
    size = sum(p.stat().st_size for p in (work / "dist").iterdir())
    print(f"corpus: {COUNT} wheels, {size / 1e6:.1f} MB, app depends on the other {COUNT - 1}")

    with Testbed() as bed:
        httpd = [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(static)]
        proc = subprocess.Popen(httpd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline().decode().split("port ")[1].split()[0])
            plain = [
                pip_install(work, f"http://127.0.0.1:{port}/simple/", "plain") for _ in range(REPS)
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()

        _, master = bed.serve(store)
        seeds = [bed.seed(work / f"seed{i}", pub, [master])[1] for i in range(3)]
        for s in seeds:
            wait_synced(s, 1)
        cold = []
        for rep in range(REPS):
            cmd = p2pkg_cmd(
                "cache",
                "--store",
                str(work / f"cold{rep}"),
                "--listen",
                "127.0.0.1:0",
                "--trust",
                pub,
            )
            for s in seeds:
                cmd += ["--peer", s]
            with spawn(cmd) as (_, cache):
                cold.append(pip_install(work, f"{cache}/simple/", "cold"))
                if rep == REPS - 1:  # the last cold cache is now warm
                    warm = [pip_install(work, f"{cache}/simple/", "warm") for _ in range(REPS)]
    result = {
        "wheels": COUNT,
        "megabytes": round(size / 1e6, 1),
        "plain_http_server_s": round(median(plain), 3),
        "warm_cache_s": round(median(warm), 3),
        "cold_cache_3_seeds_s": round(median(cold), 3),
        "ratio_warm_vs_plain": round(median(warm) / median(plain), 3),
        "ratio_cold_vs_plain": round(median(cold) / median(plain), 3),
    }
    for k, v in result.items():
        print(f"  {k:28s} {v}")
    print(json.dumps(result))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
