"""Reading an upstream index's simple API (PEP 503 HTML, PEP 691 JSON): pure.

A master mirrors an index people already run (the public index, devpi,
pypiserver, Artifactory) by reading its project pages. This module turns a
page's bytes, its Content-Type and its URL into values; fetching is the
I/O shell's job. Both serializations carry the same facts:

* per file: filename, absolute URL, sha256 (``hashes`` / ``#sha256=``),
  ``requires-python``, ``yanked`` and its reason (PEP 592), ``size`` and
  ``upload-time`` (PEP 700), whether core metadata is offered and its hash
  (PEP 658/714: ``core-metadata``, formerly ``dist-info-metadata``), and the
  provenance URL (PEP 740);
* per project: the project status and its reason (PEP 792), ``versions``
  (PEP 700), the API version and PyPI's ``_last-serial``.

Pages are bounded (:data:`MAX_PAGE` bytes, :data:`MAX_FILES` files); a page
that breaks the format raises :class:`UpstreamPageError` naming what.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

from p2pkg.errors import DecodeError

#: Largest page accepted (PyPI's biggest JSON project pages are tens of MB).
MAX_PAGE = 64 * 1024 * 1024
#: Most files one project page may list.
MAX_FILES = 500_000
MAX_FIELD = 8 * 1024  # any one string field (a yank reason, requires-python)

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
#: What a mirror asks for: JSON preferred, HTML understood (PEP 691 negotiation).
ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, text/html;q=0.01"

#: PEP 792 statuses; anything else on a page is kept as "active" with a note.
PROJECT_STATUSES = frozenset({"active", "archived", "quarantined", "deprecated"})

_SHA256 = re.compile(r"[0-9a-f]{64}")


class UpstreamPageError(DecodeError):
    """An upstream simple-API page that breaks PEP 503/691 or a size limit."""


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    """One file an upstream project page lists."""

    filename: str
    url: str  # absolute, without fragment
    sha256: bytes | None
    requires_python: str = ""
    yanked: str | None = None  # None: not yanked; "" yanked without a reason
    size: int | None = None
    upload_time: int | None = None  # Unix seconds (PEP 700)
    core_metadata: bool = False  # the upstream serves ``<url>.metadata``
    core_metadata_sha256: bytes | None = None
    provenance: str | None = None  # absolute PEP 740 provenance URL


@dataclass(frozen=True, slots=True)
class UpstreamProject:
    """An upstream project page, whichever serialization it came in."""

    name: str
    files: tuple[UpstreamFile, ...]
    api_version: str = "1.0"
    versions: tuple[str, ...] = ()
    status: str = "active"  # PEP 792
    status_reason: str | None = None
    last_serial: int | None = None  # PyPI's ``_last-serial`` (also a response header)


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header (lower case, no parameters)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    return media_type(content_type) in (JSON_V1, "application/vnd.pypi.simple.latest+json")


def parse_project_page(
    body: bytes, content_type: str | None, page_url: str, name: str
) -> UpstreamProject:
    """The project page ``body`` served from ``page_url`` as ``content_type``.

    ``name`` is the project asked for (an HTML page need not say it). File
    URLs are made absolute against ``page_url``.
    """
    if len(body) > MAX_PAGE:
        raise UpstreamPageError(f"project page {page_url} is larger than {MAX_PAGE} bytes")
    if is_json(content_type):
        return _project_json(_load_json(body, page_url), page_url, name)
    return _project_html(_text(body, page_url), page_url, name)


def parse_index_page(body: bytes, content_type: str | None, page_url: str) -> list[str]:
    """The project names an index page (``/simple/``) lists, in page order."""
    if len(body) > MAX_PAGE:
        raise UpstreamPageError(f"index page {page_url} is larger than {MAX_PAGE} bytes")
    if is_json(content_type):
        doc = _load_json(body, page_url)
        projects = _get(doc, "projects", list, page_url)
        names = [_get(_obj(p, page_url), "name", str, page_url) for p in projects]
    else:
        parser = _Anchors()
        parser.feed(_text(body, page_url))
        parser.close()
        names = [text.strip() for _, text in parser.anchors]
    return [_bounded(n, page_url) for n in names if n]


# ---------------------------------------------------------------------- JSON (PEP 691)


def _load_json(body: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UpstreamPageError(f"{where}: not JSON: {exc}") from None
    return _obj(doc, where)


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UpstreamPageError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _get(doc: dict[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in doc or doc[key] is None:
        if default is ...:
            raise UpstreamPageError(f"{where}: missing {key!r}")
        return default
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UpstreamPageError(f"{where}: {key!r} must be {kind.__name__}")
    return value


def _project_json(doc: dict[str, Any], page_url: str, name: str) -> UpstreamProject:
    meta = _obj(doc.get("meta", {}), page_url)
    files_raw = _get(doc, "files", list, page_url)
    if len(files_raw) > MAX_FILES:
        raise UpstreamPageError(f"{page_url}: more than {MAX_FILES} files")
    files = tuple(_file_json(_obj(f, page_url), page_url) for f in files_raw)
    versions = _get(doc, "versions", list, page_url, [])
    status_doc = _obj(doc.get("project-status") or {}, page_url)
    status, reason = _status(
        _get(status_doc, "status", str, page_url, "active"),
        _get(status_doc, "reason", str, page_url, None),
    )
    serial = meta.get("_last-serial")
    return UpstreamProject(
        name=_bounded(_get(doc, "name", str, page_url, name), page_url),
        files=files,
        api_version=_bounded(_get(meta, "api-version", str, page_url, "1.0"), page_url),
        versions=tuple(_bounded(v, page_url) for v in versions if isinstance(v, str)),
        status=status,
        status_reason=reason,
        last_serial=serial if isinstance(serial, int) and not isinstance(serial, bool) else None,
    )


def _file_json(f: dict[str, Any], page_url: str) -> UpstreamFile:
    filename = _filename(_get(f, "filename", str, page_url), page_url)
    where = f"{page_url} ({filename})"
    url = _absolute(_get(f, "url", str, where), page_url, where)
    hashes = _obj(_get(f, "hashes", dict, where, {}), where)
    yanked_raw = f.get("yanked", False)
    if isinstance(yanked_raw, str):
        yanked: str | None = _bounded(yanked_raw, where)
    elif yanked_raw is True:
        yanked = ""
    elif yanked_raw in (False, None):
        yanked = None
    else:
        raise UpstreamPageError(f"{where}: 'yanked' must be a boolean or a string")
    # PEP 714 renamed dist-info-metadata to core-metadata; pages may carry either.
    meta = f.get("core-metadata", f.get("dist-info-metadata", False))
    meta_hash = None
    if isinstance(meta, dict):
        meta_hash = _hex256(meta.get("sha256"), where)
    elif meta not in (True, False, None):
        raise UpstreamPageError(f"{where}: 'core-metadata' must be a boolean or hashes")
    size = _get(f, "size", int, where, None)
    if size is not None and size < 0:
        raise UpstreamPageError(f"{where}: negative size")
    upload = _get(f, "upload-time", str, where, None)
    provenance = _get(f, "provenance", str, where, None)
    return UpstreamFile(
        filename=filename,
        url=url,
        sha256=_hex256(hashes.get("sha256"), where),
        requires_python=_bounded(_get(f, "requires-python", str, where, ""), where),
        yanked=yanked,
        size=size,
        upload_time=None if upload is None else _timestamp(upload, where),
        core_metadata=bool(meta),
        core_metadata_sha256=meta_hash,
        provenance=None if provenance is None else _absolute(provenance, page_url, where),
    )


# ---------------------------------------------------------------------- HTML (PEP 503)


class _Anchors(HTMLParser):
    """Collects ``<a>`` attributes and text, and the ``<meta name=... content=...>`` pairs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: dict[str, str] = {}
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open, self._text = dict(attrs), []
        elif tag == "meta":
            d = dict(attrs)
            if d.get("name") and d.get("content") is not None:
                self.meta[str(d["name"]).lower()] = str(d["content"])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.anchors.append((self._open, "".join(self._text)))
            self._open = None
            if len(self.anchors) > MAX_FILES:
                raise UpstreamPageError(f"more than {MAX_FILES} links on one page")


