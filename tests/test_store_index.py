"""The chunk index (every occurrence of a chunk, schema 2 and the migration from
schema 1) and partial stores (a cache's or a subset seed's) in verify and show."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.cli import main
from p2pkg.core import tree
from p2pkg.core.chunking import offsets
from p2pkg.core.objects import TREE_LEVELS, FileManifest, ObjectId, decode_as
from p2pkg.core.root import decode_signed_root, public_bytes
from p2pkg.errors import StoreError
from p2pkg.io.ingest import hash_file, hash_path
from p2pkg.io.store import Store
from p2pkg.roles.publish import publish
from p2pkg.roles.session import Session
from p2pkg.roles.verify import verify_store
from p2pkg.testing.archives import build_wheel
from tests.netutil import services

# FastCDC (16/64/256 KiB) cuts the same chunks inside both copies of a block
# this size once it has synchronized; fixed seeds keep the cut points fixed.
BLOCK = 600_000


def _block(seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def _repeating_wheel(out: Path, name: str = "rep", version: str = "1.0") -> Path:
    block = _block()
    return build_wheel(out, name, version, files={f"{name}/a.bin": block, f"{name}/b.bin": block})


def _repeats(path: Path) -> int:
    counts = Counter(c.id for c in hash_path(path).chunks)
    return sum(n - 1 for n in counts.values())


def _expected_rows(path: Path) -> list[tuple[bytes, int, int]]:
    chunks = hash_path(path).chunks
    return [(c.id, off, c.length) for c, off in zip(chunks, offsets(chunks), strict=True)]


def _publish(store_dir: Path, key: Ed25519PrivateKey, *paths: Path) -> None:
    with Store.open(store_dir, create=True) as st:
        publish(st, [key], list(paths))


def _blake3(path: Path) -> bytes:
    return hash_path(path).blake3


# ------------------------------------------------------------------ repeated chunks


def test_repeated_chunks_are_all_indexed(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    whl = _repeating_wheel(dist)
    assert _repeats(whl) > 0, "the test wheel must repeat a chunk"
    _publish(store_dir, key, whl)
    with Store.open(store_dir) as st:
        report = verify_store(st)
        assert report.ok, report.problems
        rows = st.file_chunks(_blake3(whl))
        assert rows == _expected_rows(whl)
        # Contiguous, no gaps, covering the whole file.
        pos = 0
        for _cid, off, length in rows:
            assert off == pos
            pos += length
        assert pos == whl.stat().st_size
        loc = st.chunk_location(rows[-1][0])
        assert loc is not None and loc.file == _blake3(whl)


def test_index_queries_use_an_index(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    _publish(store_dir, key, _repeating_wheel(dist))
    db = sqlite3.connect(store_dir / "index.sqlite")
    try:
        for sql in (
            "SELECT file, offset, length FROM chunks WHERE id=? LIMIT 1",
            "SELECT id, offset, length FROM chunks WHERE file=? ORDER BY offset",
            "DELETE FROM chunks WHERE file=?",
        ):
            plan = " ".join(str(r[-1]) for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", (b"",)))
            assert "SEARCH" in plan and "TEMP B-TREE" not in plan, (sql, plan)
    finally:
        db.close()


@pytest.mark.anyio
@pytest.mark.net
async def test_fetch_reuses_repeated_chunks(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    v1 = _repeating_wheel(dist, version="1.0")
    v2 = _repeating_wheel(dist, version="2.0")
    _publish(store_dir, key, v1, v2)
    client = tmp_path / "client"
    async with services() as svc:
        server = await svc.server(store_dir)
        with Store.open(client, create=True) as st:
            fetcher = Session(frozenset({public_bytes(key)}), [server.url], st)
            try:
                await fetcher.fetch("rep==1.0", None)
                path, stats = await fetcher.fetch("rep==2.0", tmp_path / "out")
            finally:
                fetcher.close()
            assert path.read_bytes() == v2.read_bytes()
            assert stats.from_local > 0.8 * v2.stat().st_size
            assert st.file_chunks(_blake3(v2)) == _expected_rows(v2)
            report = verify_store(st)
            assert report.ok, report.problems


# ------------------------------------------------------------------ migration from schema 1

_V1_CHUNKS = """
CREATE TABLE chunks (
    id BLOB NOT NULL, file BLOB NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY (id, file)
) WITHOUT ROWID;
CREATE INDEX chunks_by_file ON chunks (file, offset);
"""


def _downgrade_to_v1(store_dir: Path) -> None:
    """Rewrite a store's chunk index as schema 1 did (repeats of a chunk lost)."""
    db = sqlite3.connect(store_dir / "index.sqlite", isolation_level=None)
    try:
        rows = db.execute("SELECT id, file, offset, length FROM chunks ORDER BY file, offset")
        saved = rows.fetchall()
        db.execute("BEGIN")
        db.execute("DROP TABLE chunks")
        for stmt in _V1_CHUNKS.split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)", saved)
        db.execute("UPDATE meta SET value='1' WHERE key='schema'")
        db.execute("COMMIT")
    finally:
        db.close()


