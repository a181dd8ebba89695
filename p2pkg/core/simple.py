"""PEP 503 / 691 simple repository pages from signed objects (pure).

Everything on a page comes from verified file manifests: the ``#sha256=``
fragment and ``hashes`` (what pip and uv check), ``data-requires-python``
(PEP 503/345), ``data-yanked`` (PEP 592), ``data-core-metadata`` and the
legacy ``data-dist-info-metadata`` (PEP 658/714), and in JSON the PEP 700
``size``, ``upload-time`` and ``versions``. File URLs are relative
(``../../files/<archive blake3>/<filename>``) so a cache serves them under any
host, and name the archive's content, not its manifest: a yank or unyank
rewrites the manifest but leaves every URL a lockfile recorded valid.

What a master mirrored from an upstream index shows too: a file's PEP 740
provenance (``provenance`` in JSON, ``data-provenance`` in HTML: the file's
URL plus ``.provenance``) and, when the caller passes the project's status,
PEP 792's ``project-status`` (JSON) / ``pypi:project-status`` meta tags
(HTML). A page claims the API version it backs: 1.4 with a project status
(PEP 792 is 1.4; PEP 740's provenance 1.3 and PEP 700 1.1 come with it), 1.1
otherwise. A quarantined project's page lists no files (PEP 792: an index
offers none of them).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from p2pkg.core.objects import FileManifest

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
HTML = "text/html"
#: PEP 740's media type for a provenance document.
PROVENANCE_TYPE = "application/vnd.pypi.integrity.v1+json"
API_VERSION = "1.1"
#: Claimed by pages that carry a project status (PEP 792).
API_VERSION_STATUS = "1.4"
# PEP 691: "latest" is an alias of the newest version the server speaks.
_ALIASES = {
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
}


def file_url(m: FileManifest) -> str:
    """Where a file lives, relative to a project page (``/simple/<name>/``).

    The path names the archive's BLAKE3 and its filename: both are fixed for
    the life of a file, whereas the manifest id changes with a yank. The cache
    serves the URL only while the signed tree lists that filename with that
    BLAKE3 (docs/protocol.md §7).
    """
    return f"../../files/{m.blake3.hex()}/{m.filename}"


def provenance_url(m: FileManifest) -> str | None:
    """Where a file's PEP 740 provenance lives (None: it has none): its URL + ``.provenance``."""
    return None if m.provenance is None else file_url(m) + ".provenance"


def _upload_time(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def _versions(manifests: Iterable[FileManifest]) -> list[str]:
    """PEP 700 ``versions``: every version with a file, in PEP 440 order."""
    out: dict[str, None] = {}
    for m in manifests:
        try:
            if m.filename.endswith(".whl"):
                out[str(parse_wheel_filename(m.filename)[1])] = None
            else:
                out[str(parse_sdist_filename(m.filename)[1])] = None
        except (InvalidWheelFilename, InvalidSdistFilename):
            out[m.version] = None
    return sorted(out, key=_version_key)


def _version_key(text: str) -> tuple[int, Version | str]:
    # Unparseable versions (legacy uploads) sort before all PEP 440 ones, as text.
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)


def _offered(manifests: Sequence[FileManifest], status: str | None) -> list[FileManifest]:
    # PEP 792: a quarantined project's files are not offered for download.
    return [] if status == "quarantined" else sorted(manifests, key=lambda m: m.filename)


def project_json(
    name: str,
    manifests: Sequence[FileManifest],
    status: str | None = None,
    status_reason: str | None = None,
    namespace: str | None = None,
) -> bytes:
    """The PEP 691 JSON page; with ``status``, PEP 792's ``project-status`` (API 1.4).

    ``namespace``: which trusted namespace served the page, as the private
    key ``"_p2pkg": {"namespace": ...}`` (PEP 691 reserves keys starting
    with ``_`` for the index's own use; installers ignore them).
    """
    files = []
    offered = _offered(manifests, status)
    for m in offered:
        core: dict[str, str] | bool = False
        if m.core_metadata is not None:
            core = {"sha256": m.core_metadata.sha256.hex()}
        entry: dict[str, object] = {
            "filename": m.filename,
            "url": file_url(m),
            "hashes": {"sha256": m.sha256.hex()},
            "requires-python": m.requires_python or None,
            "yanked": m.yanked if m.yanked else (m.yanked is not None),
            "core-metadata": core,
            "dist-info-metadata": core,
            "size": m.size,
            "upload-time": _upload_time(m.upload_time),
        }
        provenance = provenance_url(m)
        if provenance is not None:
            entry["provenance"] = provenance
        files.append(entry)
    page: dict[str, object] = {
        "meta": {"api-version": API_VERSION if status is None else API_VERSION_STATUS},
        "name": name,
        "versions": _versions(offered),
        "files": files,
    }
    if status is not None:
        marker = {"status": status}
        if status_reason is not None:
            marker["reason"] = status_reason
        page["project-status"] = marker
    if namespace is not None:
        page["_p2pkg"] = {"namespace": namespace}
    return json.dumps(page, separators=(",", ":")).encode()


