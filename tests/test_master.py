"""The long-running master: subscriptions and pushes, re-signing, expiry once it stops."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from p2pkg.core.root import decode_signed_root
from p2pkg.io.http import wire
from p2pkg.io.http.client import PeerClient
from p2pkg.io.store import Store
from p2pkg.roles.master import Master, MasterConfig
from p2pkg.roles.publish import publish
from p2pkg.roles.seed import SeedConfig, Seeder
from p2pkg.roles.subscriptions import SubscriptionConfig, Subscriptions
from p2pkg.testing.archives import build_wheel

from .helpers import await_until
from .netutil import Master as MasterStore
from .netutil import make_master, serve_process, services

pytestmark = pytest.mark.net


@pytest.fixture
def origin(tmp_path: Path) -> MasterStore:
    return make_master(tmp_path, big_size=100_000)


@pytest.mark.anyio
async def test_seeds_subscribe_and_a_new_root_reaches_them_within_a_second(
    origin: MasterStore, tmp_path: Path
) -> None:
    """No --notify list and hour-long poll intervals: the push alone brings the root."""
    async with services() as svc:
        master = Master(origin.store, [origin.key], config=MasterConfig(watch=0.1))
        url = await svc.start(master.run)
        seeds, synced = [], []
        for i in range(3):
            event = anyio.Event()
            synced.append(event)
            seed = Seeder(
                tmp_path / f"seed{i}",
                origin.pins,
                [url],
                config=SeedConfig(interval=3600),
                on_synced=event.set,
            )
            seeds.append(seed)
            await svc.start(seed.run)
        try:
            with anyio.fail_after(20):
                for event in synced:
                    await event.wait()
            await await_until(
                lambda: len(master.subscriptions.live()) == 3, what="three subscriptions"
            )
            for i in range(3):
                synced[i] = anyio.Event()
                seeds[i].on_synced = synced[i].set
            # Another process publishes into the master's store (p2pkg publish).
            build_wheel(origin.dist, "fresh", "1.0")
            started = time.monotonic()
            with Store.open(origin.store) as st:
                version = publish(st, [origin.key], [origin.dist]).version
            with anyio.fail_after(10):
                for event in synced:
                    await event.wait()
            took = time.monotonic() - started
            assert all(s.freshness.synced_version == version for s in seeds)
            assert took < 5, took  # a push, not the 3,600 s poll
            assert master.state.last_push is not None
            assert set(master.state.last_push.values()) == {"ok"}
        finally:
            for seed in seeds:
                await seed.close()


@pytest.mark.anyio
async def test_a_running_master_keeps_the_root_valid_across_expiry_periods(
    origin: MasterStore,
) -> None:
    with Store.open(origin.store) as st:
        publish(st, [origin.key], [], expires_in=3)  # a short-lived root to keep alive
    async with services() as svc:
        master = Master(
            origin.store,
            [origin.key],
            config=MasterConfig(expires=3, resign_before=2, watch=0.1),
        )
        await svc.start(master.run)
        deadline = time.monotonic() + 7
        versions = set()
        while time.monotonic() < deadline:  # bounded: 7 s, more than two lifetimes
            data = master.store.latest_root()
            assert data is not None
            root = decode_signed_root(data)[1]
            assert root.expires > time.time(), "the served root expired"
            versions.add(root.version)
            await anyio.sleep(0.2)
        assert master.state.resigned >= 3 and len(versions) >= 3


def test_subscriptions_are_for_oneself_bounded_and_checked() -> None:
    subs = Subscriptions(SubscriptionConfig(per_address=2))
    assert subs.subscribe("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert subs.subscribe("::ffff:127.0.0.1", 8001) == "http://127.0.0.1:8001"
    assert subs.subscribe("::1", 8000) == "http://[::1]:8000"
    assert subs.subscribe("127.0.0.1", 8000) == "http://127.0.0.1:8000"  # a renewal
    with pytest.raises(ValueError, match="per address"):
        subs.subscribe("127.0.0.1", 8002)


@pytest.mark.anyio
async def test_the_subscribe_route_takes_a_port_and_subscribes_the_caller(
    origin: MasterStore,
) -> None:
    async with services() as svc:
        master = Master(origin.store, [origin.key])
        url = await svc.start(master.run)
        client = PeerClient(url)
        try:
            assert (await client.post(wire.SUBSCRIBE_PATH, b"http://evil:1"))[0] == 400
            assert (await client.post(wire.SUBSCRIBE_PATH, b"70000"))[0] == 400
            status, body = await client.post(wire.SUBSCRIBE_PATH, b"9")
            assert status == 202 and b'"ttl"' in body
            assert master.subscriptions.live() == ["http://127.0.0.1:9"]
        finally:
            client.close()


def test_a_stopped_master_s_root_expires_and_fetch_says_so_in_one_line(
    origin: MasterStore, tmp_path: Path
) -> None:
    with Store.open(origin.store) as st:
        publish(st, [origin.key], [], expires_in=1)  # what a master stopped long ago left
    time.sleep(1.5)
    with serve_process(origin.store) as (_, url):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "p2pkg.cli",
                "fetch",
                "small",
                "--trust",
                origin.pub,
                "--peer",
                url,
                "--dest",
                str(tmp_path / "dl"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "expired" in lines[0] and "Traceback" not in done.stderr
