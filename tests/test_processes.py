"""Real processes: peers and clients killed mid-transfer, many clients, seeds following."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from netsim import testbed
from p2pkg.core.objects import FileManifest, decode_as
from p2pkg.io.http import wire
from p2pkg.io.http.client import PeerClient
from p2pkg.io.store import Store
from p2pkg.roles.session import Session

from .helpers import await_until, wait_until
from .netutil import Master, make_master, serve_process

pytestmark = [pytest.mark.slow, pytest.mark.net]
MiB = 1 << 20


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=24 * MiB)


def _fetch_cmd(master: Master, urls: list[str], dest: Path) -> list[str]:
    cmd = [sys.executable, "-m", "p2pkg.cli", "fetch", "big", "--trust", master.pub]
    for u in urls:
        cmd += ["--peer", u]
    return [*cmd, "--dest", str(dest), "--json"]


def test_killing_one_of_three_peers_mid_transfer(master: Master, tmp_path: Path) -> None:
    # Each peer capped at 8 MB/s: the 24 MiB file takes about a second.
    with (
        serve_process(master.store, "--rate", "8MB") as (_p1, u1),
        serve_process(master.store, "--rate", "8MB") as (p2, u2),
        serve_process(master.store, "--rate", "8MB") as (_p3, u3),
    ):
        proc = subprocess.Popen(
            _fetch_cmd(master, [u1, u2, u3], tmp_path / "out"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_until(  # a megabyte of its third (8 MiB) sent: peer 2 is mid-transfer
            lambda: testbed.status(u2)["bytes_sent"] >= MiB, step=0.02, what="peer 2 to be sending"
        )
        p2.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        result = json.loads(out)
        assert (tmp_path / "out" / master.big.name).read_bytes() == master.big.read_bytes()
        assert result["peers"][u1] > 0 and result["peers"][u3] > 0


def _verified_bytes(partial: Path, manifest: FileManifest) -> int:
    data = partial.read_bytes()
    return sum(
        c.length
        for c, off in zip(manifest.chunks, manifest.chunk_offsets(), strict=True)
        if blake3.blake3(data[off : off + c.length]).digest() == c.id
    )


def test_client_killed_mid_transfer_resumes(master: Master, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Store.open(master.store) as st:
        manifest = next(
            decode_as(data, FileManifest)
            for oid, kind, _ in st.iter_objects()
            if kind == 2 and (data := st.get_object(oid)) and b"big-1.0" in data
        )
    with serve_process(master.store, "--rate", "10MB") as (_, url):
        cmd = _fetch_cmd(master, [url], out)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial = out / f".{manifest.blake3.hex()}.p2pkg-partial"
        wait_until(  # kill once a good part has arrived
            lambda: partial.exists() and _verified_bytes(partial, manifest) > 8 * MiB,
            timeout=30,
            step=0.1,
            what="8 MiB verified in the partial file",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert not (out / master.big.name).exists(), "no destination file before verification"
        kept = _verified_bytes(partial, manifest)
        assert 0 < kept < manifest.size

        done = subprocess.run(cmd, capture_output=True, check=True, timeout=60)
        result = json.loads(done.stdout)
        assert (out / master.big.name).read_bytes() == master.big.read_bytes()
        # Resume: what was verified before the kill is reused, only the rest travels.
        assert result["bytes_from_local"] == kept
        assert result["bytes_from_network"] == manifest.size - kept


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_peer_under_200_concurrent_clients(master: Master) -> None:
    with serve_process(master.store, "--max-connections", "100") as (proc, url):
        before = _rss_kib(proc.pid)

        errors: list[str] = []

        async def one(client: PeerClient, i: int) -> int:
            path = wire.root_path() if i % 2 else f"{wire.PREFIX}/status"
            try:
                status, _, _ = await client.get_bytes(path, 1 << 20)
            except Exception as exc:  # a refused/reset connection is a failure here
                errors.append(repr(exc))
                return -1
            return status

        async def main() -> list[int]:
            clients = [PeerClient(url) for _ in range(200)]
            try:
                results = []
                for round_ in range(5):
                    results += await asyncio.gather(
                        *(one(c, i + round_) for i, c in enumerate(clients))
                    )
                return results
            finally:
                for c in clients:
                    c.close()

        statuses = asyncio.run(main())
        assert set(statuses) <= {200, 503}, errors[:3]
        assert statuses.count(200) >= len(statuses) // 2
        assert proc.poll() is None, "server still running"
        grown = _rss_kib(proc.pid) - before
        assert grown < 64 * 1024, f"server RSS grew by {grown} KiB"


def test_seeds_follow_the_master(master: Master, tmp_path: Path) -> None:
    from p2pkg.testing.archives import build_wheel

    from .netutil import spawn

    seed_cmd = [
        sys.executable,
        "-m",
        "p2pkg.cli",
        "seed",
        "--trust",
        master.pub,
        "--interval",
        "1s",
    ]
    with (
        serve_process(master.store) as (mproc, murl),
        spawn(
            [
                *seed_cmd,
                "--store",
                str(tmp_path / "s1"),
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                murl,
            ],
            r"on (http://\S+)",
        ) as (_, s1),
        spawn(
            [
                *seed_cmd,
                "--store",
                str(tmp_path / "s2"),
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                murl,
                "--upstream",
                s1,
                "--project",
                "small",
            ],
            r"on (http://\S+)",
        ) as (_, s2),
    ):

        async def status(url: str) -> dict[str, object]:
            c = PeerClient(url)
            try:
                _, body, _ = await c.get_bytes(wire.STATUS_PATH, 1 << 16)
            finally:
                c.close()
            return json.loads(body)  # type: ignore[no-any-return]

        async def wait_synced(url: str, version: int) -> dict[str, object]:
            async def synced() -> dict[str, object] | None:
                st = await status(url)
                return st if st["synced_version"] == version else None

            return await await_until(synced, timeout=30, what=f"{url} to sync version {version}")

        st1 = asyncio.run(wait_synced(s1, 1))
        st2 = asyncio.run(wait_synced(s2, 1))
        assert st1["files"] == 3 and st1["lag_versions"] == 0
        assert st2["files"] == 2 and st2["mirrors"] == ["small"]

        # A new release, pushed: the seeds sync without waiting for a poll.
        new = build_wheel(tmp_path, "big", "1.1", payload=100_000)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "p2pkg.cli",
                "publish",
                "--store",
                str(master.store),
                "--key",
                str(_keyfile(master, tmp_path)),
                "--notify",
                s1,
                str(new),
            ],
            check=True,
            capture_output=True,
        )
        asyncio.run(wait_synced(s1, 2))

        # The master goes away: the seeds keep serving what they hold.
        mproc.send_signal(signal.SIGKILL)
        mproc.wait()

        async def fetch_from_seeds() -> None:
            f = Session(master.pins, [s1, s2])
            try:
                path, _ = await f.fetch("big==1.1", tmp_path / "out")
                assert path.read_bytes() == new.read_bytes()
                path, _ = await f.fetch("small", tmp_path / "out")
                assert path.read_bytes() == master.small.read_bytes()
            finally:
                f.close()

        asyncio.run(fetch_from_seeds())

        # The next poll fails against the dead master; s1 reports it, still serving v2.
        def reported() -> dict[str, object] | None:
            st = asyncio.run(status(s1))
            return st if st["last_error"] else None

        st = wait_until(reported, timeout=15, step=0.1, what="s1 to report the dead master")
        assert st["last_error"] and st["synced_version"] == 2


def _keyfile(master: Master, tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "master.key"
    if not path.exists():
        path.write_bytes(
            master.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    return path
