"""Reference contenders for benchmarks: nginx, aria2c, curl, libtorrent, a rate-capping proxy.

Everything binds to 127.0.0.1 on free ports and is stopped by its context manager.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from netsim.common import ensure_debian_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}")


@contextmanager
def nginx(root: Path, count: int, work: Path) -> Iterator[list[str]]:
    """``count`` nginx server blocks serving ``root`` (sendfile on); yields their URLs."""
    binary = ensure_debian_tool("nginx", "nginx-light") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx is not available")
    ports = [free_port() for _ in range(count)]
    prefix = work / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    servers = "\n".join(
        f"server {{ listen 127.0.0.1:{p}; root {root.resolve()}; access_log off; }}" for p in ports
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            pid {prefix.resolve()}/nginx.pid;
            error_log {prefix.resolve()}/logs/error.log;
            events {{ worker_connections 1024; }}
            http {{
                sendfile on; tcp_nopush on; keepalive_requests 100000;
                default_type application/octet-stream;
                client_body_temp_path {prefix.resolve()}/tmp;
                {servers}
            }}
            """
        )
    )
    proc = subprocess.Popen(
        [binary, "-p", str(prefix.resolve()), "-c", str(conf.resolve()), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for p in ports:
            wait_port(p)
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def aria2c() -> str | None:
    return ensure_debian_tool("aria2c", "aria2")


@contextmanager
def rate_proxy(upstream_port: int, rate: float) -> Iterator[str]:
    """A TCP proxy in its own process capping upload to ``rate`` B/s (one shared bucket)."""
    port = free_port()
    code = textwrap.dedent(
        f"""
        import asyncio, time
        RATE = {rate!r}; BURST = 256 * 1024
        tokens = float(BURST); stamp = time.monotonic()
        async def take(n):
            global tokens, stamp
            now = time.monotonic()
            tokens = min(BURST, tokens + (now - stamp) * RATE); stamp = now
            tokens -= n
            if tokens < 0:
                await asyncio.sleep(-tokens / RATE)
        async def pipe(reader, writer, limited):
            try:
                while data := await reader.read(65536):
                    if limited:
                        await take(len(data))
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()
        async def handle(r, w):
            ur, uw = await asyncio.open_connection("127.0.0.1", {upstream_port})
            await asyncio.gather(pipe(r, uw, False), pipe(ur, w, True))
        async def main():
            srv = await asyncio.start_server(handle, "127.0.0.1", {port})
            await srv.serve_forever()
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------- libtorrent

_SEEDER = """
import sys, time, libtorrent as lt
torrent, save, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = lt.session({"listen_interfaces": f"127.0.0.1:{port}", "enable_dht": False,
                "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
                "allow_multiple_connections_per_ip": True, "enable_outgoing_utp": False,
                "enable_incoming_utp": False})
h = s.add_torrent({"ti": lt.torrent_info(torrent), "save_path": save,
                   "flags": lt.torrent_flags.seed_mode})
print("ready", flush=True)
time.sleep(3600)
"""

_LEECHER = """
import sys, time, libtorrent as lt
torrent, save, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split(",")]
s = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
                "enable_upnp": False, "enable_natpmp": False,
                "allow_multiple_connections_per_ip": True, "enable_outgoing_utp": False,
                "enable_incoming_utp": False})
h = s.add_torrent({"ti": lt.torrent_info(torrent), "save_path": save})
start = time.perf_counter()
for p in ports:
    h.connect_peer(("127.0.0.1", p))
deadline = start + 300
while not h.status().is_seeding and time.perf_counter() < deadline:
    time.sleep(0.005)
print(time.perf_counter() - start, flush=True)
"""


def have_libtorrent() -> bool:
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        return False
    return True


def make_torrent(path: Path, out: Path) -> Path:
    import libtorrent as lt

    fs = lt.file_storage()
    lt.add_files(fs, str(path))
    t = lt.create_torrent(fs, piece_size=1 << 20)
    lt.set_piece_hashes(t, str(path.parent))
    out.write_bytes(lt.bencode(t.generate()))
    return out


@contextmanager
def torrent_seeders(torrent: Path, save: Path, count: int) -> Iterator[list[int]]:
    ports = [free_port() for _ in range(count)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SEEDER, str(torrent), str(save), str(p)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()
        for p in ports:
            wait_port(p)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


def torrent_download(torrent: Path, dest: Path, ports: Sequence[int]) -> float:
    """Seconds for a fresh libtorrent session to download the torrent from ``ports``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    out = subprocess.run(
        [sys.executable, "-c", _LEECHER, str(torrent), str(dest), ",".join(map(str, ports))],
        capture_output=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.decode().strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
