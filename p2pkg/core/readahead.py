"""What an installer will ask a cache for next, guessed from what it asked now. Pure.

An installer resolving a project asks for its page, then its metadata, then
the pages of its dependencies, one project at a time (pip) or a few at a
time (uv), and downloads the archives last. Through a cold cache every one
of those requests waits for a round trip to the seeds. Read-ahead answers
them before they are asked: when a page is served, the cache walks the
dependency closure of the project's newest release — pages, core metadata
(the dependencies come from its ``Requires-Dist``) and the archives an
installer here would pick — so the installer's later requests find them
held or arriving.

These functions decide *what*; :mod:`p2pkg.roles.readahead` fetches it.
The guesses only ever spend bandwidth: what is fetched is verified like
everything else, and a wrong guess is an archive nobody asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from email.parser import BytesHeaderParser

from packaging.markers import InvalidMarker, Marker, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from p2pkg.core.objects import FileManifest
from p2pkg.core.select import tag_ranks

MAX_METADATA = 4 << 20  # bytes of METADATA parsed; PyPI's largest are well under 1 MiB
MAX_REQUIREMENTS = 1000  # Requires-Dist lines read from one METADATA


def newest_release(manifests: Sequence[FileManifest]) -> list[FileManifest]:
    """The files of the newest release an installer would consider.

    Yanked files are skipped (PEP 592: not chosen without a pin), and
    pre-releases unless the project has nothing else.
    """
    by_version: dict[Version, list[FileManifest]] = {}
    for m in manifests:
        if m.yanked is not None:
            continue
        try:
            version = Version(m.version)
        except InvalidVersion:
            continue
        by_version.setdefault(version, []).append(m)
    if not by_version:
        return []
    final = [v for v in by_version if not v.is_prerelease]
    return by_version[max(final or by_version)]


def likely_archives(
    release: Sequence[FileManifest], tags: Sequence[Tag] | None = None
) -> list[FileManifest]:
    """The archive of ``release`` an installer with ``tags`` would download, if any.

    ``tags``: the compatible tags, best first; None: this interpreter's (a
    cache guesses its own: a site's machines mostly match it). The
    best-ranked wheel, else the sdist; nothing when only other platforms'
    wheels exist.
    """
    rank = tag_ranks(tags)
    best: tuple[int, FileManifest] | None = None
    sdist: FileManifest | None = None
    for m in release:
        if m.filename.endswith(".whl"):
            try:
                _, _, _, file_tags = parse_wheel_filename(m.filename)
            except (InvalidWheelFilename, InvalidVersion):
                continue
            score = min((rank[t] for t in file_tags if t in rank), default=None)
            if score is not None and (best is None or score < best[0]):
                best = (score, m)
        elif sdist is None:
            try:
                parse_sdist_filename(m.filename)
            except (InvalidSdistFilename, InvalidVersion):
                continue
            sdist = m
    if best is not None:
        return [best[1]]
    return [sdist] if sdist is not None else []


def metadata_source(
    release: Sequence[FileManifest], likely: Sequence[FileManifest]
) -> FileManifest | None:
    """The file whose core metadata names the release's dependencies.

    The likely archive's, else any wheel's: a release's wheels for other
    platforms almost always declare the same requirements.
    """
    for m in [*likely, *release]:
        if m.core_metadata is not None:
            return m
    return None


def dependencies(metadata: bytes, environment: Mapping[str, str] | None = None) -> list[str]:
    """Normalized names of the projects a METADATA file requires, extras excluded.

    ``environment``: marker variables (packaging's ``default_environment()``);
    a requirement whose marker is false there is left out, and one whose
    marker cannot be evaluated is kept (a guess that costs a download).
    None keeps every requirement without an ``extra`` marker. Malformed
    lines are skipped: this is a guess, never a check.
    """
    headers = BytesHeaderParser().parsebytes(metadata[:MAX_METADATA])
    names: list[str] = []
    for line in (headers.get_all("Requires-Dist") or [])[:MAX_REQUIREMENTS]:
        try:
            req = Requirement(str(line))
        except InvalidRequirement:
            continue
        if req.marker is not None and not _wanted(req.marker, environment):
            continue
        name = canonicalize_name(req.name)
        if name not in names:
            names.append(name)
    return names


def _wanted(marker: Marker, environment: Mapping[str, str] | None) -> bool:
    if "extra" in str(marker):
        return False  # only for installs that ask for the extra
    if environment is None:
        return True
    try:
        return marker.evaluate({**environment, "extra": ""})
    except (InvalidMarker, UndefinedEnvironmentName):
        return True


__all__ = [
    "MAX_METADATA",
    "dependencies",
    "likely_archives",
    "metadata_source",
    "newest_release",
]
