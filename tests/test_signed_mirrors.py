"""The signed mirror list: the master vouches for mirrors in the root; clients learn them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from p2pkg.errors import PublishError
from p2pkg.io.store import Store
from p2pkg.roles.cache import Cache
from p2pkg.roles.freshness import mirror_freshness
from p2pkg.roles.publish import Edits, publish
from p2pkg.roles.session import Session
from p2pkg.testing.archives import build_wheel

from .netutil import Master, make_master, services


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=200_000)


def _set_mirrors(master: Master, urls: list[str]) -> None:
    with Store.open(master.store) as st:
        publish(st, [master.key], [], edits=Edits(mirrors=urls))


@pytest.mark.anyio
@pytest.mark.net
async def test_a_client_that_knows_one_peer_learns_the_mirrors_from_the_root(
    master: Master, tmp_path: Path
) -> None:
    async with services() as svc:
        # The one peer the client knows serves roots and objects, no archives.
        known = await svc.server(master.store, mode="absent")
        mirror = await svc.server(master.store)
        _set_mirrors(master, [mirror.url])
        session = Session(master.pins, [known.url])
        try:
            dest = tmp_path / "dl"
            dest.mkdir()
            await session.fetch("small", dest)
            assert {p.name for p in dest.iterdir()} == {master.small.name}
            assert mirror.url in [p.url for p in session.peers]
            assert mirror.stats.bytes_sent > 0
        finally:
            session.close()


def test_mirror_urls_are_checked_and_an_unchanged_list_writes_no_root(master: Master) -> None:
    with Store.open(master.store) as st:
        for bad in ("ftp://x", "http://", "http://u:p@h:1", "http://h:1/?q", "http://h :1"):
            with pytest.raises(PublishError, match="mirror URL"):
                publish(st, [master.key], [], edits=Edits(mirrors=[bad]))
        with pytest.raises(PublishError, match="twice"):
            publish(st, [master.key], [], edits=Edits(mirrors=["http://a:1", "http://a:1"]))
        first = publish(st, [master.key], [], edits=Edits(mirrors=["http://a:1"]))
        again = publish(st, [master.key], [], edits=Edits(mirrors=["http://a:1"]))
        assert first.changed and not again.changed and again.version == first.version


@pytest.mark.net  # runs the CLI in subprocesses
def test_cli_mirrors_add_remove_list(master: Master, tmp_path: Path) -> None:
    key = tmp_path / "master.key"
    key.write_bytes(
        master.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cli = [sys.executable, "-m", "p2pkg.cli", "mirrors"]
    store = ["--store", str(master.store)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args], check=False, capture_output=True, text=True, timeout=60
        )

    assert run("add", "http://a:1", "http://b:2/", *store, "--key", str(key)).returncode == 0
    listed = run("list", *store, "--trust", master.pub)
    assert listed.stdout.split() == ["http://a:1", "http://b:2"]
    gone = run("remove", "http://zz:9", *store, "--key", str(key))
    assert gone.returncode == 5 and "not in the mirror list" in gone.stderr
    bad = run("add", "ftp://x", *store, "--key", str(key))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert run("remove", "http://a:1", *store, "--key", str(key)).returncode == 0
    assert run("list", *store).stdout.split() == ["http://b:2"]


@pytest.mark.anyio
@pytest.mark.net
async def test_mirrors_status_reports_a_stale_mirror_behind_for_what_changed_since(
    master: Master, tmp_path: Path
) -> None:
    stale_store = tmp_path / "stale"
    shutil.copytree(master.store, stale_store)  # a seed that stopped syncing at version 1
    build_wheel(master.dist, "small", "2.0")
    build_wheel(master.dist, "fresh", "1.0")
    with Store.open(master.store) as st:
        publish(st, [master.key], [master.dist])
    async with services() as svc:
        stale = await svc.server(stale_store)
        current = await svc.server(master.store)
        _set_mirrors(master, [stale.url, current.url])  # version 3
        newest, report = await mirror_freshness(
            master.pins, [current.url], ["small", "big", "fresh", "nope"]
        )
        # A cache's status page shows its peers' roots the same way.
        cache = Cache(tmp_path / "cache", master.pins, [stale.url, current.url])
        await svc.start(cache.run)
        await cache.primary.trusted()
        roots = cache.status()["peer_roots"]
        assert roots[stale.url] == {"root_version": 1, "versions_behind": 2}
        assert roots[current.url] == {"root_version": 3, "versions_behind": 0}
    assert newest.version == 3
    by_url = {m.url: m for m in report}
    assert set(by_url) == {stale.url, current.url}  # the stale one learned from the root
    up = by_url[current.url]
    assert (up.version, up.versions_behind) == (3, 0)
    assert up.projects == {"big": "fresh", "fresh": "fresh", "nope": "absent", "small": "fresh"}
    old = by_url[stale.url]
    assert (old.version, old.versions_behind) == (1, 2)
    assert old.lag_seconds is not None and old.lag_seconds >= 0
    assert old.projects == {"big": "fresh", "fresh": "missing", "nope": "absent", "small": "behind"}
