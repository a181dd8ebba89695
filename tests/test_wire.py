"""Hypothesis on the peer protocol's HTTP parsers (docs/protocol.md §6).

Every parser that reads bytes or text off the network either returns a value
or raises its one documented error, nothing else (the h11 rule):

==========================  ==========================================
``parse_target``            a Route, or None (404); never raises
``parse_range``             a span, None (serve whole) or Unsatisfiable
``parse_request_head``      a RequestHead or BadRequest
``parse_response_head``     a ResponseHead or BadResponse
``ResponseHead.retry_after``  a finite delay in [0, cap]; never raises
==========================  ==========================================

Each is fed arbitrary input, valid input whole, and valid input mutated.
"""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from p2pkg.io.http import wire

MAX_UVARINT = (1 << 63) - 1  # §3.1: the largest root version (§4.1)


# --------------------------------------------------------------------------- mutation


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few byte flips, deletions, insertions or duplications."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "duplicate", "truncate"]))
        i = draw(st.integers(0, len(data)))
        if op == "flip" and i < len(data):
            data[i] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "insert":
            interesting = st.sampled_from([b"\r\n", b"\n", b"\r", b":", b" ", b"\x00", b",", b"-"])
            data[i:i] = draw(interesting | st.binary(min_size=1, max_size=8))
        elif op == "duplicate":
            data[i:i] = data[i : i + draw(st.integers(1, 40))]
        else:
            del data[i:]
    return bytes(data)


def mutated_text(base: str) -> st.SearchStrategy[str]:
    return mutated(base.encode("latin-1")).map(lambda b: b.decode("latin-1"))


# --------------------------------------------------------------------------- targets


ids = st.binary(min_size=32, max_size=32)
root_versions = st.integers(1, MAX_UVARINT)


def _path_of(route: wire.Route) -> str:
    """The one path that names ``route`` (the inverse of parse_target)."""
    match route.kind:
        case wire.Kind.ROOT:
            return wire.root_path()
        case wire.Kind.ROOT_VERSION:
            return wire.root_version_path(route.version)
        case wire.Kind.OBJECT:
            return wire.object_path(route.id)
        case wire.Kind.CHUNK:
            return wire.chunk_path(route.id)
        case wire.Kind.FILE:
            return wire.file_path(route.id)
        case wire.Kind.CHUNK_BATCH:
            return wire.BATCH_PATH
        case wire.Kind.OBJECT_BATCH:
            return wire.OBJECTS_PATH
        case wire.Kind.STATUS:
            return wire.STATUS_PATH
        case wire.Kind.NOTIFY:
            return wire.NOTIFY_PATH


valid_paths = st.one_of(
    st.sampled_from(
        [wire.root_path(), wire.BATCH_PATH, wire.OBJECTS_PATH, wire.STATUS_PATH, wire.NOTIFY_PATH]
    ),
    root_versions.map(wire.root_version_path),
    ids.map(wire.object_path),
    ids.map(wire.chunk_path),
    ids.map(wire.file_path),
)
# Text shaped like our paths, with digits and hex of every script in the tails.
near_paths = st.builds(
    lambda kind, tail: f"{wire.PREFIX}/{kind}{tail}",
    st.sampled_from(["roots/", "objects/", "chunks/", "files/", "root", "status", ""]),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Ll", "Lu", "Zs", "Cc"]), max_size=70)
    | st.text(alphabet="0123456789abcdefABCDEF\n/?", max_size=70),
)


def check_target(target: str) -> None:
    route = wire.parse_target(target)  # no exception is documented: must not raise
    if route is not None:
        # One route, one spelling: whatever parsed names exactly the canonical path.
        assert _path_of(route) == target.split("?", 1)[0]
        if route.kind is wire.Kind.ROOT_VERSION:
            assert 1 <= route.version <= MAX_UVARINT


@given(st.text())
@example("/p2pkg/v1/roots/\u00b2")  # a digit to str.isdigit, not to int()
@example("/p2pkg/v1/roots/\u0663")  # an Arabic-Indic digit
@example("/p2pkg/v1/objects/" + "a" * 64 + "\n")  # '$' matches before a final newline
@example(f"/p2pkg/v1/roots/{1 << 63}")  # no root version is this large (§4.1)
def test_parse_target_arbitrary_text(target: str) -> None:
    check_target(target)


@given(near_paths)
def test_parse_target_near_paths(target: str) -> None:
    check_target(target)


@given(valid_paths, st.none() | st.text(max_size=20))
def test_parse_target_valid_paths(path: str, query: str | None) -> None:
    target = path if query is None else f"{path}?{query}"
    route = wire.parse_target(target)
    assert route is not None
    assert _path_of(route) == path


