"""Connection exhaustion (issue 10, item 3): budgets per address, send timeout, EMFILE, root retry.

Real servers on 127.0.0.1 (in this process, or a subprocess where the
descriptor limit must be low); floods come from another loopback address,
127.0.0.2, so that "another client" (127.0.0.1) is another address.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import blake3
import pytest
from anyio.abc import SocketStream

from netsim.testbed import stop
from p2pkg.core.objects import ObjectId
from p2pkg.errors import PeerBusyError
from p2pkg.io.http import link as link_module
from p2pkg.io.http import wire
from p2pkg.io.http.client import PeerClient
from p2pkg.io.http.link import HttpLink
from p2pkg.io.http.server import (
    Exchange,
    PeerServer,
    ServerConfig,
    ThrottledLog,
    address_key,
)
from p2pkg.io.store import Store

from .helpers import await_until, wait_until
from .netutil import Master, MiB, make_master

FLOOD = "127.0.0.2"  # the flooding address; the client that must be served is 127.0.0.1


@pytest.fixture
def master(tmp_path: Path) -> Master:
    return make_master(tmp_path, big_size=MiB)


async def _exchange(stream: SocketStream, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET on a raw connection: (status, headers, body)."""
    await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    end = data.index(b"\r\n\r\n") + 4
    head = wire.parse_response_head(data[:end])
    body = data[end:]
    while len(body) < (head.content_length or 0):
        body += await stream.receive()
    return head.status, head.headers, body


async def _fetch(url: str, path: str) -> tuple[int, bytes]:
    client = PeerClient(url)
    try:
        status, body, _ = await client.get_bytes(path, 16 * MiB)
        return status, body
    finally:
        client.close()


async def _close_all(streams: list[SocketStream]) -> None:
    for stream in streams:
        await stream.aclose()


@pytest.mark.net
@pytest.mark.anyio
async def test_an_idle_flood_from_one_address_leaves_room_for_another(master: Master) -> None:
    """More idle keep-alive connections from one address than the budget: others still get in."""
    small = blake3.blake3(master.small.read_bytes()).digest()
    with Store.open(master.store) as st:
        server = PeerServer(st, ServerConfig(max_connections=16))
        flood: list[SocketStream] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                try:
                    for i in range(40):
                        stream = await anyio.connect_tcp("127.0.0.1", server.port, local_host=FLOOD)
                        flood.append(stream)
                        if i < 16 and i % 2:  # a request, then idle keep-alive
                            assert (await _exchange(stream, wire.STATUS_PATH))[0] == 200
                    await await_until(
                        lambda: server.stats.active == 16 and server.stats.busy == 24,
                        what="the budget full of the flood, the rest refused",
                    )
                    # Served while the flood lasts: root and a file, from 127.0.0.1.
                    assert (await _fetch(server.url, wire.root_path()))[0] == 200
                    status, body = await _fetch(server.url, wire.file_path(small))
                    assert status == 200 and body == master.small.read_bytes()
                    assert server.stats.reclaimed >= 1  # an idle flood connection made room
                    assert server.stats.active <= 16
                finally:
                    await _close_all(flood)
                tg.cancel_scope.cancel()


@pytest.mark.net
@pytest.mark.anyio
async def test_one_address_gets_503_beyond_its_share_while_others_are_served(
    master: Master,
) -> None:
    small = blake3.blake3(master.small.read_bytes()).digest()
    with Store.open(master.store) as st:
        server = PeerServer(st, ServerConfig(max_connections=16, max_per_address=4))
        flood: list[SocketStream] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                try:
                    answers = []
                    for _ in range(8):
                        stream = await anyio.connect_tcp("127.0.0.1", server.port, local_host=FLOOD)
                        flood.append(stream)
                        answers.append(await _exchange(stream, wire.STATUS_PATH))
                    assert [a[0] for a in answers] == [200] * 4 + [503] * 4
                    for _, headers, _ in answers[4:]:
                        assert headers["retry-after"] == "1"
                        assert headers["connection"] == "close"
                    status, body = await _fetch(server.url, wire.file_path(small))
                    assert status == 200 and body == master.small.read_bytes()
                    status, page = await _fetch(server.url, wire.STATUS_PATH)
                    shown = json.loads(page)
                    assert shown["max_per_address"] == 4 and shown["max_connections"] == 16
                    assert shown["addresses"] == 2  # the flood's 4, this client's 1
                    assert server.stats.reclaimed == 0  # the budget was never full
                finally:
                    await _close_all(flood)
                tg.cancel_scope.cancel()


