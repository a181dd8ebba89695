"""``p2pkg publish --from-index``: mirroring a real pypiserver on 127.0.0.1.

The upstream is a pypiserver process over a packages directory the tests
write genuine wheels and sdists into; a counting proxy in front of it
(netsim/upstream_index.py) counts every upstream request, corrupts chosen
files and holds chosen requests so that a run can be interrupted. Every
mirroring run is a real ``p2pkg`` process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netsim.testbed import p2pkg_cmd
from netsim.upstream_index import CountingProxy, counting_proxy, pypiserver
from p2pkg.core.objects import Project
from p2pkg.io.keys import generate_key_file
from p2pkg.io.store import Store
from p2pkg.roles.mirror import STAGING_NAME
from p2pkg.roles.namespace import open_store_namespace
from p2pkg.testing.archives import build_sdist, build_wheel
from tests.helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.net]

RUN_TIMEOUT = 120  # seconds one mirroring run may take


@dataclass
class Mirror:
    packages: Path
    proxy: CountingProxy
    store: Path
    key: Path

    def command(self, *projects: str, extra: tuple[str, ...] = ()) -> list[str]:
        cmd = p2pkg_cmd(
            "publish",
            "--store",
            str(self.store),
            "--key",
            str(self.key),
            "--from-index",
            f"{self.proxy.url}/simple/",
            "--json",
            *extra,
        )
        for name in projects:
            cmd += ["--project", name]
        return cmd

    def run(self, *projects: str, extra: tuple[str, ...] = (), code: int = 0) -> dict[str, Any]:
        """One mirroring run (a process); its JSON document. Resets the request count first."""
        self.proxy.reset()
        res = subprocess.run(
            self.command(*projects, extra=extra),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert res.returncode == code, res.stdout + res.stderr
        out: dict[str, Any] = json.loads(res.stdout)
        out["stderr"] = res.stderr
        return out

    def project(self, name: str) -> tuple[Project, dict[str, bytes]]:
        """The namespace's project and each listed file's sha256."""
        with Store.open(self.store) as st:
            ns = open_store_namespace(st)
            proj = ns.require_project(name)
            return proj, {m.filename: m.sha256 for m in ns.manifests(proj)}


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    packages = tmp_path / "packages"
    packages.mkdir()
    key = tmp_path / "master.key"
    generate_key_file(key)
    with pypiserver(packages) as url, counting_proxy(url) as proxy:
        yield Mirror(packages, proxy, tmp_path / "store", key)


def sha256(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def test_mirror_two_projects_then_only_the_new_release(mirror: Mirror) -> None:
    a_whl = build_wheel(mirror.packages, "alpha", "1.0", payload=30_000)
    a_sdist = build_sdist(mirror.packages, "alpha", "1.0")
    b_whl = build_wheel(mirror.packages, "beta", "1.0", requires_python=">=3.8")

    first = mirror.run("alpha", "Beta")
    assert sorted(first["added"]) == sorted([a_whl.name, a_sdist.name, b_whl.name])
    assert (first["projects"], first["files_added"], first["refused"]) == (2, 3, [])
    assert first["upstream_requests"] == 5  # two pages, three files
    assert first["version"] == 1
    _, alpha_files = mirror.project("alpha")
    assert alpha_files == {a_whl.name: sha256(a_whl), a_sdist.name: sha256(a_sdist)}
    _, beta_files = mirror.project("beta")
    assert beta_files == {b_whl.name: sha256(b_whl)}

    new = build_wheel(mirror.packages, "alpha", "1.1", payload=30_000)
    second = mirror.run("alpha", "beta")
    assert second["added"] == [new.name]
    assert second["version"] == 2  # one new root for the batch
    # Only the new file travelled: the two pages and it, as the upstream counted.
    assert sorted(mirror.proxy.requests) == sorted(
        ["/simple/alpha/", "/simple/beta/", f"/packages/{new.name}"]
    )
    assert second["upstream_requests"] == 3
    assert second["files_added"] == 1

    third = mirror.run("alpha", "beta")
    assert (third["changed"], third["files_added"], third["upstream_requests"]) == (False, 0, 2)
    assert "version" not in third  # no root written


def test_a_file_whose_sha256_does_not_match_is_refused_and_reported(mirror: Mirror) -> None:
    good = build_wheel(mirror.packages, "gamma", "1.0")
    bad = build_wheel(mirror.packages, "gamma", "2.0")
    mirror.proxy.tamper.add(bad.name)

    out = mirror.run("gamma")
    assert out["added"] == [good.name]
    assert [r["filename"] for r in out["refused"]] == [bad.name]
    assert "sha256" in out["refused"][0]["reason"]
    assert f"refused: {bad.name}" in out["stderr"]
    _, files = mirror.project("gamma")
    assert set(files) == {good.name}  # never published
    assert not list((mirror.store / STAGING_NAME).glob("gamma*"))  # nor kept

    # The refusal is not remembered as done: once the bytes are right, they arrive.
    mirror.proxy.tamper.clear()
    again = mirror.run("gamma")
    assert again["added"] == [bad.name]
    assert mirror.project("gamma")[1] == {good.name: sha256(good), bad.name: sha256(bad)}


def test_a_file_removed_upstream_becomes_a_tombstone(mirror: Mirror) -> None:
    old = build_wheel(mirror.packages, "delta", "1.0")
    keep = build_wheel(mirror.packages, "delta", "2.0")
    mirror.run("delta")
    old.unlink()

    out = mirror.run("delta")
    assert out["removed"] == [old.name]
    assert out["upstream_requests"] == 1  # the page: nothing to download
    proj, files = mirror.project("delta")
    assert set(files) == {keep.name}
    assert [(t.filename, t.reason) for t in proj.tombstones] == [(old.name, "removed upstream")]

    # Published again upstream (same bytes): listed again, no longer a tombstone.
    build_wheel(mirror.packages, "delta", "1.0")
    back = mirror.run("delta")
    assert back["added"] == [old.name]
    proj, files = mirror.project("delta")
    assert set(files) == {old.name, keep.name} and proj.tombstones == ()


def test_an_interrupted_run_resumes_without_downloading_finished_files(mirror: Mirror) -> None:
    done = [build_wheel(mirror.packages, "eps", f"1.{i}", payload=100_000) for i in range(3)]
    stuck = build_wheel(mirror.packages, "zeta", "1.0")
    mirror.proxy.hold.add(stuck.name)
    staging = mirror.store / STAGING_NAME

    proc = subprocess.Popen(
        mirror.command("eps", "zeta"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(
            lambda: (
                {p.name for p in staging.glob("*.whl")} >= {p.name for p in done}
                and stuck.name in mirror.proxy.files()
            ),
            timeout=60,
            what="eps's files staged while zeta's is held",
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no cleanup of any kind
        proc.wait(timeout=10)
    with Store.open(mirror.store) as st:
        assert st.latest_root() is None  # nothing was published

    mirror.proxy.hold.clear()
    mirror.proxy.release()
    out = mirror.run("eps", "zeta")
    assert out["resumed"] == 3
    assert sorted(out["added"]) == sorted([*(p.name for p in done), stuck.name])
    assert mirror.proxy.files() == [stuck.name]  # the finished files were not fetched again
    assert {p.name for p in staging.iterdir()} == {"lock"}  # staging emptied once published
