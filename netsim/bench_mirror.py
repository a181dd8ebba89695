"""Mirroring an index (``p2pkg publish --from-index``) against a local pypiserver.

Run: ``.venv/bin/python -m netsim.bench_mirror``.

Two measurements, each in the same run as its reference:

1. **Incremental mirroring**: 1,000 upstream files (100 projects x 10
   releases, genuine small wheels), mirrored once; then 10 new releases are
   uploaded and the mirror runs again. Printed: upstream requests and bytes
   of the first and the incremental run, as the mirror counted them and as
   the upstream (a counting proxy) saw them; once against pypiserver as it is
   (no ETags: every page is sent again) and once behind a front that adds
   ETags (pages answer 304).
2. **First mirroring of several hundred MB**: 300 genuine wheels of ~1 MiB
   (incompressible payloads), one per project, mirrored into a fresh store
   (download, sha256 check, validate, publish: copy, hash, chunk, sign) vs
   ``pip download --isolated --no-deps`` of the same 300 files from the same
   pypiserver. Medians of REPS runs each and the ratio; the mirror's
   download phase is shown on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netsim.common import bench_dir, median
from netsim.testbed import p2pkg_cmd
from netsim.upstream_index import CountingProxy, counting_proxy, pypiserver
from p2pkg.io.keys import generate_key_file
from p2pkg.io.store import Store
from p2pkg.roles.mirror import Selection, mirror_index
from p2pkg.testing.archives import build_wheel

MiB = 1 << 20
PROJECTS, RELEASES, CHANGED = 100, 10, 10
BIG_FILES, BIG_SIZE = 300, MiB
REPS = 3
ENV = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _mirror_cli(store: Path, key: Path, url: str, names: list[str]) -> dict[str, Any]:
    cmd = p2pkg_cmd("publish", "--store", str(store), "--key", str(key), "--from-index", url)
    for name in names:
        cmd += ["--project", name]
    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=False, env=ENV)
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def incremental(work: Path, key: Path) -> None:
    packages = work / "packages"
    packages.mkdir()
    names = [f"inc-{i:03d}" for i in range(PROJECTS)]
    for name in names:
        for r in range(RELEASES):
            build_wheel(packages, name, f"1.{r}", payload=4096)
    print(f"incremental: {PROJECTS * RELEASES} upstream files, {PROJECTS} projects")
    print(
        f"  {'upstream':<22} {'run':<12} {'requests':>9} {'mirror bytes':>13} "
        f"{'upstream bytes':>15} {'files':>6}"
    )
    with pypiserver(packages) as server:
        for label, etags in (("pypiserver (no ETag)", False), ("with an ETag front", True)):
            store = work / f"store-{int(etags)}"
            with counting_proxy(server, etags=etags) as proxy:
                url = f"{proxy.url}/simple/"
                rows = [("first", _run(proxy, store, key, url, names))]
                changed = [build_wheel(packages, n, "2.0", payload=4096) for n in names[:CHANGED]]
                rows.append((f"{CHANGED} changed", _run(proxy, store, key, url, names)))
                for path in changed:  # the next upstream starts from the same 1,000
                    path.unlink()
                for run, (out, _seen, sent) in rows:
                    print(
                        f"  {label:<22} {run:<12} {out['upstream_requests']:>9} "
                        f"{out['bytes_downloaded']:>13} {sent:>15} {out['files_added']:>6}"
                    )
                first, again = rows[0][1], rows[1][1]
                print(
                    f"  {'':<22} {'ratio':<12} "
                    f"{again[0]['upstream_requests'] / first[0]['upstream_requests']:>9.3f} "
                    f"{again[0]['bytes_downloaded'] / first[0]['bytes_downloaded']:>13.3f} "
                    f"{again[2] / first[2]:>15.3f}"
                )
                assert again[0]["files_added"] == CHANGED, again[0]
                assert len(again[1]) == again[0]["upstream_requests"]


def _run(
    proxy: CountingProxy, store: Path, key: Path, url: str, names: list[str]
) -> tuple[dict[str, Any], list[str], int]:
    proxy.reset()
    with Store.open(store, create=True) as st:
        result = mirror_index(st, [_load(key)], url, Selection(projects=names))
    out = {**result.counts(), "files_added": len(result.added)}
    sent = proxy.bytes_out
    return out, proxy.reset(), sent


def _load(key: Path) -> Any:
    from p2pkg.io.keys import load_private_key

    return load_private_key(key)


def first_mirroring(work: Path, key: Path) -> None:
    packages = work / "big"
    packages.mkdir()
    names = [f"big-{i:03d}" for i in range(BIG_FILES)]
    for name in names:
        build_wheel(packages, name, "1.0", payload=BIG_SIZE)
    total = sum(p.stat().st_size for p in packages.iterdir())
    print(f"\nfirst mirroring: {BIG_FILES} wheels, {total / MiB:.0f} MiB, from pypiserver")
    mirror_times: list[float] = []
    pip_times: list[float] = []
    with pypiserver(packages) as server:
        url = f"{server}/simple/"
        for rep in range(REPS):
            store = work / f"big-store-{rep}"
            start = time.perf_counter()
            out = _mirror_cli(store, key, url, names)
            mirror_times.append(time.perf_counter() - start)
            assert out["files_added"] == BIG_FILES, out
            shutil.rmtree(store)

            dest = work / f"pip-{rep}"
            cmd = [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps"]
            cmd += ["--no-cache-dir", "--index-url", url, "-d", str(dest), *names]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=ENV)
            pip_times.append(time.perf_counter() - start)
            assert len(list(dest.iterdir())) == BIG_FILES
            shutil.rmtree(dest)
        download = _download_phase(work, key, url, names)
    m, p = median(mirror_times), median(pip_times)
    mib = total / MiB
    print(
        f"  p2pkg publish --from-index   median {m:6.2f} s  {mib / m:7.1f} MiB/s  (CLI, whole run)"
    )
    print(f"    of which downloading       {download:6.2f} s  {mib / download:7.1f} MiB/s")
    print(f"  pip download --no-deps       median {p:6.2f} s  {mib / p:7.1f} MiB/s")
    print(f"  ratio mirror / pip download  {m / p:.2f}  (download phase alone: {download / p:.2f})")


def _download_phase(work: Path, key: Path, url: str, names: list[str]) -> float:
    """Seconds until the last file is downloaded and checked (publish excluded)."""
    marks: list[float] = []

    def progress(done: int, total: int) -> None:
        if done == total:
            marks.append(time.perf_counter())

    store = work / "big-store-phase"
    with Store.open(store, create=True) as st:
        start = time.perf_counter()
        mirror_index(st, [_load(key)], url, Selection(projects=names), progress=progress)
    shutil.rmtree(store)
    return marks[-1] - start


def main() -> None:
    work = bench_dir("mirror")
    key = work / "master.key"
    generate_key_file(key)
    incremental(work, key)
    first_mirroring(work, key)


if __name__ == "__main__":
    main()
