"""A node's store: archives kept whole, a chunk index and metadata objects.

Layout of a store directory (docs/architecture.md, "Store")::

    index.sqlite          objects, roots, files, chunk index (WAL, synchronous=FULL)
    files/<hh>/<blake3>   archives, named by the BLAKE3 of their content
    tmp/                  temp files of writes in progress (cleared by the next writer)
    partial/              downloads in progress (``.<blake3>.p2pkg-partial``, resumable)
    lock                  held (flock) by the one process allowed to write

Writes are atomic: an archive is written to ``tmp/``, fsynced (by the
caller), renamed into ``files/`` and its directory fsynced *before* the
transaction that indexes it commits, so the index never claims a file the
disk does not hold. A crash between rename and commit leaves an unindexed
file, which ``verify`` reports as an orphan (harmless) and a later writer
reuses; a commit that fails (a full disk) removes the archives it placed and
leaves the store as it was.

A local failure — the disk full (ENOSPC, SQLITE_FULL), permission denied,
a read-only file system, an I/O error — is a :class:`~p2pkg.errors.LocalError`
naming the path, never a raw ``OSError`` or ``sqlite3.Error``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from p2pkg.core.chunking import ChunkId, ChunkRef, offsets
from p2pkg.core.objects import Kind, ObjectId, compress, object_id, open_object, peek_kind
from p2pkg.core.root import decode_signed_root
from p2pkg.errors import LocalError, NotFoundError, StoreError, local_io
from p2pkg.io.fsutil import fsync_path

if TYPE_CHECKING:
    from p2pkg.io.ingest import Hashed

SCHEMA_VERSION = 2
DB_NAME = "index.sqlite"
PARTIAL_DIR = "partial"

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    id BLOB PRIMARY KEY, kind INTEGER NOT NULL, data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS roots (version INTEGER PRIMARY KEY, id BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    blake3 BLOB PRIMARY KEY, size INTEGER NOT NULL, sha256 BLOB NOT NULL,
    added REAL NOT NULL, last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB NOT NULL, file BLOB NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY (file, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_id ON chunks (id);
"""

# Schema 1 keyed chunks by (id, file): an archive holding the same chunk twice
# kept only its first occurrence. Schema 2 records every occurrence.
_CHUNKS_V2 = """
CREATE TABLE chunks_v2 (
    id BLOB NOT NULL, file BLOB NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY (file, offset)
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An archive the store holds whole."""

    blake3: bytes
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    file: bytes
    offset: int
    length: int