@pytest.mark.net
@pytest.mark.anyio
async def test_clients_that_never_read_are_cut_by_the_send_timeout(tmp_path: Path) -> None:
    """A response nobody reads loses its connection after send_timeout; the slots come back."""
    master = make_master(tmp_path, big_size=8 * MiB)  # more than both socket buffers hold
    big = blake3.blake3(master.big.read_bytes()).digest()
    request = f"GET {wire.file_path(big)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with Store.open(master.store) as st:
        server = PeerServer(st, ServerConfig(max_connections=2, send_timeout=0.5))
        stuck: list[socket.socket] = []
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                try:
                    for _ in range(2):
                        sock = socket.socket()
                        stuck.append(sock)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                        sock.bind((FLOOD, 0))
                        sock.connect(("127.0.0.1", server.port))  # loopback: at once
                        sock.sendall(request)  # ...and never read
                    await await_until(
                        lambda: server.stats.send_timeouts == 2 and server.stats.active == 0,
                        what="both stuck responses aborted",
                    )
                    status, body = await _fetch(server.url, wire.file_path(big))
                    assert status == 200 and body == master.big.read_bytes()
                finally:
                    for sock in stuck:
                        sock.close()
                tg.cancel_scope.cancel()


@pytest.mark.net
@pytest.mark.anyio
async def test_a_root_request_waits_out_a_503_and_gets_the_root(master: Master) -> None:
    with Store.open(master.store) as st:
        latest = st.latest_root_stored()
        assert latest is not None
        server = PeerServer(st)
        asked = 0

        async def first_busy(ex: Exchange) -> bool:
            nonlocal asked
            asked += 1
            if asked == 1:
                return await ex.reply(503, b"busy", headers=[("Retry-After", "1")], keep=False)
            return await server.peer_protocol(ex)

        server.route(wire.root_path(), first_busy)
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            link = HttpLink(server.url)
            try:
                started = time.monotonic()
                with anyio.fail_after(5):
                    assert await link.root() == latest[2]
                assert asked == 2
                assert time.monotonic() - started >= 0.9  # it waited the Retry-After out
            finally:
                link.close()
            tg.cancel_scope.cancel()


@pytest.mark.net
@pytest.mark.anyio
async def test_a_root_request_refused_by_a_full_server_is_retried(master: Master) -> None:
    """The server's own refusal (budget full) says Retry-After: 1; the link comes back."""
    with Store.open(master.store) as st:
        latest = st.latest_root_stored()
        assert latest is not None
        server = PeerServer(st, ServerConfig(max_connections=1))
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            # The only slot, held by this address: no other address to take it from.
            hog = await anyio.connect_tcp("127.0.0.1", server.port)
            await await_until(lambda: server.stats.active == 1, what="the slot taken")

            async def leave_once_refused() -> None:
                await await_until(lambda: server.stats.busy == 1, what="the root refused")
                await hog.aclose()

            tg.start_soon(leave_once_refused)
            link = HttpLink(server.url)
            try:
                with anyio.fail_after(8):
                    assert await link.root() == latest[2]
                assert server.stats.by_status[503] == 1
            finally:
                link.close()
            tg.cancel_scope.cancel()


@pytest.mark.net
@pytest.mark.anyio
async def test_root_retries_are_bounded(master: Master, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "ROOT_RETRY_CAP", 0.05)  # Retry-After: 3600 waits this
    with Store.open(master.store) as st:
        server = PeerServer(st)
        asked = 0

        async def always_busy(ex: Exchange) -> bool:
            nonlocal asked
            asked += 1
            return await ex.reply(503, b"busy", headers=[("Retry-After", "3600")])

        server.route(wire.root_path(), always_busy)
        server.route(wire.PREFIX + "/objects/", always_busy)
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            link = HttpLink(server.url)
            try:
                with anyio.fail_after(5), pytest.raises(PeerBusyError) as info:
                    await link.root()
                assert asked == 1 + link_module.ROOT_RETRIES
                assert info.value.retry_after == 60  # the header's, capped as ever (§6.4)
                # Other 503s go to the scheduler, which pauses the peer: not retried here.
                asked = 0
                with anyio.fail_after(5), pytest.raises(PeerBusyError):
                    await link.object(ObjectId(bytes(32)))
                assert asked == 1
            finally:
                link.close()
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------------- descriptors (processes)

