"""pip and uv install through `p2pkg cache`, with real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.testbed import Testbed, p2pkg_cmd, status, wait_synced
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.errors import TransportError
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_sdist, build_wheel
from tests.helpers import await_until, wait_until
from tests.installers import ISOLATED
from tests.netutil import archive_path

pytestmark = [pytest.mark.slow, pytest.mark.net]


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ed25519PrivateKey, Path]:
    tmp = tmp_path_factory.mktemp("ns")
    dist = tmp / "dist"
    dist.mkdir()
    key = Ed25519PrivateKey.generate()
    build_wheel(dist, "base", "1.0", payload=20_000)
    build_wheel(dist, "base", "2.0", payload=2_500_000)  # several chunks: streamed
    build_wheel(dist, "middle", "1.0", requires_dist=["base>=1.0"])
    build_wheel(dist, "middle", "1.1", requires_dist=["base>=1.0"])  # yanked below
    build_wheel(dist, "top", "1.0", requires_dist=["middle"])
    build_sdist(dist, "top", "1.0", requires_dist=["middle"])
    # uv ignores upper bounds of Requires-Python (by design): exclude with a lower one.
    build_wheel(dist, "top", "2.0", requires_dist=["middle"], requires_python=">=4")
    store = tmp / "master"
    with Store.open(store, create=True) as st:
        publish(st, [key], [dist])
        publish(st, [key], [], yank={"middle-1.1-py3-none-any.whl": "broken"})
    return store, key, dist


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    return path / "bin" / "python"


def _versions(python: Path) -> dict[str, str]:
    code = (
        "import base, middle, top, json; "
        "print(json.dumps({m.__name__: m.__version__ for m in (base, middle, top)}))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _pip(python: Path, index: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(python), "-m", "pip", "--isolated", "--no-cache-dir", *args, "--index-url", index]
    return subprocess.run(cmd, capture_output=True, text=True, env=ISOLATED, check=False)


EXPECTED = {"base": "2.0", "middle": "1.0", "top": "1.0"}


def test_pip_and_uv_install_through_the_cache(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    store, key, dist = namespace
    pub = format_pubkey(public_bytes(key))
    with Testbed() as bed:
        master_proc, master = bed.serve(store)
        seed1_proc, s1 = bed.seed(tmp_path / "s1", pub, [master], "--interval", "1s")
        seed2_proc, s2 = bed.seed(tmp_path / "s2", pub, [master, s1], "--interval", "1s")
        wait_synced(s1, 2)
        wait_synced(s2, 2)
        _, cache = bed.cache(tmp_path / "cache", pub, [s1, s2])
        index = f"{cache}/simple/"

        # pip: the right versions (yanked and Requires-Python-excluded ones skipped)
        python = _venv(tmp_path / "venv-pip")
        res = _pip(python, index, "install", "top")
        assert res.returncode == 0, res.stdout + res.stderr
        assert _versions(python) == EXPECTED

        # uv, unchanged
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        subprocess.run(
            [uv, "venv", str(tmp_path / "venv-uv")], check=True, capture_output=True, env=ISOLATED
        )
        uv_python = tmp_path / "venv-uv" / "bin" / "python"
        res = subprocess.run(
            [uv, "pip", "install", "--python", str(uv_python), "--index-url", index, "top"],
            capture_output=True,
            text=True,
            env=ISOLATED,
            check=False,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert _versions(uv_python) == EXPECTED

        # pip download: bytes identical to what was published
        dl = tmp_path / "dl"
        res = _pip(
            python, index, "download", "--no-deps", "-d", str(dl), "top==1.0", "base", "middle"
        )
        assert res.returncode == 0, res.stderr
        for f in dl.iterdir():
            assert (
                hashlib.sha256(f.read_bytes()).digest()
                == hashlib.sha256((dist / f.name).read_bytes()).digest()
            )

        st = status(cache)
        assert st["role"] == "cache" and st["misses"] >= 1 and st["hits"] >= 3
        # top's page brought in middle and base before pip asked (read-ahead)
        assert st["read_ahead_projects"] >= 2 and st["read_ahead_archives"] >= 2

        # The cache's store is partial: show and verify describe it, neither fails.
        for args in (["verify", "--json"], ["show", "--trust", pub, "--json"]):
            cmd = p2pkg_cmd(*args, "--store", str(tmp_path / "cache"))
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            assert res.returncode == 0, res.stdout + res.stderr
            report = json.loads(res.stdout)
            if args[0] == "verify":
                assert report["counts"]["archives"] == st["files_held"], report
            else:
                assert "top" in report["projects"], report

        # Every seed and the master stop: a fresh venv still installs, from the cache.
        for proc in (seed1_proc, seed2_proc, master_proc):
            proc.terminate()
            proc.wait(timeout=10)
        python2 = _venv(tmp_path / "venv-offline")
        res = _pip(python2, index, "install", "top")
        assert res.returncode == 0, res.stdout + res.stderr
        assert _versions(python2) == EXPECTED


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_cache_answers_bad_requests_and_pages(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    store, key, _ = namespace
    pub = format_pubkey(public_bytes(key))
    with Testbed() as bed:
        _, master = bed.serve(store)
        _, cache = bed.cache(tmp_path / "c", pub, [master])
        code, body, _ = _get(f"{cache}/simple/")
        assert code == 200 and b'href="top/"' in body
        code, body, hdrs = _get(
            f"{cache}/simple/top/", {"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        page = json.loads(body)
        assert code == 200 and hdrs["Content-Type"].startswith(
            "application/vnd.pypi.simple.v1+json"
        )
        wheel = next(f for f in page["files"] if f["filename"] == "top-1.0-py3-none-any.whl")
        assert wheel["core-metadata"] and wheel["size"] > 0
        file_url = urllib.parse.urljoin(f"{cache}/simple/top/", wheel["url"])  # as installers do
        code, meta, _ = _get(file_url + ".metadata")
        assert code == 200 and hashlib.sha256(meta).hexdigest() == wheel["core-metadata"]["sha256"]
        # non-normalized names redirect
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(f"{cache}/simple/Top/", timeout=10)
            raise AssertionError("expected a redirect")
        except urllib.error.HTTPError as exc:
            assert exc.code == 301 and exc.headers["Location"] == "/simple/top/"
        assert _get(f"{cache}/simple/nonexistent/")[0] == 404
        assert _get(f"{cache}/simple/../../etc/passwd")[0] == 404
        assert _get(f"{cache}/files/{'00' * 32}/x.whl")[0] == 404
        assert _get(f"{cache}/files/../../index.sqlite")[0] == 404
        assert _get(f"{cache}/simple/top/", {"Accept": "application/json"})[0] == 406
        code, _, hdrs = _get(file_url, {"Range": "bytes=999999999-"})
        assert code == 416
        code, part, _ = _get(file_url, {"Range": "bytes=0-9"})
        assert code == 206 and len(part) == 10
        assert _get(f"{cache}/simple/top/", {"X-Big": "x" * 20_000})[0] == 431
        code, body, _ = _get(f"{cache}/")
        assert code == 200 and b"p2pkg cache" in body


def test_cache_serves_only_files_the_signed_namespace_lists(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    """A manifest id that is a valid object but not listed for that filename is refused."""
    store, key, _ = namespace
    pub = format_pubkey(public_bytes(key))
    with Store.open(store) as st:
        # a real, signed manifest id, but of another file
        other = next(
            oid
            for oid, kind, _ in st.iter_objects()
            if kind == 2 and b"top-1.0-py3-none-any.whl" not in st.get_object(oid)
        )
    with Testbed() as bed:
        _, master = bed.serve(store)
        _, cache = bed.cache(tmp_path / "c", pub, [master])
        assert _get(f"{cache}/files/{other.hex()}/top-1.0-py3-none-any.whl")[0] == 404
        assert _get(f"{cache}/files/{other.hex()}/not-a-dist.txt")[0] == 404


# ---------------------------------------------------------------------- in-process cache


@pytest.mark.anyio
async def test_install_succeeds_when_a_seed_serves_corrupt_bytes(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    import anyio

    from p2pkg.roles.cache import Cache
    from tests.netutil import services

    store, key, dist = namespace
    async with services() as svc:
        corrupt = await svc.server(store, mode="corrupt")
        honest = await svc.server(store)
        pins = frozenset({public_bytes(key)})
        cache = Cache(tmp_path / "cache", pins, [corrupt.url, honest.url])
        url = await svc.start(cache.run)
        python = await anyio.to_thread.run_sync(_venv, tmp_path / "venv")
        res = await anyio.run_process(
            [
                str(python),
                "-m",
                "pip",
                "--isolated",
                "--no-cache-dir",
                "download",
                "--no-deps",
                "-d",
                str(tmp_path / "dl"),
                "--index-url",
                f"{url}/simple/",
                "base==2.0",
                "top==1.0",
            ],
            env=ISOLATED,
            check=False,
        )
        assert res.returncode == 0, res.stderr.decode()
        for f in (tmp_path / "dl").iterdir():
            assert f.read_bytes() == (dist / f.name).read_bytes()
        assert corrupt.url in cache.session.banned
        assert cache.status()["banned_peers"] == [corrupt.url]


@pytest.mark.anyio
async def test_streams_before_the_file_is_in_and_never_keeps_half_a_file(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    """First byte long before the last from a slow peer; a broken download stores nothing."""
    import time as _time

    from p2pkg.io.http.client import BytesSink, PeerClient
    from p2pkg.io.http.server import ServerConfig
    from p2pkg.roles.cache import Cache
    from tests.netutil import services

    store, key, dist = namespace
    async with services() as svc:
        slow = await svc.server(store, ServerConfig(rate=1_000_000, burst=64 * 1024))  # 1 MB/s
        cache = Cache(tmp_path / "cache", frozenset({public_bytes(key)}), [slow.url])
        url = await svc.start(cache.run)
        client = PeerClient(url)
        try:
            href = await archive_path(client, "base", "base-2.0-py3-none-any.whl")  # 2.5 MB
            first: list[float] = []
            start = _time.monotonic()

            class Timed(BytesSink):
                def advance(self, n: int) -> None:
                    if not first:
                        first.append(_time.monotonic() - start)
                    super().advance(n)

            sinks: list[Timed] = []

            def factory(head):  # type: ignore[no-untyped-def]
                sinks.append(Timed(head.content_length or 0))
                return sinks[0]

            await client.request("GET", href, factory)
            total = _time.monotonic() - start
            assert bytes(sinks[0].data) == (dist / "base-2.0-py3-none-any.whl").read_bytes()
            assert first[0] < total / 4, (first[0], total)
        finally:
            client.close()

    # A download that breaks midway (the only peer dies) leaves nothing in the store.
    async with services() as svc:
        flaky = await svc.server(store, ServerConfig(rate=500_000, burst=64 * 1024))
        cache = Cache(tmp_path / "cache2", frozenset({public_bytes(key)}), [flaky.url])
        url = await svc.start(cache.run)
        client = PeerClient(url)
        try:
            href = await archive_path(client, "base", "base-2.0-py3-none-any.whl")
            request = asyncio.ensure_future(client.get_bytes(href, 10 << 20))
            # Midway: the cache has half a megabyte of the 2.5 MB wheel (5 s at this rate).
            await await_until(
                lambda: flaky.stats.bytes_sent >= 512 * 1024, what="the download to be midway"
            )
            svc.stop(flaky.url)
            with pytest.raises(TransportError):  # cut short: never completed with unverified bytes
                await asyncio.wait_for(request, 60)
            files, _ = cache.store.stats()
            assert files == 0 and not cache.store.has_file(bytes(32))
        finally:
            client.close()


@pytest.mark.anyio
async def test_size_cap_evicts_least_recently_used(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    from p2pkg.io.http.client import PeerClient
    from p2pkg.roles.cache import Cache, CacheConfig
    from tests.netutil import services

    store, key, dist = namespace
    async with services() as svc:
        peer = await svc.server(store)
        # Room for base-2.0 alone: fetching it must evict the small files fetched before.
        cap = (dist / "base-2.0-py3-none-any.whl").stat().st_size + 10
        cache = Cache(
            tmp_path / "cache",
            frozenset({public_bytes(key)}),
            [peer.url],
            config=CacheConfig(max_size=cap, read_ahead=0),  # what is asked, in this order
        )
        url = await svc.start(cache.run)
        client = PeerClient(url)
        try:

            async def fetch(project: str, filename: str) -> None:
                href = await archive_path(client, project, filename)
                status, _, _ = await client.get_bytes(href, 10 << 20)
                assert status == 200

            await fetch("top", "top-1.0-py3-none-any.whl")
            await fetch("middle", "middle-1.0-py3-none-any.whl")
            await fetch("base", "base-2.0-py3-none-any.whl")  # 2.5 MB: the oldest files must go
            # The download task commits (and evicts) just after streaming.
            await await_until(lambda: not cache.live, what="the download to be committed")
            _, held = cache.store.stats()
            assert held <= cap
            assert cache.stats.evicted == 2  # top and middle, least recently used
            wheel = (dist / "base-2.0-py3-none-any.whl").read_bytes()
            assert cache.store.has_file(blake3.blake3(wheel).digest())
        finally:
            client.close()


# ---------------------------------------------------------------------- real-user regressions


def _base_2_wheel(cache: str) -> tuple[dict[str, Any], str]:
    """base 2.0's wheel entry on the cache's PEP 691 page, and its absolute URL."""
    code, body, _ = _get(f"{cache}/simple/base/", {"Accept": "application/vnd.pypi.simple.v1+json"})
    assert code == 200
    wheel = next(f for f in json.loads(body)["files"] if f["filename"].startswith("base-2.0"))
    return wheel, urllib.parse.urljoin(f"{cache}/simple/base/", wheel["url"])


def _wait_root(cache: str, version: int, timeout: float = 20) -> None:
    def reached() -> bool:
        if status(cache).get("root_version") == version:
            return True
        _get(f"{cache}/simple/")  # a page refreshes a stale root
        return False

    wait_until(reached, timeout=timeout, step=0.1, what=f"the cache to reach root {version}")


def test_missing_archive_with_every_peer_gone_is_an_http_error_not_a_hash_mismatch(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    store, key, _ = namespace
    pub = format_pubkey(public_bytes(key))
    with Testbed() as bed:
        master_proc, master = bed.serve(store)
        # Read-ahead off: it would fetch the archive along with its page.
        cache = bed.cache(tmp_path / "cache", pub, [master], "--read-ahead", "0")[1]
        # The cache learns the pages and the metadata, but not the archive...
        _, url = _base_2_wheel(cache)
        assert _get(url + ".metadata")[0] == 200
        # ...then every peer goes away.
        master_proc.terminate()
        master_proc.wait(timeout=10)

        code, body, headers = _get(url)
        assert code == 502, (code, body)
        assert headers["Retry-After"].isdigit()
        assert body.count(b"\n") == 1 and b"base-2.0-py3-none-any.whl" in body
        assert b"no peer could deliver" in body

        python = _venv(tmp_path / "venv")
        res = _pip(
            python, f"{cache}/simple/", "download", "--no-deps", "-d", str(tmp_path), "base==2.0"
        )
        out = res.stdout + res.stderr
        assert res.returncode != 0
        assert "502" in out, out
        assert "HASHES" not in out and "tampered" not in out, out

        st = status(cache)
        assert st["failed_downloads"] >= 1
        assert any(e["file"] == "base-2.0-py3-none-any.whl" for e in st["recent_errors"])
        code, page, _ = _get(f"{cache}/")
        assert code == 200 and b"base-2.0-py3-none-any.whl" in page


def test_a_lockfile_made_before_a_yank_syncs_after_it_and_after_the_unyank(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    """File URLs are stable for the life of a file (PEP 592: pinned yanked files install)."""
    source, key, _ = namespace
    store = tmp_path / "master"
    shutil.copytree(source, store)  # this test yanks: keep the shared namespace intact
    pub = format_pubkey(public_bytes(key))
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    project = tmp_path / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["top"]\n'
    )
    with Testbed() as bed:
        _, master = bed.serve(store)
        cache = bed.cache(tmp_path / "cache", pub, [master], "--refresh", "1s")[1]
        index = f"{cache}/simple/"

        def uv_run(*args: str) -> None:
            res = subprocess.run(
                [uv, *args, "--default-index", index],
                cwd=project,
                capture_output=True,
                text=True,
                env=ISOLATED,
                check=False,
            )
            assert res.returncode == 0, res.stdout + res.stderr

        uv_run("lock")
        lock = (project / "uv.lock").read_text()
        assert "base-2.0-py3-none-any.whl" in lock

        with Store.open(store) as st:
            publish(st, [key], [], yank={"base-2.0-py3-none-any.whl": "bad build"})
        _wait_root(cache, 3)
        uv_run("sync", "--frozen")
        assert _versions(project / ".venv" / "bin" / "python") == EXPECTED

        with Store.open(store) as st:
            publish(st, [key], [], unyank=["base-2.0-py3-none-any.whl"])
        _wait_root(cache, 4)
        shutil.rmtree(project / ".venv")
        uv_run("sync", "--frozen")
        assert _versions(project / ".venv" / "bin" / "python") == EXPECTED
        assert (project / "uv.lock").read_text() == lock


def test_range_requests_count_the_bytes_sent_not_whole_files(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    store, key, _ = namespace
    pub = format_pubkey(public_bytes(key))
    with Testbed() as bed:
        _, master = bed.serve(store)
        cache = bed.cache(tmp_path / "cache", pub, [master])[1]
        wheel, url = _base_2_wheel(cache)
        assert _get(url)[0] == 200  # a miss: fetched from the master
        wait_until(
            lambda: status(cache)["downloads_in_progress"] == 0, what="the download to finish"
        )
        before = status(cache)["bytes_served_from_cache"]

        # Installers send many requests at once: 16 ranges and 4 whole files, concurrently.
        def one(i: int) -> int:
            if i < 16:
                code, part, _ = _get(url, {"Range": f"bytes={i * 10_000}-{i * 10_000 + 9_999}"})
                assert code == 206
            else:
                code, part, _ = _get(url)
                assert code == 200
            return len(part)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(20) as pool:
            received = sum(pool.map(one, range(20)))
        assert received == 16 * 10_000 + 4 * wheel["size"]
        assert status(cache)["bytes_served_from_cache"] - before == received


@pytest.mark.anyio
async def test_a_range_of_an_archive_still_arriving_is_answered_once_verified(
    namespace: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    """uv reads a wheel's central directory by Range: it must not wait for the whole file."""
    import time as _time

    from p2pkg.io.http.client import BytesSink, PeerClient
    from p2pkg.io.http.server import ServerConfig
    from p2pkg.roles.cache import Cache
    from tests.netutil import services

    store, key, dist = namespace
    wheel = (dist / "base-2.0-py3-none-any.whl").read_bytes()  # 2.5 MB
    async with services() as svc:
        slow = await svc.server(store, ServerConfig(rate=1_000_000, burst=64 * 1024))  # 1 MB/s
        cache = Cache(tmp_path / "cache", frozenset({public_bytes(key)}), [slow.url])
        url = await svc.start(cache.run)
        client = PeerClient(url)
        try:
            href = await archive_path(client, "base", "base-2.0-py3-none-any.whl")
            a, b = len(wheel) - 8192, len(wheel)
            sinks: list[BytesSink] = []

            def factory(head):  # type: ignore[no-untyped-def]
                sinks.append(BytesSink(head.content_length or 0))
                return sinks[0]

            start = _time.monotonic()
            head = await client.request(
                "GET", href, factory, headers=(("Range", f"bytes={a}-{b - 1}"),)
            )
            took = _time.monotonic() - start
            assert head.status == 206 and bytes(sinks[0].data) == wheel[a:b]
            assert head.content_range == (a, b, len(wheel))
            assert took < 1.0, took  # the whole file needs ~2.5 s from this peer
            # ...and the whole download went on: the file lands in the store.
            blake3 = bytes.fromhex(href.split("/")[2])
            await await_until(lambda: cache.store.has_file(blake3), timeout=20, what="the file")
        finally:
            client.close()
