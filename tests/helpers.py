from __future__ import annotations

import sqlite3
from pathlib import Path


def snapshot(store_dir: Path) -> tuple[object, ...]:
    """Everything observable in a store: every table's rows and every file's bytes."""
    db = sqlite3.connect(store_dir / "index.sqlite")
    try:
        tables = tuple(
            tuple(sorted(db.execute(f"SELECT * FROM {t}").fetchall()))
            for t in ("meta", "objects", "roots", "files", "chunks")
        )
    finally:
        db.close()
    files = tuple(
        sorted(
            (str(p.relative_to(store_dir)), p.read_bytes())
            for p in (store_dir / "files").rglob("*")
            if p.is_file()
        )
    )
    return tables, files
