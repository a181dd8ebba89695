"""Re-check everything a store holds (``p2pkg verify``).

Problems are things the store claims but does not hold or that do not hash
to what they claim; warnings are harmless leftovers (an orphan archive from
a crash between rename and commit) or facts an operator should act on (an
expired root: re-sign).

A store marked full (:attr:`p2pkg.io.store.Store.is_full`: a master, a full
seed) must hold the whole tree its latest root names: a missing object is a
problem. Any other store (a cache, a ``--project`` seed) holds the tree paths
it needed; what it lacks is a fact, reported with what it holds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from p2pkg.core import tree
from p2pkg.core.chunking import ChunkId, offsets
from p2pkg.core.objects import (
    FileManifest,
    Kind,
    Project,
    decode,
    decode_as,
    open_object,
)
from p2pkg.core.root import decode_signed_root
from p2pkg.core.trust import check_expiry, trust_chain
from p2pkg.core.walk import Listing
from p2pkg.errors import (
    DecodeError,
    ExpiredRootError,
    IntegrityError,
    P2pkgError,
    TrustError,
)
from p2pkg.io.ingest import hash_path
from p2pkg.io.store import Store, StoredFile
from p2pkg.roles.namespace import store_chain


@dataclass
class Report:
    """The outcome of a verify run."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(
    store: Store,
    pinned: frozenset[bytes] | None = None,
    now: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Re-hash objects and archives, check the root chain and the tree."""
    now = time.time() if now is None else now
    report = Report()
    db_problem = store.quick_check()
    if db_problem:
        report.problems.append(f"database: {db_problem}")
        return report
    _check_objects(store, report)
    _check_roots(store, pinned, now, report)
    files = list(store.iter_files())
    _check_tree(store, len(files), report)
    _check_files(store, files, report, progress)
    _check_leftovers(store, files, report)
    return report


def _check_objects(store: Store, report: Report) -> None:
    n = 0
    for oid, kind, data in store.iter_objects():
        n += 1
        try:
            canonical = open_object(data, oid)
            if canonical[0] != kind:
                raise DecodeError(f"indexed as kind {kind}, encoded as {canonical[0]}")
            if kind == Kind.SIGNED_ROOT:
                decode_signed_root(canonical)
            else:
                decode(canonical)
        except (DecodeError, IntegrityError) as exc:
            report.problems.append(f"object {oid.hex()}: {exc}")
    report.counts["objects"] = n


def _check_roots(store: Store, pinned: frozenset[bytes] | None, now: float, report: Report) -> None:
    versions = store.root_versions()
    report.counts["roots"] = len(versions)
    if not versions:
        report.warnings.append("no signed root yet")
        return
    try:
        chain = store_chain(store)
        anchor = pinned or frozenset(decode_signed_root(chain[0])[1].keys)
        trusted = trust_chain(anchor, chain, float("-inf"))
        report.counts["root_version"] = trusted.version
        check_expiry(trusted, now)
    except TrustError as exc:
        if isinstance(exc, ExpiredRootError):
            report.warnings.append(f"{exc}: re-sign it (p2pkg publish with no files)")
        else:
            report.problems.append(f"root chain: {exc}")
    except P2pkgError as exc:
        report.problems.append(f"root chain: {exc}")


#: At most this many missing objects are listed one by one (a full store's problems).
MAX_LISTED_MISSING = 20


def _check_tree(store: Store, archives: int, report: Report) -> None:
    """What the latest root references is present (or, partial, counted) and decodes."""
    data = store.latest_root()
    if data is None:
        return
    try:
        root = decode_signed_root(data)[1]
    except DecodeError:
        return  # already reported
    find = store.find_object
    projects = projects_held = files = files_held = 0
    listed: set[bytes] = set()  # held archives the held part of the tree lists
    absent: list[str] = []  # what the tree references and the store lacks
    walk = Listing((), ())
    try:
        walk = tree.held_projects(find, root.tree)
        absent += [f"tree object {oid.hex()} not in store" for oid in walk.missing]
        for entry in walk.projects:
            projects += 1
            raw = find(entry.project)
            if raw is None:
                absent.append(f"project {entry.name!r}: object {entry.project.hex()} not in store")
                continue
            projects_held += 1
            project = decode_as(raw, Project)
            if project.name != entry.name:
                report.problems.append(f"leaf names {entry.name!r}, project says {project.name!r}")
            for f in project.files:
                files += 1
                raw = find(f.manifest)
                if raw is None:
                    absent.append(f"{f.filename}: manifest {f.manifest.hex()} not in store")
                    continue
                manifest = decode_as(raw, FileManifest)
                if manifest.filename != f.filename:
                    report.problems.append(f"{f.filename}: manifest names {manifest.filename}")
                if manifest.core_metadata is not None and not store.has_object(
                    manifest.core_metadata.blob
                ):
                    absent.append(f"{f.filename}: core metadata object missing")
                if manifest.provenance is not None and not store.has_object(
                    manifest.provenance.blob
                ):
                    absent.append(f"{f.filename}: provenance object missing")
                if store.has_file(manifest.blake3):
                    files_held += 1
                    listed.add(manifest.blake3)
    except (DecodeError, IntegrityError) as exc:
        report.problems.append(f"namespace tree: {exc}")
    if absent and not store.is_full:
        # A cache or a subset seed: the parts it lacks are facts, not damage.
        report.counts.update(
            projects_held=projects_held,
            files_listed=files,
            archives=archives,
            archives_listed=len(listed),
            subtrees_missing=walk.subtrees_missing,
        )
        report.warnings.append(
            f"partial store: holds {archives} archive(s); metadata for {projects_held}"
            f" project(s) ({walk.subtrees_missing} subtree(s) not held)"
        )
        return
    for what in absent[:MAX_LISTED_MISSING]:
        report.problems.append(f"namespace tree: {what}")
    if len(absent) > MAX_LISTED_MISSING:
        report.problems.append(
            f"namespace tree: {len(absent) - MAX_LISTED_MISSING} more object(s) not in store"
        )
    report.counts.update(projects=projects, files_in_namespace=files, files_held=files_held)
    if files_held < files:
        other = archives - len(listed)
        report.warnings.append(
            f"holds {files_held} of the namespace's {files} files (partial mirror)"
            + (f"; {other} other archive(s) not listed by the latest root" if other else "")
        )


def _check_one_file(
    path: Path, f: StoredFile, indexed: list[tuple[ChunkId, int, int]]
) -> list[str]:
    name = f.blake3.hex()
    try:
        hashed = hash_path(path)
    except FileNotFoundError:
        return [f"file {name}: indexed but missing on disk"]
    except OSError as exc:
        return [f"file {name}: unreadable ({exc.strerror})"]
    out = []
    if hashed.size != f.size:
        out.append(f"file {name}: size {hashed.size}, index says {f.size}")
    if hashed.blake3 != f.blake3:
        out.append(f"file {name}: content hashes to {hashed.blake3.hex()}")
    if hashed.sha256 != f.sha256:
        out.append(f"file {name}: sha256 mismatch")
    expected = [
        (c.id, off, c.length) for c, off in zip(hashed.chunks, offsets(hashed.chunks), strict=True)
    ]
    if indexed != expected:
        out.append(f"file {name}: chunk index does not match content")
    return out


def _check_files(
    store: Store,
    files: list[StoredFile],
    report: Report,
    progress: Callable[[int, int], None] | None,
) -> None:
    report.counts["files"] = len(files)
    report.counts["bytes"] = sum(f.size for f in files)
    # SQLite is read here, on this thread; workers only hash (GIL released).
    jobs = [(store.file_path(f.blake3), f, store.file_chunks(f.blake3)) for f in files]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for done, problems in enumerate(pool.map(lambda job: _check_one_file(*job), jobs), 1):
            report.problems.extend(problems)
            if progress is not None:
                progress(done, len(jobs))


def _check_leftovers(store: Store, files: list[StoredFile], report: Report) -> None:
    indexed = {f.blake3.hex() for f in files}
    orphans = 0
    files_dir = store.path / "files"
    if files_dir.is_dir():
        for sub in files_dir.iterdir():
            for p in sub.iterdir():
                if p.name not in indexed:
                    orphans += 1
    if orphans:
        report.warnings.append(
            f"{orphans} unindexed archive(s) on disk (left by an interrupted write)"
        )
    temps = list(store.temp_dir.iterdir()) if store.temp_dir.is_dir() else []
    if temps:
        report.warnings.append(
            f"{len(temps)} temp file(s) in {store.temp_dir} (an interrupted write)"
        )
    report.counts["orphans"] = orphans
