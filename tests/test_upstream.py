"""Parsing upstream simple-API pages (PEP 503 HTML, PEP 691 JSON) as public indexes serve them."""

from __future__ import annotations

import json

import pytest

from p2pkg.core.upstream import (
    ACCEPT,
    UpstreamPageError,
    is_json,
    parse_index_page,
    parse_project_page,
)

PAGE = "https://pypi.example/simple/demo/"
SHA = "a" * 64
META_SHA = "b" * 64

JSON_PAGE = {
    "meta": {"api-version": "1.4", "_last-serial": 123456},
    "name": "demo",
    "project-status": {"status": "deprecated", "reason": "use demo2"},
    "versions": ["1.0", "2.0"],
    "files": [
        {
            "filename": "demo-1.0-py3-none-any.whl",
            "url": "../../packages/aa/demo-1.0-py3-none-any.whl",
            "hashes": {"sha256": SHA, "blake2b_256": "c" * 64},
            "requires-python": ">=3.8",
            "core-metadata": {"sha256": META_SHA},
            "yanked": "broken build",
            "size": 1234,
            "upload-time": "2024-05-01T12:30:00.123456Z",
            "provenance": "https://pypi.example/integrity/demo/1.0/demo-1.0-py3-none-any.whl/provenance",
        },
        {
            "filename": "demo-2.0.tar.gz",
            "url": "https://files.example/demo-2.0.tar.gz",
            "hashes": {"sha256": SHA},
            "requires-python": None,
            "dist-info-metadata": False,
            "yanked": False,
            "size": 99,
            "upload-time": "2024-06-01T00:00:00Z",
        },
    ],
}

HTML_PAGE = f"""<!DOCTYPE html>
<html><head>
<meta name="pypi:repository-version" content="1.4">
<meta name="pypi:project-status" content="archived">
<meta name="pypi:project-status-reason" content="no longer maintained">
<title>Links for demo</title></head><body>
<h1>Links for demo</h1>
<a href="../../packages/aa/demo-1.0-py3-none-any.whl#sha256={SHA}"
   data-requires-python="&gt;=3.8" data-dist-info-metadata="sha256={META_SHA}"
   data-core-metadata="sha256={META_SHA}" data-yanked="broken build"
   data-provenance="/integrity/demo/1.0/prov">demo-1.0-py3-none-any.whl</a><br />
<a href="https://files.example/demo-2.0.tar.gz#sha256={SHA}"
   data-yanked="">demo-2.0.tar.gz</a><br />
<a href="demo-3.0.tar.gz">demo-3.0.tar.gz</a>
</body></html>
""".encode()


def test_a_json_page_carries_every_field_over() -> None:
    page = parse_project_page(
        json.dumps(JSON_PAGE).encode(), "application/vnd.pypi.simple.v1+json", PAGE, "demo"
    )
    assert (page.name, page.api_version, page.last_serial) == ("demo", "1.4", 123456)
    assert (page.status, page.status_reason) == ("deprecated", "use demo2")
    assert page.versions == ("1.0", "2.0")
    whl, sdist = page.files
    assert whl.url == "https://pypi.example/packages/aa/demo-1.0-py3-none-any.whl"
    assert whl.sha256 == bytes.fromhex(SHA)
    assert (whl.requires_python, whl.yanked, whl.size) == (">=3.8", "broken build", 1234)
    assert whl.upload_time == 1714566600  # 2024-05-01T12:30:00Z, sub-seconds dropped
    assert whl.core_metadata and whl.core_metadata_sha256 == bytes.fromhex(META_SHA)
    assert whl.provenance is not None and whl.provenance.endswith("/provenance")
    assert (sdist.requires_python, sdist.yanked, sdist.core_metadata) == ("", None, False)
    assert sdist.upload_time == 1717200000


