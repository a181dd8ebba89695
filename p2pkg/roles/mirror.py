"""The master mirrors an upstream index: ``p2pkg publish --from-index URL``.

One run, in three phases:

1. **Pages.** Each project's page is asked for (in parallel, at most
   ``workers`` at a time) with the ETag the last run stored: a ``304`` costs
   no body and the project is skipped. A changed page is parsed
   (:mod:`p2pkg.core.upstream`) and compared with what the namespace holds
   (:func:`p2pkg.core.mirror_plan.plan_project`, with the filters).
2. **Files.** New files are downloaded through the same bounded pool into
   ``<store>/mirror-staging/`` and checked against the upstream's sha256
   before anything else looks at them: a mismatch is *refused* (reported,
   logged, not published; the run goes on). Each archive is then validated
   like any publish input; a wheel's ``.metadata`` is fetched when the
   upstream offers it and compared with the wheel's own METADATA (the
   wheel's is what gets published; a difference is reported), and a PEP 740
   provenance document is fetched when offered (bounded). A file already in
   the staging directory with the upstream's sha256 (an interrupted run's)
   is not downloaded again.
3. **Publish.** One :func:`~p2pkg.roles.publish.publish` call for the whole
   batch, so one new root: new files with the upstream's requires-python,
   yank and reason, upload time (PEP 700; none given: the publish time) and
   provenance; yank changes of held files; files the upstream no longer
   lists become tombstones (:mod:`p2pkg.core.mirror_plan` says when); the
   PEP 792 status; the highest ``X-PyPI-Last-Serial`` seen. Staged files
   are removed once published.

**Incremental state** lives in ``<store>/mirror-state.sqlite``, owned by
this module: per (index URL, project) the page's ETag and last serial,
written in one transaction after the publish, and only for projects whose
every file made it (a project with a refused or failed file is asked for
again next run). A whole project that answers 404 is tombstoned only if an
earlier run mirrored it from the same index (a mistyped index URL must not
empty a namespace); otherwise it is reported as missing.

Network failures of single pages or files are reported
(:attr:`MirrorResult.failed`) and retried next run; what did arrive is still
published. One run at a time per store (a lock in the staging directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.specifiers import SpecifierSet

from p2pkg.config import LIMITS
from p2pkg.core import tree
from p2pkg.core.mirror_plan import (
    Filters,
    HeldFile,
    HeldProject,
    ProjectPlan,
    plan_project,
    plan_vanished,
)
from p2pkg.core.objects import FileManifest, decode_as, normalize_name
from p2pkg.core.root import Root, decode_signed_root, public_bytes
from p2pkg.core.upstream import UpstreamFile, parse_index_page, parse_project_page
from p2pkg.errors import (
    ArchiveError,
    DecodeError,
    IntegrityError,
    PublishError,
    StoreError,
    UpstreamError,
    first_p2pkg_error,
    local_io,
)
from p2pkg.io.archives import inspect_archive
from p2pkg.io.store import Store, local_db
from p2pkg.io.upstream_http import UpstreamClient
from p2pkg.roles.publish import DEFAULT_EXPIRES, Edits, FileFacts, PublishResult, publish

log = logging.getLogger(__name__)

STATE_NAME = "mirror-state.sqlite"
STAGING_NAME = "mirror-staging"
#: Largest provenance document or ``.metadata`` file fetched (a blob's limit).
MAX_DOCUMENT = LIMITS.max_core_metadata_size

#: Called as ``progress(done, total)`` after each file is downloaded (or found staged).
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something a run reports: the project, the file (None: the page) and why."""

    project: str
    filename: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.filename or self.project}: {self.reason}"


