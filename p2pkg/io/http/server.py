"""The peer server: serves a store over HTTP/1.1 (docs/protocol.md §6).

asyncio streams for the request side (heads parsed by h11 with a size
limit and timeouts against slowloris), ``loop.sendfile`` for every body
that lives in an archive (files, ranges, chunks, batches), so serving costs
little CPU and no buffer memory. Budgets: a connection cap and an optional
upload rate (one token bucket shared by all connections); past either the
server answers 503 with Retry-After rather than slowing everyone down.

Requests go through a route table: the longest registered path prefix
wins, and the peer protocol is registered under ``/p2pkg/v1/``. A role
adds its own routes (the cache: ``/``, ``/simple/``, ``/files/``) with
:meth:`PeerServer.route` and answers through the :class:`Exchange` it is
handed. The server does not own the store: the role that opened it passes
it in and closes it (one SQLite connection per store per process).

:meth:`PeerServer.run` is structured: the accept loops and every connection
handler are children of its task group, and cancelling ``run`` stops
accepting, aborts the open connections and returns once every handler has
ended.

Connection budget (issue 10, connection exhaustion). One address must not
be able to starve the others, and running out of descriptors must neither
stop the server nor fill the disk with logs:

* **Per-address share.** Connections are counted per client address (the
  IP; an IPv6 client by its /64, which one host usually owns whole). One
  address holds at most ``max_per_address`` connections (default: a quarter
  of the budget, at least 128, at most the budget); past it, 503.
* **Fair sharing, idle first.** When the budget is full, a newcomer from an
  address holding less than its fair share (budget / addresses connected)
  takes the slot of the longest-waiting connection of an address above its
  share, among connections waiting for a request head (idle keep-alive,
  fresh, or trickling a head): those cost nothing to close, and HTTP clients
  expect idle connections to go. A connection mid-request is never taken.
  With nothing to reclaim, the newcomer gets 503 + ``Retry-After: 1``.
* **Refusals are bounded too.** A refused connection is read briefly (its
  request head, 2 s at most) so that the client sees a proper 503 instead
  of a reset; at most twice the budget wait so, and at most twice its
  per-address cap per address; past either, the socket is closed at once.
* **Send timeout.** A client that stops reading must not hold a slot: a
  write that makes no progress for ``send_timeout`` seconds aborts the
  connection. ``drain`` watches the transport's buffer shrink; ``sendfile``
  goes in slices sized to an eighth of ``send_timeout`` at the rate the
  previous slice achieved (64 KiB to 16 MiB), so a slice that outlasts
  ``send_timeout`` means the reader all but stopped (less than 64 KiB in
  ``send_timeout``, 2 KiB/s by default). Slices of 1-16 MiB cost the same
  CPU as one call for the whole file (measured: 0.25-0.3 CPU-s per GiB).
* **Descriptors.** :meth:`PeerServer.run` raises the soft ``RLIMIT_NOFILE``
  towards the hard limit (:func:`fit_descriptors`) and, when even that
  cannot hold the budget, serves fewer connections (a warning says so; the
  status shows ``max_connections`` and ``fd_limit``). A slot counts four
  descriptors (its socket, a file it sends, two places in the refusal
  queue) plus a reserve for the store, the DHT and the role's own clients.
* **EMFILE.** The server runs its own accept loop (``loop.sock_accept``).
  asyncio's built-in one, on EMFILE, logs a traceback through the loop's
  exception handler once per *backlog slot* and retries after 1 s: a
  1,000-connection flood at ``ulimit -n 256`` wrote 65,000 tracebacks
  (29 MB) in 11 s. Here running out of descriptors (accepting, or opening a
  file to send) is one warning per :data:`RESOURCE_LOG_INTERVAL` with a
  count; the accept loop then reclaims the longest-waiting idle connection
  (its descriptor lets the queue move on) or, with none, backs off up to 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from p2pkg.io.http import wire
from p2pkg.io.http.metrics import RequestMetrics, route_label
from p2pkg.io.http.peer_routes import NotifyHandler, PeerProtocol
from p2pkg.io.store import Store

log = logging.getLogger(__name__)

#: Errors that mean "out of descriptors or kernel memory", not "this connection failed".
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: At most one log line per this many seconds about running out of descriptors.
RESOURCE_LOG_INTERVAL = 10.0
#: Descriptors kept out of the connection budget (store, DHT, the role's clients).
RESERVED_FDS = 256
#: Descriptors one connection slot may cost (see the module docstring).
FDS_PER_SLOT = 4
#: The soft limit run() asks for when the hard limit allows (headroom for the role).
WANTED_FDS = 8192
REFUSE_TIMEOUT = 2.0  # how long a refused connection may take to send its request head
MIN_SLICE = 64 * 1024
FIRST_SLICE = 1 << 20
MAX_SLICE = 16 << 20


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Budgets and timeouts of a peer server."""

    max_connections: int = 512  # fewer if the descriptor limit cannot hold them
    head_timeout: float = 10.0  # a request head must arrive within this (slowloris)
    idle_timeout: float = 60.0  # keep-alive connections idle longer are closed
    body_timeout: float = 30.0
    max_body: int = wire.MAX_BATCH * 32
    rate: float | None = None  # upload bytes/s for the whole server; None = unlimited
    burst: int = 256 * 1024
    max_debt_seconds: float = 2.0  # queued upload beyond this answers 503
    rate_slice: int = 256 * 1024  # sendfile granularity when rate-limited
    # Connections one client address may hold; None: max(128, budget / 4), at most the budget.
    max_per_address: int | None = None
    send_timeout: float = 30.0  # a response making no progress this long is aborted


