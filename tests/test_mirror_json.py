"""Mirroring a PEP 691 JSON index: what only JSON carries reaches the cache and uv.

The upstream is a small PEP 691 server this module runs on 127.0.0.1 (a
thread): ``core-metadata`` with its hash and the ``.metadata`` files (PEP
658/714), PEP 740 provenance, PEP 792 project status, PEP 700 upload
times, PEP 592 yanks, ETags (304 on If-None-Match) and
``X-PyPI-Last-Serial``. The master mirrors it, a real ``p2pkg serve`` and
``p2pkg cache`` serve the result, and real uv installs from the cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.testbed import Testbed
from p2pkg.core.root import decode_signed_root, format_pubkey, public_bytes
from p2pkg.core.simple import PROVENANCE_TYPE
from p2pkg.io.archives import inspect_archive
from p2pkg.io.store import Store
from p2pkg.roles.mirror import MirrorResult, Selection, mirror_index
from p2pkg.roles.namespace import open_store_namespace
from p2pkg.testing.archives import build_wheel
from tests.helpers import wait_until
from tests.installers import uv_install

pytestmark = [pytest.mark.net]

JSON_V1 = "application/vnd.pypi.simple.v1+json"


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


@dataclass
class Hosted:
    """One file the JSON index offers."""

    path: Path
    upload_time: int
    yanked: str | None = None
    provenance: bytes | None = None
    metadata: bytes | None = None  # served as .metadata (default: the wheel's own)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Index:
    """What the JSON server serves: projects' files and statuses, and a serial."""

    files: dict[str, list[Hosted]] = field(default_factory=dict)
    status: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    serials: dict[str, int] = field(default_factory=dict)  # PyPI's: per project
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def page(self, name: str) -> bytes | None:
        hosted = self.files.get(name)
        if hosted is None:
            return None
        files = []
        for h in hosted:
            data = h.path.read_bytes()
            meta = h.metadata or inspect_archive(h.path).core_metadata or b""
            entry: dict[str, Any] = {
                "filename": h.name,
                "url": f"../../files/{h.name}",
                "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                "requires-python": None,
                "yanked": h.yanked if h.yanked is not None else False,
                "core-metadata": {"sha256": hashlib.sha256(meta).hexdigest()},
                "size": len(data),
                "upload-time": datetime.fromtimestamp(h.upload_time, UTC).isoformat(),
            }
            if h.provenance is not None:
                entry["provenance"] = f"../../files/{h.name}.provenance"
            files.append(entry)
        doc: dict[str, Any] = {
            "meta": {"api-version": "1.4", "_last-serial": self.serial(name)},
            "name": name,
            "files": files,
        }
        if name in self.status:
            state, reason = self.status[name]
            doc["project-status"] = {"status": state, "reason": reason}
        return json.dumps(doc).encode()

    def serial(self, name: str) -> int:
        return self.serials.get(name, 100)

    def document(self, filename: str) -> bytes | None:
        for hosted in self.files.values():
            for h in hosted:
                if filename == h.name:
                    return h.path.read_bytes()
                if filename == h.name + ".metadata":
                    return h.metadata or inspect_archive(h.path).core_metadata
                if filename == h.name + ".provenance":
                    return h.provenance
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        index = self.server.index
        with index.lock:
            index.requests.append(self.path)
        parts = self.path.strip("/").split("/")
        if parts[0] == "simple" and len(parts) == 2:
            body = index.page(parts[1])
            if body is None:
                return self._send(404, b"no such project")
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            headers = {"ETag": etag, "X-PyPI-Last-Serial": str(index.serial(parts[1]))}
            if self.headers.get("If-None-Match") == etag:
                return self._send(304, b"", headers)
            return self._send(200, body, {**headers, "Content-Type": JSON_V1})
        if parts[0] == "files" and len(parts) == 2:
            data = index.document(parts[1])
            if data is not None:
                return self._send(200, data, {"Content-Type": "application/octet-stream"})
        return self._send(404, b"not found")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, index: Index) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.index = index


