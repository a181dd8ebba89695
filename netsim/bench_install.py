"""pip and uv installing 50 wheels through a p2pkg cache vs pypiserver and proxpi (issue 12 c).

Run (root): ``python -m netsim.bench_install [--reps N] [--rtt 40] [--trace]``.

The corpus (:mod:`netsim.wheelset`): 50 genuine wheels, ~63 MB, most
20 KB – 2 MB and four of 8 – 17 MB, native (incompressible) and pure
(deflated text) mixed; ``app`` requires 10 projects which require the
other 39, so one ``install app`` resolves the set level by level as a
real application's install does.

The network (:mod:`netsim.netbed`: namespaces on a bridge, ``tc tbf`` on
each host's uplink, a user-space delay proxy in front of every remote
server holding each byte ``rtt/2`` each way):

* ``master`` — ``p2pkg serve`` of the published store (unshaped, no delay:
  it only feeds the seeds before anything is timed);
* ``seed0``, ``seed1`` — ``p2pkg seed`` synced from the master, uplink
  25 MiB/s each, ``rtt`` away;
* ``index`` — pypiserver over the same wheels, uplink 50 MiB/s (the two
  seeds' sum), ``rtt`` away; it runs under waitress (4 threads, HTTP/1.1
  keep-alive: what pypiserver picks when waitress is installed, and what a
  deployment would use rather than the single-threaded wsgiref fallback);
* ``site`` — unshaped; pip / uv, the ``p2pkg cache`` (``--peer`` both seeds)
  and proxpi (index = the pypiserver ``rtt`` away, under waitress too) all
  run here, on 127.0.0.1.

Each figure is the wall time of one ``pip install --isolated --no-cache-dir``
(pip 26 of ``.venv``, ``--python`` into a fresh empty venv) or ``uv pip
install --no-cache --no-config`` (fresh ``uv venv``) of ``app``; venv creation
is not timed, and every install is checked to have put 50 distributions in
the venv. Contenders:

* ``pypiserver``  — installers straight to the index ``rtt`` away;
* ``proxpi cold`` — a new proxpi with an empty cache dir (its default 0.9 s
  download timeout: a file not cached by then is redirected to the index);
* ``proxpi warm`` — the same proxpi again (pages within its TTL, files cached);
* ``cache cold``  — a new ``p2pkg cache`` with an empty store, started and
  holding the signed root (nothing else) before the clock starts;
* ``cache warm``  — the same cache again, after that one install.

Medians over ``--reps`` (cold = a fresh proxpi / cache each rep); ratios
are against ``pypiserver`` with the same installer in the same run. A table,
then one JSON line. Everything started is stopped and the namespaces are
deleted, on errors and Ctrl-C too (the work directory is kept on failure).

Diagnosis: ``--trace`` adds one more round of every contender, not counted
in the medians, with the installers' time-stamped logs (``pip --log``; uv's
``-v`` lines stamped as they arrive) kept under the work directory
(``--keep``), and prints where each install's time went: pip's waits for
pages, ``.metadata`` and wheel bodies; uv's page-to-file and
metadata-to-dependencies latencies and its resolve / prepare / install
phases. ``--indexes``, ``--cache-args`` (e.g. ``"--read-ahead 0"``) and
``--pypiserver wsgiref`` (pypiserver's fallback server) are for experiments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir, median
from netsim.netbed import Host, NetBed
from netsim.testbed import p2pkg_cmd, stop
from netsim.wheelset import build_wheelset
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish

MiB = 1 << 20
PREFIX = "p2i"
INDEX_PORT = 8080
PROXPI_PORT = 8081
#: The bench's own copy of waitress (outside .venv: installing it there would
#: change the server every other pypiserver user in the repo gets).
PYLIB = Path(os.environ.get("P2PKG_BENCH_DIR", "bench-out")).resolve() / ".pylib-install"
INSTALL_TIMEOUT = 600
CONTENDERS = ("pypiserver", "proxpi cold", "proxpi warm", "cache cold", "cache warm")


def _installer_env() -> dict[str, str]:
    """This machine's environment without pip/uv settings (it adds extra indexes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env |= {"PIP_NO_INPUT": "1", "UV_NO_CONFIG": "1", "NO_COLOR": "1"}
    return env


ENV = _installer_env()


