from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings

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
