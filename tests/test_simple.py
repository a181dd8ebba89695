from __future__ import annotations

import json
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from p2pkg.core.chunking import ChunkId, ChunkRef
from p2pkg.core.objects import CoreMetadata, FileManifest, ObjectId, Provenance
from p2pkg.core.simple import (
    HTML,
    HTML_V1,
    JSON_V1,
    index_html,
    index_json,
    negotiate,
    project_html,
    project_json,
)
from p2pkg.core.upstream import parse_project_page


def manifest(filename: str, **kw: object) -> FileManifest:
    base: dict[str, object] = {
        "filename": filename,
        "version": "1.0",
        "size": 3,
        "sha256": b"\xaa" * 32,
        "blake3": b"\xbb" * 32,
        "requires_python": "",
        "yanked": None,
        "upload_time": 0,
        "core_metadata": None,
        "chunks": (ChunkRef(ChunkId(b"\x00" * 32), 3),),
    }
    base.update(kw)
    return FileManifest(**base)  # type: ignore[arg-type]


MANIFESTS = [
    manifest(
        "demo-1.0-py3-none-any.whl",
        core_metadata=CoreMetadata(b"\xcc" * 32, ObjectId(b"\x01" * 32), 10),
    ),
    manifest("demo-1.0.tar.gz", requires_python=">=3.8,<4"),
    manifest("demo-0.9.tar.gz", version="0.9", yanked="broken"),
    manifest("demo-0.8.tar.gz", version="0.8", yanked=""),
]
FILES = [replace(m, blake3=bytes([i]) * 32) for i, m in enumerate(MANIFESTS)]


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def test_html_page_carries_every_attribute() -> None:
    p = Links()
    p.feed(project_html("demo", FILES).decode())
    by_name = {link["href"].split("/")[-1].split("#")[0]: link for link in p.links}  # type: ignore[union-attr]
    whl = by_name["demo-1.0-py3-none-any.whl"]
    # named by the archive's BLAKE3 (stable across yanks), with the sha256 pip checks
    assert whl["href"] == f"../../files/{'00' * 32}/demo-1.0-py3-none-any.whl#sha256={'aa' * 32}"
    assert whl["data-core-metadata"] == f"sha256={'cc' * 32}"
    assert whl["data-dist-info-metadata"] == whl["data-core-metadata"]
    assert (
        by_name["demo-1.0.tar.gz"]["data-requires-python"] == ">=3.8,<4"
    )  # unescaped by the parser
    assert by_name["demo-0.9.tar.gz"]["data-yanked"] == "broken"
    assert "data-yanked" in by_name["demo-0.8.tar.gz"]
    assert "data-yanked" not in by_name["demo-1.0.tar.gz"]


def test_json_page() -> None:
    page = json.loads(project_json("demo", FILES))
    assert page["meta"]["api-version"] == "1.1"
    assert page["versions"] == ["0.8", "0.9", "1.0"]
    files = {f["filename"]: f for f in page["files"]}
    assert files["demo-0.9.tar.gz"]["yanked"] == "broken"
    assert files["demo-0.8.tar.gz"]["yanked"] is True
    assert files["demo-1.0.tar.gz"]["yanked"] is False
    assert files["demo-1.0-py3-none-any.whl"]["core-metadata"] == {"sha256": "cc" * 32}
    assert files["demo-1.0.tar.gz"]["core-metadata"] is False
    assert files["demo-1.0.tar.gz"]["size"] == 3
    assert files["demo-1.0.tar.gz"]["upload-time"] == "1970-01-01T00:00:00.000000Z"


def test_index_pages() -> None:
    assert b'href="demo/"' in index_html(["demo"])
    assert json.loads(index_json(["b", "a"]))["projects"] == [{"name": "a"}, {"name": "b"}]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, HTML),
        ("*/*", HTML),
        ("text/html", HTML),
        (f"{JSON_V1}, {HTML_V1};q=0.2, text/html;q=0.01", JSON_V1),  # what pip sends
        (f"{HTML_V1}", HTML_V1),
        ("application/json", None),
        (f"{JSON_V1};q=0", None),
        # PEP 691: "latest" aliases the newest version this server speaks
        ("application/vnd.pypi.simple.latest+json", JSON_V1),
        ("application/vnd.pypi.simple.latest+html", HTML_V1),
        ("application/vnd.pypi.simple.latest+json;q=0.9, text/html;q=0.1", JSON_V1),
    ],
)
def test_negotiation(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


def test_versions_sort_by_pep_440_not_as_strings() -> None:
    files = [
        manifest("demo-2.14.3.tar.gz", version="2.14.3"),
        manifest("demo-2.8.2.tar.gz", version="2.8.2"),
        manifest("demo-2.8.2-py3-none-any.whl", version="2.8.2"),
        manifest("demo-10.0rc1.tar.gz", version="10.0rc1"),
        manifest("demo-2.9.post1.tar.gz", version="2.9.post1"),
    ]
    page = json.loads(project_json("demo", files))
    assert page["versions"] == ["2.8.2", "2.9.post1", "2.14.3", "10.0rc1"]


# ---------------------------------------------------------------------- what a mirror carries

MIRRORED = [
    replace(FILES[0], provenance=Provenance(ObjectId(b"\x02" * 32), 40)),
    *FILES[1:],
]
PAGE_URL = "http://cache.example/simple/demo/"


def test_provenance_links_follow_the_file_url() -> None:
    page = json.loads(project_json("demo", MIRRORED))
    files = {f["filename"]: f for f in page["files"]}
    whl = files["demo-1.0-py3-none-any.whl"]
    assert whl["provenance"] == whl["url"] + ".provenance"
    assert "provenance" not in files["demo-1.0.tar.gz"]
    p = Links()
    p.feed(project_html("demo", MIRRORED).decode())
    links = {link["href"].split("#")[0]: link for link in p.links}  # type: ignore[union-attr]
    assert links[whl["url"]]["data-provenance"] == whl["url"] + ".provenance"


@pytest.mark.parametrize("render", [project_json, project_html])
def test_project_status_is_shown_and_claims_api_1_4(render: object) -> None:
    body = render("demo", MIRRORED, "archived", "moved to demo2")  # type: ignore[operator]
    ctype = JSON_V1 if render is project_json else "text/html"
    # What any PEP 691/792 reader sees (p2pkg's own upstream parser here).
    parsed = parse_project_page(body, ctype, PAGE_URL, "demo")
    assert (parsed.status, parsed.status_reason, parsed.api_version) == (
        "archived",
        "moved to demo2",
        "1.4",
    )
    whl = next(f for f in parsed.files if f.filename == "demo-1.0-py3-none-any.whl")
    assert whl.provenance == f"http://cache.example/files/{'00' * 32}/{whl.filename}.provenance"
    assert len(parsed.files) == len(MIRRORED)


def test_without_a_status_pages_stay_at_api_1_1() -> None:
    assert json.loads(project_json("demo", FILES))["meta"]["api-version"] == "1.1"
    assert "project-status" not in json.loads(project_json("demo", FILES))
    assert b"pypi:project-status" not in project_html("demo", FILES)
    active = json.loads(project_json("demo", FILES, "active"))
    assert active["project-status"] == {"status": "active"}


@pytest.mark.parametrize("render", [project_json, project_html])
def test_a_quarantined_project_offers_no_files(render: object) -> None:
    body = render("demo", MIRRORED, "quarantined", "malware")  # type: ignore[operator]
    ctype = JSON_V1 if render is project_json else "text/html"
    parsed = parse_project_page(body, ctype, PAGE_URL, "demo")
    assert (parsed.status, parsed.files) == ("quarantined", ())
