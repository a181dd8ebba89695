"""kill -9 in the middle of a publish leaves the previous root valid and verify clean.

The publisher is a real subprocess killed with SIGKILL at two moments found by
watching the store: while archives are being copied into ``tmp/`` (before
anything is indexed), and once archives start being renamed into ``files/``
(the step right before the index transaction commits).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pkg.io.keys import generate_key_file
from p2pkg.io.store import Store
from p2pkg.roles.namespace import open_store_namespace
from p2pkg.roles.verify import verify_store
from p2pkg.testing.archives import build_wheel

from .helpers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.net]


def _kill_when(cmd: list[str], condition: Callable[[], bool], timeout: float = 30) -> bool:
    """Start ``cmd``, SIGKILL it as soon as ``condition()``; True if it was killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def moment() -> str | None:
        if proc.poll() is not None:
            return "exited"
        return "kill" if condition() else None

    try:
        try:  # polled every half millisecond: the window to hit is short
            seen = wait_until(moment, timeout=timeout, step=0.0005, what="the moment to kill")
        except TimeoutError:
            return False
        if seen == "exited":
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _files_on_disk(store: Path) -> int:
    return sum(1 for p in (store / "files").rglob("*") if p.is_file())


def test_kill_9_mid_publish(tmp_path: Path) -> None:
    key = tmp_path / "k"
    generate_key_file(key)
    store = tmp_path / "store"
    first = tmp_path / "first"
    first.mkdir()
    build_wheel(first, "base", "1.0", payload=10_000)
    cmd = [sys.executable, "-m", "p2pkg.cli", "publish", "--store", str(store), "--key", str(key)]
    subprocess.run([*cmd, str(first)], check=True, capture_output=True)

    batch = tmp_path / "batch"
    batch.mkdir()
    for i in range(150):
        build_wheel(batch, f"proj-{i}", "1.0", payload=300_000)
    tmp = store / "tmp"

    moments = {
        "while copying into tmp/": lambda: sum(1 for _ in tmp.iterdir()) >= 3,
        "while renaming into files/": lambda: _files_on_disk(store) > 1,
    }
    killed = 0
    for moment, condition in moments.items():
        killed += _kill_when([*cmd, str(batch)], condition)
        with Store.open(store) as st:
            report = verify_store(st)
            assert report.ok, f"after kill {moment}: {report.problems}"
            ns = open_store_namespace(st)
            assert ns.project("base") is not None
            if ns.trusted.version == 1:
                assert ns.project("proj-0") is None, "index names files of an uncommitted publish"
    assert killed >= 1, "no kill landed mid-publish; the batch is too small for this machine"

    # A publish after the crashes completes and cleans up what they left.
    subprocess.run([*cmd, str(batch)], check=True, capture_output=True)
    with Store.open(store) as st:
        ns = open_store_namespace(st)
        assert ns.project("proj-149") is not None
        report = verify_store(st)
        assert report.ok, report.problems
        assert report.counts["orphans"] == 0
        assert not list(tmp.iterdir())