# ---------------------------------------------------------------------- tools


def ensure_references() -> None:
    """proxpi in .venv, waitress in :data:`PYLIB` (both from the package index, once)."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    if importlib.util.find_spec("proxpi") is None:
        subprocess.run([*pip, "proxpi"], check=True)
    if not (PYLIB / "waitress").is_dir():
        subprocess.run([*pip, "--target", str(PYLIB), "waitress"], check=True)


def uv_binary() -> str:
    found = Path(sys.executable).parent / "uv"
    return str(found) if found.exists() else shutil.which("uv") or "uv"


# ---------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A process in a namespace with its combined output in ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text(errors="replace"))
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{self.log.name}: no {pattern!r}: {tail}")


def start(host: Host, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    """``cmd`` in ``host``'s namespace, stdout and stderr into ``log`` (stopped by the bed)."""
    with log.open("wb") as out:
        proc = host.popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path.cwd())
    return Proc(proc, log)


def http_get(host: Host, url: str) -> bytes:
    """GET from inside ``host``'s namespace (curl); raises on failure."""
    out = host.run(["curl", "-sf", "--max-time", "10", url], capture_output=True, check=True)
    return out.stdout


def run_stamped(argv: list[str], log: Path) -> tuple[int, bytes]:
    """Run ``argv``; each output line goes to ``log`` prefixed with seconds since the start."""
    t0 = time.perf_counter()
    out = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    killer = threading.Timer(INSTALL_TIMEOUT, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        with log.open("w") as fh:
            for line in proc.stdout:
                out.append(line)
                fh.write(f"{time.perf_counter() - t0:8.3f} {line.decode(errors='replace')}")
        return proc.wait(), b"".join(out)
    finally:
        killer.cancel()
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_json(host: Host, url: str, key: str, want: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = json.loads(http_get(host, url))
            if last.get(key) == want:
                return
        except (subprocess.CalledProcessError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}: {key} != {want!r}: {last}")


# ---------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = bench_dir("install")
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.delay = args.rtt / 2000
        self.results: dict[str, dict[str, list[float]]] = {}
        self.count = 0

    # -- setup

    def build(self) -> None:
        t0 = time.perf_counter()
        self.wheels = build_wheelset(self.work / "dist")
        self.key = Ed25519PrivateKey.generate()
        self.pub = format_pubkey(public_bytes(self.key))
        self.store = self.work / "master"
        with Store.open(self.store, create=True) as st:
            publish(st, [self.key], [self.work / "dist"])
        mb = self.wheels.total_bytes / 1e6
        sizes = sorted(p.stat().st_size for p in self.wheels.paths)
        print(
            f"corpus: {len(sizes)} wheels, {mb:.1f} MB (median {sizes[len(sizes) // 2] / 1e3:.0f} "
            f"KB, largest {sizes[-1] / 1e6:.1f} MB), `app` pulls the other 49 "
            f"(built and published in {time.perf_counter() - t0:.1f} s)"
        )

    def network(self, bed: NetBed) -> None:
        a = self.args
        self.master_h = bed.host("master")
        self.seed_h = [bed.host(f"seed{i}", up=a.seed_rate * MiB) for i in range(2)]
        self.index_h = bed.host("index", up=a.index_rate * MiB)
        self.site = bed.host("site")
        master = start(
            self.master_h,
            p2pkg_cmd("serve", "--store", str(self.store), "--listen", f"{self.master_h.addr}:0"),
            self.logs / "master.log",
        )
        master_url = master.wait_for(r"on (http://\S+)").group(1)
        self.peers = []
        for i, h in enumerate(self.seed_h):
            cmd = p2pkg_cmd("seed", "--store", str(self.work / f"seed{i}"), "--trust", self.pub)
            cmd += ["--listen", "127.0.0.1:0", "--upstream", master_url]
            url = start(h, cmd, self.logs / f"seed{i}.log").wait_for(r"on (http://\S+)").group(1)
            wait_json(h, f"{url}/p2pkg/v1/status", "synced_version", 1)
            port = int(url.rsplit(":", 1)[1])
            self.peers.append(f"http://{h.addr}:{h.delayed(port, self.delay)}")
        # pypiserver over the same wheels, under waitress (PYLIB), behind the same delay.
        cmd = [sys.executable, "-m", "pypiserver", "run", "-p", str(INDEX_PORT), "-i", "127.0.0.1"]
        cmd += ["--disable-fallback", "-a", ".", "-P", ".", "--server", self.args.pypiserver]
        cmd += ["--log-stream", "none", str(self.work / "dist")]
        start(self.index_h, cmd, self.logs / "pypiserver.log", env=self.pylib_env())
        self.index_h.wait_port(INDEX_PORT)
        public = self.index_h.delayed(INDEX_PORT, self.delay)
        self.index = f"http://{self.index_h.addr}:{public}/simple/"
        page = http_get(self.site, f"{self.index}app/")  # through the link, as pip will
        assert b"app-1.0-py3-none-any.whl" in page, page[:300]
        head = self.site.run(["curl", "-sI", f"{self.index}app/"], capture_output=True).stdout
        server = re.search(rb"(?im)^server: *(.*?)\r?$", head)
        self.index_server = server.group(1).decode() if server else "?"
        print(
            f"network: 2 seeds at {a.seed_rate} MiB/s up, pypiserver at {a.index_rate} MiB/s up, "
            f"each {a.rtt:g} ms RTT from the site (delay proxy); site unshaped; "
            f"pypiserver runs under {self.index_server}"
        )

    def pylib_env(self, **extra: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(PYLIB), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, **extra}

    # -- the indexes on the site

    @contextmanager
    def proxpi(self) -> Iterator[str]:
        """A fresh proxpi (empty cache dir) on the site in front of the pypiserver."""
        self.count += 1
        cache = self.work / f"proxpi{self.count}"
        cache.mkdir()
        env = self.pylib_env(PROXPI_INDEX_URL=self.index, PROXPI_CACHE_DIR=str(cache))
        cmd = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{PROXPI_PORT}"]
        cmd += ["--threads=8", "proxpi.server:app"]
        p = start(self.site, cmd, self.logs / f"proxpi{self.count}.log", env=env)
        try:
            self.site.wait_port(PROXPI_PORT)
            yield f"http://127.0.0.1:{PROXPI_PORT}/index/"
        finally:
            stop(p.proc)
            shutil.rmtree(cache, ignore_errors=True)

    @contextmanager
    def cache(self, *flags: str) -> Iterator[str]:
        """A fresh ``p2pkg cache`` (empty store) on the site, holding the signed root."""
        self.count += 1
        store = self.work / f"cache{self.count}"
        cmd = p2pkg_cmd(*flags, "cache", "--store", str(store), "--trust", self.pub)
        cmd += ["--listen", "127.0.0.1:0", "--no-lan", *shlex.split(self.args.cache_args)]
        for peer in self.peers:
            cmd += ["--peer", peer]
        p = start(self.site, cmd, self.logs / f"cache{self.count}.log")
        try:
            url = p.wait_for(r"on (http://\S+)").group(1)
            wait_json(self.site, f"{url}/p2pkg/v1/status", "root_version", 1)
            yield f"{url}/simple/"
        finally:
            stop(p.proc)
            shutil.rmtree(store, ignore_errors=True)

    # -- installers

    def install(self, installer: str, index: str, trace: Path | None = None) -> float:
        """Seconds for ``installer`` to install ``app`` from ``index`` into a fresh venv."""
        venv = self.work / f"venv-{installer}"
        shutil.rmtree(venv, ignore_errors=True)
        if installer == "pip":
            make = [sys.executable, "-m", "venv", "--without-pip", str(venv)]
            cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
            cmd += ["install", "--isolated", "--no-cache-dir", "--index-url", index]
            # Plain HTTP beyond localhost (the index, and proxpi's redirects to it).
            cmd += ["--trusted-host", self.index_h.addr]
            if trace is not None:
                cmd += ["--log", str(trace)]
        else:
            make = [uv_binary(), "venv", "--no-config", "-q", "--python", sys.executable, str(venv)]
            cmd = [uv_binary(), "pip", "install", "--no-cache", "--no-config"]
            cmd += ["--python", str(venv / "bin" / "python"), "--index-url", index]
            if trace is not None:
                cmd += ["-v"]
        subprocess.run(make, check=True, capture_output=True, env=ENV)
        argv = self.site.argv([*cmd, self.wheels.root])
        t0 = time.perf_counter()
        if trace is not None and installer == "uv":
            code, out = run_stamped(argv, trace)
        else:
            done = subprocess.run(
                argv, capture_output=True, env=ENV, timeout=INSTALL_TIMEOUT, check=False
            )
            code, out = done.returncode, done.stdout + done.stderr
        took = time.perf_counter() - t0
        if code != 0:
            text = out.decode(errors="replace")
            raise RuntimeError(f"{installer} from {index} failed:\n{text[-3000:]}")
        installed = len(list(venv.glob("lib/python*/site-packages/*.dist-info")))
        if installed != len(self.wheels.paths):
            raise RuntimeError(f"{installer} from {index}: {installed} distributions installed")
        return took

    def record(self, installer: str, contender: str, seconds: float) -> None:
        self.results.setdefault(installer, {}).setdefault(contender, []).append(seconds)
        print(f"  {installer:3s} {contender:12s} {seconds:7.2f} s", flush=True)

    def rep(self, installer: str, trace: bool = False) -> None:
        """One install per contender; with ``trace``, logged and summarized, not recorded."""

        def one(contender: str, index: str) -> None:
            if not trace:
                self.record(installer, contender, self.install(installer, index))
                return
            log = self.logs / f"trace-{installer}-{contender.replace(' ', '-')}.log"
            took = self.install(installer, index, trace=log)
            print(f"  trace {installer} {contender}: {took:.2f} s ({log})")
            for line in summarize(installer, log, took):
                print(f"    {line}")

        which = self.args.indexes.split(",")
        if "pypiserver" in which:
            one("pypiserver", self.index)
        if "proxpi" in which:
            with self.proxpi() as url:
                one("proxpi cold", url)
                one("proxpi warm", url)
        if "cache" in which:
            with self.cache() as url:
                one("cache cold", url)
                one("cache warm", url)

    # -- report

    def report(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {
            "wheels": len(self.wheels.paths),
            "megabytes": round(self.wheels.total_bytes / 1e6, 1),
            "rtt_ms": a.rtt,
            "seed_mib_s": a.seed_rate,
            "index_mib_s": a.index_rate,
            "reps": a.reps,
        }
        print()
        head = (
            f"{'installer':9s} {'index':12s} {'median s':>9s} {'runs':>30s} {'vs pypiserver':>14s}"
        )
        print(head)
        print("-" * len(head))
        for installer, rows in self.results.items():
            base = median(rows.get("pypiserver", [float("nan")]))
            for contender in CONTENDERS:
                if contender not in rows:
                    continue
                m = median(rows[contender])
                runs = " ".join(f"{x:.2f}" for x in rows[contender])
                print(f"{installer:9s} {contender:12s} {m:9.2f} {runs:>30s} {m / base:13.2f}x")
                key = f"{installer}_{contender.replace(' ', '_')}"
                out[f"{key}_s"] = round(m, 3)
                if contender != "pypiserver":
                    out[f"{key}_ratio"] = round(m / base, 3)
        print("targets: cache cold <= 1.1x pypiserver, cache warm <= 0.9x (pip and uv)")
        return out


_PIP_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d+) (.*)$")
_UV_STAMP = re.compile(r"^\s*(\d+\.\d+) (.*)$")


def _ms(xs: list[float]) -> str:
    if not xs:
        return "none"
    mid, top = median(xs) * 1e3, max(xs) * 1e3
    return f"n={len(xs)} sum {sum(xs):.2f} s, median {mid:.0f} ms, max {top:.0f} ms"


def _project(url: str) -> str:
    """The project a file URL belongs to (from the wheel's name)."""
    return url.rsplit("/", 1)[-1].split("-", 1)[0].replace("_", "-").lower()


def summarize(installer: str, log: Path, took: float) -> list[str]:
    """Where an installer's time went, from its time-stamped log."""
    events: list[tuple[float, str]] = []
    for line in log.read_text(errors="replace").splitlines():
        if installer == "pip" and (m := _PIP_STAMP.match(line)):
            t = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S,%f").timestamp()
            events.append((t, m.group(2).strip()))
        elif installer == "uv" and (m := _UV_STAMP.match(line)):
            events.append((float(m.group(1)), m.group(2).strip()))
    if not events:
        return ["(no time-stamped lines)"]
    t0 = events[0][0]
    events = [(t - t0, msg) for t, msg in events]
    return _pip_phases(events, took) if installer == "pip" else _uv_phases(events)


def _pip_phases(events: list[tuple[float, str]], took: float) -> list[str]:
    """pip is sequential: each wait is the index's latency as pip sees it."""
    pages, metadata, bodies = [], [], []
    page_start: dict[str, float] = {}
    meta_start = 0.0
    installing = done = events[-1][0]
    for i, (t, msg) in enumerate(events):
        if msg.startswith("Getting page "):
            page_start[msg.split()[2]] = t
        elif msg.startswith("Fetched page "):
            pages.append(t - page_start.pop(msg.split()[2], t))
        elif msg.startswith("Obtaining dependency information"):
            meta_start = t
        elif re.match(r"Downloading \S+\.metadata ", msg):
            metadata.append(t - meta_start)
        elif re.match(r"Downloading \S+\.whl \(", msg) and i + 1 < len(events):
            bodies.append(events[i + 1][0] - t)  # headers in -> the next step
        elif msg.startswith("Installing collected packages"):
            installing = t
        elif msg.startswith("Successfully installed"):
            done = t
    return [
        f"pages waited for: {_ms(pages)}",
        f".metadata waited for: {_ms(metadata)}",
        f"wheel bodies (headers to next step): {_ms(bodies)}",
        f"resolve + download until {installing:.2f} s, then install {done - installing:.2f} s; "
        f"interpreter start and exit {took - done:.2f} s",
    ]


def _uv_phases(events: list[tuple[float, str]]) -> list[str]:
    """uv is concurrent: per project, page sent -> its file asked for -> its deps added."""
    page_sent: dict[str, float] = {}
    file_sent: dict[str, float] = {}
    deps: dict[str, float] = {}
    marks = []
    for t, msg in events:
        if msg.startswith(("DEBUG Sending fresh GET request for: ", "DEBUG Sending fresh HEAD")):
            url = msg.rsplit(" ", 1)[1]
            if url.endswith("/"):
                page_sent.setdefault(url.rstrip("/").rsplit("/", 1)[1], t)
            else:
                file_sent.setdefault(_project(url), t)
        elif msg.startswith("DEBUG Adding transitive dependency for "):
            deps.setdefault(msg.split()[5].split("==")[0].lower(), t)
        elif msg.startswith(("Resolved ", "Prepared ", "Installed ")):
            marks.append(f"{msg} (at {t:.2f} s)")
    pages = [file_sent[p] - t for p, t in page_sent.items() if p in file_sent]
    meta = [t - file_sent[p] for p, t in deps.items() if p in file_sent]
    return [
        f"page sent -> its file asked for: {_ms(pages)}",
        f"file (metadata) asked for -> dependencies added: {_ms(meta)}",
        *marks,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m netsim.bench_install")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rtt", type=float, default=40.0, help="ms between site and servers")
    parser.add_argument("--seed-rate", type=float, default=25.0, help="MiB/s up per seed")
    parser.add_argument("--index-rate", type=float, default=50.0, help="MiB/s up, pypiserver")
    parser.add_argument("--installers", default="pip,uv")
    parser.add_argument("--indexes", default="pypiserver,proxpi,cache", help="which to measure")
    parser.add_argument(
        "--pypiserver",
        default="auto",
        choices=("auto", "wsgiref"),
        help="pypiserver's server: auto = waitress (installed for the bench), or wsgiref",
    )
    parser.add_argument("--cache-args", default="", help="extra `p2pkg cache` flags")
    parser.add_argument("--trace", action="store_true", help="time-stamped logs + summary")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    ensure_references()
    bench = Bench(args)
    ok = False
    try:
        bench.build()
        with NetBed(PREFIX) as bed:
            bench.network(bed)
            installers = args.installers.split(",")
            for rep in range(args.reps):
                print(f"rep {rep + 1}/{args.reps}", flush=True)
                for installer in installers:
                    bench.rep(installer)
            if args.trace:
                print("trace (not in the medians)")
                for installer in installers:
                    bench.rep(installer, trace=True)
        result = bench.report()
        print(json.dumps(result))
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
        elif not ok:
            print(f"logs kept in {bench.logs}", file=sys.stderr)


if __name__ == "__main__":
    main()
