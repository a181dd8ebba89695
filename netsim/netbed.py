"""Real links for benchmarks: network namespaces, shaped veths, a delay proxy.

A :class:`NetBed` makes a private network: one *hub* namespace holding a
bridge, and one namespace per :meth:`NetBed.host`, joined to the bridge by
a veth pair and given ``10.99.0.N/24``. Bandwidth is shaped with ``tc tbf``
on the veth's egress: ``up`` on the host's end (what it sends), ``down`` on
the hub's end (what it receives). Everything — processes, namespaces and
links — is removed by :meth:`NetBed.close` (the context manager, and an
``atexit`` hook for Ctrl-C).

This kernel has no netem, so latency is added in user space: the
:func:`serve_delayed` proxy (``python -m netsim.netbed proxy ...``, run in
the server's namespace by :meth:`Host.delayed`) listens on the host's
address and relays each connection to a local server, holding every byte
``delay`` seconds in each direction (RTT += 2 × delay). It can also make a
server misbehave: ``busy`` answers that fraction of connections ``503`` with
``Retry-After: 1``; ``stall_after`` stops forwarding responses for good once
that many response bytes went through (a peer that stalls mid-transfer).

What the proxy does not model: the client's TCP connection ends at the
proxy, so its congestion window and slow start see the local round trip,
not the added one; request/response latency (what pipelining must hide) is
modelled, TCP's own ramp-up on a long fat link is not. Shaping happens on
the veth, after the proxy, so the bytes on the wire are rate-limited as
the token bucket says.

tbf parameters: ``burst`` is a fortieth of a second at the rate (at least
64 KiB: the kernel needs ≥ rate/HZ, and a TSO segment is 64 KiB), the queue
holds 50 ms at the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBNET = "10.99.0"


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")


def _shape(ns: str, dev: str, rate: float) -> None:
    burst = max(64 * 1024, int(rate / 40))
    cmd = [
        "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
        "rate", f"{int(rate * 8)}bit", "burst", str(burst), "latency", "50ms",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")


@dataclass
class Host:
    """One namespace on the bench network."""

    bed: NetBed
    name: str  # the namespace
    addr: str
    index: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proxies: dict[int, tuple[list[str], subprocess.Popen[bytes]]] = field(default_factory=dict)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in this namespace; stopped by :meth:`NetBed.close`."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(cmd), **kw)
        self.procs.append(proc)
        return proc

    def run(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        check = kw.pop("check", False)
        return subprocess.run(self.argv(cmd), check=check, **kw)

    def wait_port(self, port: int, addr: str = "127.0.0.1", timeout: float = 15) -> None:
        """Until a TCP connect to ``addr:port`` from inside this namespace succeeds."""
        code = (
            "import socket,sys,time\n"
            f"end=time.monotonic()+{timeout}\n"
            "while time.monotonic()<end:\n"
            "    try:\n"
            f"        socket.create_connection(({addr!r},{port}),timeout=0.5).close()\n"
            "        sys.exit(0)\n"
            "    except OSError: time.sleep(0.02)\n"
            "sys.exit(1)\n"
        )
        if self.run([sys.executable, "-c", code]).returncode != 0:
            raise RuntimeError(f"nothing listening on {addr}:{port} in {self.name}")

    def delayed(
        self,
        port: int,
        delay: float,
        *,
        busy: float = 0.0,
        stall_after: int | None = None,
        public: int | None = None,
    ) -> int:
        """A delay proxy on this host's address relaying to ``127.0.0.1:port``; its port."""
        public = public or 20000 + port % 10000 + 100 * len(self.procs)
        cmd = [
            sys.executable, "-m", "netsim.netbed", "proxy",
            "--listen", f"{self.addr}:{public}", "--to", f"127.0.0.1:{port}",
            "--delay", str(delay), "--busy", str(busy), "--seed", str(self.index),
        ]  # fmt: skip
        if stall_after is not None:
            cmd += ["--stall-after", str(stall_after)]
        self.proxies[public] = (cmd, self.popen(cmd, cwd=Path.cwd()))
        self.wait_port(public, self.addr)
        return public

    def restart_proxy(self, public: int) -> None:
        """Start the proxy on ``public`` afresh (a staller stalls again mid-transfer)."""
        cmd, proc = self.proxies[public]
        proc.terminate()
        proc.wait(timeout=10)
        self.proxies[public] = (cmd, self.popen(cmd, cwd=Path.cwd()))
        self.wait_port(public, self.addr)