def _meta_schema(store_dir: Path) -> str:
    db = sqlite3.connect(store_dir / "index.sqlite")
    try:
        return str(db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0])
    finally:
        db.close()


def _v1_rows(store_dir: Path, b3: bytes) -> int:
    db = sqlite3.connect(store_dir / "index.sqlite")
    try:
        return int(db.execute("SELECT count(*) FROM chunks WHERE file=?", (b3,)).fetchone()[0])
    finally:
        db.close()


def test_migration_reindexes_archives_that_lost_repeats(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    whl = _repeating_wheel(dist)
    plain = build_wheel(dist, "plain", "1.0", payload=_block(2))
    _publish(store_dir, key, whl, plain)
    _downgrade_to_v1(store_dir)
    expected = _expected_rows(whl)
    assert _v1_rows(store_dir, _blake3(whl)) == len(expected) - _repeats(whl)
    caplog.set_level(logging.INFO, logger="p2pkg.io.store")
    with Store.open(store_dir) as st:
        assert st.file_chunks(_blake3(whl)) == expected
        assert st.file_chunks(_blake3(plain)) == _expected_rows(plain)
        report = verify_store(st)
        assert report.ok, report.problems
    assert _meta_schema(store_dir) == "2"
    assert "re-indexed 1 archive(s)" in caplog.text
    caplog.clear()
    Store.open(store_dir).close()  # already schema 2: nothing to do
    assert "migrated" not in caplog.text


def test_migration_without_repeats_rechunks_nothing(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    plain = build_wheel(dist, "plain", "1.0", payload=_block(3))
    _publish(store_dir, key, plain)
    _downgrade_to_v1(store_dir)
    caplog.set_level(logging.INFO, logger="p2pkg.io.store")
    with Store.open(store_dir) as st:
        assert st.file_chunks(_blake3(plain)) == _expected_rows(plain)
        assert verify_store(st).ok
    assert _meta_schema(store_dir) == "2"
    assert "re-indexed 0 archive(s)" in caplog.text


def test_migration_leaves_a_missing_archive_to_verify(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    whl = _repeating_wheel(dist)
    _publish(store_dir, key, whl)
    _downgrade_to_v1(store_dir)
    b3 = _blake3(whl)
    with Store.open(store_dir) as st:
        st.file_path(b3).unlink()
    # (that open migrated already; downgrade again to migrate with the archive gone)
    _downgrade_to_v1(store_dir)
    with Store.open(store_dir) as st:
        assert _meta_schema(store_dir) == "2"
        assert len(st.file_chunks(b3)) == len(_expected_rows(whl)) - _repeats(whl)
        problems = verify_store(st).problems
        assert any("indexed but missing on disk" in p for p in problems), problems


def test_newer_schema_is_refused(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    _publish(store_dir, key, build_wheel(dist, "demo", "1.0"))
    db = sqlite3.connect(store_dir / "index.sqlite")
    with db:
        db.execute("UPDATE meta SET value='3' WHERE key='schema'")
    db.close()
    with pytest.raises(StoreError, match="schema 3"):
        Store.open(store_dir)


# ------------------------------------------------------------------ partial stores

NAMES = [f"proj-{i}" for i in range(12)]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def namespace(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> Path:
    """A master store with a dozen projects; 'demo' has a wheel and a second version."""
    for name in NAMES:
        build_wheel(dist, name, "1.0")
    build_wheel(dist, "demo", "1.0", payload=30_000)
    build_wheel(dist, "demo", "2.0", payload=30_000)
    _publish(store_dir, key, dist)
    return store_dir


def _cache_like(master_dir: Path, out: Path, project: str) -> Path:
    """A store holding what a cache holds after serving one file of ``project``.

    The latest root, the tree path to the project, the project, its manifests
    (with core metadata) and one archive: committed the way fetch commits.
    """
    with Store.open(master_dir) as master, Store.open(out, create=True) as st:
        root = master.latest_root()
        assert root is not None
        tree_id = decode_signed_root(root)[1].tree
        found = tree.resolve(master.get_object, tree_id, project)
        assert found.project is not None
        objects = {oid: master.get_object(oid) for oid in found.path}
        manifests = []
        for f in found.project.files:
            m = decode_as(master.get_object(f.manifest), FileManifest)
            objects[f.manifest] = master.get_object(f.manifest)
            if m.core_metadata is not None:
                objects[m.core_metadata.blob] = master.get_object(m.core_metadata.blob)
            manifests.append(m)
        st.commit(root=root)
        st.commit(objects=objects)
        with st.writing():
            hashed = hash_file(master.file_path(manifests[0].blake3), st.temp_dir)
            st.commit(files=[hashed])
    return out


def test_verify_describes_a_partial_store(namespace: Path, tmp_path: Path) -> None:
    cache = _cache_like(namespace, tmp_path / "cache", "demo")
    with Store.open(cache) as st:
        assert not st.is_full
        report = verify_store(st)
    assert report.ok, report.problems
    c = report.counts
    assert c["projects_held"] == 1 and c["files_listed"] == 2
    assert c["archives"] == c["files"] == 1 and c["archives_listed"] == 1
    assert c["subtrees_missing"] > 0
    (warning,) = [w for w in report.warnings if "partial store" in w]
    assert warning == (
        f"partial store: holds 1 archive(s); metadata for 1 project(s) "
        f"({c['subtrees_missing']} subtree(s) not held)"
    )
    assert not any("of the namespace's" in w for w in report.warnings)


def test_show_on_a_partial_store(namespace: Path, tmp_path: Path) -> None:
    cache = str(_cache_like(namespace, tmp_path / "cache", "demo"))
    text = run("show", "--store", cache)
    assert "partial store: metadata for 1 project(s)" in text
    assert text.splitlines()[1:] == ["demo"]
    data = json.loads(run("show", "--store", cache, "--json"))
    assert data["partial"] is True and data["projects"] == ["demo"]
    assert data["subtrees_missing"] > 0

    shown = json.loads(run("show", "--store", cache, "--json", "demo"))
    assert shown["partial"] is True
    held = {f["filename"]: f["held"] for f in shown["files"]}
    assert sorted(held.values()) == [False, True]
    text = run("show", "--store", cache, "demo")
    assert "partial store" in text.splitlines()[0]
    assert [line.endswith(" [held]") for line in text.splitlines()[1:]].count(True) == 1

    out = run("show", "--store", cache, "proj-3", code=7)
    assert out == (
        "p2pkg: error: project 'proj-3' is not in this partial store"
        " (a cache fetches metadata on demand)\n"
    )
    assert "partial store" in run("verify", "--store", cache)


def test_show_on_a_full_store_is_unchanged(namespace: Path) -> None:
    data = json.loads(run("show", "--store", str(namespace), "--json"))
    assert data["partial"] is False and "subtrees_missing" not in data
    assert data["projects"] == sorted([*NAMES, "demo"])
    shown = json.loads(run("show", "--store", str(namespace), "--json", "demo"))
    assert shown["partial"] is False
    assert all("held" not in f for f in shown["files"])
    assert "[held]" not in run("show", "--store", str(namespace), "demo")
    assert "no project 'nope'" in run("show", "--store", str(namespace), "nope", code=7)


def _drop_a_leaf(store_dir: Path) -> ObjectId:
    """Delete one leaf of the latest tree from the objects table; its id."""
    with Store.open(store_dir) as st:
        root = st.latest_root()
        assert root is not None
        ids = tree.iter_tree_ids(st.get_object, decode_signed_root(root)[1].tree)
        leaf = next(oid for oid, depth in ids if depth == TREE_LEVELS)
    db = sqlite3.connect(store_dir / "index.sqlite")
    with db:
        db.execute("DELETE FROM objects WHERE id=?", (leaf,))
    db.close()
    return leaf


def test_full_store_missing_a_tree_object_is_a_problem(namespace: Path) -> None:
    with Store.open(namespace) as st:
        assert st.is_full  # publish marks the master's store as the whole namespace
    leaf = _drop_a_leaf(namespace)
    with Store.open(namespace) as st:
        report = verify_store(st)
    assert not report.ok
    assert f"namespace tree: tree object {leaf.hex()} not in store" in report.problems
    out = run("verify", "--store", str(namespace), code=1)
    assert leaf.hex() in out
    # A full store missing metadata is damage: show says which object, as before.
    assert "not in store" in run("show", "--store", str(namespace), code=7)


def test_unmarked_store_missing_a_tree_object_is_partial(namespace: Path) -> None:
    with Store.open(namespace) as st:
        st.mark_full(False)  # as a cache's store, or one published before the mark existed
    _drop_a_leaf(namespace)
    with Store.open(namespace) as st:
        assert not st.is_full
        report = verify_store(st)
    assert report.ok, report.problems
    assert report.counts["subtrees_missing"] == 1
    assert any(w.startswith("partial store: holds 14 archive(s)") for w in report.warnings)


def test_commit_sets_and_clears_the_full_mark(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", create=True) as st:
        assert not st.is_full
        st.commit(full=True)
        assert st.is_full
        st.commit()
        assert st.is_full
        st.commit(full=False)
        assert not st.is_full
        st.mark_full()
    with Store.open(tmp_path / "s") as st:
        assert st.is_full