@given(valid_paths.flatmap(mutated_text))
def test_parse_target_mutated_paths(target: str) -> None:
    check_target(target)


@pytest.mark.parametrize(
    "target",
    [
        "/p2pkg/v1/roots/\u00b2",
        "/p2pkg/v1/roots/\u0663",
        "/p2pkg/v1/roots/0",
        "/p2pkg/v1/roots/01",
        "/p2pkg/v1/roots/+1",
        f"/p2pkg/v1/roots/{1 << 63}",
        "/p2pkg/v1/roots/99999999999999999999",
        "/p2pkg/v1/objects/" + "a" * 64 + "\n",
        "/p2pkg/v1/files/" + "A" * 64,
        "/p2pkg/v1/files/" + "\u0663" * 64,
        "/p2pkg/v1/root/",
        "/p2pkg/v1//root",
        "/p2pkg/v2/root",
    ],
)
def test_parse_target_regressions(target: str) -> None:
    assert wire.parse_target(target) is None


def test_parse_target_largest_root_version() -> None:
    assert wire.parse_target(f"/p2pkg/v1/roots/{MAX_UVARINT}") == wire.Route(
        wire.Kind.ROOT_VERSION, version=MAX_UVARINT
    )


# --------------------------------------------------------------------------- Range


sizes = st.integers(0, 1 << 40)


def check_range(value: str | None, size: int) -> tuple[int, int] | None:
    try:
        span = wire.parse_range(value, size)
    except wire.Unsatisfiable:
        return None
    if span is not None:
        start, end = span
        # A span the server can put in a Content-Range (§6.1): non-empty, inside the file.
        assert 0 <= start < end <= size
    return span


@given(st.none() | st.text(), sizes)
@example("bytes=-5", 0)  # suffix of an empty file: no Content-Range can describe it
@example("bytes=\u0663-", 10)  # '\d' matches non-ASCII digits
@example("bytes=0-1\n", 10)
def test_parse_range_arbitrary_text(value: str | None, size: int) -> None:
    check_range(value, size)


range_values = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 1 << 41), st.integers(0, 1 << 41)),
    st.builds(lambda a: f"bytes={a}-", st.integers(0, 1 << 41)),
    st.builds(lambda n: f"bytes=-{n}", st.integers(0, 1 << 41)),
)


@given(range_values, sizes)
def test_parse_range_valid(value: str, size: int) -> None:
    first, last = value.removeprefix("bytes=").split("-")
    try:
        span = wire.parse_range(value, size)
    except wire.Unsatisfiable:
        # §6.1: 416 only for a range starting past the end (or the empty suffix).
        assert (first and int(first) >= size and not (last and int(last) < int(first))) or (
            not first and int(last) == 0
        )
        return
    if first and last and int(last) < int(first):
        assert span is None  # invalid: ignored, the whole file is served
    elif first:
        assert span == (int(first), min(int(last) + 1 if last else size, size))
    elif size == 0:
        assert span is None
    else:
        assert span == (max(0, size - int(last)), size)


@given(range_values.flatmap(mutated_text), sizes)
def test_parse_range_mutated(value: str, size: int) -> None:
    check_range(value, size)


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        (None, 10, None),
        ("", 10, None),
        ("bytes=0-4", 10, (0, 5)),
        ("bytes=5-", 10, (5, 10)),
        ("bytes=5-100", 10, (5, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=4-3", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("bytes=-", 10, None),
        ("items=0-1", 10, None),
        ("bytes=-5", 0, None),  # regression: was (0, 0), a "bytes 0--1/0" Content-Range
        ("bytes=\u0663-", 10, None),  # regression: was (3, 10)
        ("bytes=0-1\n", 10, (0, 2)),  # surrounding whitespace is stripped, as h11 does
    ],
)
def test_parse_range_cases(value: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert wire.parse_range(value, size) == expected


@pytest.mark.parametrize(("value", "size"), [("bytes=10-", 10), ("bytes=0-", 0), ("bytes=-0", 10)])
def test_parse_range_unsatisfiable(value: str, size: int) -> None:
    with pytest.raises(wire.Unsatisfiable):
        wire.parse_range(value, size)


# --------------------------------------------------------------------------- heads

header_names = st.sampled_from(
    [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Range",
        "Content-Range",
        "Retry-After",
        "Upgrade",
        "Expect",
        "X-Other",
    ]
) | st.text(alphabet=string.ascii_letters + "-_!#", min_size=1, max_size=12)
header_values = st.sampled_from(
    [
        "0",
        "5",
        "-1",
        "9" * 30,
        "9" * 5000,
        "chunked",
        "gzip, chunked",
        "close",
        "keep-alive",
        "upgrade",
        "bytes 0-4/10",
        "bytes 5-4/10",
        "bytes 0-4/*",
        "bytes=0-4",
        "100-continue",
        "nan",
        "",
    ]
) | st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=20)
raw_headers = st.lists(st.tuples(header_names, header_values), max_size=6)