class Store:
    """Files, chunk index and objects of one node. Not thread-safe: one per thread."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: Path | str, *, create: bool = False) -> Store:
        """Open the store at ``path``; with ``create`` make it if missing."""
        path = Path(path)
        db_path = path / DB_NAME
        if not db_path.exists():
            if not create:
                raise StoreError(f"no store at {path} (no {DB_NAME})")
            for sub in ("files", "tmp"):
                with local_io(path / sub, "creating"):
                    (path / sub).mkdir(parents=True, exist_ok=True)
        db = None
        try:
            with local_db(db_path, "opening"):
                db = sqlite3.connect(db_path, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA busy_timeout=10000")
                version = _schema_version(db)
                if version == 1:
                    _migrate_v1(db, path)
                elif version is not None and version != SCHEMA_VERSION:
                    raise StoreError(f"store schema {version} is not {SCHEMA_VERSION}")
                # Idempotent; creates a new store's tables (and, after a migration, nothing).
                db.executescript(_SCHEMA)
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"cannot open store database {db_path}: {exc}") from None
            raise
        return cls(path, db)

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's write lock; clears temp files left by a crashed writer."""
        lock = self.path / "lock"
        with local_io(lock, "opening"):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"store {self.path} is being written by another process") from None
        try:
            with local_io(self.temp_dir, "clearing"):
                self.temp_dir.mkdir(exist_ok=True)
                for stale in self.temp_dir.iterdir():
                    stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def temp_dir(self) -> Path:
        return self.path / "tmp"

    def file_path(self, blake3: bytes) -> Path:
        h = blake3.hex()
        return self.path / "files" / h[:2] / h

    def partial_path(self, blake3: bytes) -> Path:
        """Where the download of archive ``blake3`` lives until it is committed.

        ``partial/.<hex>.p2pkg-partial`` in the store (the directory is
        created on demand). Nothing in it is trusted: a resumed download
        re-hashes its chunks. Raises :class:`LocalError` if the directory
        cannot be created.
        """
        directory = self.path / PARTIAL_DIR
        with local_io(directory, "creating"):
            directory.mkdir(exist_ok=True)
        return directory / f".{blake3.hex()}.p2pkg-partial"

    def quick_check(self) -> str | None:
        """SQLite's own consistency check; None when the database is sound."""
        try:
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        result = "; ".join(str(r[0]) for r in rows)
        return None if result == "ok" else result

    # ------------------------------------------------------------------ meta

    @property
    def is_full(self) -> bool:
        """Whether the store is meant to hold the whole namespace (a master, a full seed).

        A store without the mark (a cache, a ``--project`` seed, a fetch's
        store) may hold only the tree paths it needed: ``verify`` and ``show``
        then describe what it holds instead of reporting what it lacks.
        """
        row = self._db.execute("SELECT value FROM meta WHERE key='full'").fetchone()
        return row is not None and row[0] == "1"

    def mark_full(self, full: bool = True) -> None:
        """Set (or with ``full=False`` clear) the full-copy mark."""
        with local_db(self.db_path, "writing"):
            _set_full(self._db, full)

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    # ------------------------------------------------------------------ objects

    def get_stored(self, oid: ObjectId) -> bytes:
        """The stored (zstd-compressed) form of an object, as peers serve it."""
        row = self._db.execute("SELECT data FROM objects WHERE id=?", (oid,)).fetchone()
        if row is None:
            raise NotFoundError(f"object {oid.hex()} not in store")
        return bytes(row[0])

    def get_object(self, oid: ObjectId) -> bytes:
        """Canonical bytes of an object, checked against its id."""
        return open_object(self.get_stored(oid), oid)

    def find_object(self, oid: ObjectId) -> bytes | None:
        """Canonical bytes of an object, or None when the store does not hold it."""
        row = self._db.execute("SELECT data FROM objects WHERE id=?", (oid,)).fetchone()
        return None if row is None else open_object(bytes(row[0]), oid)

    def has_object(self, oid: ObjectId) -> bool:
        return self._db.execute("SELECT 1 FROM objects WHERE id=?", (oid,)).fetchone() is not None

    def iter_objects(self) -> Iterator[tuple[ObjectId, int, bytes]]:
        for oid, kind, data in self._db.execute("SELECT id, kind, data FROM objects"):
            yield ObjectId(bytes(oid)), int(kind), bytes(data)

    # ------------------------------------------------------------------ roots

    def latest_root(self) -> bytes | None:
        """Canonical bytes of the highest-version signed root, or None."""
        row = self._db.execute("SELECT id FROM roots ORDER BY version DESC LIMIT 1").fetchone()
        return None if row is None else self.get_object(ObjectId(bytes(row[0])))

    def latest_root_stored(self) -> tuple[int, ObjectId, bytes] | None:
        """(version, id, zstd frame) of the latest root, as peers serve it."""
        row = self._db.execute(
            "SELECT version, id FROM roots ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        oid = ObjectId(bytes(row[1]))
        return int(row[0]), oid, self.get_stored(oid)

    def root_stored(self, version: int) -> bytes:
        row = self._db.execute("SELECT id FROM roots WHERE version=?", (version,)).fetchone()
        if row is None:
            raise NotFoundError(f"no root version {version} in store")
        return self.get_stored(ObjectId(bytes(row[0])))

    def root_versions(self) -> list[int]:
        return [int(v) for (v,) in self._db.execute("SELECT version FROM roots ORDER BY version")]

    def root_at(self, version: int) -> bytes:
        row = self._db.execute("SELECT id FROM roots WHERE version=?", (version,)).fetchone()
        if row is None:
            raise NotFoundError(f"no root version {version} in store")
        return self.get_object(ObjectId(bytes(row[0])))

    # ------------------------------------------------------------------ files

    def has_file(self, blake3: bytes) -> bool:
        row = self._db.execute("SELECT 1 FROM files WHERE blake3=?", (blake3,)).fetchone()
        return row is not None

    def file_size(self, blake3: bytes) -> int | None:
        row = self._db.execute("SELECT size FROM files WHERE blake3=?", (blake3,)).fetchone()
        return None if row is None else int(row[0])

    def stats(self) -> tuple[int, int]:
        """(archives held, bytes held)."""
        row = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM files").fetchone()
        return int(row[0]), int(row[1])

    def touch(self, blake3: bytes) -> None:
        """Record a use of an archive (for LRU eviction)."""
        with local_db(self.db_path, "writing"):
            self._db.execute("UPDATE files SET last_used=? WHERE blake3=?", (time.time(), blake3))

    def evict_lru(self, max_bytes: int, keep: frozenset[bytes] = frozenset()) -> list[bytes]:
        """Drop least recently used archives until at most ``max_bytes`` are held.

        The index forgets a file before the file is unlinked, so the store never
        claims what it no longer holds. Objects stay (they are small and signed).
        """
        evicted: list[bytes] = []
        _, held = self.stats()
        rows = self._db.execute("SELECT blake3, size FROM files ORDER BY last_used").fetchall()
        for raw, size in rows:
            if held <= max_bytes:
                break
            b3 = bytes(raw)
            if b3 in keep:
                continue
            db = self._db
            with local_db(self.db_path, "writing"):
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("DELETE FROM chunks WHERE file=?", (b3,))
                    db.execute("DELETE FROM files WHERE blake3=?", (b3,))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    raise
            with local_io(self.file_path(b3), "removing"):
                self.file_path(b3).unlink(missing_ok=True)
            held -= int(size)
            evicted.append(b3)
        return evicted

    def iter_files(self) -> Iterator[StoredFile]:
        for b3, size, sha in self._db.execute("SELECT blake3, size, sha256 FROM files"):
            yield StoredFile(bytes(b3), int(size), bytes(sha))

    def file_chunks(self, blake3: bytes) -> list[tuple[ChunkId, int, int]]:
        """Indexed chunks of a file: (id, offset, length), by offset."""
        rows = self._db.execute(
            "SELECT id, offset, length FROM chunks WHERE file=? ORDER BY offset", (blake3,)
        )
        return [(ChunkId(bytes(c)), int(o), int(n)) for c, o, n in rows]

    def chunk_location(self, cid: ChunkId) -> ChunkLocation | None:
        row = self._db.execute(
            "SELECT file, offset, length FROM chunks WHERE id=? LIMIT 1", (cid,)
        ).fetchone()
        return None if row is None else ChunkLocation(bytes(row[0]), int(row[1]), int(row[2]))

    # ------------------------------------------------------------------ commit

    def commit(
        self,
        *,
        files: Iterable[Hashed] = (),
        objects: Mapping[ObjectId, bytes] = {},
        root: bytes | None = None,
        full: bool | None = None,
    ) -> None:
        """Atomically add archives (from their temp copies), objects and a root.

        ``objects`` maps id -> canonical bytes (ids are re-checked); ``root`` is a
        signed root's canonical bytes. Either everything becomes visible or nothing
        the index refers to changes. ``full`` sets (True) or clears (False) the
        full-copy mark (:attr:`is_full`) in the same transaction; None leaves it.

        A local failure (disk full, I/O error) raises :class:`LocalError`;
        the archives this commit placed are removed again (their temp copies
        are gone), so a failed commit leaves the store as it was.
        """
        files = list(files)
        for f in files:
            if f.temp is None:
                raise StoreError("file has no temp copy to commit")
        now = time.time()
        rows = []
        for oid, data in objects.items():
            if object_id(data) != oid:
                raise StoreError(f"object {oid.hex()} does not hash to its id")
            rows.append((oid, int(peek_kind(data)), compress(data)))
        root_row = None
        if root is not None:
            _, parsed = decode_signed_root(root)
            rid = object_id(root)
            rows.append((rid, int(Kind.SIGNED_ROOT), compress(root)))
            root_row = (parsed.version, rid, parsed.namespace)
        db = self._db
        placed: list[Path] = []
        try:
            with local_db(self.db_path, "writing"):
                db.execute("BEGIN IMMEDIATE")
                # Placed under the write lock: no other writer can index (or
                # evict) these archives until COMMIT, so a failure can take
                # back exactly the ones this commit added.
                placed = self._place_all(files)
                self._index(files, rows, root_row, full, now)
                db.execute("COMMIT")
        except BaseException:
            _unlink_quietly(placed)
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _index(
        self,
        files: list[Hashed],
        rows: list[tuple[ObjectId, int, bytes]],
        root_row: tuple[int, ObjectId, str] | None,
        full: bool | None,
        now: float,
    ) -> None:
        """The rows of one commit (inside its transaction)."""
        db = self._db
        for f in files:
            db.execute(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?)",
                (f.blake3, f.size, f.sha256, now, now),
            )
            db.executemany(
                "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)",
                _chunk_rows(f.blake3, f.chunks),
            )
        db.executemany("INSERT OR IGNORE INTO objects VALUES (?, ?, ?)", rows)
        if root_row is not None:
            # The same root recorded twice (two refreshes racing) is fine;
            # another root under a version already held is a fork: refuse.
            db.execute("INSERT OR IGNORE INTO roots VALUES (?, ?)", root_row[:2])
            held = db.execute("SELECT id FROM roots WHERE version=?", (root_row[0],)).fetchone()
            if bytes(held[0]) != root_row[1]:
                raise StoreError(f"store already holds another root version {root_row[0]}")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('namespace', ?)", root_row[2:])
        if full is not None:
            _set_full(db, full)

    def _place_all(self, files: list[Hashed]) -> list[Path]:
        """Rename fsynced temp copies into ``files/`` durably, before the index names them.

        Returns the paths of archives the index did not hold before (the ones
        a failed commit must take back); an archive already indexed is
        replaced by its identical copy, as before, and is never taken back.
        """
        dirs = set()
        placed: list[Path] = []
        try:
            for f in files:
                assert f.temp is not None  # checked by commit()
                final = self.file_path(f.blake3)
                new = not self.has_file(f.blake3)
                with local_io(final.parent, "creating"):
                    final.parent.mkdir(parents=True, exist_ok=True)
                with local_io(final, "writing"):
                    f.temp.replace(final)
                if new:
                    placed.append(final)
                dirs.add(final.parent)
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(fsync_path, dirs))
        except BaseException:
            _unlink_quietly(placed)
            raise
        return placed


