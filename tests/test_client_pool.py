"""The peer client's pool: a pooled connection the peer closed is not the peer's fault."""

from __future__ import annotations

import asyncio

import pytest

from p2pkg.errors import TransportError
from p2pkg.io.http.client import PeerClient

pytestmark = [pytest.mark.anyio, pytest.mark.net]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


class OneAnswerPerConnection:
    """Answers each connection's first request, then drops the connection at its second.

    That is what a client sees when a server frees an idle keep-alive slot
    (idle timeout, or the slot given to another client) just as the client
    reuses it: the request goes out, the connection closes, no answer.
    """

    def __init__(self, answer_first: bool = True) -> None:
        self.answer_first = answer_first
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.answer_first:
                writer.write(OK)
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_pooled_connection_closed_by_the_peer_is_retried_once_on_a_fresh_one() -> None:
    peer = OneAnswerPerConnection()
    client = PeerClient(await peer.start())
    try:
        for _ in range(3):
            status, body, _ = await client.get_bytes("/x", 100)
            assert (status, body) == (200, b"ok")
        # 1st on a new connection; 2nd and 3rd each fail on the pooled one and
        # succeed on a fresh one: three connections, no error surfaced.
        assert peer.connections == 3
    finally:
        client.close()
        await peer.close()


async def test_a_fresh_connection_that_fails_is_the_peer_s_failure() -> None:
    peer = OneAnswerPerConnection(answer_first=False)
    client = PeerClient(await peer.start())
    try:
        with pytest.raises(TransportError):
            await client.get_bytes("/x", 100)
        assert peer.connections == 1  # not retried: nothing was reused
    finally:
        client.close()
        await peer.close()