def test_an_html_page_carries_the_same_facts() -> None:
    page = parse_project_page(HTML_PAGE, "text/html; charset=utf-8", PAGE, "demo")
    assert (page.name, page.api_version) == ("demo", "1.4")
    assert (page.status, page.status_reason) == ("archived", "no longer maintained")
    whl, sdist, bare = page.files
    assert whl.url == "https://pypi.example/packages/aa/demo-1.0-py3-none-any.whl"
    assert whl.sha256 == bytes.fromhex(SHA)
    assert whl.requires_python == ">=3.8"  # entity-decoded
    assert whl.yanked == "broken build"
    assert whl.core_metadata and whl.core_metadata_sha256 == bytes.fromhex(META_SHA)
    assert whl.provenance == "https://pypi.example/integrity/demo/1.0/prov"
    assert sdist.yanked == ""  # yanked without a reason
    assert bare.sha256 is None and bare.url == "https://pypi.example/simple/demo/demo-3.0.tar.gz"
    assert bare.yanked is None and not bare.core_metadata


def test_index_pages_in_both_forms() -> None:
    body = json.dumps({"meta": {"api-version": "1.0"}, "projects": [{"name": "a"}, {"name": "B"}]})
    assert parse_index_page(body.encode(), "application/vnd.pypi.simple.v1+json", PAGE) == [
        "a",
        "B",
    ]
    html = b'<html><body><a href="/simple/a/">a</a><a href="/simple/b/">B</a></body></html>'
    assert parse_index_page(html, "text/html", PAGE) == ["a", "B"]


def test_negotiation_prefers_json() -> None:
    assert ACCEPT.startswith("application/vnd.pypi.simple.v1+json")
    assert is_json("application/vnd.pypi.simple.v1+json; charset=utf-8")
    assert is_json("application/vnd.pypi.simple.latest+json")
    assert not is_json("text/html")


def test_an_unknown_project_status_is_active() -> None:
    doc = {**JSON_PAGE, "project-status": {"status": "frobnicated"}}
    page = parse_project_page(
        json.dumps(doc).encode(), "application/vnd.pypi.simple.v1+json", PAGE, "demo"
    )
    assert page.status == "active"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"filename": "../evil.whl"}, "bad filename"),
        ({"filename": "a/b.whl"}, "bad filename"),
        ({"url": "file:///etc/passwd"}, "not an http"),
        ({"hashes": {"sha256": "zz"}}, "malformed sha256"),
        ({"upload-time": "yesterday"}, "malformed upload-time"),
        ({"upload-time": "2024-05-01T12:30:00"}, "without a time zone"),
        ({"size": -1}, "negative size"),
        ({"size": "12"}, "'size' must be int"),
        ({"yanked": 3}, "'yanked' must be"),
        ({"requires-python": "x" * 10_000}, "longer than"),
    ],
)
def test_malformed_files_are_typed_errors(change: dict[str, object], words: str) -> None:
    doc = json.loads(json.dumps(JSON_PAGE))
    doc["files"][0].update(change)
    with pytest.raises(UpstreamPageError, match=words):
        parse_project_page(
            json.dumps(doc).encode(), "application/vnd.pypi.simple.v1+json", PAGE, "demo"
        )


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"files": 3}', b'{"name": "demo"}', b"\xff\xfe"],
)
def test_malformed_json_pages_are_typed_errors(body: bytes) -> None:
    with pytest.raises(UpstreamPageError):
        parse_project_page(body, "application/vnd.pypi.simple.v1+json", PAGE, "demo")


def test_pages_are_bounded() -> None:
    from p2pkg.core import upstream

    big = b" " * (upstream.MAX_PAGE + 1)
    with pytest.raises(UpstreamPageError, match="larger than"):
        parse_project_page(big, "text/html", PAGE, "demo")
    with pytest.raises(UpstreamPageError, match="larger than"):
        parse_index_page(big, "text/html", PAGE)


def test_non_utf8_html_is_a_typed_error() -> None:
    with pytest.raises(UpstreamPageError, match="UTF-8"):
        parse_project_page(b"<a href='x'>\xff</a>", "text/html", PAGE, "demo")