def _head(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first_line, *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


request_lines = st.builds(
    lambda m, t, v: f"{m} {t} {v}",
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "CONNECT", "G\u00e9T", ""]),
    valid_paths | st.sampled_from(["*", "x:1", "http://h/p2pkg/v1/root", "/\xff"]),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1"]),
)
request_heads = st.builds(_head, request_lines, raw_headers)


def check_request(data: bytes) -> wire.RequestHead | None:
    try:
        head = wire.parse_request_head(data)
    except wire.BadRequest:
        return None
    assert head.content_length >= 0
    assert "transfer-encoding" not in head.headers  # §6.1: no chunked bodies
    assert head.method.isascii() and head.target.isascii()
    return head


@given(st.binary(max_size=300))
@example(b"")
@example(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 3000 + b"\r\n")
def test_parse_request_head_arbitrary_bytes(data: bytes) -> None:
    check_request(data)


@given(request_heads)
def test_parse_request_head_shaped(data: bytes) -> None:
    check_request(data)


@given(request_heads.flatmap(mutated))
def test_parse_request_head_mutated(data: bytes) -> None:
    check_request(data)


request_args = st.tuples(
    st.sampled_from(["GET", "HEAD", "POST"]),
    valid_paths,
    st.sampled_from(["127.0.0.1:8000", "peer.example", "[::1]:80"]),
    st.lists(
        st.tuples(
            st.sampled_from(["Range", "Accept", "Connection", "X-Trace"]),
            st.text(alphabet=string.ascii_letters + string.digits + "=-, ", max_size=20).map(
                str.strip
            ),
        ),
        max_size=3,
        unique_by=lambda h: h[0],
    ),
    st.integers(0, 1 << 20),
)


@given(request_args)
def test_parse_request_head_valid(args: tuple[str, str, str, list[tuple[str, str]], int]) -> None:
    method, target, host, headers, body_len = args
    head = wire.parse_request_head(wire.format_request(method, target, host, headers, body_len))
    assert (head.method, head.target) == (method, target)
    assert head.headers["host"] == host
    assert head.content_length == body_len
    for k, v in headers:
        assert head.headers[k.lower()] == v
    connection = dict(headers).get("Connection", "")
    assert head.keep_alive == ("close" not in connection)


@given(
    request_args.map(lambda a: wire.format_request(a[0], a[1], a[2], a[3], a[4])).flatmap(mutated)
)
def test_parse_request_head_valid_mutated(data: bytes) -> None:
    check_request(data)


status_lines = st.builds(
    lambda v, code, reason: f"{v} {code} {reason}",
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 "]),
    st.sampled_from(["100", "101", "200", "206", "204", "304", "416", "503", "999", "20", "2000"]),
    st.sampled_from(["OK", "", "Partial Content", "\xff"]),
)
response_heads = st.builds(_head, status_lines, raw_headers)
# A 1xx before the real answer, as h11 allows.
response_heads |= st.builds(lambda a, b: a + b, response_heads, response_heads)
methods = st.sampled_from(["GET", "HEAD", "POST"])


def check_response(data: bytes, method: str) -> wire.ResponseHead | None:
    try:
        head = wire.parse_response_head(data, method)
    except wire.BadResponse:
        return None
    assert head.content_length is None or head.content_length >= 0
    assert "transfer-encoding" not in head.headers  # §6.1: Content-Length only
    if head.status == 206:
        assert head.content_range is not None
    if head.content_range is not None:
        start, end, total = head.content_range
        assert 0 <= start < end <= total
        assert head.content_length in (None, end - start)
    delay = head.retry_after()
    assert math.isfinite(delay)
    assert 0 <= delay <= 60
    return head


@given(st.binary(max_size=300), methods)
@example(b"", "GET")
@example(b"HTTP/1.1 101 Switching\r\n\r\n", "GET")
@example(b"HTTP/1.1 503 Busy\r\nRetry-After: nan\r\nContent-Length: 0\r\n\r\n", "GET")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", "GET")
def test_parse_response_head_arbitrary_bytes(data: bytes, method: str) -> None:
    check_response(data, method)


@given(response_heads, methods)
def test_parse_response_head_shaped(data: bytes, method: str) -> None:
    check_response(data, method)


