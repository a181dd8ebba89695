"""Pure HTTP/1.1 helpers for the peer protocol (docs/protocol.md §6).

URL layout, Range parsing, and request/response heads. Heads are parsed by
h11 (strict, bounded); bodies never pass through a parser: the server sends
them with ``sendfile`` and the client receives them straight into chunk
buffers. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus

import h11

from p2pkg.core.codec import MAX_UVARINT

PREFIX = "/p2pkg/v1"
MAX_HEAD = 16 * 1024
MAX_BATCH = 1024  # chunk ids per batch request
# Patterns are used with fullmatch and spell digits [0-9]: '$' also matches
# before a final newline and '\d' matches every script's digits, either of
# which gives one resource two spellings (or crashes int(), see parse_target).
HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[1-9][0-9]{0,18}")  # §6.1: decimal, no leading zero

IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "no-cache"
#: A request header meaning "what you hold, nothing you would have to fetch"
#: (RFC 9111 §5.2.1.7). Caches send it to every peer and honour it: a cache
#: pulls through for clients, never for another cache, so requests cannot loop.
ONLY_IF_CACHED = ("Cache-Control", "only-if-cached")
#: The response header naming the trusted namespace a cache's page came from.
NAMESPACE_HEADER = "X-P2pkg-Namespace"


def only_if_cached(headers: Mapping[str, str]) -> bool:
    """Whether a request's ``Cache-Control`` carries ``only-if-cached``."""
    value = headers.get("cache-control", "")
    return any(d.strip().lower() == "only-if-cached" for d in value.split(","))


class Kind(Enum):
    ROOT = "root"
    ROOT_VERSION = "roots"
    OBJECT = "objects"
    CHUNK = "chunks"
    CHUNK_BATCH = "chunk-batch"
    OBJECT_BATCH = "object-batch"
    FILE = "files"
    STATUS = "status"
    NOTIFY = "notify"


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    id: bytes = b""
    version: int = 0


def root_path() -> str:
    return f"{PREFIX}/root"


def root_version_path(version: int) -> str:
    return f"{PREFIX}/roots/{version}"


def object_path(oid: bytes) -> str:
    return f"{PREFIX}/objects/{oid.hex()}"


def chunk_path(cid: bytes) -> str:
    return f"{PREFIX}/chunks/{cid.hex()}"


def file_path(blake3: bytes) -> str:
    return f"{PREFIX}/files/{blake3.hex()}"


BATCH_PATH = f"{PREFIX}/chunks"
OBJECTS_PATH = f"{PREFIX}/objects"
MAX_OBJECT_BATCH = 1024  # ids per object batch request
MAX_OBJECT_BATCH_BYTES = 64 << 20  # response size a client accepts
STATUS_PATH = f"{PREFIX}/status"
NOTIFY_PATH = f"{PREFIX}/notify"
#: Where a node asks to be pushed new roots (protocol §6.6; only roles that push serve it).
SUBSCRIBE_PATH = f"{PREFIX}/subscribe"


def parse_target(target: str) -> Route | None:
    """Map a request target to a route; None for anything else (404). Never raises.

    Each route has exactly one spelling (the ``*_path`` functions above).
    """
    path = target.split("?", 1)[0]
    if not path.startswith(PREFIX + "/"):
        return None
    parts = path[len(PREFIX) + 1 :].split("/")
    match parts:
        case ["root"]:
            return Route(Kind.ROOT)
        case ["status"]:
            return Route(Kind.STATUS)
        case ["notify"]:
            return Route(Kind.NOTIFY)
        case ["chunks"]:
            return Route(Kind.CHUNK_BATCH)
        case ["objects"]:
            return Route(Kind.OBJECT_BATCH)
        case ["roots", v] if _VERSION.fullmatch(v) and int(v) <= MAX_UVARINT:
            # A root version is a uvarint (§4.1, §3.1): a larger one names no
            # root, and would overflow the store's SQLite INTEGER lookup.
            return Route(Kind.ROOT_VERSION, version=int(v))
        case [("objects" | "chunks" | "files") as kind, h] if HEX64.fullmatch(h):
            return Route(Kind(kind), id=bytes.fromhex(h))
    return None


class Unsatisfiable(Exception):
    """A Range the file cannot satisfy (416)."""


