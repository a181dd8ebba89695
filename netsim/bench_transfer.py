"""Transfer benchmarks on 127.0.0.1 (issue: peers). Run: ``make bench``.

Sections (all by default; pass names to run some): ``single``, ``multi``,
``caps``, ``small``, ``startup``, ``upgrade``. Each measures p2pkg and a reference in the
same run and prints medians and ratios:

* single  — one peer, one 256 MiB archive, verified and written:
            ``p2pkg fetch`` vs ``curl -o file`` from nginx; server CPU per GiB.
* multi   — four peers: p2pkg vs ``aria2c -x4 -s4`` from four nginx vs
            libtorrent with four seeders.
* caps    — four peers each capped at 25 MiB/s (one token bucket per server):
            p2pkg ``serve --rate`` vs aria2c through a capping proxy per nginx.
* small   — 500 archives of 5–200 KB from one peer: one ``p2pkg fetch`` with
            500 specs vs ``aria2c -j16`` from nginx (wall time, process start included).
* startup — one small archive end to end, ``STARTUP_RUNS`` times: ``p2pkg fetch``
            (interpreter start and imports count) vs ``curl -o file`` from nginx,
            with the bare interpreter and the fetch path's imports alone for scale.
* upgrade — with version N of a real wheel in the local store, fetching N+1:
            bytes transferred / file size.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim import references as ref
from netsim.common import bench_dir, median, warm
from netsim.testbed import Testbed
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.store import Store
from p2pkg.roles.export import export_store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

MiB = 1 << 20
BIG = 256 * MiB
SMALL_COUNT = 500
REPS = 3
STARTUP_RUNS = 10


class Bench:
    def __init__(self) -> None:
        self.work = bench_dir("transfer")
        self.key = Ed25519PrivateKey.generate()
        self.pub = format_pubkey(public_bytes(self.key))
        self.results: dict[str, Any] = {}
        dist = self.work / "dist"
        dist.mkdir()
        self.big = build_wheel(dist, "bigpkg", "1.0", payload=BIG)
        rng = random.Random(7)
        self.small = [
            build_wheel(dist, f"small-{i}", "1.0", payload=rng.randint(5_000, 200_000))
            for i in range(SMALL_COUNT)
        ]
        self.store = self.work / "master"
        with Store.open(self.store, create=True) as st:
            publish(st, [self.key], [dist])
            self.static = self.work / "static"
            export_store(st, self.static)
            self.b3 = {f.blake3: f for f in st.iter_files()}
        self.files_path = self.static / "p2pkg" / "v1" / "files"
        warm(sorted(self.files_path.iterdir()))

    def url_of(self, base: str, path: Path) -> str:
        from p2pkg.io.ingest import hash_path

        return f"{base}/p2pkg/v1/files/{hash_path(path).blake3.hex()}"

    def fetch_cli(
        self, peers: list[str], specs: list[str], *extra: str
    ) -> tuple[float, dict[str, Any]]:
        dest = self.work / "out"
        if dest.exists():
            shutil.rmtree(dest)
        cmd = [sys.executable, "-m", "p2pkg.cli", "fetch", *specs, "--trust", self.pub]
        for p in peers:
            cmd += ["--peer", p]
        cmd += ["--dest", str(dest), "--json", *extra]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, check=True)
        wall = time.perf_counter() - start
        return wall, json.loads(out.stdout)

    # ------------------------------------------------------------------ sections

    def single(self) -> None:
        big_url_path = self.url_of("", self.big)
        out = self.work / "curl.out"
        with ref.nginx(self.static, 1, self.work) as (ngx,), Testbed() as bed:
            curl = []
            for _ in range(REPS + 2):
                out.unlink(missing_ok=True)
                start = time.perf_counter()
                subprocess.run(["curl", "-sf", "-o", str(out), ngx + big_url_path], check=True)
                curl.append(time.perf_counter() - start)
            proc, peer = bed.serve(self.store)
            cpu0 = ref.cpu_seconds(proc.pid)
            walls, engine, paranoid = [], [], []
            for _ in range(REPS + 2):
                wall, res = self.fetch_cli([peer], ["bigpkg"])
                walls.append(wall)
                engine.append(res["seconds"])
                # the same with the whole-file re-hash that "verify once" dropped
                paranoid.append(self.fetch_cli([peer], ["bigpkg"], "--paranoid")[1]["seconds"])
            served_gib = 2 * (REPS + 2) * self.big.stat().st_size / (1 << 30)
            cpu = (ref.cpu_seconds(proc.pid) - cpu0) / served_gib
            # the same client against nginx (a static export is a peer)
            static_walls = [self.fetch_cli([ngx], ["bigpkg"])[1]["seconds"] for _ in range(REPS)]
        size = self.big.stat().st_size / MiB
        r = {
            "curl_mib_s": size / median(curl),
            "p2pkg_engine_mib_s": size / median(engine),
            "p2pkg_engine_paranoid_mib_s": size / median(paranoid),
            "p2pkg_cli_mib_s": size / median(walls),
            "p2pkg_from_nginx_engine_mib_s": size / median(static_walls),
            "server_cpu_s_per_gib": cpu,
        }
        r["ratio_engine_vs_curl"] = r["p2pkg_engine_mib_s"] / r["curl_mib_s"]
        r["ratio_cli_vs_curl"] = r["p2pkg_cli_mib_s"] / r["curl_mib_s"]
        self.report("single", r)

    def aria_big(self, urls: list[str]) -> list[float]:
        """Seconds for ``aria2c -x4 -s4`` to fetch the big file from ``urls`` (mirrors)."""
        aria = ref.aria2c()
        if aria is None:
            return []
        times = []
        for _ in range(REPS):
            dest = self.work / "aria"
            shutil.rmtree(dest, ignore_errors=True)
            cmd = [aria, "-q", "-x4", "-s4", "-k1M", "--file-allocation=none"]
            start = time.perf_counter()
            subprocess.run([*cmd, "-d", str(dest), "-o", "big.whl", *urls], check=True)
            times.append(time.perf_counter() - start)
        return times

    def multi(self) -> None:
        path = self.url_of("", self.big)
        with ref.nginx(self.static, 4, self.work) as ngx, Testbed() as bed:
            peers = [bed.serve(self.store)[1] for _ in range(4)]
            engine = [self.fetch_cli(peers, ["bigpkg"])[1]["seconds"] for _ in range(REPS)]
            aria_t = self.aria_big([u + path for u in ngx])
        size = self.big.stat().st_size / MiB
        r: dict[str, Any] = {"p2pkg_4_peers_mib_s": size / median(engine)}
        if aria_t:
            r["aria2c_4_nginx_mib_s"] = size / median(aria_t)
            r["ratio_vs_aria2c"] = r["p2pkg_4_peers_mib_s"] / r["aria2c_4_nginx_mib_s"]
        if ref.have_libtorrent():
            torrent = ref.make_torrent(self.big, self.work / "big.torrent")
            with ref.torrent_seeders(torrent, self.big.parent, 4) as ports:
                lt = [ref.torrent_download(torrent, self.work / "lt", ports) for _ in range(REPS)]
            r["libtorrent_4_seeders_mib_s"] = size / median(lt)
            r["ratio_vs_libtorrent"] = r["p2pkg_4_peers_mib_s"] / r["libtorrent_4_seeders_mib_s"]
        self.report("multi", r)

    def caps(self) -> None:
        cap = 25 * MiB
        path = self.url_of("", self.big)
        with Testbed() as bed:
            peers = [bed.serve(self.store, "--rate", "25MiB")[1] for _ in range(4)]
            engine = [self.fetch_cli(peers, ["bigpkg"])[1]["seconds"] for _ in range(REPS)]
        with ref.nginx(self.static, 4, self.work) as ngx, ExitStack() as proxies:
            # nginx's limit_rate does not hold for short range requests: a capping
            # proxy (one token bucket per server, like `serve --rate`) in front of each.
            urls = [
                proxies.enter_context(ref.rate_proxy(int(u.rsplit(":", 1)[1]), cap)) for u in ngx
            ]
            aria_t = self.aria_big([u + path for u in urls])
        size = self.big.stat().st_size / MiB
        r: dict[str, Any] = {"p2pkg_mib_s": size / median(engine), "cap_total_mib_s": 100}
        r["fraction_of_cap"] = r["p2pkg_mib_s"] / 100
        if aria_t:
            r["aria2c_mib_s"] = size / median(aria_t)
            r["ratio_vs_aria2c"] = r["p2pkg_mib_s"] / r["aria2c_mib_s"]
        self.report("caps", r)

    def small_files(self) -> None:
        aria = ref.aria2c()
        specs = [f"small-{i}" for i in range(SMALL_COUNT)]
        with Testbed() as bed:
            _, peer = bed.serve(self.store)
            walls = [self.fetch_cli([peer], specs, "--jobs", "16")[0] for _ in range(REPS)]
        aria_t = []
        if aria:
            with ref.nginx(self.static, 1, self.work) as (ngx,):
                listing = self.work / "urls.txt"
                listing.write_text(
                    "".join(f"{self.url_of(ngx, p)}\n  out={p.name}\n" for p in self.small)
                )
                for _ in range(REPS):
                    dest = self.work / "aria-small"
                    shutil.rmtree(dest, ignore_errors=True)
                    start = time.perf_counter()
                    subprocess.run(
                        [
                            aria,
                            "-q",
                            "-j16",
                            "--file-allocation=none",
                            "-d",
                            str(dest),
                            "-i",
                            str(listing),
                        ],
                        check=True,
                    )
                    aria_t.append(time.perf_counter() - start)
        r: dict[str, Any] = {"files": SMALL_COUNT, "p2pkg_cli_s": median(walls)}
        if aria_t:
            r["aria2c_j16_s"] = median(aria_t)
            r["ratio_time_p2pkg_vs_aria2c"] = r["p2pkg_cli_s"] / r["aria2c_j16_s"]
        # end-to-end CLI time for one small file (interpreter start and imports count)
        with Testbed() as bed:
            _, peer = bed.serve(self.store)
            one = [self.fetch_cli([peer], ["small-1"])[0] for _ in range(REPS + 2)]
        r["one_small_file_cli_s"] = median(one)
        with ref.nginx(self.static, 1, self.work) as (ngx,):
            url = self.url_of(ngx, self.small[1])
            curl = []
            for _ in range(REPS + 2):
                start = time.perf_counter()
                subprocess.run(["curl", "-sf", "-o", str(self.work / "c1"), url], check=True)
                curl.append(time.perf_counter() - start)
        r["one_small_file_curl_s"] = median(curl)
        self.report("small", r)

    def startup(self) -> None:
        def timed(cmd: list[str]) -> float:
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            return time.perf_counter() - start

        # As installed from a wheel: bytecode compiled (this VM sets
        # PYTHONDONTWRITEBYTECODE, so an editable tree would compile every run).
        import p2pkg

        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(Path(p2pkg.__file__).parent)],
            capture_output=True,
            check=True,
        )
        python = [timed([sys.executable, "-c", "pass"]) for _ in range(STARTUP_RUNS)]
        imports = "import p2pkg.cli, p2pkg.cli.network_commands, p2pkg.roles.client"
        imported = [timed([sys.executable, "-c", imports]) for _ in range(STARTUP_RUNS)]
        with Testbed() as bed:
            _, peer = bed.serve(self.store)
            self.fetch_cli([peer], ["small-1"])  # warm the server and the page cache
            walls = [self.fetch_cli([peer], ["small-1"])[0] for _ in range(STARTUP_RUNS)]
        with ref.nginx(self.static, 1, self.work) as (ngx,):
            url = self.url_of(ngx, self.small[1])
            curl_cmd = ["curl", "-sf", "-o", str(self.work / "c1"), url]
            curl = [timed(curl_cmd) for _ in range(STARTUP_RUNS)]
        r: dict[str, Any] = {
            "file_bytes": self.small[1].stat().st_size,
            "python_bare_s": median(python),
            "python_imports_s": median(imported),
            "p2pkg_fetch_one_s": median(walls),
            "curl_one_s": median(curl),
        }
        r["ratio_p2pkg_vs_curl"] = r["p2pkg_fetch_one_s"] / r["curl_one_s"]
        self.report("startup", r)

    def upgrade(self) -> None:
        old, new = self._real_wheels()
        with Store.open(self.store) as st:
            publish(st, [self.key], [old, new])
        import anyio

        from p2pkg.roles.session import Session

        with Testbed() as bed, tempfile.TemporaryDirectory() as tmp:
            _, peer = bed.serve(self.store)

            async def run() -> dict[str, Any]:
                with Store.open(Path(tmp) / "client", create=True) as cs:
                    f = Session(frozenset({public_bytes(self.key)}), [peer], cs)
                    try:
                        name = old.name.split("-")[0]
                        await f.fetch(f"{name}=={old.name.split('-')[1]}", None, filename=old.name)
                        _, stats = await f.fetch(name, Path(tmp) / "out", filename=new.name)
                    finally:
                        f.close()
                return {
                    "old": old.name,
                    "new": new.name,
                    "size": stats.size,
                    "bytes_transferred": stats.from_network,
                    "fraction_transferred": stats.from_network / stats.size,
                }

            self.report("upgrade", anyio.run(run))

    def _real_wheels(self) -> tuple[Path, Path]:
        """Two consecutive releases of a real wheel (botocore), or a synthetic pair offline."""
        dest = self.work / "upgrade"
        dest.mkdir(exist_ok=True)
        pins = ["botocore==1.35.0", "botocore==1.35.1"]
        got = []
        for pin in pins:
            res = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--only-binary",
                    ":all:",
                    "-d",
                    str(dest),
                    pin,
                ],
                capture_output=True,
                check=False,
            )
            if res.returncode != 0:
                break
            got.append(next(dest.glob(f"{pin.replace('==', '-')}-*.whl")))
        if len(got) == 2:
            return got[0], got[1]
        print("  (PyPI unreachable: synthetic upgrade pair)")
        payload = random.Random(1).randbytes(12 * MiB)
        old = build_wheel(dest, "synth", "1.0", payload=payload)
        new = build_wheel(
            dest, "synth", "1.1", payload=payload[: 6 * MiB] + b"x" + payload[6 * MiB :]
        )
        return old, new

    # ------------------------------------------------------------------ output

    def report(self, name: str, r: dict[str, Any]) -> None:
        self.results[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
        print(f"[{name}]")
        for k, v in self.results[name].items():
            print(f"  {k:32s} {v}")
        sys.stdout.flush()


SECTIONS = ("single", "multi", "caps", "small", "startup", "upgrade")


def main() -> None:
    wanted = sys.argv[1:] or list(SECTIONS)
    bench = Bench()
    runs = {
        "single": bench.single,
        "multi": bench.multi,
        "caps": bench.caps,
        "small": bench.small_files,
        "startup": bench.startup,
        "upgrade": bench.upgrade,
    }
    for name in wanted:
        runs[name]()
    print(json.dumps(bench.results))
    shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    main()
