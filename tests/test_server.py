"""The peer server's shape: a route table, a store it is lent, a structured ``run``.

Real servers on 127.0.0.1; the cache is driven over HTTP like an installer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import anyio
import blake3
import pytest

from p2pkg.io.http import wire
from p2pkg.io.http.client import PeerClient
from p2pkg.io.http.server import Exchange, PeerServer, ServerConfig
from p2pkg.io.store import Store
from p2pkg.roles.cache import Cache
from p2pkg.roles.seed import Seeder

from .helpers import await_until
from .netutil import Master, MiB, archive_path, make_master, services

pytestmark = [pytest.mark.anyio, pytest.mark.net]


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=3 * MiB)


async def _get(url: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    client = PeerClient(url)
    try:
        if method == "POST":
            status, body = await client.post(path, b"x", 1 << 20)
            return status, body
        status, body, _ = await client.get_bytes(path, 1 << 20)
        return status, body
    finally:
        client.close()


def _connections_to(db: Path) -> int:
    """Open descriptors of this process on ``db`` (one per SQLite connection)."""
    n = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while listing
            n += fd.readlink() == db
    return n


async def test_routes_longest_prefix_wins_unknown_paths_are_404(master: Master) -> None:
    with Store.open(master.store) as st:
        server = PeerServer(st)
        seen: list[str] = []

        async def short(ex: Exchange) -> bool:
            return await ex.reply(200, b"short " + ex.path.encode())

        async def long(ex: Exchange) -> bool:
            return await ex.reply(200, b"long " + ex.path.encode())

        async def wrapped(ex: Exchange) -> bool:  # a role wrapping the peer protocol
            seen.append(ex.path)
            return await server.peer_protocol(ex)

        server.route("/a/", short)
        server.route("/a/b/", long)
        server.route(wire.PREFIX + "/", wrapped)
        async with anyio.create_task_group() as tg:
            url = await tg.start(server.run)
            assert await _get(url, "/a/x") == (200, b"short /a/x")
            assert await _get(url, "/a/b/c?q=1") == (200, b"long /a/b/c")
            assert await _get(url, "/a") == (404, b"not found")
            assert await _get(url, "/") == (404, b"not found")
            status, body = await _get(url, wire.STATUS_PATH)
            assert status == 200 and json.loads(body)["files"] == 3
            assert seen == [wire.STATUS_PATH]
            assert (await _get(url, wire.PREFIX + "/nothing"))[0] == 404
            tg.cancel_scope.cancel()


async def test_the_cache_answers_through_its_route_table(master: Master, tmp_path: Path) -> None:
    async with services() as svc:
        origin = await svc.server(master.store)
        cache = Cache(tmp_path / "cache", master.pins, [origin.url])

        async def extra(ex: Exchange) -> bool:
            return await ex.reply(200, b"extra")

        cache.server.route("/extra/", extra)  # a role adds a route beside the cache's
        url = await svc.start(cache.run)
        assert url == cache.url
        assert await _get(url, "/extra/x") == (200, b"extra")
        status, page = await _get(url, "/")
        assert status == 200 and b"p2pkg cache" in page
        assert await _get(url, "/nope") == (404, b"not found")
        assert await _get(url, "/files/zz/x.whl") == (404, b"not found")
        status, index = await _get(url, "/simple/")
        assert status == 200 and b"big" in index and b"small" in index
        assert (await _get(url, "/simple/", "POST"))[0] == 405
        status, body = await _get(url, wire.STATUS_PATH)
        assert status == 200 and json.loads(body)["role"] == "cache"


async def test_one_sqlite_connection_per_store(master: Master, tmp_path: Path) -> None:
    async with services() as svc:
        origin = await svc.server(master.store)
        cache = Cache(tmp_path / "cache", master.pins, [origin.url])
        assert cache.server.store is cache.store
        await svc.start(cache.run)
        client = PeerClient(cache.url)
        try:  # a page and an archive: the session and the server both at work
            href = await archive_path(client, "small", master.small.name)
            status, body, _ = await client.get_bytes(href, 1 << 20)
            assert status == 200 and body == master.small.read_bytes()
        finally:
            client.close()
        assert _connections_to(tmp_path / "cache" / "index.sqlite") == 1

        seeder = Seeder(tmp_path / "seed", master.pins, [origin.url])
        try:
            assert seeder.server.store is seeder.store
            assert _connections_to(tmp_path / "seed" / "index.sqlite") == 1
        finally:
            await seeder.close()
    assert _connections_to(tmp_path / "cache" / "index.sqlite") == 0  # run closed it


async def test_cancelling_run_ends_every_handler_and_closes_connections(master: Master) -> None:
    def handlers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if "_connection" in t.get_name()]

    with Store.open(master.store) as st:
        blake = blake3.blake3(master.big.read_bytes()).digest()
        server = PeerServer(st)
        streams = []
        with anyio.fail_after(5):  # well before any server timeout (head: 10 s, idle: 60 s)
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                for _ in range(4):
                    streams.append(await anyio.connect_tcp("127.0.0.1", server.port))
                # idle; half a request head; a finished keep-alive request; a big body unread
                await streams[1].send(b"GET /p2pkg/v1/status HTTP/1.1\r\nHo")
                await streams[2].send(b"GET /p2pkg/v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await streams[2].receive()).startswith(b"HTTP/1.1 200")
                big = f"GET {wire.file_path(blake)} HTTP/1.1\r\nHost: x\r\n\r\n"
                await streams[3].send(big.encode())
                assert (await streams[3].receive()).startswith(b"HTTP/1.1 200")
                await await_until(lambda: server.stats.active == 4, what="4 active connections")
                assert len(handlers()) == 4
                tg.cancel_scope.cancel()
        assert handlers() == []
        assert server.stats.active == 0
        for stream in streams:
            with anyio.fail_after(5):
                try:
                    while await stream.receive():  # what was in flight, then the end
                        pass
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    pass  # closed by the server
            await stream.aclose()
        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", server.port)  # no longer listening


async def test_a_live_download_survives_the_installer_leaving(
    master: Master, tmp_path: Path
) -> None:
    data = master.big.read_bytes()
    blake = blake3.blake3(data).digest()
    async with services() as svc:
        # 2 MB/s: the 3 MiB archive takes over a second, so the installer leaves mid-way.
        origin = await svc.server(master.store, ServerConfig(rate=2_000_000, burst=64 * 1024))
        cache = Cache(tmp_path / "cache", master.pins, [origin.url])
        done = anyio.Event()
        cache.primary.on_new_file = done.set
        url = await svc.start(cache.run)
        client = PeerClient(url)
        try:
            href = await archive_path(client, "big", master.big.name)
        finally:
            client.close()
        stream = await anyio.connect_tcp("127.0.0.1", cache.server.port)
        await stream.send(f"GET {href} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first = await stream.receive()
        assert first.startswith(b"HTTP/1.1 200")
        await stream.aclose()  # the installer goes away with most of the body unsent
        assert blake in cache.live and not cache.store.has_file(blake)
        with anyio.fail_after(30):
            await done.wait()
        assert cache.store.has_file(blake)
        assert cache.store.file_path(blake).read_bytes() == data
        assert not cache.live


async def test_a_cache_pulls_through_for_clients_but_never_for_another_cache(
    master: Master, tmp_path: Path
) -> None:
    """Sibling caches serve hits only (``Cache-Control: only-if-cached``): no loops."""
    from p2pkg.core.peers import Tier
    from p2pkg.io.http.client import ClientConfig
    from p2pkg.roles.links import Peer
    from p2pkg.roles.namespace import open_store_namespace

    with Store.open(master.store) as st:
        tree_top = open_store_namespace(st).trusted.root.tree  # held by the origin only
    async with services() as svc:
        origin = await svc.server(master.store)
        a = Cache(tmp_path / "a", master.pins, [origin.url])
        b = Cache(tmp_path / "b", master.pins, [origin.url])
        url_a = await svc.start(a.run)
        url_b = await svc.start(b.run)
        # Each is the other's preferred (LAN) peer, as DNS-SD would make them.
        a.session.add_peer(Peer(url_b, Tier.LAN))
        b.session.add_peer(Peer(url_a, Tier.LAN))
        oid_path = wire.PREFIX + "/objects/" + tree_top.hex()

        client = PeerClient(url_a, ClientConfig(extra_headers=(wire.ONLY_IF_CACHED,)))
        try:
            # Another cache asking: only what A holds, nothing fetched for it.
            status, _, _ = await client.get_bytes(oid_path, 1 << 20)
            assert status == 404
            assert not a.store.has_object(tree_top)
        finally:
            client.close()

        # A client asking: A pulls through. Its own request to B (its LAN peer)
        # says only-if-cached, so B answers 404 instead of asking A back, and A
        # gets the object from the origin — within seconds, not a timeout.
        with anyio.fail_after(10):
            status, body = await _get(url_a, oid_path)
        assert status == 200 and body
        assert a.store.has_object(tree_top)
        assert not b.store.has_object(tree_top)


async def test_a_cache_pulls_through_only_objects_its_signed_tree_reaches(
    master: Master, tmp_path: Path
) -> None:
    """An id alone could name any object a peer holds: only signed ones pass (issue 10.4)."""
    from p2pkg.core.objects import Blob, encode, object_id
    from p2pkg.roles.session import Session

    unsigned = encode(Blob(b"nobody signed this"))
    oid = object_id(unsigned)
    with Store.open(master.store) as st:
        st.commit(objects={oid: unsigned})  # the origin holds it, no root lists it
    async with services() as svc:
        origin = await svc.server(master.store)
        cache = Cache(tmp_path / "cache", master.pins, [origin.url])
        url = await svc.start(cache.run)
        path = wire.PREFIX + "/objects/" + oid.hex()
        assert (await _get(origin.url, path))[0] == 200  # the origin serves it...
        assert (await _get(url, path))[0] == 404  # ...the cache does not pass it on
        assert not cache.store.has_object(oid)
        # A client that knows only the cache walks the signed tree through it
        # (GETs and batches), and gets the archive.
        session = Session(master.pins, [url])
        try:
            manifest = await session.resolve("small")
            path_out, _ = await session.fetch_file(manifest, tmp_path / "out")
            assert path_out.read_bytes() == master.small.read_bytes()
        finally:
            session.close()
        client = PeerClient(url)
        try:
            href = await archive_path(client, "small", master.small.name)
            status, body, _ = await client.get_bytes(href, 1 << 20)
            assert status == 200 and body == master.small.read_bytes()
        finally:
            client.close()
