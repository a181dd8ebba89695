from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.core.objects import TREE_LEVELS
from p2pkg.core.root import public_bytes
from p2pkg.errors import ArchiveError, PublishError
from p2pkg.io.store import Store
from p2pkg.roles.namespace import open_store_namespace
from p2pkg.roles.publish import Edits, FileFacts, publish
from p2pkg.roles.verify import verify_store
from p2pkg.testing.archives import build_sdist, build_wheel

from .helpers import snapshot


def _publish(store_dir: Path, key: Ed25519PrivateKey, *paths: Path, **kw: object):  # type: ignore[no-untyped-def]
    with Store.open(store_dir, create=True) as st:
        return publish(st, [key], list(paths), **kw)  # type: ignore[arg-type]


def test_publish_show_verify(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    whl = build_wheel(dist, "Demo", "1.0", payload=400_000, requires_python=">=3.8")
    sdist = build_sdist(dist, "Demo", "1.0")
    build_wheel(dist, "other", "0.1")
    result = _publish(store_dir, key, dist)
    assert result.version == 1 and result.changed and len(result.added) == 3
    with Store.open(store_dir) as st:
        ns = open_store_namespace(st, frozenset({public_bytes(key)}))
        assert sorted(e.name for e in ns.projects()) == ["demo", "other"]
        manifests = {m.filename: m for m in ns.manifests(ns.require_project("DEMO"))}
        m = manifests[whl.name]
        assert m.sha256 == hashlib.sha256(whl.read_bytes()).digest()
        assert m.size == whl.stat().st_size and m.version == "1.0"
        assert m.requires_python == ">=3.8"
        assert m.core_metadata is not None
        meta = st.get_object(m.core_metadata.blob)
        assert hashlib.sha256(meta[-m.core_metadata.size :]).digest() == m.core_metadata.sha256
        assert manifests[sdist.name].core_metadata is None
        assert st.file_path(m.blake3).read_bytes() == whl.read_bytes()
        report = verify_store(st)
        assert report.ok, report.problems
        assert report.counts["files"] == 3


def test_republish_is_a_no_op(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    build_wheel(dist, "demo", "1.0")
    first = _publish(store_dir, key, dist)
    before = snapshot(store_dir)
    again = _publish(store_dir, key, dist)
    assert not again.changed and again.version == first.version
    assert again.root_id == first.root_id
    assert snapshot(store_dir) == before
    assert not list((store_dir / "tmp").iterdir())


def test_new_version_rewrites_only_its_path(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    for i in range(200):
        build_wheel(dist, f"proj-{i}", "1.0")
    _publish(store_dir, key, dist)
    new = build_wheel(dist.parent, "proj-7", "2.0", payload=1000)
    result = _publish(store_dir, key, new)
    assert result.version == 2
    # manifest + core-metadata blob + project + leaf + nodes + root
    assert result.objects_written == 2 + 1 + 1 + TREE_LEVELS + 1


def test_resign_without_paths(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    build_wheel(dist, "demo", "1.0")
    _publish(store_dir, key, dist)
    result = _publish(store_dir, key, expires_in=3600)
    assert result.changed and result.version == 2 and result.objects_written == 1


def test_yank_and_unyank(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    whl = build_wheel(dist, "demo", "1.0")
    _publish(store_dir, key, dist)
    _publish(store_dir, key, yank={whl.name: "broken build"})
    with Store.open(store_dir) as st:
        ns = open_store_namespace(st)
        (m,) = ns.manifests(ns.require_project("demo"))
        assert m.yanked == "broken build"
    _publish(store_dir, key, unyank=[whl.name])
    with Store.open(store_dir) as st:
        ns = open_store_namespace(st)
        assert ns.manifests(ns.require_project("demo"))[0].yanked is None


def test_key_rotation(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    build_wheel(dist, "demo", "1.0")
    _publish(store_dir, key, dist)
    new = Ed25519PrivateKey.generate()
    _publish(store_dir, key, rotate_to=new)
    with pytest.raises(PublishError, match="wrong key"):
        _publish(store_dir, key)
    build_wheel(dist, "demo", "2.0")
    assert _publish(store_dir, new, dist).version == 3
    with Store.open(store_dir) as st:
        assert open_store_namespace(st, frozenset({public_bytes(key)})).trusted.version == 3
        assert verify_store(st).ok


# ------------------------------------------------------------------ bad input: store unchanged


def _bad(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey, exc: type[Exception], *paths: Path
) -> None:
    before = snapshot(store_dir)
    with pytest.raises(exc):
        _publish(store_dir, key, *paths)
    assert snapshot(store_dir) == before
    assert not list((store_dir / "tmp").iterdir())


@pytest.fixture
def published(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> Path:
    build_wheel(dist, "demo", "1.0", payload=50_000)
    build_sdist(dist, "demo", "1.0")
    _publish(store_dir, key, dist)
    return dist


def test_same_filename_different_content(
    published: Path, store_dir: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    other = tmp_path / "again"
    other.mkdir()
    changed = build_wheel(other, "demo", "1.0", payload=60_000)
    _bad(published, store_dir, key, PublishError, changed)


def test_name_normalizing_onto_existing_file(
    published: Path, store_dir: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    other = tmp_path / "again"
    other.mkdir()
    sdist = build_sdist(other, "demo", "1.0", payload=10)
    renamed = sdist.with_name("Demo-1.0.tar.gz")
    sdist.rename(renamed)
    _bad(published, store_dir, key, PublishError, renamed)


def test_invalid_and_truncated_archives(
    published: Path, store_dir: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    good = build_wheel(bad, "fine", "1.0")
    trunc = build_wheel(bad, "trunc", "1.0", payload=100_000)
    trunc.write_bytes(trunc.read_bytes()[:5000])
    _bad(published, store_dir, key, ArchiveError, good, trunc)
    junk = bad / "junk-1.0.tar.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    _bad(published, store_dir, key, ArchiveError, junk)
    _bad(published, store_dir, key, ArchiveError, bad / "missing.whl")


def test_wrong_key(published: Path, store_dir: Path) -> None:
    _bad(published, store_dir, Ed25519PrivateKey.generate(), PublishError, published)


def test_verify_finds_corruption(published: Path, store_dir: Path) -> None:
    with Store.open(store_dir) as st:
        f = next(iter(st.iter_files()))
        path = st.file_path(f.blake3)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
        report = verify_store(st)
        assert not report.ok
        assert any("hashes to" in p for p in report.problems)
        path.unlink()
        assert any("missing on disk" in p for p in verify_store(st).problems)


def test_verify_finds_bad_objects(published: Path, store_dir: Path) -> None:
    import sqlite3

    from p2pkg.core.objects import compress

    db = sqlite3.connect(store_dir / "index.sqlite")
    oid = db.execute("SELECT id FROM objects WHERE kind=3").fetchone()[0]
    db.execute("UPDATE objects SET data=? WHERE id=?", (compress(b"\x03\x01garbage"), oid))
    db.commit()
    db.close()
    with Store.open(store_dir) as st:
        report = verify_store(st)
    assert any(oid.hex() in p for p in report.problems)


def test_stored_archives_are_world_readable(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    """A static server (nginx as another user) must be able to serve an export."""
    build_wheel(dist, "demo", "1.0")
    _publish(store_dir, key, dist)
    for path in (store_dir / "files").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o044 == 0o044, oct(path.stat().st_mode)


def test_store_accepts_the_same_root_twice_but_not_a_fork(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    from p2pkg.core.root import decode_signed_root, sign_root
    from p2pkg.errors import StoreError

    build_wheel(dist, "demo", "1.0")
    _publish(store_dir, key, dist)
    with Store.open(store_dir) as st:
        root = st.root_at(1)
        st.commit(root=root)  # idempotent
        other = decode_signed_root(root)[1]
        fork = sign_root(replace(other, expires=other.expires + 1), [key]).encode()
        with pytest.raises(StoreError, match="another root"):
            st.commit(root=fork)
        assert st.root_at(1) == root


# ---------------------------------------------------------------------- an upstream's facts


def _project(store_dir: Path, key: Ed25519PrivateKey, name: str):  # type: ignore[no-untyped-def]
    with Store.open(store_dir) as st:
        ns = open_store_namespace(st, frozenset({public_bytes(key)}))
        project = ns.require_project(name)
        return project, {m.filename: m for m in ns.manifests(project)}, ns.trusted.root


def test_an_upstream_s_facts_are_carried_into_the_manifests(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    whl = build_wheel(dist, "demo", "1.0", requires_python=">=3.8")
    sdist = build_sdist(dist, "demo", "1.0")
    provenance = b'{"attestation_bundles": []}'
    edits = Edits(
        files={
            whl.name: FileFacts(
                requires_python=">=3.9", upload_time=1_700_000_000, provenance=provenance
            ),
            sdist.name: FileFacts(yanked="broken", upload_time=1_600_000_000),
        },
        status={"demo": ("deprecated", "use demo2")},
        upstream_serial=4242,
    )
    _publish(store_dir, key, dist, edits=edits)
    project, manifests, root = _project(store_dir, key, "demo")
    assert (project.status, project.status_reason) == ("deprecated", "use demo2")
    assert root.upstream_serial == 4242
    m = manifests[whl.name]
    assert (m.requires_python, m.upload_time, m.yanked) == (">=3.9", 1_700_000_000, None)
    assert m.provenance is not None and m.provenance.size == len(provenance)
    with Store.open(store_dir) as st:
        assert st.get_object(m.provenance.blob).endswith(provenance)
        assert verify_store(st).ok
    s = manifests[sdist.name]
    assert (s.yanked, s.upload_time, s.provenance) == ("broken", 1_600_000_000, None)


def test_an_upstream_yank_and_unyank_reach_files_already_published(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    whl = build_wheel(dist, "demo", "1.0")
    _publish(store_dir, key, dist, upload_time=1_500_000_000)
    yanked = _publish(store_dir, key, edits=Edits(files={whl.name: FileFacts(yanked="oops")}))
    assert yanked.changed
    _, manifests, _ = _project(store_dir, key, "demo")
    assert manifests[whl.name].yanked == "oops"
    assert manifests[whl.name].upload_time == 1_500_000_000  # immutable but for the yank
    _publish(store_dir, key, edits=Edits(files={whl.name: FileFacts()}))
    _, manifests, _ = _project(store_dir, key, "demo")
    assert manifests[whl.name].yanked is None
    same = _publish(store_dir, key, edits=Edits(files={whl.name: FileFacts()}))
    assert not same.changed  # nothing new: no root


def test_a_removed_file_becomes_a_tombstone(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    old = build_wheel(dist, "demo", "1.0")
    build_wheel(dist, "demo", "2.0")
    _publish(store_dir, key, dist)
    result = _publish(
        store_dir, key, edits=Edits(remove={old.name: "removed upstream"}), now=1_800_000_000
    )
    assert result.changed
    project, manifests, _ = _project(store_dir, key, "demo")
    assert old.name not in manifests and len(manifests) == 1
    (stone,) = project.tombstones
    assert (stone.filename, stone.removed, stone.reason) == (
        old.name,
        1_800_000_000,
        "removed upstream",
    )
    with Store.open(store_dir) as st:
        assert verify_store(st).ok
    # Published again (the same bytes came back upstream): listed, no tombstone.
    _publish(store_dir, key, old)
    project, manifests, _ = _project(store_dir, key, "demo")
    assert old.name in manifests and project.tombstones == ()


def test_an_unknown_project_status_is_a_publish_error(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    build_wheel(dist, "demo", "1.0")
    with pytest.raises(PublishError, match="project status"):
        _publish(store_dir, key, dist, edits=Edits(status={"demo": ("gone", None)}))
