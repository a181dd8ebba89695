"""``/metrics`` (Prometheus text, parsed with prometheus_client's parser) and ``/healthz``."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from p2pkg.core.root import public_bytes
from p2pkg.io.http.metrics import BUCKETS, Families, RequestMetrics, exposition, route_label
from p2pkg.io.store import Store
from p2pkg.roles.cache import Cache, CacheConfig
from p2pkg.roles.publish import publish
from p2pkg.roles.seed import SeedConfig, Seeder
from p2pkg.roles.serve import StoreServer
from p2pkg.testing.archives import build_wheel
from tests.helpers import await_until
from tests.installers import ISOLATED
from tests.netutil import make_master, services


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/p2pkg/v1/objects/ab", "peer_objects"),
        ("/p2pkg/v1/root", "peer_root"),
        ("/p2pkg/v1/whatever", "peer_other"),
        ("/ns/corp/p2pkg/v1/files/ab", "peer_files"),
        ("/ns/corp/simple/x/", "simple_project"),
        ("/simple/", "simple_index"),
        ("/files/ab/x.whl.metadata", "files_metadata"),
        ("/files/ab/x.whl", "files"),
        ("/", "status_page"),
        ("/metrics", "metrics"),
        ("/healthz", "healthz"),
        ("/ns", "other"),
        ("/etc/passwd", "other"),
    ],
)
def test_route_labels_are_a_bounded_set(path: str, label: str) -> None:
    assert route_label(path) == label


def test_the_exposition_parses_and_the_histogram_is_cumulative() -> None:
    requests = RequestMetrics()
    requests.observe("files", 200, 0.002)
    requests.observe("files", 200, 0.2)
    requests.observe("files", 404, 100.0)

    def collect(fam: Families) -> None:
        fam.histogram("http_request_duration_seconds", "Time.", requests)
        fam.counter("cache_hits", "Hits.", 3, namespace="corp")
        fam.gauge("root_version", "Version.", 7, namespace="corp")
        fam.gauge("root_age_seconds", "Left out when unknown.", None, namespace="corp")

    families = {f.name: f for f in text_string_to_metric_families(exposition(collect).decode())}
    hist = families["p2pkg_http_request_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets[str(BUCKETS[0])] == 0 and buckets["0.005"] == 1 and buckets["0.25"] == 2
    assert buckets["+Inf"] == 3
    assert families["p2pkg_cache_hits"].samples[0].value == 3
    assert families["p2pkg_root_version"].samples[0].labels == {"namespace": "corp"}
    assert "p2pkg_root_age_seconds" not in families


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _health(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.net
@pytest.mark.slow
@pytest.mark.anyio
async def test_cache_counters_move_after_a_pip_install(tmp_path: Path) -> None:
    master = make_master(tmp_path, big_size=300_000)
    async with services() as svc:
        peer = (await svc.server(master.store)).url
        cache = Cache(tmp_path / "cache", master.pins, [peer], config=CacheConfig(read_ahead=0))
        url = await svc.start(cache.run)
        before = await anyio.to_thread.run_sync(_scrape, url)
        assert _value(before, "p2pkg_cache_misses_total", namespace="default") == 0

        def pip() -> subprocess.CompletedProcess[str]:
            venv = tmp_path / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            cmd = [str(venv / "bin" / "python"), "-m", "pip", "--isolated", "--no-cache-dir",
                   "install", "--index-url", f"{url}/simple/", "big"]  # fmt: skip
            return subprocess.run(cmd, capture_output=True, text=True, env=ISOLATED, check=False)

        res = await anyio.to_thread.run_sync(pip)
        assert res.returncode == 0, res.stdout + res.stderr
        after = await anyio.to_thread.run_sync(_scrape, url)
        ns = {"namespace": "default"}
        assert _value(after, "p2pkg_cache_misses_total", **ns) >= 1
        assert _value(after, "p2pkg_fetched_bytes_total", tier="mirror", **ns) >= 300_000
        assert _value(after, "p2pkg_served_bytes_total", source="network", **ns) >= 300_000
        assert _value(after, "p2pkg_http_requests_total", route="simple_project", status="200") >= 1
        assert _value(after, "p2pkg_http_requests_total", route="files", status="200") >= 1
        assert _value(after, "p2pkg_root_version", **ns) == 1
        assert _value(after, "p2pkg_peers", tier="mirror", **ns) == 1
        assert _value(after, "p2pkg_store_files", **ns) == 1
        assert 0 < _value(after, "p2pkg_root_checked_seconds_ago", **ns) < 60
        assert _value(after, "p2pkg_http_request_duration_seconds_count", route="files") >= 1


@pytest.mark.net
@pytest.mark.anyio
async def test_healthz_fails_when_every_peer_is_gone_and_when_the_root_expires(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    build_wheel(dist, "small", "1.0", payload=2_000)
    key = Ed25519PrivateKey.generate()
    with Store.open(tmp_path / "m", create=True) as st:
        publish(st, [key], [dist], expires_in=4)  # expires in 4 s
    async with services() as svc:
        peer = (await svc.server(tmp_path / "m")).url
        cache = Cache(
            tmp_path / "cache",
            frozenset({public_bytes(key)}),
            [peer],
            config=CacheConfig(refresh_interval=0.2, subscribe=False, read_ahead=0),
        )
        url = await svc.start(cache.run)
        await await_until(lambda: cache.session.trusted is not None, timeout=10, what="a root")
        assert await anyio.to_thread.run_sync(_health, url) == (200, "ok\n")

        svc.stop(peer)

        async def says(text: str) -> bool:
            code, body = await anyio.to_thread.run_sync(_health, url)
            return code == 503 and text in body

        await await_until(lambda: says("no peer reachable"), what="unhealthy: no peer", step=0.1)
        await await_until(lambda: says("expired"), what="unhealthy: expired", step=0.1)


@pytest.mark.net
@pytest.mark.anyio
async def test_serve_and_seed_report_their_roots_and_sync(tmp_path: Path) -> None:
    master = make_master(tmp_path, big_size=100_000)
    async with services() as svc:
        serve_url = await svc.start(StoreServer(master.store).run)
        seeder = Seeder(
            tmp_path / "seed", master.pins, [serve_url], config=SeedConfig(interval=0.2)
        )
        seed_url = await svc.start(seeder.run)
        await await_until(lambda: seeder.freshness.synced_version == 1, timeout=20, what="synced")
        served = await anyio.to_thread.run_sync(_scrape, serve_url)
        assert _value(served, "p2pkg_root_version", namespace="default") == 1
        assert _value(served, "p2pkg_root_expires_in_seconds", namespace="default") > 86_400
        seeded = await anyio.to_thread.run_sync(_scrape, seed_url)
        assert _value(seeded, "p2pkg_sync_version", namespace="default") == 1
        assert _value(seeded, "p2pkg_sync_lag_versions", namespace="default") == 0
        assert _value(seeded, "p2pkg_root_version", namespace="default") == 1
        assert _value(seeded, "p2pkg_store_files", namespace="default") == 3
        assert await anyio.to_thread.run_sync(_health, seed_url) == (200, "ok\n")
        assert await anyio.to_thread.run_sync(_health, serve_url) == (200, "ok\n")
    await seeder.close()
