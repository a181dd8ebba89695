"""Provenance blobs travel like core metadata: seeds sync them, caches serve them."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.core.root import public_bytes
from p2pkg.io.store import Store
from p2pkg.roles.cache import Cache
from p2pkg.roles.publish import Edits, FileFacts, publish
from p2pkg.roles.seed import SeedConfig, Seeder
from p2pkg.roles.verify import verify_store
from p2pkg.testing.archives import build_wheel

from .netutil import services

pytestmark = [pytest.mark.anyio, pytest.mark.net]

PROVENANCE = json.dumps({"version": 1, "attestation_bundles": []}).encode()


def _get(url: str, accept: str | None = None) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with opener.open(request, timeout=30) as resp:
        return resp.read()  # type: ignore[no-any-return]


async def test_a_cache_fed_only_by_a_seed_serves_provenance(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    whl = build_wheel(dist, "demo", "1.0")
    master = tmp_path / "master"
    with Store.open(master, create=True) as st:
        publish(st, [key], [dist], edits=Edits(files={whl.name: FileFacts(provenance=PROVENANCE)}))
    pins = frozenset({public_bytes(key)})
    synced = anyio.Event()
    async with services() as svc:
        upstream = await svc.server(master)
        seeder = Seeder(
            tmp_path / "seed",
            pins,
            [upstream.url],
            config=SeedConfig(subscribe=False),
            on_synced=synced.set,
        )
        try:
            seed_url = await svc.start(seeder.run)
            with anyio.fail_after(20):
                await synced.wait()
            report = verify_store(seeder.store)
            assert report.ok, report.problems
            svc.stop(upstream.url)  # the cache can only ask the seed
            cache = Cache(tmp_path / "cache", pins, [seed_url])
            cache_url = await svc.start(cache.run)
            page_url = f"{cache_url}/simple/demo/"
            page = json.loads(
                await anyio.to_thread.run_sync(
                    _get, page_url, "application/vnd.pypi.simple.v1+json"
                )
            )
            (entry,) = page["files"]
            assert entry["provenance"]
            body = await anyio.to_thread.run_sync(_get, urljoin(page_url, entry["provenance"]))
            assert json.loads(body) == json.loads(PROVENANCE)
        finally:
            await seeder.close()