@dataclass(frozen=True, slots=True)
class MirrorResult:
    """What one mirroring run did."""

    projects: int  # project pages asked for
    unchanged: int  # of which answered 304 (nothing fetched)
    added: tuple[str, ...]  # files published
    bytes_downloaded: int  # body bytes received from the upstream
    requests: int  # HTTP requests sent upstream (retries included)
    resumed: tuple[str, ...]  # staged by an earlier run, not downloaded again
    refused: tuple[Problem, ...]  # sha256 mismatch, invalid archive: not published
    failed: tuple[Problem, ...]  # network or page errors: retried next run
    removed: tuple[str, ...]  # files that became tombstones
    yanked: tuple[str, ...]
    unyanked: tuple[str, ...]
    status_changed: tuple[str, ...]  # projects whose PEP 792 status changed
    skipped: int  # upstream files left out (filters, formats, one file per release)
    conflicts: tuple[Problem, ...]  # held files whose upstream sha256 changed
    notes: tuple[Problem, ...]  # .metadata differing from the wheel's, provenance absent
    missing: tuple[str, ...]  # projects asked for that the upstream does not have
    publish: PublishResult | None  # None: nothing to publish

    def counts(self) -> dict[str, int]:
        """The numbers ``--json`` prints."""
        return {
            "projects": self.projects,
            "unchanged_projects": self.unchanged,
            "files_added": len(self.added),
            "bytes_downloaded": self.bytes_downloaded,
            "upstream_requests": self.requests,
            "resumed": len(self.resumed),
            "refused": len(self.refused),
            "failed": len(self.failed),
            "removed": len(self.removed),
            "yanked": len(self.yanked),
            "unyanked": len(self.unyanked),
            "status_changed": len(self.status_changed),
            "skipped": self.skipped,
            "conflicts": len(self.conflicts),
            "missing": len(self.missing),
        }


@dataclass(frozen=True, slots=True)
class Selection:
    """Which projects to mirror: names, a requirements file's, or the whole index."""

    projects: Sequence[str] = ()
    #: Normalized name -> requirement specifiers (see mirror_plan.parse_requirements).
    requirements: Mapping[str, tuple[SpecifierSet, ...]] = field(default_factory=dict)
    all: bool = False


# ---------------------------------------------------------------------- state


class MirrorState:
    """ETag and last serial per (index URL, project), in ``mirror-state.sqlite``.

    The index page itself is the project ``""``. Writes are one SQLite
    transaction (synchronous=FULL), so a crash leaves the old state or the
    new, never half.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db("opening"):
            self._conn = sqlite3.connect(path, isolation_level=None)
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS pages (index_url TEXT NOT NULL, project TEXT NOT NULL,"
                " etag TEXT, serial INTEGER, checked INTEGER NOT NULL,"
                " PRIMARY KEY (index_url, project)) WITHOUT ROWID"
            )

    def _db(self, doing: str) -> contextlib.AbstractContextManager[None]:
        # SQLite's "disk full" becomes ENOSPC, as for the store (p2pkg.io.store.local_db).
        return local_db(self.path, doing)

    def close(self) -> None:
        self._conn.close()

    def page(self, index_url: str, project: str) -> tuple[str | None, int | None] | None:
        """(ETag, serial) stored for a page, or None if no run recorded it."""
        with self._db("reading"):
            row = self._conn.execute(
                "SELECT etag, serial FROM pages WHERE index_url = ? AND project = ?",
                (index_url, project),
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def projects(self, index_url: str) -> list[str]:
        """Every project recorded for ``index_url`` (the index's names when it is a 304)."""
        with self._db("reading"):
            rows = self._conn.execute(
                "SELECT project FROM pages WHERE index_url = ? AND project != '' ORDER BY project",
                (index_url,),
            ).fetchall()
        return [r[0] for r in rows]

    def record(
        self,
        index_url: str,
        pages: Mapping[str, tuple[str | None, int | None]],
        forget: Sequence[str] = (),
        now: float | None = None,
    ) -> None:
        """Store the pages' (ETag, serial) and drop ``forget``, in one transaction."""
        when = int(time.time() if now is None else now)
        with self._db("writing"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?)",
                    [(index_url, p, etag, serial, when) for p, (etag, serial) in pages.items()],
                )
                self._conn.executemany(
                    "DELETE FROM pages WHERE index_url = ? AND project = ?",
                    [(index_url, p) for p in forget],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise


# ---------------------------------------------------------------------- one run


@dataclass
class _Staged:
    file: UpstreamFile
    path: Path
    provenance: bytes | None = None


@dataclass
class _Run:
    """What the pages and downloads phases collect."""

    plans: dict[str, ProjectPlan] = field(default_factory=dict)
    pages: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)
    forget: list[str] = field(default_factory=list)
    unchanged: int = 0
    staged: list[_Staged] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    refused: list[Problem] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: int = 0
    serial: int | None = None
    index: tuple[str | None, int | None] | None = None  # the index page's, with --all

    def troubled(self) -> set[str]:
        """Projects with a refused or failed file: their pages are asked for again."""
        return {p.project for p in (*self.refused, *self.failed)}


