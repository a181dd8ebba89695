"""Download statistics over real seeds and a cache, summed by the master."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import anyio
import pytest

from p2pkg.io.store import Store
from p2pkg.roles.cache import Cache
from p2pkg.roles.publish import Edits, publish
from p2pkg.roles.seed import SeedConfig, Seeder
from p2pkg.roles.session import Session
from p2pkg.roles.stats import collect_stats

from .netutil import Master, make_master, services


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=300_000)


def _get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as resp:
        return resp.read()  # type: ignore[no-any-return]


@pytest.mark.anyio
@pytest.mark.net
async def test_stats_sum_downloads_from_two_seeds_and_a_cache(
    master: Master, tmp_path: Path
) -> None:
    async with services() as svc:
        upstream = await svc.server(master.store)
        seeds = []
        for i in range(2):
            synced = anyio.Event()
            seed = Seeder(
                tmp_path / f"seed{i}",
                master.pins,
                [upstream.url],
                config=SeedConfig(subscribe=False),
                on_synced=synced.set,
            )
            seeds.append((seed, await svc.start(seed.run)))
            with anyio.fail_after(20):
                await synced.wait()
        cache = Cache(tmp_path / "cache", master.pins, [seeds[0][1]])
        cache_url = await svc.start(cache.run)
        try:
            with Store.open(master.store) as st:
                publish(
                    st, [master.key], [], edits=Edits(mirrors=[u for _, u in seeds] + [cache_url])
                )
            # Downloads: small from seed 0 twice, big from seed 1 once, small via the cache twice.
            for url, spec, times in ((seeds[0][1], "small", 2), (seeds[1][1], "big", 1)):
                for n in range(times):
                    session = Session(master.pins, [url], learn_mirrors=False)
                    try:
                        dest = tmp_path / f"dl-{spec}-{n}"
                        dest.mkdir()
                        await session.fetch(spec, dest)
                    finally:
                        session.close()
            page = json.loads(
                await anyio.to_thread.run_sync(
                    lambda: (
                        urllib.request.build_opener(urllib.request.ProxyHandler({}))
                        .open(
                            urllib.request.Request(
                                f"{cache_url}/simple/small/",
                                headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                            ),
                            timeout=30,
                        )
                        .read()
                    )
                )
            )
            (whl,) = [f["url"] for f in page["files"] if f["filename"].endswith(".whl")]
            file_url = urljoin(f"{cache_url}/simple/small/", whl)
            for _ in range(2):
                await anyio.to_thread.run_sync(_get, file_url)
            result, errors = await collect_stats(master.store, since="2000-01-01")
        finally:
            for seed, _ in seeds:
                await seed.close()
    assert errors == {}
    small = master.small.name
    by = result.by_source
    assert by[seeds[0][1]] >= 2 and by[seeds[1][1]] >= 1  # sdist + wheel may both count
    assert by[cache_url] == 2
    assert result.by_file[small] >= 4 and result.by_file[master.big.name] == 1
    assert result.by_project["small"] == result.by_file[small] + result.by_file.get(
        "small-1.0.tar.gz", 0
    )
    assert result.outliers == []
