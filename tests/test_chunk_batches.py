"""Small archives in chunk batches: a round trip per batch, not per archive."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from p2pkg.core.link import Sink
from p2pkg.core.objects import FileManifest
from p2pkg.core.peers import PeerBook, Tier
from p2pkg.errors import AbsentError, LocalError, ProtocolError, TransportError
from p2pkg.io.ingest import hash_bytes
from p2pkg.roles.chunk_batches import BATCH_BYTES, pack, prefill
from p2pkg.roles.download import FileDownloader

pytestmark = pytest.mark.anyio


def manifest_of(data: bytes, name: str) -> FileManifest:
    sha, b3, chunks = hash_bytes(data)
    return FileManifest(name, "1.0", len(data), sha, b3, "", None, 0, None, chunks)


class BatchLink:
    """A peer holding some archives; ``mode``: ok, corrupt, static, drop."""

    def __init__(self, url: str, files: Sequence[bytes], mode: str = "ok") -> None:
        self.url = url
        self.mode = mode
        self.chunk_bytes: dict[bytes, bytes] = {}
        self.by_b3: dict[bytes, bytes] = {}
        for data in files:
            m = manifest_of(data, "x-1.0-py3-none-any.whl")
            self.by_b3[m.blake3] = data
            pos = 0
            for c in m.chunks:
                self.chunk_bytes[c.id] = data[pos : pos + c.length]
                pos += c.length
        self.batches = 0
        self.spans = 0

    async def chunks(self, ids: Sequence[bytes], size: int, sink: Sink) -> None:
        self.batches += 1
        await anyio.sleep(0.001)
        if self.mode == "static":
            raise ProtocolError(self.url, "chunk batch: HTTP 405", 405)
        if self.mode == "drop":
            raise TransportError(self.url, "connection reset")
        if any(i not in self.chunk_bytes for i in ids):
            raise AbsentError(self.url, "chunk batch: not held (404)")
        body = bytearray(b"".join(self.chunk_bytes[i] for i in ids))
        if self.mode == "corrupt":
            body[len(body) // 2] ^= 1
        view = sink.buffer()
        view[: len(body)] = body
        sink.advance(len(body))

    async def span(self, blake3: bytes, start: int, stop: int, size: int, sink: Sink) -> None:
        self.spans += 1
        if self.mode == "static" or self.mode == "ok":
            data = self.by_b3[blake3][start:stop]
            view = sink.buffer()
            n = len(data)
            view[:n] = data
            sink.advance(n)
            return
        raise TransportError(self.url, "connection reset")


def archives(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(2_000, 200_000)) for _ in range(count)]


def book_of(links: dict[str, BatchLink]) -> PeerBook:
    book = PeerBook()
    for url in links:
        book.add(url, Tier.MIRROR)
    return book


async def fetch_all(
    links: dict[str, BatchLink], files: list[bytes], dest: Path
) -> tuple[PeerBook, dict[bytes, str]]:
    """What Client.fetch_many does: prefill, then each archive's own download."""
    book = book_of(links)
    downloader = FileDownloader(links.__getitem__, book)  # type: ignore[arg-type]
    manifests = [manifest_of(d, f"p{i}-1.0-py3-none-any.whl") for i, d in enumerate(files)]
    with anyio.fail_after(20):
        stats = await prefill(
            [(m, downloader.partial_path(m, dest)) for m in manifests],
            links.__getitem__,  # type: ignore[arg-type]
            book,
        )
        for m, data in zip(manifests, files, strict=True):
            path, _ = await downloader.fetch_file(m, dest)
            assert path.read_bytes() == data
    return book, stats.filled


def test_archives_are_packed_whole_so_every_peer_keeps_two_batches_going() -> None:
    files = [manifest_of(d, f"p{i}.whl") for i, d in enumerate(archives(200))]
    batches = pack([(m, Path(m.filename)) for m in files], peers=2)
    assert len(batches) >= 8
    assert [m for b in batches for m, _ in b.files] == files
    for b in batches:
        assert b.size <= BATCH_BYTES or len(b.files) == 1
        assert b.ids == [c.id for m, _ in b.files for c in m.chunks]


