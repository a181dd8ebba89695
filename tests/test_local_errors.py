"""Local failures (a full disk, permission, I/O error) are LocalError, exit 9, never a peer's fault.

The full file systems are real: a small tmpfs mounted for the test (as root;
CI runs as root) or, for the CLI, mounted inside a private mount namespace
(``unshare -m``) that disappears with the process.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.cli import EXIT_CODES, exit_code_for
from p2pkg.core.link import Sink
from p2pkg.core.objects import Blob, FileManifest, ObjectId, encode, object_id
from p2pkg.core.peers import PeerBook, Tier
from p2pkg.core.simple import JSON_V1
from p2pkg.errors import (
    LOCAL_ERRNOS,
    LocalError,
    P2pkgError,
    PeerError,
    SpecError,
    local_error,
    local_io,
)
from p2pkg.io.http import wire
from p2pkg.io.ingest import hash_bytes, hash_file
from p2pkg.io.keys import public_bytes
from p2pkg.io.store import Store
from p2pkg.roles.cache import Cache
from p2pkg.roles.download import FileDownloader
from p2pkg.roles.publish import publish
from p2pkg.roles.seed import Seeder
from p2pkg.roles.session import Session
from p2pkg.roles.verify import verify_store
from p2pkg.testing.archives import build_wheel

from .helpers import await_until, snapshot
from .netutil import Master, make_master, serve_process, services

MiB = 1 << 20
Mount = Callable[[Path, int], Path]
ROOT_ONLY = "mounting a small tmpfs (a real full file system) needs root; CI runs as root"


# ---------------------------------------------------------------------- pure mapping


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EFBIG, "file too large"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
        (errno.EROFS, "read-only file system"),
        (errno.EIO, "I/O error"),
    ],
)
def test_local_io_maps_each_local_errno(code: int, words: str) -> None:
    assert code in LOCAL_ERRNOS
    with pytest.raises(LocalError) as info, local_io(Path("/x/.abc.p2pkg-partial"), "writing"):
        raise OSError(code, os.strerror(code), "/ignored")
    exc = info.value
    assert exc.errno == code and exc.path == "/x/.abc.p2pkg-partial" and exc.doing == "writing"
    message = str(exc)
    assert message.startswith(f"{words} writing /x/.abc.p2pkg-partial")
    assert "\n" not in message
    assert isinstance(exc.__cause__, OSError)
    assert isinstance(exc, P2pkgError) and not isinstance(exc, PeerError)
    assert exit_code_for(exc) == EXIT_CODES[LocalError] == 9


def test_local_io_passes_other_errors_through() -> None:
    with pytest.raises(FileNotFoundError), local_io("/x", "reading"):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")
    with pytest.raises(ValueError), local_io("/x", "reading"):
        raise ValueError("not an OS error")


def test_local_error_names_the_path_it_is_given_or_the_os_error_s() -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", "/from/os")
    assert local_error(exc, None, "writing").path == "/from/os"
    assert str(local_error(exc, Path("/mine"), "syncing")) == (
        "no space left on device syncing /mine (free some space and retry)"
    )


def test_spec_error_is_in_the_tree() -> None:
    from p2pkg.core import select

    assert select.SpecError is SpecError and issubclass(SpecError, P2pkgError)
    with pytest.raises(SpecError):
        select.parse_spec("foo>>>")
    assert exit_code_for(SpecError("x")) == 2  # a usage error, however it is reached


# ---------------------------------------------------------------------- the downloader


class _Link:
    """A peer over the Link seam: ``disk`` fails its sink's write, ``slow`` never sends."""

    def __init__(self, url: str, mode: str, started: anyio.Event) -> None:
        self.url = url
        self.mode = mode
        self.started = started
        self.cancelled = False

    async def span(self, blake3: bytes, start: int, stop: int, size: int, sink: Sink) -> None:
        if self.mode == "disk":
            await self.started.wait()  # every peer has a span in flight
            # What the chunk writer raises when its pwrite hits a full disk.
            raise LocalError("/x/.p.p2pkg-partial", errno.ENOSPC, "writing")
        self.started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise

    async def object(self, oid: ObjectId) -> bytes:
        raise AssertionError("not used")

    async def objects(self, oids: Sequence[ObjectId]) -> list[bytes]:
        raise AssertionError("not used")

    async def root(self, version: int | None = None) -> bytes:
        raise AssertionError("not used")

    def close(self) -> None:
        pass


