"""Pushes to a seed: a burst of empty notifies costs one upstream poll, not one each."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from p2pkg.io.http import wire
from p2pkg.io.http.client import PeerClient
from p2pkg.roles.follow import POKE_BURST
from p2pkg.roles.seed import SeedConfig, Seeder

from .netutil import Master, make_master, services

pytestmark = [pytest.mark.anyio, pytest.mark.net]


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=100_000)


async def test_a_burst_of_empty_notifies_is_coalesced_into_one_poll(
    master: Master, tmp_path: Path
) -> None:
    synced = anyio.Event()
    async with services() as svc:
        upstream = await svc.server(master.store)
        # A long interval: every poll after the first sync comes from a push.
        seeder = Seeder(
            tmp_path / "seed",
            master.pins,
            [upstream.url],
            config=SeedConfig(interval=3600, subscribe=False),
            on_synced=synced.set,
        )
        try:
            url = await svc.start(seeder.run)
            with anyio.fail_after(20):
                await synced.wait()
            await anyio.sleep(0.2)  # let the first round's requests finish
            before = upstream.stats.requests
            client = PeerClient(url)
            try:
                for _ in range(50):
                    status, _ = await client.post(wire.NOTIFY_PATH, b"")
                    assert status == 202
            finally:
                client.close()
            await anyio.sleep(1.0)  # the rounds those pushes cause have run
            polls = upstream.stats.requests - before
            # A burst of POKE_BURST rounds, then one per second; each round asks
            # the upstream for its root once.
            assert 1 <= polls <= POKE_BURST + 2, polls
        finally:
            await seeder.close()
