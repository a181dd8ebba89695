"""Talking to an upstream index over HTTP(S): the I/O shell of mirroring.

``publish --from-index`` reads an index people already run (the public
index, devpi, pypiserver, Artifactory): over https, so this shell uses
httpx (TLS, pooled connections, anyio-native) rather than the peer client,
which speaks plain HTTP to peers whose bytes are verified anyway.

What it does, and nothing more (parsing is :mod:`p2pkg.core.upstream`'s):

* pages (``/simple/`` and ``/simple/<name>/``) asked for with PEP 691
  negotiation (:data:`~p2pkg.core.upstream.ACCEPT`), conditionally: with the
  ETag of the last run, a ``304`` means unchanged and costs no body; the
  ETag and PyPI's ``X-PyPI-Last-Serial`` come back with the page;
* files streamed to a path while their sha256 is computed, checked against
  the upstream's before the caller sees them (:class:`IntegrityError`);
  asked for with ``Accept-Encoding: identity`` and read raw, since some
  servers label a ``.tar.gz`` ``Content-Encoding: gzip`` and a decoding
  client would hash the wrong bytes;
* small documents (``.metadata``, PEP 740 provenance) read whole.

Every body is bounded (pages :data:`~p2pkg.core.upstream.MAX_PAGE`, decoded
bytes counted, so a compressed page cannot inflate past it; files and
documents by the caller's limit); every request has timeouts; connection
failures, timeouts, ``429`` and ``5xx`` are retried a bounded number of times
with back-off (``Retry-After`` honoured up to :data:`MAX_RETRY_AFTER`).
What still fails is an :class:`~p2pkg.errors.UpstreamError` (exit 8);
local disk failures while writing a file are
:class:`~p2pkg.errors.LocalError`. :attr:`UpstreamClient.requests` and
:attr:`UpstreamClient.bytes_in` count what went over the wire.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import anyio
import httpx

from p2pkg.core.upstream import ACCEPT, MAX_PAGE
from p2pkg.errors import IntegrityError, UpstreamError, local_io

log = logging.getLogger(__name__)

try:  # the package's own version (importing p2pkg itself would reach up into roles)
    _VERSION = importlib.metadata.version("p2pkg")
except importlib.metadata.PackageNotFoundError:
    _VERSION = "dev"

T = TypeVar("T")

#: Attempts per request (the first and the retries) on connection errors, 429 and 5xx.
ATTEMPTS = 3
#: Longest Retry-After honoured; anything longer fails the request (next run retries).
MAX_RETRY_AFTER = 10.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Timeouts: connect, and between bytes of a response (not the whole transfer).
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Page:
    """One page as the upstream answered it.

    ``status`` is 200 (``body`` holds the page), 304 (unchanged since the
    ETag given) or 404 (the index has no such project; 410 counts as 404).
    ``url`` is where the page finally came from (after redirects): file URLs
    on it are relative to that.
    """

    url: str
    status: int
    body: bytes = b""
    content_type: str = ""
    etag: str | None = None
    last_serial: int | None = None

    @property
    def modified(self) -> bool:
        return self.status == 200


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A file written by :meth:`UpstreamClient.download`: its size and sha256."""

    path: Path
    size: int
    sha256: bytes


