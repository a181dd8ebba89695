"""The master's publish: archives in, a new signed root out.

Everything is prepared (inspected, copied, hashed, encoded, signed) before
the one store transaction that makes it visible; any error before that
leaves the store exactly as it was, and so does a failing commit. A local
failure (the store's disk or database full, an I/O error) is a
:class:`~p2pkg.errors.LocalError` naming the path. Only the objects on changed projects'
paths are new: file manifests, core-metadata blobs, project objects, one
leaf and two nodes per changed project, and the root.

A new file's upload time (what PEP 691 pages show and ``uv --exclude-newer``
and lockfiles go by) follows an explicit policy, :data:`UploadTime`; a file
already published keeps the time it was first published with.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

from p2pkg.config import LIMITS
from p2pkg.core import tree
from p2pkg.core.objects import (
    PROJECT_STATUSES,
    Blob,
    CoreMetadata,
    FileEntry,
    FileManifest,
    ObjectId,
    Project,
    Provenance,
    Tombstone,
    decode_as,
)
from p2pkg.core.root import (
    Root,
    check_namespace,
    decode_signed_root,
    format_pubkey,
    mirror_url_problem,
    public_bytes,
    sign_root,
)
from p2pkg.core.select import project_of
from p2pkg.errors import ArchiveError, PublishError, StoreError
from p2pkg.io.archives import ArchiveInfo, inspect_archive, is_archive
from p2pkg.io.fsutil import fsync_path
from p2pkg.io.ingest import Hashed, hash_file
from p2pkg.io.store import Store

log = logging.getLogger(__name__)

DEFAULT_EXPIRES = 30 * 24 * 3600
DEFAULT_NAMESPACE = "main"

#: Called as ``progress(done, total)`` after each archive is ingested.
Progress = Callable[[int, int], None]

UploadTimePolicy = Literal["mtime", "now", "archive"]
#: Where a new file's upload time comes from: ``"mtime"`` the source file's
#: modification time (what a directory of built or downloaded archives knows),
#: ``"now"`` the publish time (like an index receiving an upload), ``"archive"``
#: the time the archive records for its METADATA / PKG-INFO member (falling back
#: to mtime when it records none, or a future one), or an int: that POSIX time
#: for every new file. Whatever the source, times are clamped to [0, now].
UploadTime = UploadTimePolicy | int
UPLOAD_TIME_POLICIES: tuple[str, ...] = get_args(UploadTimePolicy)


def parse_upload_time(text: str) -> UploadTime:
    """A policy name, or an ISO 8601 time as a POSIX time.

    ``2024-05-01T12:00:00Z``, ``2024-05-01T14:00:00+02:00``, ``2024-05-01``
    (midnight UTC); a time without a zone is UTC, so the result does not depend
    on the publishing machine's zone. Raises :class:`PublishError`.
    """
    value = text.strip()
    if value in UPLOAD_TIME_POLICIES:
        return cast(UploadTimePolicy, value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        choices = ", ".join(UPLOAD_TIME_POLICIES)
        raise PublishError(
            f"not an upload time: {text!r} (one of {choices}, "
            "or an ISO 8601 time such as 2024-05-01T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What an upstream index says about one file, carried into its manifest.

    A master that mirrors an index publishes the upstream's facts rather
    than what the archive alone would give: ``requires_python`` (None: the
    archive's), ``yanked`` (a reason, "" for none given; None: not yanked),
    ``upload_time`` (PEP 700), ``provenance`` (the PEP 740 document's
    bytes). Only ``yanked`` changes on a file already published (a manifest
    is otherwise immutable).
    """

    requires_python: str | None = None
    yanked: str | None = None
    upload_time: int | None = None
    provenance: bytes | None = None