def fit_descriptors(max_connections: int) -> tuple[int, int | None]:
    """Make room for ``max_connections``: ``(connections that fit, soft fd limit)``.

    Raises the process's soft ``RLIMIT_NOFILE`` towards the hard limit (to
    what the budget needs, and :data:`WANTED_FDS` when allowed); if the
    limit still cannot hold the budget, returns the budget that fits. The
    limit is None where there is none (or no ``resource`` module).
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return max_connections, None
    unlimited = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FDS_PER_SLOT * max_connections + RESERVED_FDS
    if soft != unlimited and soft < max(need, WANTED_FDS):
        target = max(need, WANTED_FDS)
        if hard != unlimited:
            target = min(target, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError) as exc:  # e.g. macOS: above kern.maxfilesperproc
                log.debug("cannot raise the descriptor limit to %d: %s", target, exc)
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == unlimited:
        return max_connections, None
    reserve = min(RESERVED_FDS, soft // 4)
    fits = max(1, (soft - reserve) // FDS_PER_SLOT)
    return min(max_connections, fits), soft


def address_key(host: str) -> str:
    """Whose connection this is, for per-address shares: the IP, an IPv6 host by its /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SendTimeoutError(ConnectionError):
    """The client took no data for ``send_timeout`` seconds: the connection was aborted."""


class ThrottledLog:
    """One warning per ``interval`` seconds; what was held back is counted in the next."""

    def __init__(self, interval: float = RESOURCE_LOG_INTERVAL) -> None:
        self.interval = interval
        self.held = 0
        self._next = -math.inf

    def warning(self, msg: str, *args: object) -> bool:
        """Log ``msg`` unless one went out within ``interval``; whether it was logged."""
        now = time.monotonic()
        if now < self._next:
            self.held += 1
            return False
        if self.held:
            msg += " (%d more since the last report)"
            args = (*args, self.held)
        self.held = 0
        self._next = now + self.interval
        log.warning(msg, *args)
        return True


class TokenBucket:
    """Upload budget shared by all connections; debt-based so waits are fair."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def debt_seconds(self, now: float) -> float:
        self._refill(now)
        return max(0.0, -self.tokens / self.rate)

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` tokens (possibly going into debt); seconds to wait before sending."""
        self._refill(now)
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)