SERVE_WITH_LIMIT = """
import logging, os, resource, sys
from pathlib import Path
from typing import Any

import anyio

soft, hard, free = (int(a) for a in sys.argv[2:5])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

from p2pkg.io.http.server import PeerServer
from p2pkg.io.store import Store


async def main() -> None:
    with Store.open(Path(sys.argv[1])) as store:
        server = PeerServer(store)
        async with anyio.create_task_group() as tg:
            url = await tg.start(server.run)
            if free:  # the rest of the process holds every descriptor but `free`
                held = []
                try:
                    while True:
                        held.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    pass
                for fd in held[:free]:
                    os.close(fd)
            print("serving on", url, file=sys.stderr, flush=True)


anyio.run(main)
"""


def _start_limited(store: Path, log: Path, soft: int, hard: int, free: int) -> tuple[Any, str]:
    with log.open("wb") as out:  # a file, not a pipe: a log storm must not block the server
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE_WITH_LIMIT, str(store), str(soft), str(hard), str(free)],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        found = wait_until(
            lambda: re.search(r"serving on (http://\S+)", log.read_text()),
            timeout=20,
            what="the server to start",
        )
    except BaseException:
        _stop(proc)
        raise
    assert found is not None
    return proc, found.group(1)


def _stop(proc: Any) -> None:
    stop(proc)


def _status(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + wire.STATUS_PATH, timeout=2) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except OSError:
        return None


@pytest.mark.net
def test_out_of_descriptors_logs_one_line_and_serving_goes_on(
    master: Master, tmp_path: Path
) -> None:
    """ulimit -n 256, 8 descriptors left, 300 connections: a line or two of log, not 65,000."""
    log = tmp_path / "server.log"
    proc, url = _start_limited(master.store, log, 256, 256, free=8)
    try:
        port = int(url.rsplit(":", 1)[1])
        flood: list[socket.socket] = []
        try:
            for _ in range(300):
                sock = socket.socket()
                flood.append(sock)
                sock.setblocking(False)
                sock.bind((FLOOD, 0))
                sock.connect_ex(("127.0.0.1", port))
            # A fixed window, not a wait on a condition: what is measured is that
            # nothing more gets logged while the flood lasts (asyncio's own accept
            # loop logged ~6,000 tracebacks a second here).
            time.sleep(3)
        finally:
            for sock in flood:
                sock.close()
        shown = wait_until(lambda: _status(url), timeout=10, what="the server to answer again")
        assert shown is not None
        assert shown["fd_limit"] == 256
        assert shown["max_connections"] == (256 - 64) // 4  # what fits, not 512
        assert proc.poll() is None
        text = log.read_text()
        about = [ln for ln in text.splitlines() if "descriptors" in ln or "open files" in ln]
        emfile = [ln for ln in about if "Too many open files" in ln]
        assert 1 <= len(emfile) <= 3, text[:2000]
        assert len(text) < 10_000, f"{len(text)} bytes of log"
    finally:
        _stop(proc)


@pytest.mark.net
def test_the_soft_descriptor_limit_is_raised_to_fit_the_budget(
    master: Master, tmp_path: Path
) -> None:
    proc, url = _start_limited(master.store, tmp_path / "server.log", 256, 4096, free=0)
    try:
        shown = _status(url)
        assert shown is not None
        assert shown["fd_limit"] == 4096 and shown["max_connections"] == 512
    finally:
        _stop(proc)


# ---------------------------------------------------------------------- pure parts


def test_addresses_are_counted_by_ip_and_ipv6_hosts_by_their_64() -> None:
    assert address_key("127.0.0.2") == "127.0.0.2"
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an ip") == "not an ip"


def test_the_throttled_log_says_once_per_interval_how_many_it_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttled = ThrottledLog(interval=3600)
    with caplog.at_level("WARNING"):
        assert throttled.warning("out of %s", "descriptors")
        for _ in range(1000):
            assert not throttled.warning("out of %s", "descriptors")
        assert throttled.held == 1000
        throttled._next = 0.0  # the interval is over
        assert throttled.warning("out of %s", "descriptors")
    assert [r.getMessage() for r in caplog.records] == [
        "out of descriptors",
        "out of descriptors (1000 more since the last report)",
    ]
