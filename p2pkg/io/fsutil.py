"""Durable file operations shared by the store, publish and fetch.

A local failure (disk full, permission, read-only, I/O error) surfaces as
:class:`p2pkg.errors.LocalError` naming the path, mapped here where the
call is made (:func:`p2pkg.errors.local_io`); :func:`copy_fd` and
:func:`pwrite_all` take descriptors, so their callers map with the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from p2pkg.errors import local_io


def fsync_path(path: Path) -> None:
    """Flush a file's data to disk, or make renames in a directory durable.

    Any read-only descriptor of the file or directory will do.
    """
    with local_io(path, "syncing"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``; a short write is retried, never ignored.

    A write the kernel accepts only partly (the disk filled mid-write)
    reports its errno on the retry; a write of nothing is taken as ENOSPC.
    Raises OSError (callers map it with the file's path).
    """
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n


def copy_fd(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy ``size`` bytes from offset 0, kernel-side when the OS allows.

    Raises OSError (callers map it with the paths they know).
    """
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
            if n == 0:
                raise OSError(errno.EIO, "source file shrank while being copied")
            offset += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        while chunk := os.pread(src_fd, 1 << 20, offset):
            pwrite_all(dst_fd, chunk, offset)
            offset += len(chunk)


def _replace_atomic(path: Path, fill: Callable[[int], None], mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all: ``fill(fd)`` a temp name, fsync, rename.

    On failure the temp file is removed and ``path`` is as it was.
    """
    tmp = path.with_name(f".{path.name}.p2pkg-tmp")
    with local_io(path.parent, "creating"):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with local_io(tmp, "writing"):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                fill(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
        with local_io(path, "writing"):
            tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):  # the first error is the one to report
            tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def copy_atomic(src: Path, dest_dir: Path, filename: str) -> Path:
    """Copy ``src`` to ``dest_dir/filename`` via a temp name, fsync, rename.

    On failure the temp file is removed and ``dest_dir`` is as it was.
    """
    final = dest_dir / filename
    with local_io(src, "reading"):
        fin = src.open("rb")
    with fin:
        size = os.fstat(fin.fileno()).st_size
        _replace_atomic(final, lambda fd: copy_fd(fin.fileno(), fd, size))
    return final


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` via a temp name, fsync, rename (all or nothing).

    Raises :class:`~p2pkg.errors.LocalError` naming the path; on failure
    ``path`` is as it was.
    """
    _replace_atomic(path, lambda fd: pwrite_all(fd, data, 0), mode)
