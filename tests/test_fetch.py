"""Fetching from real peer servers on 127.0.0.1, including misbehaving ones."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from p2pkg.core.objects import compress
from p2pkg.errors import ExpiredRootError, FetchError, NotFoundError
from p2pkg.io.http.client import ClientConfig
from p2pkg.io.http.server import PeerServer
from p2pkg.io.store import Store
from p2pkg.roles.export import export_store
from p2pkg.roles.session import Session

from .helpers import snapshot
from .netutil import FakePeer, Master, Services, http_response, make_master, services

pytestmark = [pytest.mark.anyio, pytest.mark.net]
FAST = ClientConfig(stall_timeout=0.5, head_timeout=2.0, connect_timeout=2.0)


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path)


async def _servers(svc: Services, master: Master, n: int) -> list[PeerServer]:
    return [await svc.server(master.store) for _ in range(n)]


async def test_three_peers_share_a_file(master: Master, tmp_path: Path) -> None:
    async with services() as svc:
        servers = await _servers(svc, master, 3)
        fetcher = Session(master.pins, [s.url for s in servers])
        try:
            path, stats = await fetcher.fetch("big", tmp_path / "out")
            assert path.read_bytes() == master.big.read_bytes()
            assert stats.from_network == master.big.stat().st_size
            small, _ = await fetcher.fetch("small", tmp_path / "out")
            assert small.read_bytes() == master.small.read_bytes()
            assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
                [path.name, small.name]
            )
        finally:
            fetcher.close()


@pytest.mark.parametrize("mode", ["corrupt", "absent", "stall", "reset", "busy"])
async def test_bad_peer_is_routed_around(
    master: Master, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2pkg")
    async with services() as svc:
        bad = await svc.server(master.store, mode=mode)
        good = await _servers(svc, master, 2)
        # The bad peer first: it gets the first span of every file.
        fetcher = Session(master.pins, [bad.url, *(s.url for s in good)], client_config=FAST)
        out = tmp_path / "out"
        try:
            for spec, original in (("big", master.big), ("small", master.small)):
                path, _stats = await fetcher.fetch(spec, out)
                assert path.read_bytes() == original.read_bytes(), f"mode={mode}"
            assert bad.url in caplog.text, f"the bad peer is named in the log (mode={mode})"
            if mode == "corrupt":
                assert bad.url in fetcher.banned
                assert "banning peer" in caplog.text
            assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partials left
        finally:
            fetcher.close()


async def test_only_bad_peers_means_nothing_is_written(master: Master, tmp_path: Path) -> None:
    async with services() as svc:
        bad = await svc.server(master.store, mode="corrupt")
        fetcher = Session(master.pins, [bad.url], client_config=FAST)
        out = tmp_path / "out"
        try:
            with pytest.raises(FetchError, match="no peer could deliver"):
                await fetcher.fetch("big", out)
            assert not (out / master.big.name).exists()
        finally:
            fetcher.close()


async def test_static_export_served_by_python_http_server(master: Master, tmp_path: Path) -> None:
    """A store exported as files is a complete read-only peer, even without Range support."""
    with Store.open(master.store) as st:
        export_store(st, tmp_path / "static")
    cmd = [
        sys.executable,
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "-d",
        str(tmp_path / "static"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        port = int(line.split("port ")[1].split()[0])
        url = f"http://127.0.0.1:{port}"
        small_spans = Session(master.pins, [url], schedule_config=_small_spans())
        try:
            path, _ = await small_spans.fetch("big", tmp_path / "out")
            assert path.read_bytes() == master.big.read_bytes()
            path, _ = await small_spans.fetch("small", tmp_path / "out")
            assert path.read_bytes() == master.small.read_bytes()
            # No POST on a static server: batches fall back to one GET per object.
            many = await small_spans.resolve_many(["small", "big"])
            assert [m.filename for m in many] == [master.small.name, master.big.name]
        finally:
            small_spans.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def _small_spans():  # type: ignore[no-untyped-def]
    from p2pkg.core.schedule import ScheduleConfig

    # Several spans per file, so the "server ignored Range" path is exercised.
    return ScheduleConfig(initial_span=1 << 20, min_span=512 * 1024, max_span=1 << 20)


async def test_resume_downloads_only_missing_chunks(master: Master, tmp_path: Path) -> None:
    async with services() as svc:
        servers = await _servers(svc, master, 1)
        out = tmp_path / "out"
        fetcher = Session(master.pins, [servers[0].url])
        try:
            manifest = await fetcher.resolve("big")
            # Simulate an interrupted download: a partial file holding every other chunk.
            out.mkdir()
            partial = out / f".{manifest.blake3.hex()}.p2pkg-partial"
            data = master.big.read_bytes()
            buf = bytearray(len(data))
            kept = 0
            for i, off in enumerate(manifest.chunk_offsets()):
                if i % 2 == 0:
                    n = manifest.chunks[i].length
                    buf[off : off + n] = data[off : off + n]
                    kept += n
            partial.write_bytes(bytes(buf))
            path, stats = await fetcher.fetch_file(manifest, out)
            assert path.read_bytes() == data
            assert stats.from_local == kept
            assert stats.from_network == len(data) - kept
            assert not partial.exists()
        finally:
            fetcher.close()


async def test_upgrade_reuses_chunks_from_the_store(master: Master, tmp_path: Path) -> None:
    from p2pkg.roles.publish import publish
    from p2pkg.testing.archives import build_wheel

    payload = bytes(range(256)) * 20_000  # the same payload in both versions
    v1 = build_wheel(tmp_path, "lib", "1.0", payload=payload)
    v2 = build_wheel(tmp_path, "lib", "2.0", payload=payload + b"new code")
    with Store.open(master.store) as st:
        publish(st, [master.key], [v1, v2])
    async with services() as svc:
        servers = await _servers(svc, master, 1)
        with Store.open(tmp_path / "client", create=True) as client_store:
            fetcher = Session(master.pins, [servers[0].url], client_store)
            try:
                await fetcher.fetch("lib==1.0", None)
                _, stats = await fetcher.fetch("lib==2.0", tmp_path / "out")
                assert stats.from_local > 0.8 * v2.stat().st_size
                assert (tmp_path / "out" / v2.name).read_bytes() == v2.read_bytes()
            finally:
                fetcher.close()


async def test_malformed_and_lying_responses(master: Master, tmp_path: Path) -> None:
    """Bad heads, oversized bodies, objects that do not hash to their id, stale roots."""
    with Store.open(master.store) as st:
        latest = st.latest_root_stored()
        assert latest is not None
        root_frame = latest[2]
        tree_id = next(oid for oid, kind, _ in st.iter_objects() if kind == 5)
    obj = f"/p2pkg/v1/objects/{tree_id.hex()}"
    cases = {
        "garbage head": {"/p2pkg/v1/root": b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"},
        "not http": {"/p2pkg/v1/root": b"\x00\x01\x02 definitely not http\r\n\r\n"},
        "huge root": {"/p2pkg/v1/root": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"},
        "root not zstd": {"/p2pkg/v1/root": http_response(200, b"not a root")},
        "object hashes wrong": {
            "/p2pkg/v1/root": http_response(200, root_frame),
            obj: http_response(200, compress(b"\x05\x01\x00\x00")),
        },
    }
    for name, routes in cases.items():
        fake = FakePeer(routes)
        url = await fake.start()
        client_store = tmp_path / f"client-{len(name)}-{name[:4]}"
        with Store.open(client_store, create=True) as cs:
            before = snapshot(client_store)
            fetcher = Session(master.pins, [url], cs, client_config=FAST)
            try:
                with pytest.raises(FetchError):
                    await fetcher.fetch("big", tmp_path / "out")
            finally:
                fetcher.close()
                await fake.close()
            after = snapshot(client_store)
            # At most the (valid, signed) root was remembered; no object, no file.
            not_roots = [row for row in after[0][1] if row[1] != 7]  # objects but signed roots
            assert not_roots == list(before[0][1]), name
            assert after[0][3] == before[0][3] and after[1] == before[1], name
    assert not (tmp_path / "out").exists()


async def test_resolve_many_uses_object_batches(master: Master, tmp_path: Path) -> None:
    async with services() as svc:
        server = (await _servers(svc, master, 1))[0]
        fetcher = Session(master.pins, [server.url])
        try:
            before = server.stats.requests
            manifests = await fetcher.resolve_many(["big", "small", "small==1.0", "big"])
            assert [m.filename for m in manifests] == [
                master.big.name,
                master.small.name,
                master.small.name,
                master.big.name,
            ]
            # root, top node, then one batch per level (nodes, leaves, projects, manifests)
            assert server.stats.requests - before <= 6
            with pytest.raises(NotFoundError):
                await fetcher.resolve_many(["big", "no-such-project"])
        finally:
            fetcher.close()


async def test_object_batch_with_a_bad_object_bans_the_peer(master: Master, tmp_path: Path) -> None:
    from p2pkg.core.codec import encode_uvarint
    from p2pkg.core.objects import ObjectId

    async with services() as svc:
        good = (await _servers(svc, master, 1))[0]
        oids = [ObjectId(b"\x01" * 32), ObjectId(b"\x02" * 32)]
        frame = compress(b"\x01\x01\x00")
        body = (encode_uvarint(len(frame)) + frame) * 2
        fake = FakePeer({"/p2pkg/v1/objects": http_response(200, body)})
        url = await fake.start()
        fetcher = Session(master.pins, [url, good.url], client_config=FAST)
        try:
            with pytest.raises(FetchError):
                # A batch (one id alone goes by GET); nobody holds them; the liar is banned.
                await fetcher.get_objects(oids)
            assert url in fetcher.banned
        finally:
            fetcher.close()
            await fake.close()


async def test_peer_serving_expired_or_older_root(master: Master, tmp_path: Path) -> None:
    """A rollback or an expired root from a peer is refused; nothing is written."""
    from p2pkg.core.root import Root, decode_signed_root, sign_root
    from p2pkg.roles.publish import publish

    with Store.open(master.store) as st:
        current = decode_signed_root(st.latest_root() or b"")[1]
    expired = sign_root(
        Root(current.namespace, current.version + 5, 1000, 2000, 1, current.keys, current.tree),
        [master.key],
    )
    fake = FakePeer({"/p2pkg/v1/root": http_response(200, compress(expired.encode()))})
    url = await fake.start()
    fetcher = Session(master.pins, [url], client_config=FAST)
    try:
        with pytest.raises(ExpiredRootError):  # a trust failure (exit 3), not a network one
            await fetcher.refresh_root()
    finally:
        fetcher.close()
        await fake.close()

    # A client whose store already trusts version 2 meets a peer still on version 1.
    with Store.open(master.store) as st:
        publish(st, [master.key], [])  # re-sign: version 2
        v2 = st.root_at(2)
        v1_frame = st.root_stored(1)
    client_store = tmp_path / "client"
    with Store.open(client_store, create=True) as cs:
        cs.commit(root=v2)
        before = snapshot(client_store)
        old = FakePeer({"/p2pkg/v1/root": http_response(200, v1_frame)})
        url = await old.start()
        fetcher = Session(master.pins, [url], cs, client_config=FAST)
        try:
            trusted = await fetcher.refresh_root()
            assert trusted.version == 2  # the stale offer was ignored, not adopted
        finally:
            fetcher.close()
            await old.close()
        assert snapshot(client_store) == before


async def test_chunk_endpoints(master: Master) -> None:
    """GET chunks/<id> and POST chunks (batch) serve raw chunk bytes by id."""
    from p2pkg.io.http import wire
    from p2pkg.io.http.client import PeerClient

    async with services() as svc:
        server = (await _servers(svc, master, 1))[0]
        client = PeerClient(server.url)
        data = master.big.read_bytes()
        try:
            with Store.open(master.store) as st:
                f = next(f for f in st.iter_files() if f.size == len(data))
                chunks = st.file_chunks(f.blake3)
            cid, off, n = chunks[1]
            status, body, head = await client.get_bytes(wire.chunk_path(cid), 1 << 20)
            assert status == 200 and body == data[off : off + n]
            assert "immutable" in head.headers["cache-control"]
            picked = [chunks[0], chunks[2], chunks[1]]
            status, body = await client.post(
                wire.BATCH_PATH, b"".join(c for c, _, _ in picked), 8 << 20
            )
            assert status == 200
            assert body == b"".join(data[o : o + n] for _, o, n in picked)
            status, _ = await client.post(wire.BATCH_PATH, b"\x00" * 32)
            assert status == 404  # one chunk not held: the whole batch is refused
            status, _ = await client.post(wire.BATCH_PATH, b"short")
            assert status == 400
        finally:
            client.close()


async def test_seed_syncs_with_object_batches(tmp_path: Path) -> None:
    """A seed fetches each tree level in batches: far fewer requests than objects."""
    from p2pkg.roles.publish import publish
    from p2pkg.roles.seed import Seeder
    from p2pkg.testing.archives import build_wheel

    from .netutil import make_master

    master = make_master(tmp_path, big_size=10_000)
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(40):
        build_wheel(extra, f"proj-{i}", "1.0", payload=1000)
    with Store.open(master.store) as st:
        publish(st, [master.key], [extra])
        objects = sum(1 for _ in st.iter_objects())
    async with services() as svc:
        upstream = (await _servers(svc, master, 1))[0]
        seeder = Seeder(tmp_path / "seed", master.pins, [upstream.url])
        try:
            assert await seeder.sync_once()
            files, _ = seeder.store.stats()
            assert files == 43  # every archive
            assert seeder.store.is_full  # a full mirror: verify holds it to the whole tree
            object_requests = upstream.stats.requests - files
            assert object_requests < objects // 4, (object_requests, objects)
        finally:
            await seeder.close()
