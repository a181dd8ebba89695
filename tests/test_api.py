"""The library API, async and sync, against a real peer process."""

from __future__ import annotations

from pathlib import Path

import pytest

import p2pkg
from p2pkg.errors import NotFoundError

from .netutil import Master, make_master, serve_process

pytestmark = pytest.mark.net


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=2 << 20)


@pytest.mark.anyio
async def test_async_client(master: Master, tmp_path: Path) -> None:
    with serve_process(master.store) as (_, url):
        async with p2pkg.Client(trust=master.pub, peers=[url], store=tmp_path / "cache") as c:
            assert await c.refresh() == 1
            path = await c.fetch("big==1.0", tmp_path / "out")
            assert path.read_bytes() == master.big.read_bytes()
            sdist = await c.fetch("small", tmp_path / "out", filename="small-1.0.tar.gz")
            assert sdist.name == "small-1.0.tar.gz"
            with pytest.raises(NotFoundError):
                await c.fetch("nothing-here", tmp_path / "out")
        # The store remembered the root: rollback protection across runs.
        async with p2pkg.Client(trust=[master.pub], peers=[url], store=tmp_path / "cache") as c:
            assert c.session.trusted is not None  # loaded from the store, before any refresh


def test_sync_client(master: Master, tmp_path: Path) -> None:
    with (
        serve_process(master.store) as (_, url),
        p2pkg.SyncClient(trust=master.pub, peers=[url]) as c,
    ):
        path = c.fetch("small", tmp_path / "out")
        assert path.read_bytes() == master.small.read_bytes()