def mirror_index(
    store: Store,
    keys: Sequence[Ed25519PrivateKey],
    index_url: str,
    selection: Selection,
    *,
    filters: Filters | None = None,
    workers: int = 8,
    progress: Progress | None = None,
    publish_progress: Progress | None = None,
    namespace: str | None = None,
    expires_in: int = DEFAULT_EXPIRES,
    max_file_size: int = LIMITS.max_file_size,
    client: UpstreamClient | None = None,
) -> MirrorResult:
    """Mirror ``selection`` of the index at ``index_url`` into ``store``: one new root at most.

    ``keys`` must be able to sign the store's namespace (checked before
    anything is downloaded). ``client`` replaces the HTTP client (tests);
    by default one with ``2 * workers`` pooled connections is used.
    Raises :class:`UpstreamError` when the index page (``all``) cannot be
    read, :class:`LocalError` for this machine's disk, and what
    :func:`publish` raises; a page or file that fails is reported instead.
    """
    filters = filters or Filters()
    if not keys:
        raise PublishError("at least one signing key is needed")
    if not index_url.startswith(("http://", "https://")):
        raise UpstreamError(index_url, "not an http(s) URL")
    root = _check_keys(store, keys, namespace)
    staging = store.path / STAGING_NAME
    with local_io(staging, "creating"):
        staging.mkdir(exist_ok=True)
    with _locked(staging), contextlib.closing(MirrorState(store.path / STATE_NAME)) as state:
        _clear(staging, partial_only=True)  # partial downloads restart; whole files are reused
        up = client or UpstreamClient(index_url, connections=max(2, 2 * workers))
        run = _Run()

        async def gather() -> None:
            async with up:
                await _pages(up, store, root, selection, filters, state, run, workers)
                await _downloads(up, staging, run, workers, progress, max_file_size)

        try:
            anyio.run(gather)
        except BaseExceptionGroup as group:  # a disk failure inside the pools
            raise first_p2pkg_error(group) from None
        if root is not None and run.serial is not None:
            # A run over a few projects must not lower the serial the root records.
            run.serial = max(run.serial, root.upstream_serial)
        edits, yanked, unyanked = _edits(run)
        result = None
        paths = [s.path for s in run.staged]
        if paths or edits.remove or edits.status or edits.files:
            result = publish(
                store,
                keys,
                paths,
                namespace=namespace,
                expires_in=expires_in,
                upload_time="now",
                edits=edits,
                progress=publish_progress,
            )
        troubled = run.troubled()
        done = {p: v for p, v in run.pages.items() if p not in troubled}
        if run.index is not None and not troubled and not run.failed:
            done[""] = run.index
        state.record(up.index_url, done, run.forget)
        _clear(staging)  # published, refused, or no longer wanted
    removed = tuple(sorted(f for p in run.plans.values() for f in p.remove))
    status_changed = tuple(sorted(n for n, p in run.plans.items() if p.status is not None))
    return MirrorResult(
        projects=len(run.plans) + run.unchanged + len(run.missing) + _page_failures(run),
        unchanged=run.unchanged,
        added=result.added if result is not None else (),
        bytes_downloaded=up.bytes_in,
        requests=up.requests,
        resumed=tuple(run.resumed),
        refused=tuple(run.refused),
        failed=tuple(run.failed),
        removed=removed if result is not None else (),
        yanked=tuple(yanked),
        unyanked=tuple(unyanked),
        status_changed=status_changed if result is not None else (),
        skipped=run.skipped,
        conflicts=tuple(
            Problem(n, c.filename, c.reason) for n, p in run.plans.items() for c in p.conflicts
        ),
        notes=tuple(run.notes),
        missing=tuple(run.missing),
        publish=result,
    )


def _page_failures(run: _Run) -> int:
    return sum(1 for p in run.failed if p.filename is None)


def _check_keys(
    store: Store, keys: Sequence[Ed25519PrivateKey], namespace: str | None
) -> Root | None:
    """The store's latest root, after checking ``keys`` can sign a successor (fail early)."""
    data = store.latest_root()
    if data is None:
        return None
    _, root = decode_signed_root(data)
    if namespace is not None and namespace != root.namespace:
        raise PublishError(f"store holds namespace {root.namespace!r}, not {namespace!r}")
    mine = {public_bytes(k) for k in keys}
    if len(mine & set(root.keys)) < root.threshold:
        raise PublishError(
            f"wrong key: cannot sign namespace {root.namespace!r} "
            f"(needs {root.threshold} of its {len(root.keys)} key(s))"
        )
    return root


@contextlib.contextmanager
def _locked(staging: Path) -> Iterator[None]:
    """One mirroring run per store: its staging directory is this run's."""
    lock = staging / "lock"
    with local_io(lock, "opening"):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another mirroring run is using {staging.parent}") from None
        yield
    finally:
        os.close(fd)


