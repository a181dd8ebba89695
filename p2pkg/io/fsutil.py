"""Durable file operations shared by the store, publish and fetch."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's data to disk, or make renames in a directory durable.

    Any read-only descriptor of the file or directory will do.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_fd(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy ``size`` bytes from offset 0, kernel-side when the OS allows."""
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
        os.lseek(src_fd, offset, os.SEEK_SET)
        os.lseek(dst_fd, offset, os.SEEK_SET)
        while chunk := os.read(src_fd, 1 << 20):
            os.write(dst_fd, chunk)


def copy_atomic(src: Path, dest_dir: Path, filename: str) -> Path:
    """Copy ``src`` to ``dest_dir/filename`` via a temp name, fsync, rename."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / filename
    tmp = dest_dir / f".{filename}.p2pkg-tmp"
    with src.open("rb") as fin:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            copy_fd(fin.fileno(), fd, os.fstat(fin.fileno()).st_size)
            os.fsync(fd)
        finally:
            os.close(fd)
    tmp.replace(final)
    fsync_path(dest_dir)
    return final
