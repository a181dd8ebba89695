"""Export a store as plain files any static HTTP server can serve as a read-only peer.

Layout (docs/protocol.md §6.4)::

    OUT/p2pkg/v1/root              latest signed root (zstd frame)
    OUT/p2pkg/v1/roots/<version>   every root
    OUT/p2pkg/v1/objects/<id>      every object (zstd frame)
    OUT/p2pkg/v1/files/<blake3>    archives (hard links when on the same filesystem)
    OUT/p2pkg/v1/status            JSON summary

Incremental and safe to run against a live mirror: existing immutable files
are skipped, every file is written under a temp name and renamed, and the
root is written last, so a static mirror never points at objects it lacks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from p2pkg.io.fsutil import copy_atomic
from p2pkg.io.store import Store


@dataclass(frozen=True, slots=True)
class ExportResult:
    objects: int
    files: int
    root_version: int | None


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def export_store(store: Store, out: Path) -> ExportResult:
    """Write (or update) the static peer layout of ``store`` under ``out``."""
    base = out / "p2pkg" / "v1"
    for sub in ("roots", "objects", "files"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    objects = files = 0
    for oid, _kind, data in store.iter_objects():
        target = base / "objects" / oid.hex()
        if not target.exists():
            _write(target, data)
            objects += 1
    for f in store.iter_files():
        target = base / "files" / f.blake3.hex()
        if target.exists():
            continue
        src = store.file_path(f.blake3)
        try:
            os.link(src, target)
        except OSError:
            copy_atomic(src, target.parent, target.name)
        files += 1
    versions = store.root_versions()
    for v in versions:
        target = base / "roots" / str(v)
        if not target.exists():
            _write(target, store.root_stored(v))
    latest = store.latest_root_stored()
    held, size = store.stats()
    status = {
        "root_version": latest[0] if latest else None,
        "files": held,
        "bytes_held": size,
        "static": True,
    }
    _write(base / "status", json.dumps(status, sort_keys=True).encode())
    if latest is not None:
        _write(base / "root", latest[2])  # last: everything it points at is in place
    return ExportResult(objects, files, latest[0] if latest else None)