def _clear(staging: Path, *, partial_only: bool = False) -> None:
    """Remove staged files (all, or only partial downloads); the lock stays."""
    with local_io(staging, "clearing"):
        for entry in staging.iterdir():
            if entry.name != "lock" and (not partial_only or entry.name.endswith(".part")):
                entry.unlink(missing_ok=True)


# ---------------------------------------------------------------------- phase 1: pages


async def _pages(
    up: UpstreamClient,
    store: Store,
    root: Root | None,
    selection: Selection,
    filters: Filters,
    state: MirrorState,
    run: _Run,
    workers: int,
) -> None:
    names: dict[str, None] = {}
    for name in [*selection.projects, *selection.requirements]:
        names[normalize_name(name)] = None
    if selection.all:
        for name in await _index_names(up, state, run):
            names[normalize_name(name)] = None
    limiter = anyio.CapacityLimiter(workers)

    async def one(name: str) -> None:
        async with limiter:
            await _project(up, store, root, name, filters, selection, state, run)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)


async def _index_names(up: UpstreamClient, state: MirrorState, run: _Run) -> list[str]:
    known = state.page(up.index_url, "")
    page = await up.index_page(known[0] if known else None)
    run.index = (page.etag, page.last_serial)
    if not page.modified:
        return state.projects(up.index_url)
    return parse_index_page(page.body, page.content_type, page.url)


async def _project(
    up: UpstreamClient,
    store: Store,
    root: Root | None,
    name: str,
    filters: Filters,
    selection: Selection,
    state: MirrorState,
    run: _Run,
) -> None:
    known = state.page(up.index_url, name)
    try:
        page = await up.project_page(name, known[0] if known else None)
        if page.status == 304:
            run.unchanged += 1
            run.pages[name] = (page.etag, known[1] if known else None)
            return
        held = _held(store, root, name)
        if page.status == 404:
            if known is not None and held.exists:
                run.plans[name] = plan_vanished(name, held)
                run.forget.append(name)
            else:
                run.missing.append(name)
            return
        upstream = parse_project_page(page.body, page.content_type, page.url, name)
    except (UpstreamError, DecodeError) as exc:
        log.warning("mirror: %s: %s", name, exc)
        run.failed.append(Problem(name, None, str(exc)))
        return
    serial = page.last_serial if page.last_serial is not None else upstream.last_serial
    if serial is not None:
        run.serial = max(run.serial or 0, serial)
    plan = plan_project(upstream, held, filters, selection.requirements.get(name, ()))
    run.plans[name] = plan
    run.pages[name] = (page.etag, serial)
    run.skipped += len(plan.skipped)
    for c in plan.conflicts:
        log.warning("mirror: %s: %s", c.filename, c.reason)


def _held(store: Store, root: Root | None, name: str) -> HeldProject:
    """What the namespace holds of project ``name``."""
    if root is None:
        return HeldProject()
    project = tree.resolve(store.get_object, root.tree, name).project
    if project is None:
        return HeldProject()
    files = {}
    for f in project.files:
        m = decode_as(store.get_object(f.manifest), FileManifest)
        files[f.filename] = HeldFile(m.sha256, m.yanked)
    return HeldProject(
        files=files,
        tombstones=frozenset(t.filename for t in project.tombstones),
        status=project.status,
        status_reason=project.status_reason,
    )


# ---------------------------------------------------------------------- phase 2: files


async def _downloads(
    up: UpstreamClient,
    staging: Path,
    run: _Run,
    workers: int,
    progress: Progress | None,
    max_file_size: int,
) -> None:
    todo = [(name, f) for name, plan in run.plans.items() for f in plan.download]
    limiter = anyio.CapacityLimiter(workers)
    done = 0

    async def one(project: str, f: UpstreamFile) -> None:
        nonlocal done
        async with limiter:
            try:
                staged = await _stage(up, staging, project, f, run, max_file_size)
            except IntegrityError as exc:
                log.warning("mirror: refused %s: %s", f.filename, exc)
                run.refused.append(Problem(project, f.filename, str(exc)))
            except ArchiveError as exc:
                log.warning("mirror: refused %s: %s", f.filename, exc.reason)
                run.refused.append(Problem(project, f.filename, exc.reason))
                with local_io(staging, "removing"):
                    (staging / f.filename).unlink(missing_ok=True)
            except UpstreamError as exc:
                log.warning("mirror: %s: %s", f.filename, exc)
                run.failed.append(Problem(project, f.filename, str(exc)))
            else:
                run.staged.append(staged)
        done += 1
        if progress is not None:
            progress(done, len(todo))

    async with anyio.create_task_group() as tg:
        for project, f in todo:
            tg.start_soon(one, project, f)
    run.staged.sort(key=lambda s: s.file.filename)


