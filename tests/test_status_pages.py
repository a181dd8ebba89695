"""The status page at ``/`` of every role: readable, self-contained, and seen in a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest

from p2pkg.roles.cache import Cache, CacheConfig
from p2pkg.roles.master import Master, MasterConfig
from p2pkg.roles.seed import SeedConfig, Seeder
from p2pkg.roles.serve import StoreServer
from p2pkg.roles.status_page import human_bytes, human_duration, human_until
from tests.browser import headless_chromium
from tests.helpers import await_until
from tests.installers import ISOLATED
from tests.netutil import make_master, services

pytestmark = pytest.mark.net


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_human_units() -> None:
    assert human_bytes(999) == "999 B" and human_bytes(1_234_567) == "1.2 MB"
    assert human_duration(42) == "42 s" and human_duration(7200) == "2.0 h"
    assert human_until(-60) == "expired 60 s ago" and human_until(86400 * 30) == "in 30.0 days"


def _readable(page: str) -> None:
    """What an operator must never see, and what every page has."""
    assert '<meta http-equiv="refresh"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no external assets
    assert "<script" not in page
    for raw in ("None", "['http", "THIS-HOST", "{'"):
        assert raw not in page, raw


@pytest.mark.anyio
async def test_every_role_shows_a_readable_status_page(tmp_path: Path) -> None:
    origin = make_master(tmp_path, big_size=100_000)
    async with services() as svc:
        master = Master(origin.store, [origin.key], config=MasterConfig(watch=0.5))
        master_url = await svc.start(master.run)
        serve_url = await svc.start(StoreServer(origin.store).run)
        seeder = Seeder(tmp_path / "seed", origin.pins, [master_url], config=SeedConfig(interval=1))
        seed_url = await svc.start(seeder.run)
        await await_until(lambda: seeder.freshness.synced_version == 1, timeout=20, what="sync")
        cache = Cache(tmp_path / "cache", origin.pins, [seed_url], config=CacheConfig(read_ahead=0))
        cache_url = await svc.start(cache.run)
        await anyio.to_thread.run_sync(_get, f"{cache_url}/simple/small/")

        for url, title, ids in [
            (master_url, "p2pkg master", ["root-version", "root-expires", "subscribers"]),
            (serve_url, "p2pkg serve", ["root-version", "downloads-today", "connections"]),
            (seed_url, "p2pkg seed", ["root-version", "lag", "synced", "peers"]),
            (cache_url, "p2pkg cache", ["root-version", "root-checked", "hit-ratio", "peers"]),
        ]:
            code, page = await anyio.to_thread.run_sync(_get, url + "/")
            assert code == 200 and f"<h1>{title}</h1>" in page
            _readable(page)
            for element in ids:
                assert f'id="{element}"' in page, (title, element)
        code, page = await anyio.to_thread.run_sync(_get, cache_url + "/")
        host = cache_url.removeprefix("http://")
        assert f"pip install --index-url http://{host}/simple/ PACKAGE" in page
        assert "in 30.0 days" in page or "in 29.9 days" in page  # the root's expiry, human
        assert seed_url in page and "(current)" in page  # the peer, and its root's freshness
        code, _ = await anyio.to_thread.run_sync(_get, seed_url + "/nothing")
        assert code == 404
    await seeder.close()


def _figure(web: object, element: str) -> str:
    from selenium.webdriver.common.by import By

    return str(web.find_element(By.CSS_SELECTOR, f"#{element} .v").text)  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_cache_status_page_in_a_real_browser_changes_after_an_install(
    tmp_path: Path,
) -> None:
    origin = make_master(tmp_path, big_size=2_000_000)
    async with services() as svc:
        peer = (await svc.server(origin.store)).url
        cache = Cache(tmp_path / "cache", origin.pins, [peer], config=CacheConfig(read_ahead=0))
        url = await svc.start(cache.run)
        await await_until(lambda: cache.session.trusted is not None, timeout=10, what="a root")

        def browse_install_browse() -> None:
            with headless_chromium() as web:
                web.get(url + "/")
                assert web.title == "p2pkg cache"
                assert _figure(web, "root-version") == "1"
                assert _figure(web, "hit-ratio") == "—"
                assert _figure(web, "bytes-fetched") == "0 B"
                assert _figure(web, "downloads-today") == "0"

                venv = tmp_path / "venv"
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
                res = subprocess.run(
                    [str(venv / "bin" / "python"), "-m", "pip", "--isolated", "--no-cache-dir",
                     "install", "--index-url", f"{url}/simple/", "big", "small"],
                    capture_output=True, text=True, env=ISOLATED, check=False,
                )  # fmt: skip
                assert res.returncode == 0, res.stdout + res.stderr

                web.refresh()
                assert _figure(web, "bytes-fetched").endswith("MB")  # 2 MB from the peer
                assert _figure(web, "downloads-today") == "2"
                assert _figure(web, "held") == "2 files"
                shot = tmp_path / "status-cache.png"
                web.save_screenshot(str(shot))
                assert shot.stat().st_size > 10_000
                artifacts = os.environ.get("P2PKG_TEST_ARTIFACTS")
                if artifacts:  # CI keeps it; docs/status-cache.png is made this way
                    Path(artifacts).mkdir(parents=True, exist_ok=True)
                    shutil.copy(shot, Path(artifacts) / shot.name)

        await anyio.to_thread.run_sync(browse_install_browse)


@pytest.mark.anyio
async def test_the_master_page_shows_how_far_behind_each_listed_mirror_is(tmp_path: Path) -> None:
    from p2pkg.io.store import Store
    from p2pkg.roles.publish import Edits, publish

    origin = make_master(tmp_path, big_size=10_000)
    stale = tmp_path / "stale"
    shutil.copytree(origin.store, stale)  # a mirror stuck at version 1
    async with services() as svc:
        stale_url = await svc.start(StoreServer(stale).run)
        with Store.open(origin.store) as st:  # version 2 lists it (and one that is down)
            publish(st, [origin.key], [], edits=Edits(mirrors=[stale_url, "http://127.0.0.1:9"]))
        master = Master(origin.store, [origin.key], config=MasterConfig(mirror_check=0.2))
        url = await svc.start(master.run)
        await await_until(lambda: len(master.state.mirrors) == 2, timeout=10, what="checked")
        code, page = await anyio.to_thread.run_sync(_get, url + "/")
        assert code == 200 and 'id="mirrors"' in page
        assert "1 version behind" in page and "no answer" in page
        _readable(page)
