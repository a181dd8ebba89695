"""A slow peer for tests and benchmarks: right heads, bodies at a trickle (TUF's slow retrieval).

A :class:`Trickler` answers every request as an honest peer ``upstream``
does — it forwards the request (with its Range) and sends back the same
status, Content-Length and Content-Range at once — but sends the bodies it
trickles (roots, objects, files: ``only``) at ``rate`` bytes per second, or,
with ``lie``, sends half of the body its Content-Length promises and then
nothing (a Content-Length lie). Either way it never stops answering on its
own: only the client gives up.

Run alone (the benchmark does)::

    python -m netsim.trickler --upstream http://127.0.0.1:8000 [--rate 1] [--lie]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from collections.abc import Sequence

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from p2pkg.core.link import Sink
from p2pkg.errors import P2pkgError
from p2pkg.io.http import wire
from p2pkg.io.http.client import BytesSink, PeerClient

#: What a trickler slows down, by path under /p2pkg/v1/ ("root" also covers roots/<v>).
KINDS = ("root", "objects", "files")

#: Headers an answer passes on from upstream (Content-Length is set from the body).
PASSED = ("content-range", "content-type", "retry-after", "etag", "cache-control")

_GONE = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.DelimiterNotFound,
    OSError,
    P2pkgError,
    wire.BadRequest,
)


class Trickler:
    """An HTTP peer serving what ``upstream`` serves, slowly."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 1.0,
        lie: bool = False,
        only: Sequence[str] = KINDS,
    ) -> None:
        self.upstream = PeerClient(upstream)
        self.rate = rate
        self.lie = lie
        self.only = tuple(only)
        self.asked: Counter[str] = Counter()  # requests answered slowly, by kind

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started(url)`` once listening."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        try:
            async with listener:
                bound = listener.extra(SocketAttribute.local_port)
                task_status.started(f"http://{host}:{bound}")
                await listener.serve(self._connection)
        finally:
            self.upstream.close()

    def _kind(self, target: str) -> str | None:
        rest = target.removeprefix(wire.PREFIX + "/")
        return next((k for k in self.only if rest.startswith(k)), None)

    async def _connection(self, stream: SocketStream) -> None:
        received = BufferedByteReceiveStream(stream)
        async with stream:
            with contextlib.suppress(*_GONE):
                while True:
                    raw = await received.receive_until(b"\r\n\r\n", wire.MAX_HEAD)
                    request = wire.parse_request_head(raw + b"\r\n\r\n")
                    body = b""
                    if request.content_length:
                        body = await received.receive_exactly(request.content_length)
                    status, headers, data = await self._forward(request, body)
                    await stream.send(wire.format_response_head(status, headers))
                    kind = self._kind(request.target)
                    if kind is None or status not in (200, 206) or not data:
                        await stream.send(data)
                    else:
                        self.asked[kind] += 1
                        await self._slowly(stream, data)
                    if not request.keep_alive:
                        return

    async def _forward(
        self, request: wire.RequestHead, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """The upstream's answer to ``request``: status, headers to pass on, body."""
        sinks: list[BytesSink] = []
        heads: list[wire.ResponseHead] = []

        def factory(head: wire.ResponseHead) -> Sink:
            heads.append(head)
            sinks.append(BytesSink(head.content_length or 0))
            return sinks[-1]

        asked = tuple((k, v) for k, v in request.headers.items() if k == "range")
        head = await self.upstream.request(
            request.method, request.target, factory, headers=asked, body=body
        )
        data = bytes(sinks[0].data) if sinks else b""
        headers = [("Content-Length", str(len(data)))]
        headers += [(k, v) for k, v in head.headers.items() if k in PASSED]
        return head.status, headers, data

    async def _slowly(self, stream: SocketStream, data: bytes) -> None:
        """``data`` at ``rate`` bytes/s, or half of it and then silence (``lie``)."""
        if self.lie:
            await stream.send(data[: len(data) // 2])
            while True:  # silent until the client gives up and closes
                await stream.receive()
        for i in range(len(data)):
            await stream.send(data[i : i + 1])
            await anyio.sleep(1 / self.rate)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m netsim.trickler", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the honest peer's base URL")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default: a free port)")
    parser.add_argument("--rate", type=float, default=1.0, help="bytes per second (default 1)")
    parser.add_argument("--lie", action="store_true", help="send half the body, then nothing")
    parser.add_argument("--only", default=",".join(KINDS), help="what to slow: root,objects,files")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    trickler = Trickler(args.upstream, rate=args.rate, lie=args.lie, only=args.only.split(","))

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            url = await tg.start(trickler.run, host, int(port))
            print(f"trickling {args.upstream} on {url}", file=sys.stderr, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve)


if __name__ == "__main__":
    main()