async def test_small_archives_come_in_batches_not_one_request_each(tmp_path: Path) -> None:
    files = archives(60)
    links = {u: BatchLink(u, files) for u in ("a", "b")}
    _, filled = await fetch_all(links, files, tmp_path)
    assert len(filled) == 60
    assert sum(link.spans for link in links.values()) == 0  # every download found its bytes
    asked = sorted(link.batches for link in links.values())
    assert asked[0] >= 2 and sum(asked) <= 20  # both peers, a handful of requests
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"p{i}-1.0-py3-none-any.whl" for i in range(60)
    )  # no partial file left behind


async def test_a_static_peer_and_a_corrupt_one_leave_the_batches_to_the_honest(
    tmp_path: Path,
) -> None:
    files = archives(30, seed=2)
    links = {
        "static": BatchLink("static", files, "static"),
        "corrupt": BatchLink("corrupt", files, "corrupt"),
        "honest": BatchLink("honest", files),
    }
    book, filled = await fetch_all(links, files, tmp_path)
    assert {peer for peer, _ in filled.values()} == {"honest"}
    assert len(filled) == 30
    assert book.is_banned("corrupt", 0.0)
    assert not book.is_banned("static", 0.0)
    assert links["static"].batches <= 2  # asked once per worker, then left alone


async def test_without_batches_every_archive_is_downloaded_the_usual_way(tmp_path: Path) -> None:
    files = archives(12, seed=3)
    links = {"static": BatchLink("static", files, "static")}
    _, filled = await fetch_all(links, files, tmp_path)
    assert filled == {}
    assert links["static"].spans == 12


async def test_a_full_disk_removes_what_the_batches_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from p2pkg.roles import chunk_batches

    files = archives(20, seed=4)
    links = {"a": BatchLink("a", files)}
    manifests = [manifest_of(d, f"p{i}-1.0-py3-none-any.whl") for i, d in enumerate(files)]
    writes = []
    real = chunk_batches.pwrite_all

    def filling(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        writes.append(1)
        if len(writes) == 10:  # the disk fills on the tenth archive
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(chunk_batches, "pwrite_all", filling)
    with pytest.raises(LocalError, match="no space left"):
        await prefill(
            [(m, tmp_path / f".{m.blake3.hex()}.p2pkg-partial") for m in manifests],
            links.__getitem__,  # type: ignore[arg-type]
            book_of(links),
        )
    assert list(tmp_path.iterdir()) == []  # every partial file written here is gone


@pytest.mark.net
async def test_fetch_many_over_http_asks_a_few_batches_not_one_request_per_archive(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import p2pkg
    from p2pkg.core.root import format_pubkey, public_bytes
    from p2pkg.io.store import Store
    from p2pkg.roles.publish import publish
    from p2pkg.testing.archives import build_wheel
    from tests.netutil import services

    dist = tmp_path / "dist"
    dist.mkdir()
    rng = random.Random(9)
    wheels = [
        build_wheel(dist, f"w{i}", "1.0", payload=rng.randint(5_000, 150_000)) for i in range(40)
    ]
    key = Ed25519PrivateKey.generate()
    with Store.open(tmp_path / "master", create=True) as st:
        publish(st, [key], [dist])
    async with services() as svc:
        servers = [await svc.server(tmp_path / "master") for _ in range(2)]
        pub = format_pubkey(public_bytes(key))
        async with p2pkg.Client(trust=pub, peers=[s.url for s in servers], lan=False) as c:
            before = sum(s.stats.requests for s in servers)
            with anyio.fail_after(30):
                results = await c.fetch_many([f"w{i}" for i in range(40)], tmp_path / "out")
            asked = sum(s.stats.requests for s in servers) - before
    for wheel, result in zip(wheels, results, strict=True):
        assert result.path.read_bytes() == wheel.read_bytes()
        assert result.stats.from_network == wheel.stat().st_size
        assert set(result.stats.peers) <= {s.url for s in servers}
    # The root, a few object batches, a few chunk batches: not 40 archive requests.
    assert asked < 20, asked
