"""A master, seeds and a cache as real processes: a new root is installable in seconds, unasked."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from netsim.testbed import Testbed, p2pkg_cmd, status, wait_synced
from p2pkg.core.root import format_pubkey
from p2pkg.testing.archives import build_wheel
from tests.helpers import wait_until
from tests.netutil import make_master

pytestmark = [pytest.mark.net, pytest.mark.slow]

ISOLATED_PIP = ["--isolated", "--no-cache-dir", "--disable-pip-version-check"]


def _pip_downloads(cache_url: str, spec: str, out: Path) -> bool:
    """Whether ``pip download SPEC`` through the cache succeeds (into ``out``)."""
    cmd = [sys.executable, "-m", "pip", *ISOLATED_PIP, "download", "--no-deps", "-d", str(out)]
    cmd += ["--index-url", f"{cache_url}/simple/", spec]
    return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0


def test_a_new_root_reaches_seeds_and_a_cache_by_push_with_no_notify_list(tmp_path: Path) -> None:
    origin = make_master(tmp_path, big_size=100_000)
    key = tmp_path / "master.key"
    key.write_bytes(
        origin.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with Testbed() as bed:
        _, master_url = bed.master(origin.store, key)
        # Polls an hour apart: only pushes can bring the new root in time.
        seeds = [
            bed.seed(tmp_path / f"seed{i}", origin.pub, [master_url], "--interval", "1h")[1]
            for i in range(3)
        ]
        for url in seeds:
            wait_synced(url, 1)
        _, cache_url = bed.cache(tmp_path / "cache", origin.pub, seeds, "--refresh", "1h")
        wait_until(
            lambda: status(master_url).get("subscribers") == 3, what="the seeds to subscribe"
        )
        wait_until(
            lambda: all(status(u).get("subscribers") == 1 for u in seeds),
            what="the cache to subscribe to every seed",
        )
        dist = tmp_path / "new"
        dist.mkdir()
        fresh = build_wheel(dist, "fresh", "1.0")
        started = time.monotonic()
        subprocess.run(
            p2pkg_cmd("publish", "--store", str(origin.store), "--key", str(key), str(fresh)),
            check=True,
            capture_output=True,
            timeout=60,
        )
        for url in seeds:
            wait_synced(url, 2, timeout=10)
        seeds_took = time.monotonic() - started
        out = tmp_path / "dl"

        wait_until(
            lambda: _pip_downloads(cache_url, "fresh==1.0", out),
            timeout=15,
            step=0.2,
            what="fresh to install through the cache",
        )
        took = time.monotonic() - started
        assert (out / fresh.name).read_bytes() == fresh.read_bytes()
        assert seeds_took < 5 and took < 10, (seeds_took, took)


def test_an_upload_upstream_is_installable_through_a_cache_fed_by_five_seeds(
    tmp_path: Path,
) -> None:
    """Upstream index -> master (polling it) -> 5 seeds -> cache -> pip: no --notify anywhere."""
    from netsim.upstream_index import pypiserver
    from p2pkg.io.keys import generate_key_file

    packages = tmp_path / "packages"
    packages.mkdir()
    build_wheel(packages, "base", "1.0")
    key = tmp_path / "master.key"
    pub = format_pubkey(generate_key_file(key))
    store = tmp_path / "store"
    with pypiserver(packages) as index, Testbed() as bed:
        _, master_url = bed.master(
            store,
            key,
            "--from-index",
            f"{index}/simple/",
            "--project",
            "base",
            "--project",
            "fresh",
            "--every",
            "1s",
        )
        wait_until(lambda: status(master_url).get("root_version"), timeout=30, what="a first root")
        seeds = [
            bed.seed(tmp_path / f"seed{i}", pub, [master_url], "--interval", "1h")[1]
            for i in range(5)
        ]
        version = status(master_url)["root_version"]
        for url in seeds:
            wait_synced(url, version)
        _, cache_url = bed.cache(tmp_path / "cache", pub, seeds, "--refresh", "1h")
        wait_until(
            lambda: all(status(u).get("subscribers") == 1 for u in seeds),
            what="the cache to subscribe to every seed",
        )
        fresh = build_wheel(tmp_path, "fresh", "1.0")
        started = time.monotonic()
        (packages / fresh.name).write_bytes(fresh.read_bytes())  # the upload upstream
        out = tmp_path / "dl"

        wait_until(
            lambda: _pip_downloads(cache_url, "fresh==1.0", out),
            timeout=30,
            step=0.2,
            what="fresh to install through the cache",
        )
        took = time.monotonic() - started
    assert (out / fresh.name).read_bytes() == fresh.read_bytes()
    assert took < 15, took