@dataclass(frozen=True, slots=True)
class Edits:
    """Namespace changes beyond "add these archives" (the mirroring master's).

    ``files``: facts per filename (:class:`FileFacts`); ``status``: a PEP 792
    project status and reason per normalized project name; ``remove``:
    filename to reason, each removed from its project and kept as a
    tombstone (protocol §3.4); ``upstream_serial``: recorded in the root;
    ``mirrors``: the root's signed mirror list, replaced (None: kept).
    """

    files: Mapping[str, FileFacts] = field(default_factory=dict)
    status: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    remove: Mapping[str, str] = field(default_factory=dict)
    upstream_serial: int | None = None
    mirrors: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a publish did: the root it ended on and which files it added."""

    version: int
    root_id: ObjectId
    namespace: str
    changed: bool
    added: tuple[str, ...]
    unchanged: tuple[str, ...]
    objects_written: int


@dataclass(frozen=True, slots=True)
class _Ingested:
    path: Path
    info: ArchiveInfo
    hashed: Hashed
    mtime: int  # of the source file, for the "mtime" upload-time policy


def collect_archives(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, plus archives found under directories (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_archive(f)))
        elif p.is_file():
            out.append(p)
        else:
            raise ArchiveError(str(p), "no such file or directory")
    return out


def _file_identity(filename: str) -> tuple[object, ...]:
    """What PyPI treats as "the same file": normalized name, version, tags."""
    try:
        if filename.endswith(".whl"):
            name, version, build, tags = parse_wheel_filename(filename)
            return ("wheel", name, version, build, frozenset(tags))
        name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename):
        return ("other", filename)
    return ("sdist", name, version)


def _ingest(path: Path, temp_dir: Path) -> _Ingested:
    mtime = int(path.stat().st_mtime)
    info = inspect_archive(path)
    return _Ingested(path, info, hash_file(path, temp_dir), mtime)


def _check_upload_time(upload_time: object) -> None:
    # bool is an int to Python, but True as a timestamp is surely a mistake.
    if isinstance(upload_time, bool) or not (
        isinstance(upload_time, int) or upload_time in UPLOAD_TIME_POLICIES
    ):
        choices = ", ".join(UPLOAD_TIME_POLICIES)
        raise PublishError(
            f"upload time must be one of {choices} or a POSIX time, not {upload_time!r}"
        )


def _upload_time_of(item: _Ingested, policy: UploadTime, override: int | None, now: int) -> int:
    """The upload time a new file is published with (see :data:`UploadTime`)."""
    if override is not None:
        chosen = override
    elif isinstance(policy, int):
        chosen = policy
    elif policy == "now":
        chosen = now
    elif policy == "archive":
        recorded = item.info.recorded_time
        # A build time in the future is a builder's clock or zone gone wrong.
        chosen = recorded if recorded is not None and recorded <= now else item.mtime
    else:
        chosen = item.mtime
    # Before the epoch cannot be encoded; after the publish is no upload time.
    return int(min(max(chosen, 0), now))


def publish(
    store: Store,
    keys: Sequence[Ed25519PrivateKey],
    paths: Sequence[Path],
    *,
    namespace: str | None = None,
    expires_in: int = DEFAULT_EXPIRES,
    now: float | None = None,
    rotate_to: Ed25519PrivateKey | None = None,
    yank: Mapping[str, str] | None = None,
    unyank: Iterable[str] = (),
    progress: Progress | None = None,
    workers: int | None = None,
    upload_time: UploadTime = "mtime",
    upload_times: Mapping[str, int] | None = None,
    edits: Edits | None = None,
) -> PublishResult:
    """Publish ``paths`` (files or directories) and sign a new root.

    With no paths (and no yank / rotation) the current namespace is re-signed
    with a new version and expiry. Re-publishing identical files changes
    nothing and writes no root.

    New files get their upload time from ``upload_time`` (:data:`UploadTime`),
    except those named in ``upload_times`` (filename to POSIX time, e.g. an
    upstream index's times), which get that time; names in it that are not
    being published are ignored. Files already published keep theirs.
    ``edits`` carries an upstream index's facts, project statuses and
    removals (:class:`Edits`).
    """
    now = time.time() if now is None else now
    edits = edits or Edits()
    for name, (status, _) in edits.status.items():
        if status not in PROJECT_STATUSES:
            raise PublishError(f"{name}: project status must be one of {PROJECT_STATUSES}")
    for url in edits.mirrors or ():
        problem = mirror_url_problem(url)
        if problem is not None:
            raise PublishError(f"mirror URL {url!r}: {problem}")
    if edits.mirrors is not None and len(set(edits.mirrors)) != len(edits.mirrors):
        raise PublishError("a mirror URL is listed twice")
    if edits.mirrors is not None and len(edits.mirrors) > LIMITS.max_mirrors:
        raise PublishError(f"at most {LIMITS.max_mirrors} mirrors")
    if not keys:
        raise PublishError("at least one signing key is needed")
    _check_upload_time(upload_time)
    archives = collect_archives(paths)
    with store.writing():
        return _publish_locked(
            store,
            list(keys),
            archives,
            namespace=namespace,
            expires_in=expires_in,
            now=now,
            rotate_to=rotate_to,
            yank=dict(yank or {}),
            unyank=set(unyank),
            resign=not paths
            and not (edits.status or edits.remove or edits.files or edits.mirrors is not None),
            progress=progress,
            workers=workers or min(4, os.cpu_count() or 1),
            upload_time=upload_time,
            upload_times=dict(upload_times or {}),
            edits=edits,
        )


def _current_root(
    store: Store, keys: list[Ed25519PrivateKey], namespace: str | None
) -> Root | None:
    data = store.latest_root()
    if data is None:
        return None
    signed, root = decode_signed_root(data)
    if len(signed.signers(frozenset(root.keys))) < root.threshold:
        raise StoreError("the store's latest root is not validly signed; run p2pkg verify")
    if namespace is not None and namespace != root.namespace:
        raise PublishError(f"store holds namespace {root.namespace!r}, not {namespace!r}")
    mine = {public_bytes(k) for k in keys}
    if len(mine & set(root.keys)) < root.threshold:
        have = ", ".join(format_pubkey(k) for k in sorted(mine))
        raise PublishError(
            f"wrong key: {have} cannot sign namespace {root.namespace!r} "
            f"(needs {root.threshold} of its {len(root.keys)} key(s))"
        )
    return root


def _publish_locked(
    store: Store,
    keys: list[Ed25519PrivateKey],
    archives: list[Path],
    *,
    namespace: str | None,
    expires_in: int,
    now: float,
    rotate_to: Ed25519PrivateKey | None,
    yank: dict[str, str],
    unyank: set[str],
    resign: bool,
    progress: Progress | None,
    workers: int,
    upload_time: UploadTime,
    upload_times: dict[str, int],
    edits: Edits,
) -> PublishResult:
    current = _current_root(store, keys, namespace)
    if current is None:
        namespace = namespace or DEFAULT_NAMESPACE
        check_namespace(namespace)
    else:
        namespace = current.namespace

    # Temp copies that are not committed (errors, duplicates, no-ops) are removed
    # on the way out; committed ones were renamed away and unlink is a no-op.
    # Copies are fsynced on their own threads as soon as they are hashed, so
    # disk writeback overlaps the hashing of the next archives; every fsync
    # completes before the commit that makes the copies visible.
    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(2) as syncs:
        futures = [pool.submit(_ingest, p, store.temp_dir) for p in archives]
        try:
            ingested: list[_Ingested] = []
            synced = []
            for fut in futures:
                item = fut.result()
                ingested.append(item)
                if item.hashed.temp is not None:
                    synced.append(syncs.submit(fsync_path, item.hashed.temp))
                if progress is not None:
                    progress(len(ingested), len(futures))
            for s in synced:
                s.result()
            return _apply(
                store,
                keys,
                current,
                namespace,
                ingested,
                expires_in=expires_in,
                now=now,
                rotate_to=rotate_to,
                yank=yank,
                unyank=unyank,
                resign=resign,
                upload_time=upload_time,
                upload_times=upload_times,
                edits=edits,
            )
        finally:
            for fut in futures:
                fut.cancel()
            for fut in futures:
                if not fut.cancelled() and fut.exception() is None:
                    temp = fut.result().hashed.temp
                    if temp is not None:
                        # A cleanup failure (a read-only disk) must not hide
                        # the error being raised; the next writer clears tmp/.
                        with contextlib.suppress(OSError):
                            temp.unlink(missing_ok=True)


def _apply(
    store: Store,
    keys: list[Ed25519PrivateKey],
    current: Root | None,
    namespace: str,
    ingested: list[_Ingested],
    *,
    expires_in: int,
    now: float,
    rotate_to: Ed25519PrivateKey | None,
    yank: dict[str, str],
    unyank: set[str],
    resign: bool,
    upload_time: UploadTime,
    upload_times: dict[str, int],
    edits: Edits,
) -> PublishResult:
    get = store.get_object
    writer = tree.TreeWriter()
    extra: dict[ObjectId, bytes] = {}
    new_files: dict[bytes, Hashed] = {}
    added: list[str] = []
    unchanged: list[str] = []
    projects: dict[str, dict[str, ObjectId]] = {}
    # status, reason and tombstones (by filename) of each loaded project
    extras: dict[str, tuple[str, str | None, dict[str, Tombstone]]] = {}

    def load_project(name: str) -> dict[str, ObjectId]:
        if name not in projects:
            files: dict[str, ObjectId] = {}
            extras[name] = ("active", None, {})
            if current is not None:
                found = tree.resolve(get, current.tree, name).project
                if found is not None:
                    files = {f.filename: f.manifest for f in found.files}
                    gone = {t.filename: t for t in found.tombstones}
                    extras[name] = (found.status, found.status_reason, gone)
            projects[name] = files
        return projects[name]

    def manifest_of(oid: ObjectId) -> FileManifest:
        return decode_as(extra[oid] if oid in extra else get(oid), FileManifest)

    def put(obj: Blob | FileManifest) -> ObjectId:
        return writer.put(obj)

    changed_projects: set[str] = set()
    seen: dict[str, bytes] = {}
    for item in ingested:
        filename = item.path.name
        h = item.hashed
        if seen.get(filename, h.blake3) != h.blake3:
            raise PublishError(f"{filename} given twice with different content")
        if filename in seen:
            continue
        seen[filename] = h.blake3
        files = load_project(item.info.project)
        existing = files.get(filename)
        if existing is not None:
            if manifest_of(existing).blake3 != h.blake3:
                raise PublishError(
                    f"{filename} is already published with different content; "
                    "published files are immutable (release a new version)"
                )
            unchanged.append(filename)
            continue
        identity = _file_identity(filename)
        for other in files:
            if _file_identity(other) == identity:
                raise PublishError(f"{filename} conflicts with already published {other}")
        core = None
        if item.info.core_metadata is not None:
            meta = item.info.core_metadata
            core = CoreMetadata(hashlib.sha256(meta).digest(), put(Blob(meta)), len(meta))
        facts = edits.files.get(filename, FileFacts())
        provenance = None
        if facts.provenance is not None:
            provenance = Provenance(put(Blob(facts.provenance)), len(facts.provenance))
        when = facts.upload_time if facts.upload_time is not None else upload_times.get(filename)
        manifest = FileManifest(
            filename=filename,
            version=item.info.version,
            size=h.size,
            sha256=h.sha256,
            blake3=h.blake3,
            requires_python=(
                item.info.requires_python
                if facts.requires_python is None
                else facts.requires_python
            ),
            yanked=facts.yanked,
            upload_time=_upload_time_of(item, upload_time, when, int(now)),
            core_metadata=core,
            chunks=h.chunks,
            provenance=provenance,
        )
        files[filename] = put(manifest)
        extras[item.info.project][2].pop(filename, None)  # published again: no tombstone
        new_files[h.blake3] = h
        changed_projects.add(item.info.project)
        added.append(filename)

    # Facts about files already published: only the yank may change.
    for filename, facts in edits.files.items():
        owner = project_of(filename)
        if filename in seen or owner is None or filename in yank or filename in unyank:
            continue
        held = load_project(owner).get(filename)
        if held is not None and manifest_of(held).yanked != facts.yanked:
            if facts.yanked is None:
                unyank.add(filename)
            else:
                yank[filename] = facts.yanked

    for filename, why in sorted(edits.remove.items()):
        owner = _project_of(filename)
        files = load_project(owner)
        if filename in files:
            del files[filename]
            extras[owner][2][filename] = Tombstone(filename, int(now), why)
            changed_projects.add(owner)

    for name, wanted in sorted(edits.status.items()):
        load_project(name)
        listed = bool(projects[name] or extras[name][2])  # only for a project it has
        if listed and extras[name][:2] != wanted:
            extras[name] = (*wanted, extras[name][2])
            changed_projects.add(name)

    for filename, reason in [*yank.items(), *((f, None) for f in unyank)]:
        project = _project_of(filename)
        files = load_project(project)
        if filename not in files:
            raise PublishError(f"cannot (un)yank {filename}: not published")
        old = manifest_of(files[filename])
        if old.yanked != reason:
            files[filename] = put(replace(old, yanked=reason))
            changed_projects.add(project)

    mirrors = tuple(edits.mirrors) if edits.mirrors is not None else None
    same_mirrors = mirrors is None or (current is not None and current.mirrors == mirrors)
    if (
        not changed_projects
        and not resign
        and rotate_to is None
        and current is not None
        and same_mirrors
    ):
        data = store.latest_root()
        assert data is not None
        signed, _ = decode_signed_root(data)
        return PublishResult(current.version, signed.id, namespace, False, (), tuple(unchanged), 0)

    changes: dict[str, ObjectId | None] = {}
    for name in sorted(changed_projects):
        entries = tuple(FileEntry(f, m) for f, m in projects[name].items())
        status, note, gone = extras[name]
        changes[name] = writer.put(Project(name, entries, status, note, tuple(gone.values())))
    tree_id = tree.update(get, current.tree if current else None, changes, writer)

    signing = list(keys)
    if rotate_to is not None:
        new_keys: tuple[bytes, ...] = (public_bytes(rotate_to),)
        threshold = 1
        signing.append(rotate_to)
    elif current is not None:
        new_keys, threshold = current.keys, current.threshold
    else:
        new_keys, threshold = tuple(sorted({public_bytes(k) for k in keys})), 1
    root = Root(
        namespace=namespace,
        version=(current.version + 1) if current else 1,
        created=int(now),
        expires=int(now) + expires_in,
        threshold=threshold,
        keys=tuple(sorted(new_keys)),
        tree=tree_id,
        upstream_serial=(
            edits.upstream_serial
            if edits.upstream_serial is not None
            else current.upstream_serial
            if current
            else 0
        ),
        mirrors=mirrors if mirrors is not None else current.mirrors if current else (),
    )
    signed = sign_root(root, signing)
    new_objects = {oid: data for oid, data in writer.objects.items() if not store.has_object(oid)}
    # The master's store holds the whole namespace: verify treats a missing
    # tree object there as damage, not as a partial mirror.
    store.commit(files=new_files.values(), objects=new_objects, root=signed.encode(), full=True)
    log.info("published root version %d (%d new objects)", root.version, len(new_objects) + 1)
    return PublishResult(
        root.version,
        signed.id,
        namespace,
        True,
        tuple(added),
        tuple(unchanged),
        len(new_objects) + 1,
    )


def _project_of(filename: str) -> str:
    name = project_of(filename)
    if name is None:
        raise PublishError(f"{filename}: not a wheel or sdist filename")
    return name
