"""Hash, chunk and copy one archive into a store's temp area.

The source is copied into the store's temp area first (``copy_file_range``,
a kernel-side copy), and the copy is hashed in one pass over an
mmap: sha256 (what pip checks), BLAKE3 of the
whole file, FastCDC cut points and a BLAKE3 id per chunk. hashlib, blake3
and pyfastcdc all release the GIL on large buffers, so two archives ingest
in parallel on two threads. The store renames the temp file into place only
when the index transaction commits. A local failure (the store's disk full,
an I/O error) is a :class:`~p2pkg.errors.LocalError` naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import blake3

from p2pkg.core.chunking import ChunkId, ChunkRef, make_chunker
from p2pkg.errors import local_io
from p2pkg.io.fsutil import copy_fd


@dataclass(frozen=True, slots=True)
class Hashed:
    """The hashes of one file and the temp copy holding its bytes (if any)."""

    size: int
    sha256: bytes
    blake3: bytes
    chunks: tuple[ChunkRef, ...]
    temp: Path | None


def _hash_view(view: memoryview) -> tuple[bytes, bytes, tuple[ChunkRef, ...]]:
    sha = hashlib.sha256(view).digest()
    whole = blake3.blake3(view).digest()
    chunks: tuple[ChunkRef, ...] = ()
    if len(view):
        chunks = tuple(
            ChunkRef(ChunkId(blake3.blake3(c.data).digest()), c.length)
            for c in make_chunker().cut_buf(view)
        )
    return sha, whole, chunks


def hash_bytes(data: bytes) -> tuple[bytes, bytes, tuple[ChunkRef, ...]]:
    """sha256, BLAKE3 and chunk list of an in-memory file."""
    return _hash_view(memoryview(data))


def hash_path(path: Path) -> Hashed:
    """sha256, BLAKE3 and chunk list of the file at ``path`` (no copy).

    A local failure reading it (EIO, EACCES) is a :class:`LocalError`.
    """
    with local_io(path, "reading"), path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return Hashed(0, *hash_bytes(b""), None)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return Hashed(size, *_hash_view(view), None)
            finally:
                view.release()


def hash_file(src: Path, temp_dir: Path | None) -> Hashed:
    """Hash ``src``; when ``temp_dir`` is given, copy it there first.

    The copy is hashed, not the source, so the bytes that reach the store are
    exactly the bytes the hashes describe even if the source changes meanwhile.
    The copy is *not* fsynced here: the caller does it on
    another thread so that disk writeback overlaps hashing
    (:func:`p2pkg.io.fsutil.fsync_path`), and must do so
    before the copy is committed.
    """
    if temp_dir is None:
        return hash_path(src)
    with local_io(temp_dir, "creating a temp file in"):
        fd_out, name = tempfile.mkstemp(dir=temp_dir, suffix=".part")
    temp = Path(name)
    try:
        with local_io(src, "reading"):
            fh = src.open("rb")
        # A full disk or a failing one shows on the copy's writes: name the copy.
        with fh, local_io(temp, "writing"):
            # Archives are public: readable by a static server running as another user.
            os.fchmod(fd_out, 0o644)
            copy_fd(fh.fileno(), fd_out, os.fstat(fh.fileno()).st_size)
        os.close(fd_out)
        fd_out = -1
        hashed = hash_path(temp)
    except BaseException:
        if fd_out >= 0:
            os.close(fd_out)
        with contextlib.suppress(OSError):  # the first error is the one to report
            temp.unlink(missing_ok=True)
        raise
    return Hashed(hashed.size, hashed.sha256, hashed.blake3, hashed.chunks, temp)
