"""Read what the index needs from a wheel or sdist, refusing invalid archives.

A wheel must be a readable zip whose ``{name}-{version}.dist-info/`` holds
``METADATA`` and ``WHEEL``; an sdist (``.tar.gz`` or ``.zip``) must hold
``{name}-{version}/PKG-INFO``. The metadata's Name and Version must match the
filename (after PEP 503 normalization and PEP 440 parsing), which stops one
project's file being published under another's name. A ``.tar.gz`` is read to
its end so that truncation is caught; a zip's central directory (at its end)
is parsed, which catches truncation too, and the metadata member's CRC is
checked.

The metadata member's own timestamp is read on the same pass
(:attr:`ArchiveInfo.recorded_time`): it is when the archive was built, which
``publish --upload-time archive`` offers as the file's upload time.
"""

from __future__ import annotations

import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from packaging.metadata import parse_email
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from p2pkg.config import LIMITS
from p2pkg.core.objects import check_filename
from p2pkg.errors import ArchiveError, DecodeError

ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".zip")


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """What publish needs from an archive besides its bytes."""

    project: str  # normalized
    version: str
    requires_python: str
    core_metadata: bytes | None  # METADATA bytes for PEP 658 (wheels only)
    # POSIX time of the METADATA / PKG-INFO member, None when the archive records
    # none worth believing (zip's 1980 placeholder, tar's 0). May be in the future:
    # only the publisher knows "now".
    recorded_time: int | None = None


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def inspect_archive(path: Path, filename: str | None = None) -> ArchiveInfo:
    """Validate ``path`` and read its metadata. Raises :class:`ArchiveError`."""
    name = filename or path.name
    try:
        check_filename(name)
    except DecodeError as exc:
        raise ArchiveError(str(path), str(exc)) from None
    try:
        if name.endswith(".whl"):
            return _inspect_wheel(path, name)
        if name.endswith((".tar.gz", ".zip")):
            return _inspect_sdist(path, name)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error) as exc:
        raise ArchiveError(str(path), f"unreadable or truncated archive ({exc})") from None
    raise ArchiveError(str(path), "not a .whl, .tar.gz or .zip file")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    if info.file_size > LIMITS.max_core_metadata_size:
        raise ArchiveError(str(path), f"{info.filename} is too large")
    return zf.read(info)  # zipfile checks the CRC when the member is read whole


def _inspect_wheel(path: Path, filename: str) -> ArchiveInfo:
    try:
        name, version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise ArchiveError(str(path), f"invalid wheel filename: {exc}") from None
    with zipfile.ZipFile(path) as zf:
        dist_info = {}
        for info in zf.infolist():
            top, _, rest = info.filename.partition("/")
            if top.endswith(".dist-info") and rest in ("METADATA", "WHEEL"):
                dist_info[(top, rest)] = info
        tops = {top for top, _ in dist_info}
        matching = [t for t in tops if _dist_info_matches(t, name, version)]
        if len(matching) != 1 or (matching[0], "WHEEL") not in dist_info:
            raise ArchiveError(str(path), f"no {name}-{version}.dist-info/METADATA and WHEEL")
        meta_info = dist_info.get((matching[0], "METADATA"))
        if meta_info is None:
            raise ArchiveError(str(path), "wheel has no METADATA")
        metadata = _read_member(zf, meta_info, path)
    return _check_metadata(path, metadata, name, version, keep=True, recorded=_zip_time(meta_info))


def _dist_info_matches(top: str, name: str, version: Version) -> bool:
    stem = top[: -len(".dist-info")]
    dname, sep, dversion = stem.rpartition("-")
    if not sep:
        return False
    try:
        return canonicalize_name(dname) == name and Version(dversion) == version
    except InvalidVersion:
        return False


