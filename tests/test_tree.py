from __future__ import annotations

import random

import pytest

from p2pkg.core import tree
from p2pkg.core.objects import TREE_LEVELS, ObjectId, Project, encode, object_id
from p2pkg.errors import NotFoundError


class MemoryObjects(dict[ObjectId, bytes]):
    """An in-memory object source that counts reads."""

    reads = 0

    def get(self, oid: ObjectId) -> bytes:  # type: ignore[override]
        self.reads += 1
        return self[oid]


def _project(name: str) -> tuple[ObjectId, bytes]:
    data = encode(Project(name, ()))
    return object_id(data), data


def _build(names: list[str]) -> tuple[MemoryObjects, ObjectId]:
    objs = MemoryObjects()
    changes: dict[str, ObjectId | None] = {}
    for n in names:
        pid, data = _project(n)
        objs[pid] = data
        changes[n] = pid
    out = tree.TreeWriter()
    root = tree.update(objs.get, None, changes, out)
    objs.update(out.objects)
    return objs, root


NAMES = [f"project-{i}" for i in range(2000)]


def test_resolve_every_project_in_at_most_four_reads() -> None:
    objs, root = _build(NAMES)
    for name in NAMES[::37]:
        objs.reads = 0
        res = tree.resolve(objs.get, root, name)
        assert res.project is not None and res.project.name == name
        assert objs.reads <= TREE_LEVELS + 2  # nodes + leaf + project
        assert len(res.path) == TREE_LEVELS + 2
    assert tree.resolve(objs.get, root, "absent").project is None


def test_tree_is_deterministic_whatever_the_order() -> None:
    shuffled = NAMES[:300]
    random.Random(1).shuffle(shuffled)
    assert _build(NAMES[:300])[1] == _build(shuffled)[1]


def test_one_change_rewrites_only_its_path() -> None:
    objs, root = _build(NAMES)
    pid, data = _project("brand-new")
    objs[pid] = data
    out = tree.TreeWriter()
    new_root = tree.update(objs.get, root, {"brand-new": pid}, out)
    assert len(out.objects) == TREE_LEVELS + 1  # two nodes and one leaf
    objs.update(out.objects)
    assert tree.resolve(objs.get, new_root, "brand-new").project_id == pid
    assert tree.resolve(objs.get, new_root, NAMES[5]).project is not None


def test_removal_prunes_empty_subtrees() -> None:
    objs, root = _build(["a", "b"])
    out = tree.TreeWriter()
    new_root = tree.update(objs.get, root, {"a": None, "b": None}, out)
    objs.update(out.objects)
    assert list(tree.iter_projects(objs.get, new_root)) == []
    empty = tree.TreeWriter()
    assert new_root == tree.empty_tree(empty)


def test_iter_projects_lists_everything() -> None:
    objs, root = _build(NAMES[:500])
    assert sorted(e.name for e in tree.iter_projects(objs.get, root)) == sorted(NAMES[:500])
    depths = [d for _, d in tree.iter_tree_ids(objs.get, root)]
    assert depths.count(0) == 1 and max(depths) == TREE_LEVELS


def test_partial_source_resolve_raises_and_held_walk_counts() -> None:
    objs, root = _build(NAMES[:500])
    name = NAMES[3]
    leaf = tree.resolve(objs.get, root, name).path[TREE_LEVELS]
    partial = {oid: data for oid, data in objs.items() if oid != leaf}
    with pytest.raises(NotFoundError, match="not held"):
        tree.resolve(partial.get, root, name)
    held = tree.held_projects(partial.get, root)
    assert held.missing == (leaf,) and held.subtrees_missing == 1
    assert name not in {e.name for e in held.projects}
    assert len(held.projects) < 500
    assert held.projects == tuple(
        e for e in tree.iter_projects(objs.get, root) if e.name in {p.name for p in held.projects}
    )
