"""Read-ahead: a cache fetches a page's dependency closure before installers ask."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.tags import Tag, sys_tags

from p2pkg.core.objects import CoreMetadata, FileManifest, Node, ObjectId, decode_as
from p2pkg.core.readahead import dependencies, likely_archives, metadata_source, newest_release
from p2pkg.core.root import public_bytes
from p2pkg.io.ingest import hash_path
from p2pkg.io.store import Store
from p2pkg.roles.cache import Cache, CacheConfig
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_sdist, build_wheel
from tests.helpers import await_until
from tests.netutil import services


def manifest(filename: str, version: str, *, yanked: str | None = None) -> FileManifest:
    meta = CoreMetadata(b"\0" * 32, ObjectId(b"\1" * 32), 10) if filename.endswith(".whl") else None
    return FileManifest(filename, version, 1, b"", b"", "", yanked, 0, meta, ())


def test_the_newest_final_release_not_yanked() -> None:
    files = [
        manifest("a-1.0-py3-none-any.whl", "1.0"),
        manifest("a-1.0.tar.gz", "1.0"),
        manifest("a-2.0-py3-none-any.whl", "2.0", yanked="broken"),
        manifest("a-3.0b1-py3-none-any.whl", "3.0b1"),
    ]
    assert [m.filename for m in newest_release(files)] == [
        "a-1.0-py3-none-any.whl",
        "a-1.0.tar.gz",
    ]
    only_pre = [manifest("b-1.0a1-py3-none-any.whl", "1.0a1")]
    assert newest_release(only_pre) == only_pre
    assert newest_release([]) == []


def test_the_likely_archive_is_the_best_compatible_wheel_else_the_sdist() -> None:
    tags = [Tag("cp311", "cp311", "manylinux_2_17_x86_64"), Tag("py3", "none", "any")]
    release = [
        manifest("n-1.0-cp311-cp311-win_amd64.whl", "1.0"),
        manifest("n-1.0-py3-none-any.whl", "1.0"),
        manifest("n-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "1.0"),
        manifest("n-1.0.tar.gz", "1.0"),
    ]
    assert [m.filename for m in likely_archives(release, tags)] == [
        "n-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"
    ]
    assert [m.filename for m in likely_archives(release[3:], tags)] == ["n-1.0.tar.gz"]
    # Only another platform's wheels: nothing to guess (but its metadata names the deps).
    assert likely_archives(release[:1], tags) == []
    assert metadata_source(release[:1], []) == release[0]


def test_dependencies_leave_out_extras_and_markers_false_here() -> None:
    metadata = (
        b"Metadata-Version: 2.1\nName: app\nVersion: 1.0\n"
        b"Requires-Dist: Requests>=2\n"
        b"Requires-Dist: typing_extensions; python_version < '3.0'\n"
        b"Requires-Dist: pytest; extra == 'test'\n"
        b"Requires-Dist: not a requirement at all !!\n"
        b"Requires-Dist: requests[socks]\n"
        b"Requires-Dist: zope.interface\n"
        b"\nlong description\nRequires-Dist: ignored-body\n"
    )
    env = {"python_version": "3.11", "python_full_version": "3.11.7"}
    assert dependencies(metadata, env) == ["requests", "zope-interface"]
    assert dependencies(metadata) == ["requests", "typing-extensions", "zope-interface"]


# ---------------------------------------------------------------------- a real cache


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ed25519PrivateKey, Path]:
    """app -> lib -> (leaf, native); native has only another platform's wheel."""
    tmp = tmp_path_factory.mktemp("chain")
    dist = tmp / "dist"
    dist.mkdir()
    build_wheel(dist, "app", "1.0", requires_dist=["lib"], payload=30_000)
    build_wheel(dist, "lib", "1.0", requires_dist=["leaf>=1", "native"], payload=30_000)
    build_wheel(dist, "lib", "0.9", requires_dist=["old-dep"], payload=30_000)
    build_wheel(dist, "leaf", "1.0", requires_dist=["unused; extra == 'x'"], payload=300_000)
    build_sdist(dist, "leaf", "1.0")
    build_wheel(dist, "old-dep", "1.0")
    build_wheel(dist, "unused", "1.0")
    build_wheel(dist, "native", "1.0", payload=30_000)
    other = next(dist.glob("native-1.0-*.whl"))
    other.rename(dist / "native-1.0-cp27-cp27m-win32.whl")
    key = Ed25519PrivateKey.generate()
    store = tmp / "master"
    with Store.open(store, create=True) as st:
        publish(st, [key], [dist])
    return store, key, dist


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:  # 127.0.0.1 only
        return r.read()  # type: ignore[no-any-return]


def _held(cache: Cache, dist: Path) -> set[str]:
    """Filenames of the archives the cache holds."""
    names = {hash_path(p).blake3: p.name for p in dist.iterdir()}
    return {names[f.blake3] for f in cache.store.iter_files()}


@pytest.mark.net
@pytest.mark.anyio
async def test_one_page_brings_in_the_dependency_closure(
    chain: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    store, key, dist = chain
    tags = {str(t) for t in sys_tags()}
    assert "py3-none-any" in tags
    async with services() as svc:
        seed = await svc.server(store)
        cache = Cache(tmp_path / "cache", frozenset({public_bytes(key)}), [seed.url])
        url = await svc.start(cache.run)
        await anyio.to_thread.run_sync(_get, f"{url}/simple/app/")
        wanted = {
            "app-1.0-py3-none-any.whl",
            "lib-1.0-py3-none-any.whl",
            "leaf-1.0-py3-none-any.whl",
        }
        await await_until(lambda: _held(cache, dist) >= wanted, timeout=20, what="the closure held")
        status = cache.status()
        assert status["read_ahead_archives"] == 3
        assert status["read_ahead_projects"] == 3  # lib, leaf, native: app's page was asked
        # Not the old release's dependency, not an extra's, not another platform's wheel.
        assert _held(cache, dist) == wanted
        # The tree's nodes came in one batch: a later cold page walks from a leaf.
        trusted = cache.session.trusted
        assert trusted is not None
        top = decode_as(cache.store.get_object(trusted.root.tree), Node)
        assert all(cache.store.find_object(e.child) is not None for e in top.children)
        # The installer's later requests are answered from what is held.
        before = cache.stats.misses
        page = await anyio.to_thread.run_sync(_get, f"{url}/simple/lib/")
        assert b"lib-1.0-py3-none-any.whl" in page
        assert cache.stats.misses == before


@pytest.mark.net
@pytest.mark.anyio
async def test_read_ahead_off_fetches_only_what_is_asked(
    chain: tuple[Path, Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    store, key, dist = chain
    async with services() as svc:
        seed = await svc.server(store)
        cache = Cache(
            tmp_path / "cache",
            frozenset({public_bytes(key)}),
            [seed.url],
            config=CacheConfig(read_ahead=0),
        )
        url = await svc.start(cache.run)
        await anyio.to_thread.run_sync(_get, f"{url}/simple/app/")
        await anyio.sleep(0.5)
        assert _held(cache, dist) == set()
        assert cache.status()["read_ahead_projects"] == 0