class NetBed:
    """A private bridged network of namespaces; :meth:`close` removes all of it."""

    def __init__(self, prefix: str = "p2b") -> None:
        if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
            raise RuntimeError("network namespaces need root and iproute2 (ip, tc)")
        self.prefix = prefix
        self.hub = f"{prefix}-hub"
        self.hosts: list[Host] = []
        self._closed = False
        self.close()  # leftovers of an interrupted run
        self._closed = False
        _ip("netns", "add", self.hub)
        _ip("link", "add", "br0", "type", "bridge", ns=self.hub)
        _ip("link", "set", "br0", "up", ns=self.hub)
        atexit.register(self.close)

    def host(self, name: str, *, up: float | None = None, down: float | None = None) -> Host:
        """A new namespace on the bridge; ``up``/``down`` in bytes/s (None: unshaped)."""
        index = len(self.hosts) + 1
        ns = f"{self.prefix}-{name}"
        inner, outer = f"{self.prefix}{index}h", f"{self.prefix}{index}b"
        _ip("netns", "add", ns)
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "netns", self.hub)
        _ip("link", "set", outer, "master", "br0", "up", ns=self.hub)
        addr = f"{SUBNET}.{index}"
        _ip("addr", "add", f"{addr}/24", "dev", inner, ns=ns)
        _ip("link", "set", inner, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        if up is not None:
            _shape(ns, inner, up)
        if down is not None:
            _shape(self.hub, outer, down)
        host = Host(self, ns, addr, index)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in getattr(self, "hosts", []):
            for proc in host.procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in host.procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        )
        for line in listed.stdout.splitlines():
            ns = line.split()[0] if line.strip() else ""
            if ns.startswith(f"{self.prefix}-"):
                # Processes still inside (an interrupted run) go with it.
                pids = subprocess.run(
                    ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
                ).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.hosts = []

    def __enter__(self) -> NetBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- the delay proxy

BUFFER = 8 << 20  # bytes held per direction: ≥ 25 MiB/s × 150 ms, and backpressure beyond
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 4\r\n"
BUSY += b"Connection: close\r\n\r\nbusy"


class _Stall:
    def __init__(self, after: int | None) -> None:
        self.left = after

    def take(self, n: int) -> int:
        """How many of ``n`` response bytes may go on (0 once stalled)."""
        if self.left is None:
            return n
        n = min(n, self.left)
        self.left -= n
        return n


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    stall: _Stall | None,
) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    held = 0
    room = asyncio.Event()
    room.set()

    async def read() -> None:
        nonlocal held
        while True:
            await room.wait()
            data = await reader.read(256 * 1024)
            if stall is not None and data:
                data = data[: stall.take(len(data))]
                if not data:
                    await asyncio.Event().wait()  # stalled: hold the connection, send nothing
            held += len(data)
            if held >= BUFFER:
                room.clear()
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                return

    async def write() -> None:
        nonlocal held
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            held -= len(data)
            if held < BUFFER:
                room.set()

    tasks = [asyncio.ensure_future(read()), asyncio.ensure_future(write())]
    try:
        await asyncio.gather(*tasks)
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        for t in tasks:
            t.cancel()


async def _proxy(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    stall = _Stall(args.stall_after) if args.stall_after is not None else None
    to_host, to_port = args.to.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if args.busy and rng.random() < args.busy:
                await reader.read(64 * 1024)  # the request head
                await asyncio.sleep(2 * args.delay)  # its way in and the answer's way out
                writer.write(BUSY)
                await writer.drain()
                return
            try:
                up_r, up_w = await asyncio.open_connection(to_host, int(to_port))
            except OSError:
                return
            await asyncio.gather(
                _pipe(reader, up_w, args.delay, None),
                _pipe(up_r, writer, args.delay, stall),
                return_exceptions=True,
            )
            up_w.close()
        finally:
            writer.close()

    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port), reuse_address=True)
    print(f"ready {port}", flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    async with server:
        await done.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m netsim.netbed")
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="relay TCP adding latency (and faults)")
    proxy.add_argument("--listen", required=True, help="ADDR:PORT")
    proxy.add_argument("--to", required=True, help="HOST:PORT")
    proxy.add_argument("--delay", type=float, default=0.0, help="seconds each way")
    proxy.add_argument("--busy", type=float, default=0.0, help="fraction of connections 503")
    proxy.add_argument("--stall-after", type=int, default=None, help="response bytes, then none")
    proxy.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    socket.setdefaulttimeout(None)
    asyncio.run(_proxy(args))


if __name__ == "__main__":
    main()