@pytest.fixture
def upstream() -> Iterator[tuple[Index, str]]:
    index = Index()
    server = _Server(index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index, f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _mirror(store: Path, key: Ed25519PrivateKey, url: str, *names: str) -> MirrorResult:
    with Store.open(store, create=True) as st:
        return mirror_index(st, [key], url, Selection(projects=names))


def _get(url: str, accept: str | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _publish_fixture(index: Index, dist: Path) -> dict[str, Hosted]:
    provenance = json.dumps({"version": 1, "attestation_bundles": []}).encode()
    hosted = {
        "old": Hosted(build_wheel(dist, "prov", "0.9"), ts("2023-05-01"), yanked="bad build"),
        "v1": Hosted(build_wheel(dist, "prov", "1.0"), ts("2024-01-15"), provenance=provenance),
        "v2": Hosted(
            build_wheel(dist, "prov", "2.0"),
            ts("2025-03-01"),
            provenance=provenance.replace(b"1", b"2"),
            metadata=b"Metadata-Version: 2.1\nName: prov\nVersion: 2.0\nSummary: edited\n\n",
        ),
        "stat": Hosted(build_wheel(dist, "stat", "1.0"), ts("2024-02-02")),
    }
    index.files = {"prov": [hosted["old"], hosted["v1"], hosted["v2"]], "stat": [hosted["stat"]]}
    index.status = {"stat": ("archived", "superseded by prov")}
    return hosted


@pytest.mark.slow
def test_json_index_facts_reach_the_cache_pages_and_uv(
    upstream: tuple[Index, str], tmp_path: Path, dist: Path, key: Ed25519PrivateKey
) -> None:
    index, url = upstream
    hosted = _publish_fixture(index, dist)
    store = tmp_path / "master"
    first = _mirror(store, key, url, "prov", "stat")
    assert sorted(first.added) == sorted(h.name for h in hosted.values())
    # v2's .metadata differs from its wheel's METADATA: reported, the wheel's is published.
    assert [(n.filename, "differs" in n.reason) for n in first.notes] == [(hosted["v2"].name, True)]
    assert first.status_changed == ("stat",)
    with Store.open(store) as st:
        assert decode_signed_root(st.latest_root() or b"")[1].upstream_serial == 100

    pub = format_pubkey(public_bytes(key))
    with Testbed() as bed:
        _, master = bed.serve(store)
        _, cache = bed.cache(tmp_path / "cache", pub, [master], "--refresh", "1s")
        page_url = f"{cache}/simple/prov/"
        status, body, ctype = _get(page_url, JSON_V1)
        assert (status, ctype) == (200, JSON_V1)
        page = json.loads(body)
        assert page["meta"]["api-version"] == "1.4"
        assert page["project-status"] == {"status": "active"}
        files = {f["filename"]: f for f in page["files"]}
        assert {n: f["upload-time"] for n, f in files.items()} == {
            hosted["old"].name: "2023-05-01T00:00:00.000000Z",
            hosted["v1"].name: "2024-01-15T00:00:00.000000Z",
            hosted["v2"].name: "2025-03-01T00:00:00.000000Z",
        }
        assert files[hosted["old"].name]["yanked"] == "bad build"
        assert "provenance" not in files[hosted["old"].name]
        for which in ("v1", "v2"):
            h = hosted[which]
            got = _get(urljoin(page_url, files[h.name]["provenance"]))
            assert got == (200, h.provenance, PROVENANCE_TYPE)
        metadata = _get(urljoin(page_url, files[hosted["v2"].name]["url"] + ".metadata"))[1]
        assert metadata == inspect_archive(hosted["v2"].path).core_metadata

        status, body, _ = _get(f"{cache}/simple/stat/", JSON_V1)
        stat_file = urljoin(f"{cache}/simple/stat/", json.loads(body)["files"][0]["url"])
        assert json.loads(body)["project-status"] == {
            "status": "archived",
            "reason": "superseded by prov",
        }
        html = _get(f"{cache}/simple/stat/", "text/html")[1].decode()
        assert '<meta name="pypi:project-status" content="archived">' in html
        assert '<meta name="pypi:project-status-reason" content="superseded by prov">' in html

        index_url = f"{cache}/simple/"
        assert (
            uv_install(tmp_path, "venv-old", index_url, "prov", "--exclude-newer", "2024-06-01")
            == "1.0"
        )
        assert uv_install(tmp_path, "venv-new", index_url, "prov") == "2.0"

        # Removed upstream: a tombstone, and the cache answers 410 with the reason.
        gone = hosted["v1"]
        gone_url = urljoin(page_url, files[gone.name]["url"])
        index.files["prov"] = [hosted["old"], hosted["v2"]]
        later = _mirror(store, key, url, "prov", "stat")
        assert later.removed == (gone.name,)
        assert later.unchanged == 1  # stat's page: 304
        wait_until(lambda: _get(gone_url)[0] == 410, timeout=20, what="410 for the removed file")
        assert b"removed upstream" in _get(gone_url)[1]
        assert gone.name not in _get(page_url, JSON_V1)[1].decode()

        # Quarantined upstream (PEP 792): its files are kept, and no longer offered.
        index.status["stat"] = ("quarantined", "malware")
        index.files["stat"] = []  # what a quarantining index lists
        quarantined = _mirror(store, key, url, "stat")
        assert (quarantined.status_changed, quarantined.removed) == (("stat",), ())
        wait_until(lambda: _get(stat_file)[0] == 403, timeout=20, what="403 for quarantine")
        page = json.loads(_get(f"{cache}/simple/stat/", JSON_V1)[1])
        assert (page["files"], page["project-status"]["status"]) == ([], "quarantined")


def test_a_second_run_is_conditional_and_costs_one_request_per_project(
    upstream: tuple[Index, str], tmp_path: Path, dist: Path, key: Ed25519PrivateKey
) -> None:
    index, url = upstream
    _publish_fixture(index, dist)
    store = tmp_path / "master"
    first = _mirror(store, key, url, "prov", "stat")
    assert first.publish is not None and first.publish.version == 1
    # 2 pages, 4 files, 4 .metadata (all wheels offer it), 2 provenance documents
    assert first.requests == 12

    index.requests.clear()
    second = _mirror(store, key, url, "prov", "stat")
    assert (second.unchanged, second.requests, second.publish) == (2, 2, None)
    assert sorted(index.requests) == ["/simple/prov/", "/simple/stat/"]

    # A yank upstream changes the page: only that page is read, nothing downloaded.
    index.files["prov"][1].yanked = "security hole"
    index.serials["prov"] = 101
    index.requests.clear()
    third = _mirror(store, key, url, "prov", "stat")
    assert third.yanked == (index.files["prov"][1].name,)
    assert (third.unchanged, third.requests) == (1, 2)
    assert third.publish is not None and third.publish.version == 2
    with Store.open(store) as st:
        ns = open_store_namespace(st)
        yanks = {m.filename: m.yanked for m in ns.manifests(ns.require_project("prov"))}
        assert yanks[index.files["prov"][1].name] == "security hole"
        assert ns.trusted.root.upstream_serial == 101