def _inspect_sdist(path: Path, filename: str) -> ArchiveInfo:
    try:
        name, version = parse_sdist_filename(filename)
    except InvalidSdistFilename as exc:
        raise ArchiveError(str(path), f"invalid sdist filename: {exc}") from None
    metadata: bytes | None = None
    recorded: int | None = None
    if filename.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[1] == "PKG-INFO":
                    metadata = _read_member(zf, info, path)
                    recorded = _zip_time(info)
                    break
    else:
        with tarfile.open(path, mode="r:gz") as tf:
            metadata, recorded = _scan_tar(tf, path)
    if metadata is None:
        raise ArchiveError(str(path), "sdist has no top-level */PKG-INFO")
    return _check_metadata(path, metadata, name, version, keep=False, recorded=recorded)


def _scan_tar(tf: tarfile.TarFile, path: Path) -> tuple[bytes | None, int | None]:
    """PKG-INFO's bytes and mtime; the stream is read to its end (that is how
    truncation shows)."""
    metadata = None
    recorded = None
    for member in tf:
        parts = member.name.split("/")
        if metadata is None and len(parts) == 2 and parts[1] == "PKG-INFO" and member.isfile():
            if member.size > LIMITS.max_core_metadata_size:
                raise ArchiveError(str(path), "PKG-INFO is too large")
            fh: IO[bytes] | None = tf.extractfile(member)
            if fh is not None:
                metadata = fh.read()
                # pax headers may give a float; 0 (and below) is "not recorded".
                mtime = int(member.mtime)
                recorded = mtime if mtime > 0 else None
    # Iterating members skips file bodies by seeking, which for a gzip stream
    # decompresses them; reading the last block catches a cut-off tail.
    fileobj = tf.fileobj
    if fileobj is not None:
        while fileobj.read(1 << 20):
            pass
    return metadata, recorded


# A DOS date before this is the placeholder writers use when they record nothing
# (1980-01-01, the format's minimum, shifted by up to a day of time zone).
_ZIP_NOTHING = int(datetime(1980, 1, 2, tzinfo=UTC).timestamp())
_EXTENDED_TIMESTAMP = 0x5455  # Info-ZIP "UT" extra field: flags, then UTC mtime


def _zip_time(info: zipfile.ZipInfo) -> int | None:
    """When a zip member was written, as a POSIX time, or None if unrecorded.

    The Info-ZIP extended timestamp, when present, is exact UTC. Otherwise the
    DOS date_time has no zone; reading it as UTC keeps the result independent
    of the publishing machine (it is off by at most the builder's UTC offset).
    """
    extra = info.extra
    while len(extra) >= 4:
        tag, size = struct.unpack_from("<HH", extra)
        body = extra[4 : 4 + size]
        if tag == _EXTENDED_TIMESTAMP and len(body) >= 5 and body[0] & 1:
            mtime = int(struct.unpack_from("<i", body, 1)[0])
            return mtime if mtime >= _ZIP_NOTHING else None
        extra = extra[4 + size :]
    try:
        when = int(datetime(*info.date_time, tzinfo=UTC).timestamp())
    except ValueError:  # month or day 0, second 60...: writers that record nothing
        return None
    return when if when >= _ZIP_NOTHING else None


def _check_metadata(
    path: Path,
    metadata: bytes,
    name: str,
    version: Version,
    *,
    keep: bool,
    recorded: int | None = None,
) -> ArchiveInfo:
    raw, _unparsed = parse_email(metadata)
    meta_name = raw.get("name")
    meta_version = raw.get("version")
    if not meta_name or not meta_version:
        raise ArchiveError(str(path), "metadata lacks Name or Version")
    if canonicalize_name(meta_name) != name:
        raise ArchiveError(
            str(path), f"filename says project {name!r}, metadata says {meta_name!r}"
        )
    try:
        if Version(meta_version) != version:
            raise ArchiveError(
                str(path), f"filename says version {version}, metadata says {meta_version}"
            )
    except InvalidVersion:
        raise ArchiveError(str(path), f"invalid version in metadata: {meta_version!r}") from None
    return ArchiveInfo(
        project=str(name),
        version=str(version),
        requires_python=str(raw.get("requires_python", "") or ""),
        core_metadata=metadata if keep else None,
        recorded_time=recorded,
    )