@pytest.mark.anyio
async def test_a_local_error_aborts_every_span_and_blames_no_peer(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(12 * MiB)  # several spans, on several peers
    sha, b3, chunks = hash_bytes(data)
    manifest = FileManifest(
        "demo-1.0-py3-none-any.whl", "1.0", len(data), sha, b3, "", None, 0, None, chunks
    )
    started = anyio.Event()
    links = {u: _Link(u, m, started) for u, m in [("a", "slow"), ("b", "disk"), ("c", "slow")]}
    book = PeerBook()
    for url in links:
        book.add(url, Tier.MIRROR)
    with anyio.fail_after(10), pytest.raises(LocalError):
        await FileDownloader(links.__getitem__, book).fetch_file(manifest, tmp_path)
    assert all(link.cancelled for link in links.values() if link.mode == "slow")
    assert book.banned(float("-inf")) == {}
    assert [r.failures for r in book] == [0, 0, 0]
    assert list(tmp_path.iterdir()) == []  # the partial file is gone


# ---------------------------------------------------------------------- real full disks


@pytest.fixture
def small_fs() -> Iterator[Mount]:
    """``mount(dir, size)``: a tmpfs of ``size`` bytes on ``dir``, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip(ROOT_ONLY)
    mounted: list[Path] = []

    def mount(where: Path, size: int) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True
        )
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill ``directory``'s file system, then give back about ``leave`` bytes."""
    filler = directory / "filler"
    block = b"\xa5" * (64 << 10)
    with filler.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        size = fh.seek(0, os.SEEK_END)
        fh.truncate(max(0, size - leave))
    return filler


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=3 * MiB)


async def _fetch_expecting_local_error(
    master: Master, spec: str, dest: Path | None, store: Store | None = None
) -> tuple[LocalError, int]:
    """Fetch ``spec`` from one real peer; the LocalError and the bytes the peer sent."""
    async with services() as svc:
        server = await svc.server(master.store)
        fetcher = Session(master.pins, [server.url], store)
        try:
            with pytest.raises(LocalError) as info:
                await fetcher.fetch(spec, dest)
            # Our disk failed, not the peer: it is neither banned nor charged a failure.
            assert fetcher.book.banned(float("-inf")) == {}
            record = fetcher.book.get(server.url)
            assert record is not None and record.failures == 0
            return info.value, server.stats.bytes_sent
        finally:
            fetcher.close()


@pytest.mark.anyio
@pytest.mark.net
async def test_fetch_too_big_for_the_destination_fails_before_asking_a_peer(
    small_fs: Mount, master: Master, tmp_path: Path
) -> None:
    dest = small_fs(tmp_path / "dest", 1 * MiB)
    exc, sent = await _fetch_expecting_local_error(master, "big", dest)
    assert sent < 64 * 1024  # the root and a few objects: no span of the 3 MiB archive
    assert exc.errno == errno.ENOSPC
    assert exc.path.startswith(str(dest)) and exc.path.endswith(".p2pkg-partial")
    assert "reserving space for" in str(exc)
    assert list(dest.iterdir()) == []  # the partial file is gone: the space is back


@pytest.mark.anyio
@pytest.mark.net
async def test_disk_filling_mid_transfer_aborts_with_a_local_error(
    small_fs: Mount, master: Master, tmp_path: Path
) -> None:
    # A small file is written chunk by chunk with no reservation: the disk
    # fills on a pwrite inside the HTTP link's read loop.
    dest = small_fs(tmp_path / "dest", 1 * MiB)
    filler = fill(dest, leave=4096)
    exc, _ = await _fetch_expecting_local_error(master, "small==1.0", dest)
    assert exc.errno == errno.ENOSPC and "writing" in str(exc)
    assert sorted(dest.iterdir()) == [filler]


@pytest.mark.anyio
@pytest.mark.net
async def test_fetch_into_a_full_store_leaves_the_store_as_it_was(
    small_fs: Mount, master: Master, tmp_path: Path
) -> None:
    store_dir = small_fs(tmp_path / "store", 2 * MiB)
    with Store.open(store_dir, create=True):
        pass
    before = _archives(store_dir)
    with Store.open(store_dir) as st:
        exc, _ = await _fetch_expecting_local_error(master, "big", None, st)
        assert exc.errno == errno.ENOSPC
        assert exc.path == str(st.partial_path(hash_file(master.big, None).blake3))
        assert not Path(exc.path).exists()
    # The verified root and tree objects were cached as usual; no archive was.
    assert _archives(store_dir) == before
    with Store.open(store_dir) as st:
        assert verify_store(st).ok


def _archives(store_dir: Path) -> tuple[object, ...]:
    """The archives a store indexes and holds: its files and chunks rows, its files/."""
    tables, files = snapshot(store_dir)
    return tables[3:], files  # type: ignore[index]


