from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings

from .helpers import offline_unless_net

# Network hygiene: mDNS in tests (and every process they start) stays on loopback.
os.environ["P2PKG_LAN_INTERFACE"] = "127.0.0.1"

settings.register_profile(
    "default", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("ci", deadline=None, max_examples=400)
settings.load_profile("default")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    d = tmp_path / "dist"
    d.mkdir()
    return d


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


MakeWheel = Callable[..., Path]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---------------------------------------------------------------------- the `net` marker, enforced
#
# A test that opens an IP socket or starts a process must say so with
# `@pytest.mark.net` (module: `pytestmark`), so `pytest -m "not net"` is the
# pure suite and stays fast. Without the marker, setup, call and teardown run
# under `helpers.offline()`: AF_INET/AF_INET6 sockets and new processes raise
# UnmarkedNetError (AF_UNIX pairs stay allowed: the event loop's self-pipe).


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from offline_unless_net(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from offline_unless_net(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from offline_unless_net(item))