def _text(body: bytes, where: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UpstreamPageError(f"{where}: not UTF-8: {exc}") from None


def _project_html(text: str, page_url: str, name: str) -> UpstreamProject:
    parser = _Anchors()
    try:
        parser.feed(text)
        parser.close()
    except UpstreamPageError as exc:
        raise UpstreamPageError(f"{page_url}: {exc}") from None
    files = []
    for attrs, label in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url, fragment = urldefrag(urljoin(page_url, href))
        filename = _filename(label.strip() or urlsplit(url).path.rsplit("/", 1)[-1], page_url)
        where = f"{page_url} ({filename})"
        _absolute(url, page_url, where)
        algo, _, digest = fragment.partition("=")
        yanked = attrs.get("data-yanked", ...)
        meta = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        meta_algo, _, meta_digest = (meta or "").partition("=")
        provenance = attrs.get("data-provenance")
        files.append(
            UpstreamFile(
                filename=filename,
                url=url,
                sha256=_hex256(digest, where) if algo == "sha256" else None,
                requires_python=_bounded(attrs.get("data-requires-python") or "", where),
                yanked=None if yanked is ... else _bounded(yanked or "", where),
                core_metadata=meta is not None and meta.lower() != "false",
                core_metadata_sha256=(
                    _hex256(meta_digest, where) if meta_algo == "sha256" else None
                ),
                provenance=None if not provenance else _absolute(provenance, page_url, where),
            )
        )
    status, reason = _status(
        parser.meta.get("pypi:project-status", "active"),
        parser.meta.get("pypi:project-status-reason"),
    )
    return UpstreamProject(
        name=name,
        files=tuple(files),
        api_version=_bounded(parser.meta.get("pypi:repository-version", "1.0"), page_url),
        status=status,
        status_reason=reason,
    )


# ---------------------------------------------------------------------- fields


def _bounded(value: str, where: str) -> str:
    if len(value) > MAX_FIELD:
        raise UpstreamPageError(f"{where}: a field is longer than {MAX_FIELD} characters")
    return value


def _filename(value: str, where: str) -> str:
    # A filename becomes part of paths and URLs: no separators, no dot-names.
    if not value or len(value) > 255 or "/" in value or "\\" in value or value in (".", ".."):
        raise UpstreamPageError(f"{where}: bad filename {value[:80]!r}")
    if any(ord(c) < 32 for c in value):
        raise UpstreamPageError(f"{where}: control character in filename {value[:80]!r}")
    return value


def _absolute(url: str, page_url: str, where: str) -> str:
    full = urldefrag(urljoin(page_url, _bounded(url, where)))[0]
    if urlsplit(full).scheme not in ("http", "https"):
        raise UpstreamPageError(f"{where}: not an http(s) URL: {full[:120]!r}")
    return full


def _hex256(value: object, where: str) -> bytes | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise UpstreamPageError(f"{where}: malformed sha256 {str(value)[:80]!r}")
    return bytes.fromhex(value)


def _timestamp(value: str, where: str) -> int:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UpstreamPageError(f"{where}: malformed upload-time {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise UpstreamPageError(f"{where}: upload-time without a time zone {value[:40]!r}")
    return int(moment.timestamp())


def _status(status: str, reason: str | None) -> tuple[str, str | None]:
    status = status.strip().lower()
    if status not in PROJECT_STATUSES:
        # PEP 792: an unknown status is treated as active by clients.
        return "active", None
    return status, None if reason is None else reason[:MAX_FIELD]


__all__ = [
    "ACCEPT",
    "HTML_V1",
    "JSON_V1",
    "MAX_FILES",
    "MAX_PAGE",
    "PROJECT_STATUSES",
    "UpstreamFile",
    "UpstreamPageError",
    "UpstreamProject",
    "is_json",
    "media_type",
    "parse_index_page",
    "parse_project_page",
]