@given(response_heads.flatmap(mutated), methods)
def test_parse_response_head_mutated(data: bytes, method: str) -> None:
    check_response(data, method)


@st.composite
def valid_responses(
    draw: st.DrawFn,
) -> tuple[int, list[tuple[str, str]], tuple[int, int, int] | None]:
    status = draw(st.sampled_from([200, 206, 404, 416, 503]))
    total = draw(st.integers(1, 1 << 40))
    crange = None
    if status == 206:
        start = draw(st.integers(0, total - 1))
        end = draw(st.integers(start + 1, total))
        crange = (start, end, total)
        length = end - start
    else:
        length = draw(st.integers(0, 1 << 20))
    headers = [("Content-Length", str(length))]
    if crange is not None:
        headers.append(("Content-Range", f"bytes {crange[0]}-{crange[1] - 1}/{total}"))
    if status == 503:
        headers.append(("Retry-After", str(draw(st.integers(0, 100)))))
    if draw(st.booleans()):
        headers.append(("Connection", "close"))
    return status, headers, crange


@given(valid_responses(), methods)
def test_parse_response_head_valid(
    resp: tuple[int, list[tuple[str, str]], tuple[int, int, int] | None], method: str
) -> None:
    status, headers, crange = resp
    head = wire.parse_response_head(wire.format_response_head(status, headers), method)
    values = dict(headers)
    assert head.status == status
    assert head.content_length == int(values["Content-Length"])
    assert head.content_range == crange
    assert head.keep_alive == ("Connection" not in values)
    if "Retry-After" in values:
        assert head.retry_after() == min(int(values["Retry-After"]), 60)


@given(
    valid_responses().map(lambda r: wire.format_response_head(r[0], r[1])).flatmap(mutated),
    methods,
)
def test_parse_response_head_valid_mutated(data: bytes, method: str) -> None:
    check_response(data, method)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 200 OK\r\n",  # incomplete
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 206 Partial\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 5-4/10\r\n\r\n",
        b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 0-9/10\r\n\r\n".replace(b"9/", b"10/"),
        b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 0-4/10\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 0-4/*\r\n\r\n",
    ],
)
def test_parse_response_head_refusals(data: bytes) -> None:
    with pytest.raises(wire.BadResponse):
        wire.parse_response_head(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GET / HTTP/1.1\r\n",  # incomplete
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"y" * wire.MAX_HEAD,  # over 16 KiB, unfinished
    ],
)
def test_parse_request_head_refusals(data: bytes) -> None:
    with pytest.raises(wire.BadRequest):
        wire.parse_request_head(data)


# --------------------------------------------------------------------------- Retry-After


def _busy(value: str) -> wire.ResponseHead:
    return wire.ResponseHead(503, {"retry-after": value}, 0, None, True)


@given(st.text(), st.floats(0, 10), st.floats(0, 100))
@example("nan", 1.0, 60.0)
@example("-inf", 1.0, 60.0)
def test_retry_after_arbitrary_text(value: str, default: float, cap: float) -> None:
    delay = _busy(value).retry_after(default, cap)
    assert math.isfinite(delay)
    assert 0 <= delay <= max(default, cap)


@given(st.integers(0, 10**30), st.floats(1, 100))
def test_retry_after_delay_seconds(seconds: int, cap: float) -> None:
    assert _busy(str(seconds)).retry_after(1.0, cap) == min(float(seconds), cap)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 5 ", 5.0),
        ("2.5", 2.5),
        ("1000", 60.0),
        ("0", 0.0),
        ("nan", 1.0),  # regression: was nan, which no clock comparison ever passes
        ("NaN", 1.0),
        ("inf", 1.0),
        ("-5", 1.0),
        ("1e3", 1.0),
        ("1_0", 1.0),
        ("\u0665", 1.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0),  # an HTTP-date: the default
        ("", 1.0),
    ],
)
def test_retry_after_cases(value: str, expected: float) -> None:
    assert _busy(value).retry_after() == expected


def test_retry_after_absent_is_the_default() -> None:
    head = wire.ResponseHead(503, {}, 0, None, True)
    assert head.retry_after(default=2.0) == 2.0


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (301, "Moved Permanently"),
        (406, "Not Acceptable"),
        (502, "Bad Gateway"),
        (413, "Content Too Large"),
    ],
)
def test_every_status_the_server_sends_has_its_reason_phrase(status: int, phrase: str) -> None:
    line = wire.format_response_head(status, []).split(b"\r\n")[0]
    assert line == f"HTTP/1.1 {status} {phrase}".encode()