_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single-range ``Range`` header into ``(start, end_exclusive)``.

    None means "serve the whole representation": no header, a malformed one, or
    several ranges (RFC 9110 §14.2 lets a server ignore Range). Raises
    :class:`Unsatisfiable` for a range that starts past the end (§6.1), and
    nothing else. A returned span is never empty: ``0 <= start < end <= size``.
    """
    if not value:
        return None
    m = _RANGE.fullmatch(value.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
        if start >= size:
            raise Unsatisfiable
        return start, end
    suffix = int(last)
    if suffix == 0:
        raise Unsatisfiable
    if size == 0:
        # The last n bytes of an empty file are no bytes, which no Content-Range
        # can state ("bytes 0--1/0"): serve the whole (empty) file instead.
        return None
    return max(0, size - suffix), size


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    headers: dict[str, str]
    content_length: int
    keep_alive: bool


class BadRequest(Exception):
    """A request head the server refuses (400)."""


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        out[key] = f"{out[key]}, {val}" if key in out else val
    return out


def parse_request_head(data: bytes) -> RequestHead:
    """Parse one request head (ending with CRLFCRLF). Raises BadRequest."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(event, h11.Request):
        raise BadRequest("incomplete request head")
    headers = _decode_headers(list(event.headers))
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest("bad Content-Length") from None
    if "transfer-encoding" in headers:
        raise BadRequest("chunked request bodies are not accepted")
    keep_alive = event.http_version == b"1.1" and "close" not in headers.get("connection", "")
    return RequestHead(
        event.method.decode("ascii"),
        event.target.decode("ascii", "replace"),
        headers,
        length,
        keep_alive,
    )


REASONS = {
    200: "OK",
    202: "Accepted",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def reason(status: int) -> str:
    """The reason phrase of ``status`` (RFC 9110 wording; the stdlib's for the rest)."""
    known = REASONS.get(status)
    if known is not None:
        return known
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def format_response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason(status)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def format_request(
    method: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]] = (),
    body_len: int = 0,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: p2pkg"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body_len or method == "POST":
        lines.append(f"Content-Length: {body_len}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: dict[str, str]
    content_length: int | None
    content_range: tuple[int, int, int] | None  # start, end_exclusive, total
    keep_alive: bool

    def retry_after(self, default: float = 1.0, cap: float = 60.0) -> float:
        """The 503's ``Retry-After`` in seconds, capped (§6.4); ``default`` if unusable.

        Only delay-seconds (RFC 9110 §10.2.3: digits; a decimal fraction is
        tolerated) count. ``float()`` would also take ``nan``, ``inf``, ``-5``,
        ``1e3`` and ``1_0``, and a NaN pause compares false with every clock
        reading. An HTTP-date gets the default: peers send seconds.
        """
        m = _DELAY.fullmatch(self.headers.get("retry-after", "").strip())
        if m is None:
            return default
        return min(float(m.group()), cap)


class BadResponse(Exception):
    """A response head the client refuses."""


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")
_DELAY = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_response_head(data: bytes, method: str = "GET") -> ResponseHead:
    """Parse one response head (ending with CRLFCRLF). Raises BadResponse."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "p")]))
    if method == "POST":
        conn.send(h11.EndOfMessage())
    try:
        conn.receive_data(data)
        event = conn.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadResponse(str(exc)) from None
    if not isinstance(event, h11.Response):
        raise BadResponse("incomplete response head")
    headers = _decode_headers(list(event.headers))
    if "transfer-encoding" in headers:
        # Peers always send Content-Length; chunked bodies would need a parser on the hot path.
        raise BadResponse("chunked responses are not supported by the peer protocol")
    length = None
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise BadResponse("bad Content-Length") from None
    crange = None
    if event.status_code == 206:
        m = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
        if not m:
            raise BadResponse("206 without a valid Content-Range")
        start, last, total = (int(g) for g in m.groups())
        if last < start or last >= total:
            raise BadResponse("Content-Range out of order")
        crange = (start, last + 1, total)
        if length is not None and length != last + 1 - start:
            raise BadResponse("Content-Length does not match Content-Range")
    keep_alive = event.http_version == b"1.1" and "close" not in headers.get("connection", "")
    return ResponseHead(event.status_code, headers, length, crange, keep_alive)
