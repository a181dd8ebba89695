"""Loopback testbed: start real p2pkg processes on 127.0.0.1 and always stop them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

URL_PATTERN = r"on (http://\S+)"


@contextmanager
def spawn(
    cmd: Sequence[str], pattern: str = URL_PATTERN, timeout: float = 20
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start ``cmd``; wait for ``pattern`` on its stderr; yield (process, first group).

    The process is terminated (then killed) on exit, whatever happens.
    """
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + timeout
        found = None
        line = b""
        while found is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            found = re.search(pattern, line.decode(errors="replace"))
        if found is None:
            raise RuntimeError(f"{' '.join(cmd[2:5])} did not start: {line!r}")
        yield proc, found.group(1)
    finally:
        stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` (then kill it after 10 s) unless it has ended; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def p2pkg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "p2pkg.cli", *args]


@contextmanager
def serve(store: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``p2pkg serve`` on a free loopback port."""
    cmd = p2pkg_cmd("serve", "--store", str(store), "--listen", "127.0.0.1:0", *args)
    with spawn(cmd) as started:
        yield started


@contextmanager
def master(store: Path, key: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``p2pkg master`` on a free loopback port (serves, re-signs, pushes new roots)."""
    cmd = p2pkg_cmd("master", "--store", str(store), "--key", str(key), "--listen", "127.0.0.1:0")
    with spawn([*cmd, *args]) as started:
        yield started


@contextmanager
def seed(
    store: Path, trust: str, upstreams: Sequence[str], *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``p2pkg seed`` on a free loopback port following ``upstreams``."""
    cmd = p2pkg_cmd("seed", "--store", str(store), "--listen", "127.0.0.1:0", "--trust", trust)
    for u in upstreams:
        cmd += ["--upstream", u]
    with spawn([*cmd, *args]) as started:
        yield started


@contextmanager
def cache(
    store: Path, trust: str, peers: Sequence[str], *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``p2pkg cache`` on a free loopback port using ``peers``."""
    cmd = p2pkg_cmd("cache", "--store", str(store), "--listen", "127.0.0.1:0", "--trust", trust)
    for u in peers:
        cmd += ["--peer", u]
    with spawn([*cmd, *args]) as started:
        yield started


def status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/p2pkg/v1/status", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def wait_synced(url: str, version: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = status(url)
        if last.get("synced_version") == version:
            return last
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not sync version {version}: {last}")


class Testbed(ExitStack):
    """An ExitStack that owns every process it starts."""

    __test__ = False  # not a pytest test class

    def serve(self, store: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
        return self.enter_context(serve(store, *args))

    def master(self, store: Path, key: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
        return self.enter_context(master(store, key, *args))

    def seed(
        self, store: Path, trust: str, upstreams: Sequence[str], *args: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        return self.enter_context(seed(store, trust, upstreams, *args))

    def cache(
        self, store: Path, trust: str, peers: Sequence[str], *args: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        return self.enter_context(cache(store, trust, peers, *args))
