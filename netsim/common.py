"""Shared helpers for benchmarks: timing, medians, references installed on demand."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def ensure_debian_tool(binary: str, package: str) -> str | None:
    """Path of ``binary``, installing Debian ``package`` when we are root."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", package], check=False, env=env, capture_output=True
    )
    return shutil.which(binary)


def timed(
    fn: Callable[[], object], reps: int, setup: Callable[[], object] | None = None
) -> list[float]:
    """Wall-clock seconds of ``fn`` over ``reps`` runs (``setup`` untimed before each)."""
    out = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def warm(paths: list[Path]) -> None:
    """Read files once so that every contender starts from the page cache."""
    for p in paths:
        with p.open("rb") as fh:
            while fh.read(1 << 20):
                pass


def bench_dir(name: str) -> Path:
    base = Path(os.environ.get("P2PKG_BENCH_DIR", "bench-out"))
    d = base / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d