def _blob(size: int) -> tuple[ObjectId, bytes]:
    data = encode(Blob(os.urandom(size)))
    return object_id(data), data


@pytest.mark.net
def test_store_commit_on_a_full_disk_raises_and_leaves_the_store_as_it_was(
    small_fs: Mount, tmp_path: Path
) -> None:
    store_dir = small_fs(tmp_path / "store", 2 * MiB)
    archive = tmp_path / "demo.bin"
    archive.write_bytes(os.urandom(100_000))
    with Store.open(store_dir, create=True) as st:
        st.commit(objects=dict([_blob(2000)]))
        before = snapshot(store_dir)
        hashed = hash_file(archive, st.temp_dir)  # its temp copy is on the small disk
        fill(store_dir)
        big_id, big = _blob(600_000)  # incompressible: the database must grow
        with pytest.raises(LocalError) as info:
            st.commit(files=[hashed], objects={big_id: big})
        assert info.value.errno == errno.ENOSPC
        assert info.value.path == str(store_dir / "index.sqlite")
        assert not st.has_file(hashed.blake3) and not st.has_object(big_id)
        assert not st.file_path(hashed.blake3).exists()  # the placed archive was taken back
    # Still full: the store opens, reads and verifies all the same.
    assert snapshot(store_dir) == before
    with Store.open(store_dir) as st:
        report = verify_store(st)
        assert report.ok and report.counts["orphans"] == 0, report


# ---------------------------------------------------------------------- the CLI