class UpstreamClient:
    """A pooled HTTP(S) client for one upstream index (use ``async with``).

    ``index_url`` is the simple API's root (``https://pypi.org/simple/``);
    a project page is ``<index_url><normalized name>/``. ``connections``
    bounds the pool; ``transport`` replaces the network (tests of the
    retry rules).
    """

    def __init__(
        self,
        index_url: str,
        *,
        connections: int = 16,
        attempts: int = ATTEMPTS,
        backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.index_url = index_url if index_url.endswith("/") else index_url + "/"
        self.attempts = max(1, attempts)
        self.backoff = backoff
        #: Requests sent (each retry counts), and body bytes received.
        self.requests = 0
        self.bytes_in = 0
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            follow_redirects=True,
            headers={"User-Agent": f"p2pkg/{_VERSION} (mirror)"},
            transport=transport,
        )

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    def project_url(self, name: str) -> str:
        return f"{self.index_url}{name}/"

    async def index_page(self, etag: str | None = None) -> Page:
        """The index page (``/simple/``); a 404 there is an :class:`UpstreamError`."""
        page = await self._page(self.index_url, etag)
        if page.status == 404:
            raise UpstreamError(self.index_url, "no simple index here (404)", 404)
        return page

    async def project_page(self, name: str, etag: str | None = None) -> Page:
        """The page of project ``name`` (normalized); with ``etag``, possibly a 304."""
        return await self._page(self.project_url(name), etag)

    async def _page(self, url: str, etag: str | None) -> Page:
        headers = {"Accept": ACCEPT}
        if etag:
            headers["If-None-Match"] = etag

        async def consume(resp: httpx.Response) -> Page:
            status = 404 if resp.status_code == 410 else resp.status_code
            body = b""
            if status == 200:
                body = await self._read_bounded(resp, MAX_PAGE, url, decoded=True)
            serial = resp.headers.get("x-pypi-last-serial", "").strip()
            return Page(
                url=str(resp.url),
                status=status,
                body=body,
                content_type=resp.headers.get("content-type", ""),
                etag=resp.headers.get("etag") or (etag if status == 304 else None),
                last_serial=int(serial) if serial.isdigit() else None,
            )

        return await self._get(url, headers, (200, 304, 404, 410), consume)

    async def fetch(self, url: str, max_size: int) -> bytes | None:
        """A small document (``.metadata``, provenance) whole; None when it is absent (404)."""

        async def consume(resp: httpx.Response) -> bytes | None:
            if resp.status_code != 200:
                return None
            return await self._read_bounded(resp, max_size, url, decoded=False)

        return await self._get(url, {"Accept-Encoding": "identity"}, (200, 404, 410), consume)

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        sha256: bytes | None,
        max_size: int,
        size: int | None = None,
    ) -> Downloaded:
        """Stream ``url`` into ``dest`` (created or truncated), hashing as it goes.

        Raises :class:`IntegrityError` when the bytes' sha256 is not
        ``sha256`` (or their length not ``size``, when given): ``dest`` is
        then removed. A retry restarts the file from its first byte.
        """

        async def consume(resp: httpx.Response) -> Downloaded:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_size:
                raise UpstreamError(url, f"file of {declared} bytes is over {max_size}")
            digest = hashlib.sha256()
            written = 0
            with local_io(dest, "writing"):
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                # Writes go to the page cache (no fsync: a resumed run
                # re-hashes what it finds), so they stay on the event loop.
                async for block in self._raw(resp):
                    written += len(block)
                    if written > max_size:
                        raise UpstreamError(url, f"file is over {max_size} bytes")
                    digest.update(block)
                    with local_io(dest, "writing"):
                        view = memoryview(block)
                        while view:
                            view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            got = digest.digest()
            if (sha256 is not None and got != sha256) or (size is not None and written != size):
                with local_io(dest, "removing"):
                    dest.unlink(missing_ok=True)
                expected = f"sha256 {sha256.hex()}" if sha256 is not None else f"{size} bytes"
                raise IntegrityError(url, expected, f"sha256 {got.hex()} ({written} bytes)")
            return Downloaded(dest, written, got)

        return await self._get(url, {"Accept-Encoding": "identity"}, (200,), consume)

    # ------------------------------------------------------------------ requests

    async def _get(
        self,
        url: str,
        headers: dict[str, str],
        ok: tuple[int, ...],
        consume: Callable[[httpx.Response], Awaitable[T]],
    ) -> T:
        """GET ``url`` and ``consume`` the response (a status in ``ok``), with retries.

        Connection failures and timeouts (while sending or while reading the
        body), 429 and 5xx are retried, :attr:`attempts` tries in all; any
        other status is an :class:`UpstreamError` at once.
        """
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                await anyio.sleep(min(self.backoff * 2 ** (attempt - 1), MAX_RETRY_AFTER))
            self.requests += 1
            try:
                req = self._client.build_request("GET", url, headers=headers)
                resp = await self._client.send(req, stream=True)
            except httpx.InvalidURL as exc:
                raise UpstreamError(url, f"bad URL: {exc}") from None
            except httpx.TransportError as exc:
                problem = _describe(exc)
                log.info("upstream %s: %s (attempt %d)", url, problem, attempt + 1)
                continue
            wait = None
            try:
                if resp.status_code in ok:
                    try:
                        return await consume(resp)
                    except httpx.TransportError as exc:  # reset or timeout mid-body
                        problem = _describe(exc)
                        log.info("upstream %s: %s (attempt %d)", url, problem, attempt + 1)
                        continue
                problem = f"HTTP {resp.status_code}"
                if resp.status_code not in RETRY_STATUSES:
                    raise UpstreamError(url, problem, resp.status_code)
                wait = _retry_after(resp.headers.get("retry-after"))
                if wait is not None and wait > MAX_RETRY_AFTER:
                    raise UpstreamError(url, f"{problem}, retry after {wait:g} s", resp.status_code)
            finally:
                await resp.aclose()
            log.info("upstream %s: %s (attempt %d)", url, problem, attempt + 1)
            if wait:
                await anyio.sleep(wait)
        raise UpstreamError(url, f"{problem} (after {self.attempts} attempts)")

    async def _read_bounded(
        self, resp: httpx.Response, limit: int, url: str, *, decoded: bool
    ) -> bytes:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit and not decoded:
            raise UpstreamError(url, f"body of {declared} bytes is over {limit}")
        parts: list[bytes] = []
        total = 0
        # Decoded bytes are what a page is bounded by: a compressed page
        # cannot inflate past the limit.
        blocks = resp.aiter_bytes() if decoded else self._raw(resp)
        async for block in blocks:
            total += len(block)
            if total > limit:
                raise UpstreamError(url, f"body is over {limit} bytes")
            parts.append(block)
        if decoded:
            self.bytes_in += resp.num_bytes_downloaded
        return b"".join(parts)

    async def _raw(self, resp: httpx.Response) -> AsyncIterator[bytes]:
        async for block in resp.aiter_raw():
            self.bytes_in += len(block)
            yield block


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: back off as usual


__all__ = ["Downloaded", "Page", "UpstreamClient"]