@dataclass
class ServerStats:
    requests: int = 0
    bytes_sent: int = 0
    busy: int = 0  # 503 answers and refused connections
    active: int = 0  # connections being served (not those being refused)
    reclaimed: int = 0  # idle connections closed to make room for another address
    send_timeouts: int = 0
    out_of_descriptors: int = 0  # EMFILE/ENFILE (accepting or opening a file)
    by_status: dict[int, int] = field(default_factory=dict)


StatusExtra = Callable[[], dict[str, Any]]


class Exchange:
    """One request on one connection, and the public ways to answer it.

    A handler answers with :meth:`reply` (a body in memory), :meth:`send_file`
    (a held archive), or — for bodies that grow while they are sent —
    :meth:`write_head`, :meth:`sendfile` and :meth:`abort`. Every method
    that returns a bool returns whether the connection may be kept alive.
    Sending is bounded by the server's ``send_timeout``: a client that stops
    reading gets its connection aborted (:class:`SendTimeoutError`).
    """

    __slots__ = (
        "_outcome",
        "_writer",
        "body",
        "head_only",
        "path",
        "peer",
        "req",
        "server",
        "site",
    )

    def __init__(
        self,
        server: PeerServer,
        req: wire.RequestHead,
        body: bytes,
        peer: str,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.req = req
        self.body = body
        self.peer = peer
        self.path = req.target.split("?", 1)[0]
        self.head_only = req.method == "HEAD"
        self._writer = writer
        #: The server whose routes and store answer: ``server`` itself, or a
        #: site mounted on it (:meth:`PeerServer.mount`). Connections, budgets
        #: and counters stay ``server``'s.
        self.site = server
        self._outcome = [0]  # the status answered (shared with a mounted view)

    @property
    def status(self) -> int:
        """The status code answered so far (0 before the head is written)."""
        return self._outcome[0]

    def within(self, prefix: str, site: PeerServer) -> Exchange:
        """This request as ``site`` sees it, mounted at ``prefix``: the prefix cut off the path."""
        req = dataclasses.replace(self.req, target=self.req.target[len(prefix) :] or "/")
        inner = Exchange(self.server, req, self.body, self.peer, self._writer)
        inner.site = site
        inner._outcome = self._outcome
        return inner

    @property
    def peer_host(self) -> str:
        """The client's IP address (without port), as the socket reports it."""
        name = self._writer.get_extra_info("peername")
        return str(name[0]) if isinstance(name, tuple) and name else ""

    async def reply(
        self,
        status: int,
        body: bytes,
        *,
        headers: Sequence[tuple[str, str]] = (),
        ctype: str = "text/plain; charset=utf-8",
        keep: bool = True,
    ) -> bool:
        """A whole response with ``body`` (only its head when the request is HEAD)."""
        self._outcome[0] = status
        return await self.server._simple(
            self._writer,
            status,
            body,
            keep=keep,
            headers=headers,
            head_only=self.head_only,
            ctype=ctype,
        )

    async def send_file(
        self, blake3: bytes, *, on_sent: Callable[[int], None] | None = None
    ) -> bool:
        """A held archive, whole or the one byte range asked for.

        404 when the store lacks it, 416 for a range outside it, 503 with
        Retry-After when the upload budget is queued too far ahead. The body
        goes out with ``sendfile``; ``on_sent(n)`` is called once it has.
        """
        return await self.site.protocol.send_file(self, blake3, on_sent=on_sent)

    async def over_budget(self) -> bool:
        """Answer 503 + Retry-After if the server's upload budget is queued too far ahead."""
        return await self.server._busy(self)

    def write_head(
        self, status: int, headers: Sequence[tuple[str, str]], *, keep: bool = True
    ) -> None:
        """Queue a response head (the caller sends the body and states its length)."""
        self._outcome[0] = status
        self._writer.write(self.server._head(status, list(headers), keep))

    async def sendfile(self, fh: IO[bytes], offset: int, count: int) -> None:
        """Send ``count`` bytes of ``fh`` from ``offset`` (kernel copy, upload budget)."""
        await self.server._sendfile(self._writer, fh, offset, count)

    async def drain(self) -> None:
        """Wait until what was written has gone to the socket (flow control)."""
        await self.server._drain(self._writer)

    def abort(self) -> None:
        """Drop the connection now: a body cut short is all the client sees."""
        self._writer.transport.abort()


Handler = Callable[[Exchange], Awaitable[bool]]
"""A route's handler: answers the exchange; returns whether to keep the connection."""


class _Conn:
    """One accepted socket: whose it is, and whether it waits for a request head."""

    __slots__ = ("dropped", "key", "opening", "served", "since", "sock", "writer")

    def __init__(self, key: str, sock: socket.socket, served: bool) -> None:
        self.key = key
        self.sock = sock
        self.served = served  # False: it is being refused (503)
        self.writer: asyncio.StreamWriter | None = None
        self.opening = False  # being handed to a transport (the socket is not ours to close)
        self.since: float | None = None  # waiting for a request head since (monotonic)
        self.dropped = False  # closed by the server (reclaimed, or run ended)


class PeerServer:
    """Serve one store over HTTP. ``on_notify`` receives pushed roots (seeds).

    ``store`` belongs to the caller, which closes it after :meth:`run` ended.
    """

    def __init__(
        self,
        store: Store,
        config: ServerConfig = ServerConfig(),
        *,
        on_notify: NotifyHandler | None = None,
        status_extra: StatusExtra | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.status_extra = status_extra
        self.stats = ServerStats()
        self.requests = RequestMetrics()  # by route and status, for /metrics
        self.bucket = TokenBucket(config.rate, config.burst) if config.rate else None
        self._routes: dict[str, Handler] = {}
        self.protocol = PeerProtocol(store, on_notify=on_notify)
        self.route(wire.PREFIX + "/", self.peer_protocol)
        self._listeners: list[socket.socket] | None = None
        self._bound: tuple[str, int] | None = None
        self.max_connections = config.max_connections  # what fits the fd limit (see run)
        self.fd_limit: int | None = None
        self._conns: set[_Conn] = set()  # every accepted socket not yet closed
        self._served: dict[str, int] = {}  # address -> connections being served
        self._waiting: dict[str, dict[_Conn, None]] = {}  # address -> idle ones, oldest first
        self._refusing: dict[str, int] = {}  # address -> connections being refused
        self._overflow = 0
        self._resource_log = ThrottledLog()
        #: Set when this server is mounted on another (it then never listens).
        self.parent: PeerServer | None = None
        self.base_path = ""

    # ------------------------------------------------------------------ routes

    def route(self, prefix: str, handler: Handler) -> None:
        """Answer requests whose path starts with ``prefix`` with ``handler``.

        The longest matching prefix wins; registering a prefix again replaces
        its handler. A path no prefix matches is answered 404.
        """
        self._routes[prefix] = handler

    def mount(self, prefix: str, site: PeerServer) -> None:
        """Serve ``site``'s routes under ``prefix`` (e.g. ``/ns/corp``) on this server.

        ``site`` never listens: its requests arrive on this server's
        connections, under this server's budgets, with ``prefix`` cut off
        the path; it answers from its own store and routes. Its ``url`` is
        this server's URL plus ``prefix`` — a base URL peers can use.
        """
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"mount prefix {prefix!r}: starts with '/', does not end with one")
        site.parent, site.base_path = self, prefix

        async def mounted(ex: Exchange) -> bool:
            inner = ex.within(prefix, site)
            handler = site.handler_for(inner.path)
            if handler is None:
                return await inner.reply(404, b"not found")
            return await handler(inner)

        self.route(prefix + "/", mounted)

    def front(self, site: PeerServer) -> None:
        """Answer ``/p2pkg/v1/`` with ``site``'s routes (its store; a mounted site's).

        A node serving several namespaces serves its first at the top
        level as well as at ``/ns/NAME/``. ``/p2pkg/v1/status`` stays this
        server's: the whole node's status.
        """

        async def fronted(ex: Exchange) -> bool:
            route = wire.parse_target(ex.req.target)
            if route is not None and route.kind is wire.Kind.STATUS:
                return await self.peer_protocol(ex)
            inner = ex.within("", site)
            handler = site.handler_for(inner.path)
            if handler is None:
                return await inner.reply(404, b"not found")
            return await handler(inner)

        self.route(wire.PREFIX + "/", fronted)

    def handler_for(self, path: str) -> Handler | None:
        """The handler of the longest registered prefix of ``path`` (None: 404)."""
        best: str | None = None
        for prefix in self._routes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return None if best is None else self._routes[best]

    # ------------------------------------------------------------------ running

    @property
    def host(self) -> str:
        """The address the listening socket is bound to."""
        if self.parent is not None:
            return self.parent.host
        if self._bound is None:
            raise RuntimeError("the server is not running")
        return self._bound[0]

    @property
    def port(self) -> int:
        """The TCP port the server listens on (the one chosen when 0 was asked)."""
        if self.parent is not None:
            return self.parent.port
        if self._bound is None:
            raise RuntimeError("the server is not running")
        return self._bound[1]

    @property
    def url(self) -> str:
        """The base URL peers use: ``http://host:port``, plus the mount prefix if mounted."""
        if self.parent is not None:
            return self.parent.url + self.base_path
        return f"http://{self.host}:{self.port}"

    @property
    def max_per_address(self) -> int:
        """Connections one client address may hold (see :class:`ServerConfig`)."""
        cap = self.config.max_per_address
        if cap is None:
            cap = max(128, self.max_connections // 4)
        return max(1, min(cap, self.max_connections))

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; ``started(url)`` once bound.

        Each connection is handled by a child task of this call: on
        cancellation the listener closes, open connections are aborted and
        this returns (re-raising the cancellation) once every handler ended.
        """
        if self._listeners is not None:
            raise RuntimeError("the server is already running")
        self.max_connections, self.fd_limit = fit_descriptors(self.config.max_connections)
        if self.max_connections < self.config.max_connections:
            log.warning(
                "peer server: %d connections do not fit the descriptor limit (%d): serving "
                "at most %d (raise the hard limit, ulimit -Hn, for more)",
                self.config.max_connections,
                self.fd_limit,
                self.max_connections,
            )
        listeners = await _listen(host, port)
        self._listeners = listeners
        name = listeners[0].getsockname()
        self._bound = (str(name[0]), int(name[1]))
        try:
            async with anyio.create_task_group() as tg:
                for listener in listeners:
                    tg.start_soon(self._accept_loop, listener, tg)
                try:
                    task_status.started(self.url)
                    await anyio.sleep_forever()
                finally:
                    # Stop admitting and close the sockets no handler has taken up
                    # yet; the cancelled handlers abort their own connections at
                    # once (not here: aborting a transport under a running
                    # loop.sendfile trips asyncio, InvalidStateError on its waiter).
                    self._listeners = None
                    for conn in list(self._conns):
                        if conn.writer is None and not conn.opening:
                            self._drop(conn)
        finally:
            self._listeners = None
            for listener in listeners:
                listener.close()

    async def _accept_loop(self, listener: socket.socket, tg: TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            try:
                sock, addr = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRNOS:
                    # ECONNABORTED (gave up in the queue) and kin: that connection only.
                    log.debug("peer server: accept failed: %s", exc)
                    await anyio.sleep(0)
                    continue
                self._out_of_descriptors("accepting connections", exc)
                # The queue only moves when a descriptor comes back: take the
                # longest-waiting idle connection's, or wait for one to close.
                if self._reclaim(self._victim() or self._victim(over=0.0)):
                    await anyio.sleep(0)  # its socket closes in the next loop turn
                else:
                    backoff = min(1.0, max(0.05, 2 * backoff))
                    await anyio.sleep(backoff)
                continue
            backoff = 0.0
            self._admit(sock, addr, tg)
            await anyio.sleep(0)  # a burst of accepts must not starve the handlers

    def _out_of_descriptors(self, doing: str, exc: OSError) -> None:
        self.stats.out_of_descriptors += 1
        self._resource_log.warning(
            "peer server: out of descriptors %s (%s; %d connections, fd limit %s)",
            doing,
            exc.strerror or exc,
            len(self._conns),
            self.fd_limit,
        )

    # ------------------------------------------------------------------ admission

    def _admit(self, sock: socket.socket, addr: Any, tg: TaskGroup) -> None:
        """Serve, refuse (503) or close a just-accepted socket; decided before any await."""
        if self._listeners is None:  # accepted just before the server stopped
            sock.close()
            return
        key = address_key(str(addr[0]) if isinstance(addr, tuple) else str(addr))
        if self._may_serve(key):
            conn = _Conn(key, sock, served=True)
            self._served[key] = self._served.get(key, 0) + 1
            self.stats.active += 1
            self._set_waiting(conn, True)
        else:
            self.stats.busy += 1
            if (
                self._overflow >= 2 * self.max_connections
                or self._refusing.get(key, 0) >= 2 * self.max_per_address
            ):
                sock.close()  # the refusal queue is full (for this address): no answer
                return
            conn = _Conn(key, sock, served=False)
            self._overflow += 1
            self._refusing[key] = self._refusing.get(key, 0) + 1
        self._conns.add(conn)
        tg.start_soon(self._connection, conn)

    def _may_serve(self, key: str) -> bool:
        """Whether a new connection from ``key`` gets a slot (reclaiming one if need be)."""
        held = self._served.get(key, 0)
        if held >= self.max_per_address:
            return False
        if self.stats.active < self.max_connections:
            return True
        addresses = len(self._served) + (key not in self._served)
        fair = self.max_connections / addresses
        return held < fair and self._reclaim(self._victim(over=fair))

    def _victim(self, over: float | None = None) -> _Conn | None:
        """The longest-waiting idle connection of an address holding more than ``over``.

        ``over`` defaults to the fair share (budget / addresses connected).
        """
        if over is None:
            over = self.max_connections / max(1, len(self._served))
        best: _Conn | None = None
        for key, waiting in self._waiting.items():
            if waiting and self._served.get(key, 0) > over:
                oldest = next(iter(waiting))
                if best is None or (oldest.since or 0.0) < (best.since or 0.0):
                    best = oldest
        return best

    def _reclaim(self, conn: _Conn | None) -> bool:
        if conn is None:
            return False
        self.stats.reclaimed += 1
        log.debug("peer server: closing an idle connection of %s to make room", conn.key)
        self._drop(conn)
        return True

    def _set_waiting(self, conn: _Conn, waiting: bool) -> None:
        """Mark ``conn`` as waiting for a request head (reclaimable) or busy."""
        idle = self._waiting.setdefault(conn.key, {})
        idle.pop(conn, None)
        if waiting:
            conn.since = time.monotonic()
            idle[conn] = None  # the newest waits longest from now: appended last
        else:
            conn.since = None
        if not idle:
            del self._waiting[conn.key]

    def _release(self, conn: _Conn) -> None:
        """Give ``conn``'s slot back (once; the handler's exit and a reclaim may both ask)."""
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        if conn.served:
            self.stats.active -= 1
            self._set_waiting(conn, False)
            _decrement(self._served, conn.key)
        else:
            self._overflow -= 1
            _decrement(self._refusing, conn.key)

    def _drop(self, conn: _Conn) -> None:
        """Release ``conn`` and close it now, whatever its handler is doing."""
        self._release(conn)
        conn.dropped = True
        if conn.writer is not None:
            conn.writer.transport.abort()
        elif not conn.opening:  # its handler has not started: it will see ``dropped``
            conn.sock.close()
        # else: the handler aborts the transport once it exists

    # ------------------------------------------------------------------ connection

    async def _connection(self, conn: _Conn) -> None:
        if conn.dropped:  # reclaimed (or the server stopped) before this task ran
            return
        conn.opening = True
        try:
            reader, writer = await asyncio.open_connection(sock=conn.sock, limit=wire.MAX_HEAD)
        except BaseException as exc:
            self._release(conn)
            conn.sock.close()
            if isinstance(exc, OSError):  # the client is gone already
                return
            raise
        conn.writer = writer
        try:
            if conn.dropped:
                writer.transport.abort()
            elif conn.served:
                await self._serve_connection(conn, reader, writer)
            else:
                await self._refuse(reader, writer)
        except Exception:
            log.exception("peer server: unexpected error on a connection")
        except BaseException:
            writer.transport.abort()  # cancelled (the server is stopping): drop it now
            raise
        finally:
            self._release(conn)
            writer.close()

    async def _serve_connection(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        cfg = self.config
        peer = str(writer.get_extra_info("peername"))
        try:
            timeout = cfg.head_timeout
            while True:
                if conn.since is None:
                    self._set_waiting(conn, True)
                try:
                    with anyio.fail_after(timeout):
                        head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    await self._simple(writer, 431, b"request head too large", keep=False)
                    return
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                if conn.dropped:
                    return
                self._set_waiting(conn, False)
                timeout = cfg.idle_timeout
                try:
                    req = wire.parse_request_head(head)
                except wire.BadRequest as exc:
                    await self._simple(writer, 400, str(exc).encode()[:200], keep=False)
                    return
                body = b""
                if req.content_length:
                    if req.content_length > cfg.max_body:
                        await self._simple(writer, 413, b"body too large", keep=False)
                        return
                    try:
                        with anyio.fail_after(cfg.body_timeout):
                            body = await reader.readexactly(req.content_length)
                    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                        return
                self.stats.requests += 1
                started = time.monotonic()
                ex = Exchange(self, req, body, peer, writer)
                handler = self.handler_for(ex.path)
                if handler is None:
                    keep = await ex.reply(404, b"not found")
                else:
                    keep = await handler(ex)
                self.requests.observe(route_label(ex.path), ex.status, time.monotonic() - started)
                if not (keep and req.keep_alive):
                    return
        except ConnectionError:
            return
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRNOS:
                raise
            self._out_of_descriptors("serving a request", exc)  # e.g. opening the file to send

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Over the connection budget: answer the first request 503, then close.

        Reading the request first (briefly) gives the client a proper HTTP answer
        instead of a reset racing its write. The refusal queue has its own
        ceilings (see :meth:`_admit`); past them sockets are closed at once.
        """
        try:
            with anyio.fail_after(REFUSE_TIMEOUT):
                with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    await reader.readuntil(b"\r\n\r\n")
                headers = [("Retry-After", "1"), ("Content-Length", "4")]
                writer.write(self._head(503, headers, False) + b"busy")
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass

    # ------------------------------------------------------------------ responses

    def _head(self, status: int, headers: list[tuple[str, str]], keep: bool) -> bytes:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        if not keep:
            headers = [*headers, ("Connection", "close")]
        return wire.format_response_head(status, headers)

    async def _simple(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        keep: bool = True,
        headers: Sequence[tuple[str, str]] = (),
        head_only: bool = False,
        ctype: str = "text/plain; charset=utf-8",
    ) -> bool:
        hdrs = [("Content-Type", ctype), ("Content-Length", str(len(body))), *headers]
        writer.write(self._head(status, hdrs, keep))
        if not head_only:
            writer.write(body)
            self.stats.bytes_sent += len(body)
        await self._drain(writer)
        return keep

    async def _busy(self, ex: Exchange) -> bool:
        """503 when the upload budget is queued too far ahead."""
        if self.bucket is None:
            return False
        debt = self.bucket.debt_seconds(time.monotonic())
        if debt <= self.config.max_debt_seconds:
            return False
        self.stats.busy += 1
        retry = str(max(1, math.ceil(debt)))
        await ex.reply(503, b"busy", headers=[("Retry-After", retry)])
        return True

    def _send_timed_out(self, writer: asyncio.StreamWriter) -> SendTimeoutError:
        self.stats.send_timeouts += 1
        writer.transport.abort()
        peer = writer.get_extra_info("peername")
        log.debug("peer server: %s took nothing for %gs: aborted", peer, self.config.send_timeout)
        return SendTimeoutError(f"no progress sending for {self.config.send_timeout:g}s")

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """``writer.drain()``, aborting the connection once nothing went out for a while."""
        transport = writer.transport
        pending = transport.get_write_buffer_size()
        while True:
            with anyio.move_on_after(self.config.send_timeout):
                await writer.drain()
                return
            now = transport.get_write_buffer_size()
            if now >= pending:
                raise self._send_timed_out(writer)
            pending = now

    async def _sendfile(
        self, writer: asyncio.StreamWriter, fh: IO[bytes], offset: int, count: int
    ) -> None:
        """``count`` bytes of ``fh`` from ``offset`` with ``loop.sendfile``, within the budget.

        In slices sized to the rate the last one went at (see the module
        docstring): one that outlasts ``send_timeout`` aborts the connection.
        """
        await self._drain(writer)
        loop = asyncio.get_running_loop()
        timeout = self.config.send_timeout
        step = FIRST_SLICE
        while count > 0:
            n = min(step, count)
            if self.bucket is not None:
                n = min(n, self.config.rate_slice)
                wait = self.bucket.reserve(n, time.monotonic())
                if wait > 0:
                    await anyio.sleep(wait)
            started = time.monotonic()
            with anyio.move_on_after(timeout) as scope:
                await loop.sendfile(writer.transport, fh, offset, n)
            if scope.cancelled_caught:
                raise self._send_timed_out(writer)
            took = time.monotonic() - started
            self.stats.bytes_sent += n
            offset += n
            count -= n
            # An eighth of the timeout's worth at this rate; at most 4x the last
            # slice (the socket buffer makes the first ones look fast).
            step = int(min(MAX_SLICE, 4 * step, max(MIN_SLICE, n / max(took, 1e-6) * timeout / 8)))

    # ------------------------------------------------------------------ peer protocol

    async def peer_protocol(self, ex: Exchange) -> bool:
        """The built-in ``/p2pkg/v1/`` handler (a role may wrap it, e.g. pull-through)."""
        return await self.protocol.handle(ex)

    def status(self) -> dict[str, Any]:
        """``GET /p2pkg/v1/status``: the store's root and size, the connection budget.

        A mounted site reports its own store and extras beside the listening
        server's connections and counters (they are shared).
        """
        latest = self.store.latest_root_stored()
        files, size = self.store.stats()
        conns = self.parent or self
        out: dict[str, Any] = {
            "root_version": latest[0] if latest else None,
            "root_id": latest[1].hex() if latest else None,
            "files": files,
            "bytes_held": size,
            "connections": conns.stats.active,
            "max_connections": conns.max_connections,
            "rate_limit": conns.config.rate,
            "requests": conns.stats.requests,
            "bytes_sent": conns.stats.bytes_sent,
            "busy_answers": conns.stats.busy,
            "max_per_address": conns.max_per_address,
            "addresses": len(conns._served),
            "reclaimed_idle": conns.stats.reclaimed,
            "send_timeouts": conns.stats.send_timeouts,
            "fd_limit": conns.fd_limit,
        }
        if self.status_extra is not None:
            out.update(self.status_extra())
        return out


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


async def _listen(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for ``host:port``, one per address it resolves to (as asyncio's)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(f"{host!r} resolves to no address to listen on")
    return sockets