def _in_private_mount(
    where: Path, size: int, command: list[str], then: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with a tmpfs of ``size`` bytes on ``where``, in its own mount namespace."""
    if os.geteuid() != 0:
        pytest.skip(ROOT_ONLY)
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the CLI full-disk tests")
    where.mkdir(parents=True, exist_ok=True)
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(where))} || exit 99\n"
        f"{shlex.join(command)}\nrc=$?\n{then}\nexit $rc\n"
    )
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 99, done.stderr
    return done


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.net
def test_cli_fetch_onto_a_full_disk_exits_9_with_one_line(master: Master, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with serve_process(master.store) as (_, url):
        cmd = [sys.executable, "-m", "p2pkg.cli", "fetch", "big", "--trust", master.pub]
        done = _in_private_mount(
            dest,
            1 * MiB,
            [*cmd, "--peer", url, "--dest", str(dest)],
            then=f"ls -A {shlex.quote(str(dest))}",
        )
    assert done.returncode == 9, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith("p2pkg: error: no space left on device")
    assert str(dest) in line and ".p2pkg-partial" in line
    assert done.stdout.strip() == ""  # `ls -A dest`: no partial file left behind


@pytest.mark.parametrize("fills", ["archive copy", "database"])
@pytest.mark.net
def test_cli_publish_into_a_full_store_exits_9_with_one_line(
    master: Master, tmp_path: Path, fills: str
) -> None:
    store = tmp_path / "store"
    key = tmp_path / "master.key"
    p2pkg = [sys.executable, "-m", "p2pkg.cli"]
    subprocess.run([*p2pkg, "keygen", "--out", str(key)], check=True, capture_output=True)
    publish = [*p2pkg, "publish", "--store", str(store), "--key", str(key)]
    verify = shlex.join([*p2pkg, "verify", "--store", str(store)])
    if fills == "archive copy":
        done = _in_private_mount(store, 1 * MiB, [*publish, str(master.big)], then=verify)
    else:
        # A first publish, then a disk with room for the next archive's copy
        # and SQLite's 32 KiB WAL index, but not for the index's new pages.
        sdist = master.dist / "small-1.0.tar.gz"
        leave = 32 * 1024 + _pages(sdist.stat().st_size) + 4096
        filler = shlex.quote(str(store / "filler"))
        done = _in_private_mount(
            store,
            1 * MiB,
            [*publish, str(master.small)],
            then=(
                f"[ $rc = 0 ] || exit $rc\n"
                f"dd if=/dev/zero of={filler} bs=4096 2>/dev/null; truncate -s -{leave} {filler}\n"
                f"{shlex.join([*publish, str(sdist)])}\n"
                f"rc=$?\n{verify}"
            ),
        )
    assert done.returncode == 9, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith("p2pkg: error: no space left on device") and str(store) in line
    if fills == "database":
        assert "index.sqlite" in line
    assert done.stdout.splitlines()[-1].startswith("ok:")  # verify, still on the full disk


def _pages(size: int) -> int:
    return -(-size // 4096) * 4096


# ---------------------------------------------------------------------- running roles


def _no_partials(store_dir: Path) -> list[Path]:
    return [p for p in store_dir.rglob("*") if p.name.endswith(".p2pkg-partial")]


def _http_get(url: str, accept: str | None = None) -> tuple[int, str, bytes]:
    """(status, reason, body) of a GET, errors included (no proxies: loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with opener.open(request, timeout=30) as resp:
            return resp.status, resp.reason, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.reason, exc.read()


async def _get(url: str, accept: str | None = None) -> tuple[int, str, bytes]:
    return await anyio.to_thread.run_sync(_http_get, url, accept)


async def _archive_url(base: str, project: str) -> str:
    """The cache's ``/files/…`` URL of ``project``'s wheel."""
    status, _, page = await _get(f"{base}/simple/{project}/", JSON_V1)
    assert status == 200, page
    (url,) = [f["url"] for f in json.loads(page)["files"] if f["filename"].endswith(".whl")]
    return base + "/" + url.removeprefix("../../")


@pytest.mark.anyio
@pytest.mark.net
async def test_a_cache_on_a_full_disk_keeps_serving_what_it_holds_and_says_so(
    master: Master, tmp_path: Path, small_fs: Mount
) -> None:
    store_dir = small_fs(tmp_path / "cache", 2 * MiB)  # the big wheel (3 MiB) cannot fit
    async with services() as svc:
        peer = await svc.server(master.store)
        cache = Cache(store_dir, master.pins, [peer.url])
        url = await svc.start(cache.run)
        small = await _archive_url(url, "small")
        status, _, body = await _get(small)
        assert status == 200 and body == master.small.read_bytes()

        big = await _archive_url(url, "big")
        status, reason, body = await _get(big)
        # Our disk, not the peers: 507 naming the condition, nobody banned.
        assert (status, reason) == (507, "Insufficient Storage"), body
        assert body.startswith(b"p2pkg cache: cannot store big-1.0") and b"no space" in body
        assert not cache.session.banned

        fill(store_dir)  # now not even the index has room
        status, _, body = await _get(small)
        assert status == 200 and body == master.small.read_bytes()
        status, _, _ = await _get(f"{url}/simple/small/")
        assert status == 200

        # The status (JSON and the page) shows the condition.
        status, _, raw = await _get(f"{url}{wire.PREFIX}/status")
        report = json.loads(raw)
        assert report["local_errors"] >= 1 and report["disk_free_bytes"] < 64 * 1024
        assert report["last_local_error"].startswith("no space left on device")
        status, _, page = await _get(f"{url}/")
        assert b"no space left on device" in page
    assert _no_partials(store_dir) == []


@pytest.mark.anyio
@pytest.mark.net
async def test_a_seed_on_a_full_disk_keeps_serving_its_last_root_and_says_so(
    key: Ed25519PrivateKey, tmp_path: Path, small_fs: Mount
) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    small = build_wheel(dist, "small", "1.0", payload=20_000)
    master_dir = tmp_path / "master"
    with Store.open(master_dir, create=True) as st:
        publish(st, [key], [dist])
    pins = frozenset({public_bytes(key)})
    seed_dir = small_fs(tmp_path / "seed", 2 * MiB)
    synced = anyio.Event()
    async with services() as svc:
        upstream = await svc.server(master_dir)
        seeder = Seeder(seed_dir, pins, [upstream.url], on_synced=synced.set)
        try:
            url = await svc.start(seeder.run)
            with anyio.fail_after(20):
                await synced.wait()
            assert seeder.freshness.synced_version == 1

            # Version 2 adds an archive that cannot fit: the sync fails on our disk.
            build_wheel(dist, "big", "1.0", payload=3 * MiB)
            with Store.open(master_dir) as st:
                publish(st, [key], [dist])
            seeder.follower.poke()
            report = await await_until(
                lambda: seeder.status() if seeder.status()["local_errors"] else None,
                timeout=20,
                what="the seed to report its disk condition",
            )
            assert report["last_local_error"].startswith("no space left on device")
            assert str(seed_dir) in report["last_local_error"]
            assert report["synced_version"] == 1 and report["upstream_version"] == 2
            assert not seeder.session.banned

            # It still serves version 1, from which a client gets the small wheel.
            session = Session(pins, [url])
            try:
                dest = tmp_path / "dl"
                dest.mkdir()
                await session.fetch("small", dest)
                assert (dest / small.name).read_bytes() == small.read_bytes()
                assert session.trusted is not None and session.trusted.version == 1
            finally:
                session.close()
            assert _no_partials(seed_dir) == []
            report_v = verify_store(seeder.store)
            assert report_v.ok, report_v
        finally:
            await seeder.close()