async def _stage(
    up: UpstreamClient,
    staging: Path,
    project: str,
    f: UpstreamFile,
    run: _Run,
    max_file_size: int,
) -> _Staged:
    """Download ``f`` (or find it staged), check and validate it, fetch its documents."""
    path = staging / f.filename
    if f.sha256 is not None and await anyio.to_thread.run_sync(_staged_matches, path, f.sha256):
        run.resumed.append(f.filename)
    else:
        part = staging / f".{f.filename}.part"
        await up.download(f.url, part, sha256=f.sha256, max_size=max_file_size, size=f.size)
        with local_io(path, "renaming"):
            part.replace(path)
        if f.sha256 is None:
            run.notes.append(Problem(project, f.filename, "the upstream gives no sha256"))
    info = await anyio.to_thread.run_sync(inspect_archive, path)
    if f.core_metadata and info.core_metadata is not None:
        await _check_metadata(up, project, f, info.core_metadata, run)
    staged = _Staged(f, path)
    if f.provenance is not None:
        staged.provenance = await _provenance(up, project, f, run)
    return staged


def _staged_matches(path: Path, sha256: bytes) -> bool:
    """Whether ``path`` exists with this sha256 (else it is removed)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except FileNotFoundError:
        return False
    if digest.digest() == sha256:
        return True
    with local_io(path, "removing"):
        path.unlink(missing_ok=True)
    return False


async def _check_metadata(
    up: UpstreamClient, project: str, f: UpstreamFile, own: bytes, run: _Run
) -> None:
    """Compare the upstream's ``.metadata`` with the wheel's own METADATA (which wins)."""
    served = await up.fetch(f.url + ".metadata", MAX_DOCUMENT)
    if served is None:
        run.notes.append(Problem(project, f.filename, "the upstream lists .metadata but has none"))
    elif f.core_metadata_sha256 is not None and hashlib.sha256(served).digest() != (
        f.core_metadata_sha256
    ):
        run.notes.append(
            Problem(project, f.filename, "the upstream's .metadata does not match its sha256")
        )
    elif served != own:
        run.notes.append(
            Problem(
                project,
                f.filename,
                "the upstream's .metadata differs from the wheel's METADATA (the wheel's is kept)",
            )
        )


async def _provenance(up: UpstreamClient, project: str, f: UpstreamFile, run: _Run) -> bytes | None:
    """The PEP 740 provenance document, if the upstream serves a JSON object there."""
    assert f.provenance is not None
    data = await up.fetch(f.provenance, MAX_DOCUMENT)
    if data is None:
        run.notes.append(Problem(project, f.filename, "the upstream lists provenance but has none"))
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        run.notes.append(Problem(project, f.filename, "provenance is not a JSON object: left out"))
        return None
    return data


# ---------------------------------------------------------------------- phase 3: the edits


def _edits(run: _Run) -> tuple[Edits, list[str], list[str]]:
    """The publish edits for the batch, and the files whose yank is set / cleared."""
    facts: dict[str, FileFacts] = {}
    for s in run.staged:
        f = s.file
        facts[f.filename] = FileFacts(
            requires_python=_text(f.requires_python) or None,
            yanked=None if f.yanked is None else _text(f.yanked),
            upload_time=f.upload_time,
            provenance=s.provenance,
        )
    yanked: list[str] = []
    unyanked: list[str] = []
    status: dict[str, tuple[str, str | None]] = {}
    remove: dict[str, str] = {}
    for name, plan in run.plans.items():
        for filename, why in plan.yank.items():
            facts[filename] = FileFacts(yanked=None if why is None else _text(why))
            (unyanked if why is None else yanked).append(filename)
        if plan.status is not None:
            state, reason = plan.status
            status[name] = (state, None if reason is None else _text(reason))
        remove.update(plan.remove)
    edits = Edits(files=facts, status=status, remove=remove, upstream_serial=run.serial)
    return edits, sorted(yanked), sorted(unyanked)


def _text(value: str, limit: int = LIMITS.max_text_len) -> str:
    """``value`` cut to what a manifest's text field holds (``limit`` UTF-8 bytes)."""
    data = value.encode()
    return value if len(data) <= limit else data[:limit].decode(errors="ignore")


__all__ = [
    "STAGING_NAME",
    "STATE_NAME",
    "MirrorResult",
    "MirrorState",
    "Problem",
    "Selection",
    "mirror_index",
]