def _unlink_quietly(paths: Iterable[Path]) -> None:
    """Remove files after a failure; the failure, not a cleanup error, is reported."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SQLITE_READONLY = 8
_SQLITE_PERM = 3
_NEARLY_FULL = 1 << 20  # free bytes under which an SQLite I/O error means "disk full"


def _sqlite_errno(exc: sqlite3.Error, path: Path) -> int | None:
    """The errno a local SQLite failure stands for; None for other errors (busy, corrupt...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return None
    primary = code & 0xFF  # extended codes carry the primary code in the low byte
    if primary == _SQLITE_FULL:
        return errno.ENOSPC
    if primary == _SQLITE_IOERR:
        # SQLite does not say which system call failed; growing its -shm or
        # WAL file on a full disk shows as an I/O error. Name the likelier cause.
        with contextlib.suppress(OSError):
            fs = os.statvfs(path.parent)
            if fs.f_bavail * fs.f_frsize < _NEARLY_FULL:
                return errno.ENOSPC
        return errno.EIO
    if primary == _SQLITE_PERM:
        return errno.EACCES
    if primary == _SQLITE_READONLY:
        with contextlib.suppress(OSError):
            if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
                return errno.EROFS
        return errno.EACCES
    return None


@contextmanager
def local_db(path: Path, doing: str) -> Iterator[None]:
    """Map local failures of database (and file) calls to :class:`LocalError`."""
    try:
        with local_io(path, doing):
            yield
    except sqlite3.Error as exc:
        code = _sqlite_errno(exc, path)
        if code is None:
            raise
        raise LocalError(str(path), code, doing, detail=str(exc)) from exc


def _chunk_rows(file: bytes, chunks: Sequence[ChunkRef]) -> Iterator[tuple[bytes, bytes, int, int]]:
    for c, offset in zip(chunks, offsets(chunks), strict=True):
        yield c.id, file, offset, c.length


def _set_full(db: sqlite3.Connection, full: bool) -> None:
    if full:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('full', '1')")
    else:
        db.execute("DELETE FROM meta WHERE key='full'")


def _schema_version(db: sqlite3.Connection) -> int | None:
    """The schema a database was written with; None for a new (empty) database."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is not None:
            return int(row[0])
    return None


def _migrate_v1(db: sqlite3.Connection, path: Path) -> None:
    """Re-key the chunk index by (file, offset) and restore the chunks schema 1 lost.

    One transaction: a crash or a concurrent opener sees schema 1 or schema 2,
    never a mix. Only archives whose indexed chunk lengths do not add up to
    their size lost rows (a repeated chunk); those are re-chunked from disk
    (FastCDC is deterministic: the same rows publish would have written). A
    store without repeats costs one copy and one aggregate query.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        if _schema_version(db) != 1:  # another process migrated it meanwhile
            db.execute("ROLLBACK")
            return
        db.execute(_CHUNKS_V2)
        # In the new key's order (the old chunks_by_file index): appends, not inserts.
        db.execute(
            "INSERT OR IGNORE INTO chunks_v2 (id, file, offset, length) "
            "SELECT id, file, offset, length FROM chunks ORDER BY file, offset"
        )
        db.execute("DROP TABLE chunks")  # drops chunks_by_file with it
        db.execute("ALTER TABLE chunks_v2 RENAME TO chunks")
        short = [
            (bytes(b3), int(size))
            for b3, size in db.execute(
                "SELECT blake3, size FROM files WHERE size != "
                "(SELECT coalesce(sum(length), 0) FROM chunks WHERE file = files.blake3)"
            )
        ]
        reindexed = _rechunk(db, path, short)
        db.execute("CREATE INDEX chunks_by_id ON chunks (id)")
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    log.info(
        "store %s: chunk index migrated to schema %d; re-indexed %d archive(s) "
        "with repeated chunks",
        path,
        SCHEMA_VERSION,
        reindexed,
    )


def _rechunk(db: sqlite3.Connection, path: Path, files: list[tuple[bytes, int]]) -> int:
    """Rewrite the chunk rows of ``files`` from their bytes on disk; the count rewritten.

    An archive missing or changed on disk keeps its rows: ``verify`` reports it.
    """
    if not files:
        return 0

    from p2pkg.io.ingest import hash_path  # lazy: re-indexing only, not a fetch's start-up

    def hashed(b3: bytes) -> Hashed | None:
        h = b3.hex()
        try:
            return hash_path(path / "files" / h[:2] / h)
        except OSError as exc:
            log.warning("store %s: cannot re-index archive %s: %s", path, h, exc.strerror)
            return None
        except LocalError as exc:  # unreadable (EIO, EACCES): verify will report it
            log.warning("store %s: cannot re-index archive %s: %s", path, h, exc)
            return None

    done = 0
    # Hashing releases the GIL: a few threads; SQLite stays on this one.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for (b3, size), result in zip(files, pool.map(hashed, [b for b, _ in files]), strict=True):
            if result is None:
                continue
            if result.blake3 != b3 or result.size != size:
                log.warning("store %s: archive %s does not match its hash", path, b3.hex())
                continue
            db.execute("DELETE FROM chunks WHERE file=?", (b3,))
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)", _chunk_rows(b3, result.chunks))
            done += 1
    return done