def project_html(
    name: str,
    manifests: Sequence[FileManifest],
    status: str | None = None,
    status_reason: str | None = None,
    namespace: str | None = None,
) -> bytes:
    """The PEP 503 HTML page; with ``status``, PEP 792's meta tags (API 1.4).

    ``namespace``: which trusted namespace served it, as
    ``<meta name="p2pkg:namespace">`` (installers ignore unknown meta tags).
    """
    esc = html.escape
    version = API_VERSION if status is None else API_VERSION_STATUS
    lines = [
        "<!DOCTYPE html>",
        "<html><head>",
        f'<meta name="pypi:repository-version" content="{version}">',
    ]
    if status is not None:
        lines.append(f'<meta name="pypi:project-status" content="{esc(status)}">')
        if status_reason is not None:
            lines.append(f'<meta name="pypi:project-status-reason" content="{esc(status_reason)}">')
    if namespace is not None:
        lines.append(f'<meta name="p2pkg:namespace" content="{esc(namespace)}">')
    lines += [
        f"<title>Links for {esc(name)}</title></head><body>",
        f"<h1>Links for {esc(name)}</h1>",
    ]
    for m in _offered(manifests, status):
        attrs = [f'href="{esc(file_url(m))}#sha256={m.sha256.hex()}"']
        if m.requires_python:
            attrs.append(f'data-requires-python="{esc(m.requires_python)}"')
        if m.yanked is not None:
            attrs.append(f'data-yanked="{esc(m.yanked)}"')
        if m.core_metadata is not None:
            value = f"sha256={m.core_metadata.sha256.hex()}"
            attrs.append(f'data-core-metadata="{value}"')
            attrs.append(f'data-dist-info-metadata="{value}"')
        provenance = provenance_url(m)
        if provenance is not None:
            attrs.append(f'data-provenance="{esc(provenance)}"')
        lines.append(f"<a {' '.join(attrs)}>{esc(m.filename)}</a><br>")
    lines.append("</body></html>")
    return ("\n".join(lines) + "\n").encode()


def index_json(names: Iterable[str]) -> bytes:
    page = {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in sorted(names)]}
    return json.dumps(page, separators=(",", ":")).encode()


def index_html(names: Iterable[str]) -> bytes:
    body = "\n".join(f'<a href="{html.escape(n)}/">{html.escape(n)}</a><br>' for n in sorted(names))
    return (
        "<!DOCTYPE html>\n<html><head>"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">'
        f"<title>Simple index</title></head><body>\n{body}\n</body></html>\n"
    ).encode()


@dataclass(frozen=True, slots=True)
class _Offer:
    media: str
    q: float


def negotiate(accept: str | None) -> str | None:
    """PEP 691 content negotiation: the media type to serve, or None (406).

    No Accept header (or ``*/*``) gets HTML, as pip and browsers expect.
    """
    if not accept:
        return HTML
    offers = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        media = fields[0].lower()
        offers.append(_Offer(_ALIASES.get(media, media), q))
    best: tuple[float, int, str] | None = None
    preference = {JSON_V1: 3, HTML_V1: 2, HTML: 1}
    for offer in offers:
        if offer.q <= 0:
            continue
        if offer.media in preference:
            media = offer.media
        elif offer.media in ("*/*", "text/*", "application/*"):
            media = HTML if offer.media != "application/*" else JSON_V1
        else:
            continue
        key = (offer.q, preference[media], media)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None
