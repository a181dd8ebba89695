"""The tree walks as state machines (p2pkg.core.walk, docs/protocol.md §3.5)."""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pkg.core import tree
from p2pkg.core.objects import (
    TREE_LEVELS,
    Blob,
    CoreMetadata,
    FileEntry,
    FileManifest,
    Leaf,
    Node,
    NodeEntry,
    ObjectId,
    Project,
    TreeObject,
    decode_as,
    encode,
    name_hash,
    object_id,
)
from p2pkg.core.walk import (
    BLOB_DEPTH,
    FILE_DEPTH,
    LEAF_DEPTH,
    PROJECT_DEPTH,
    ListWalk,
    ResolveWalk,
    SyncWalk,
    Walk,
    run_async,
    run_sync,
)
from p2pkg.errors import DecodeError

from .strategies import names as name_strategy

R = TypeVar("R")

Objects = dict[ObjectId, bytes]


def _put(objs: Objects, obj: TreeObject) -> ObjectId:
    data = encode(obj)
    oid = object_id(data)
    objs[oid] = data
    return oid


def _build(names: list[str], *, files: bool = False) -> tuple[Objects, ObjectId]:
    """A namespace in memory; with ``files`` each project has two files.

    Both files carry the same core metadata blob, as identical METADATA of
    several wheels does.
    """
    objs: Objects = {}
    changes: dict[str, ObjectId | None] = {}
    for n in names:
        entries: tuple[FileEntry, ...] = ()
        if files:
            blob = _put(objs, Blob(f"Metadata-Version: 2.1\nName: {n}\n".encode()))
            core = CoreMetadata(b"\0" * 32, blob, 10)
            entries = tuple(
                FileEntry(fn, _put(objs, _manifest(fn, core)))
                for fn in (f"{n}-1.0-py3-none-any.whl", f"{n}-1.0.tar.gz")
            )
        changes[n] = _put(objs, Project(n, entries))
    out = tree.TreeWriter()
    top = tree.update(objs.__getitem__, None, changes, out)
    objs.update(out.objects)
    return objs, top


def _manifest(filename: str, core: CoreMetadata) -> FileManifest:
    return FileManifest(filename, "1.0", 0, b"\1" * 32, b"\2" * 32, "", None, 0, core, ())


def _top_prefixes(objs: Objects, top: ObjectId) -> tuple[set[bytes], set[bytes]]:
    """The 1-byte and 2-byte prefixes the tree has subtrees for."""
    one: set[bytes] = set()
    two: set[bytes] = set()
    for e in decode_as(objs[top], Node).children:
        one.add(bytes([e.slot]))
        two.update(bytes([e.slot, c.slot]) for c in decode_as(objs[e.child], Node).children)
    return one, two


def _drive(walk: Walk[R], objs: Mapping[ObjectId, bytes], rng: random.Random | None = None) -> R:
    """Feed ``walk`` level by level (shuffled with ``rng``), checking the protocol."""
    fed: set[ObjectId] = set()
    while not walk.done:
        want = walk.needs()
        assert want and len(set(want)) == len(want)
        assert not fed & set(want), "needs() repeated an id already fed"
        if rng is not None:
            rng.shuffle(want)
        for i, oid in enumerate(want):
            walk.feed(oid, objs.get(oid))
            fed.add(oid)
            # A level fed part-way still needs exactly the rest of it.
            if i < len(want) - 1:
                assert sorted(walk.needs()) == sorted(want[i + 1 :])
    return walk.result()


def _every_order(make: Callable[[], Walk[Any]], objs: Objects) -> Iterator[Any]:
    """The result of every feeding order the protocol allows (any order within a level)."""

    def rec(walk: Walk[Any]) -> Iterator[Any]:
        if walk.done:
            yield walk.result()
            return
        for order in itertools.permutations(walk.needs()):
            w = copy.deepcopy(walk)
            for oid in order:
                w.feed(oid, objs.get(oid))
            yield from rec(w)

    yield from rec(make())


NAMES = [f"project-{i}" for i in range(60)]


# --------------------------------------------------------------------------- protocol


def test_every_feeding_order_gives_the_same_result() -> None:
    objs, top = _build(NAMES[:3])
    asked = [*NAMES[:2], "absent"]
    with_files, top2 = _build(NAMES[:2], files=True)
    cases: list[tuple[Callable[[], Walk[Any]], Objects]] = [
        (lambda: ResolveWalk(top, asked), objs),
        (lambda: ListWalk(top), objs),
        (lambda: SyncWalk(top2, lambda _: False), with_files),
    ]
    for make, source in cases:
        whole = run_sync(make(), source.get)
        results = list(_every_order(make, source))
        assert len(results) > 1
        assert all(r == whole for r in results), type(make())


def test_feed_rejects_what_is_not_needed_and_result_waits() -> None:
    objs, top = _build(NAMES[:5])
    walk = ListWalk(top)
    with pytest.raises(RuntimeError):
        walk.result()
    with pytest.raises(ValueError, match="not needed"):
        walk.feed(ObjectId(b"\0" * 32), None)
    walk.feed(top, objs[top])
    with pytest.raises(ValueError, match="not needed"):
        walk.feed(top, objs[top])  # already fed
    assert top not in walk.needs()


def test_walk_with_nothing_to_do_is_done_at_once() -> None:
    objs, top = _build(NAMES[:5])
    assert ResolveWalk(top, []).done
    assert run_sync(ResolveWalk(top, []), objs.get).projects == {}
    assert SyncWalk(top, lambda _: True).done  # the store holds the whole tree


def test_run_async_asks_one_batch_per_level() -> None:
    import anyio

    objs, top = _build(NAMES, files=True)
    calls: list[list[ObjectId]] = []

    async def get_many(oids: list[ObjectId]) -> dict[ObjectId, bytes]:
        calls.append(oids)
        return {o: objs[o] for o in oids}

    async def main() -> None:
        resolved = await run_async(ResolveWalk(top, NAMES), get_many)
        assert all(resolved.projects[n] is not None for n in NAMES)
        assert len(calls) == TREE_LEVELS + 2  # top node, nodes, leaves, projects
        calls.clear()
        plan = await run_async(SyncWalk(top, lambda _: False), get_many)
        assert len(calls) == BLOB_DEPTH + 1  # ... manifests, blobs
        assert [set(level) for level in plan.levels] == [set(c) for c in calls]

    anyio.run(main)


def test_run_async_feeds_absent_ids_as_none() -> None:
    import anyio

    objs, top = _build(NAMES)

    async def get_nothing_below_top(oids: list[ObjectId]) -> dict[ObjectId, bytes]:
        return {o: objs[o] for o in oids if o == top}

    listing = anyio.run(run_async, ListWalk(top), get_nothing_below_top)
    assert listing.projects == ()
    assert set(listing.missing) == {e.child for e in decode_as(objs[top], Node).children}


# --------------------------------------------------------------------------- resolve


def _absent_names(objs: Objects, top: ObjectId) -> dict[str, str]:
    """Unpublished names that stop at each level: kind -> name."""
    one, two = _top_prefixes(objs, top)
    found: dict[str, str] = {}
    for i in itertools.count():
        name = f"absent-{i}"
        h = name_hash(name)
        kind = "leaf" if h[:2] in two else "node" if h[:1] in one else "top"
        found.setdefault(kind, name)
        if len(found) == 3:
            return found
    raise AssertionError


def test_resolve_present_and_absent_names() -> None:
    objs, top = _build(NAMES)
    absent = _absent_names(objs, top)  # stops at the top node, a depth-1 node, a leaf
    walk = ResolveWalk(top, [*NAMES, *absent.values()])
    resolved = _drive(walk, objs, random.Random(3))
    for n in NAMES:
        found = resolved.projects[n]
        assert found is not None and found.project.name == n
        assert objs[found.project_id] == encode(found.project)
    for name in absent.values():
        assert resolved.projects[name] is None
    assert resolved.unknown == frozenset() and resolved.missing == ()
    assert len(walk.levels) == TREE_LEVELS + 2


def test_resolve_one_name_reads_one_object_per_level() -> None:
    objs, top = _build(NAMES)
    walk = ResolveWalk(top, [NAMES[7]])
    run_sync(walk, objs.get)
    assert [len(level) for level in walk.levels] == [1, 1, 1, 1]
    absent = _absent_names(objs, top)["node"]  # top slot exists, second does not
    walk = ResolveWalk(top, [absent])
    assert run_sync(walk, objs.get).projects == {absent: None}
    assert [len(level) for level in walk.levels] == [1, 1]


def test_resolve_over_a_partial_source_says_unknown() -> None:
    objs, top = _build(NAMES)
    held = dict(objs)
    victim = NAMES[4]
    gone = tree.resolve(objs.get, top, victim).path[2]  # its leaf
    del held[gone]
    resolved = run_sync(ResolveWalk(top, NAMES), held.get)
    same_leaf = {n for n in NAMES if name_hash(n)[:2] == name_hash(victim)[:2]}
    assert resolved.unknown == same_leaf and victim in same_leaf
    assert resolved.missing == (gone,)
    assert set(resolved.projects) == set(NAMES) - same_leaf


# --------------------------------------------------------------------------- list


def test_list_walk_lists_exactly_what_was_published_in_tree_order() -> None:
    objs, top = _build(NAMES)
    listing = _drive(ListWalk(top), objs, random.Random(5))
    assert [e.name for e in listing.projects] == sorted(
        NAMES, key=lambda n: (name_hash(n)[:TREE_LEVELS], n.encode())
    )
    assert {e.name: e.project for e in listing.projects} == {
        n: tree.resolve(objs.get, top, n).project_id for n in NAMES
    }
    assert listing.missing == ()


def test_held_walk_counts_the_subtrees_it_lacks() -> None:
    objs, top = _build(NAMES)
    nodes = [e.child for e in decode_as(objs[top], Node).children]
    held = dict(objs)
    del held[nodes[0]]  # a whole depth-1 subtree (its leaves are not even asked for)
    leaf = decode_as(objs[nodes[1]], Node).children[0].child
    del held[leaf]
    listing = run_sync(ListWalk(top), held.get)
    assert set(listing.missing) == {nodes[0], leaf}
    assert listing.subtrees_missing == 2
    lost = {
        n
        for n in NAMES
        if name_hash(n)[:1] == decode_as(objs[nodes[0]], Node).prefix
        or name_hash(n)[:2] == decode_as(objs[leaf], Leaf).prefix
    }
    assert {e.name for e in listing.projects} == set(NAMES) - lost


# --------------------------------------------------------------------------- sync


def _reachable(objs: Objects, oid: ObjectId, depth: int) -> set[ObjectId]:
    """``oid`` and everything under it (the objects a seed must hold for it)."""
    data = objs[oid]
    if depth < LEAF_DEPTH:
        kids = [e.child for e in decode_as(data, Node).children]
    elif depth == LEAF_DEPTH:
        kids = [e.project for e in decode_as(data, Leaf).projects]
    elif depth == PROJECT_DEPTH:
        kids = [f.manifest for f in decode_as(data, Project).files]
    elif depth == FILE_DEPTH:
        core = decode_as(data, FileManifest).core_metadata
        kids = [] if core is None else [core.blob]
    else:
        kids = []
    return {oid}.union(*(_reachable(objs, k, depth + 1) for k in kids))


def test_sync_walk_asks_for_everything_a_fresh_store_lacks() -> None:
    objs, top = _build(NAMES[:20], files=True)
    plan = _drive(SyncWalk(top, lambda _: False), objs, random.Random(1))
    assert {o for level in plan.levels for o in level} == set(objs)
    assert len(plan.levels) == BLOB_DEPTH + 1 and plan.missing == ()
    # Two manifests share each blob: asked for once, a child of both.
    assert len(plan.level(FILE_DEPTH)) == 40
    assert len(plan.level(BLOB_DEPTH)) == 20
    for m in plan.level(FILE_DEPTH):
        core = decode_as(objs[m], FileManifest).core_metadata
        assert core is not None and plan.children[m] == (core.blob,)


def test_sync_walk_skips_held_subtrees() -> None:
    objs, top = _build(NAMES, files=True)
    nodes = [e.child for e in decode_as(objs[top], Node).children]
    some_project = tree.resolve(objs.get, top, NAMES[0]).project_id
    assert some_project is not None
    # What bottom-up commits leave behind: whole subtrees.
    held = _reachable(objs, nodes[0], 1) | _reachable(objs, some_project, PROJECT_DEPTH)
    asked: list[ObjectId] = []
    walk = SyncWalk(top, held.__contains__)
    while not walk.done:
        for oid in walk.needs():
            asked.append(oid)
            walk.feed(oid, objs[oid])
    assert set(asked) == set(objs) - held
    assert len(asked) == len(set(asked))
    plan = walk.result()
    # Parent -> children covers every fetched object but the top, and nothing held.
    kids = [c for cs in plan.children.values() for c in cs]
    assert set(kids) == set(asked) - {top}
    assert not set(kids) & held


def test_subset_sync_follows_only_the_wanted_paths() -> None:
    objs, top = _build(NAMES, files=True)
    wanted = [NAMES[1], NAMES[2], "no-such-project"]
    path1 = tree.resolve(objs.get, top, NAMES[1]).path
    held = _reachable(objs, path1[-1], PROJECT_DEPTH) | set(path1[:-1])
    plan = run_sync(SyncWalk(top, held.__contains__, wanted), objs.get)
    path2 = tree.resolve(objs.get, top, NAMES[2]).path
    fetched = {o for level in plan.levels for o in level}
    # Tree objects on the paths are read even when held (they may lead elsewhere
    # than before); the held project is not.
    expected = set(path1[:-1]) | _reachable(objs, path2[-1], PROJECT_DEPTH) | set(path2)
    assert fetched == expected
    assert plan.absent == frozenset({"no-such-project"})


# --------------------------------------------------------------------------- malformed


def test_malformed_tree_shapes_are_decode_errors() -> None:
    objs, top = _build(NAMES[:10])
    node = decode_as(objs[top], Node)
    first, second = node.children[0], node.children[1]
    # A depth-1 node hung under another slot than its prefix says.
    swapped = _put(objs, Node(b"", (NodeEntry(first.slot, second.child),)))
    with pytest.raises(DecodeError, match="prefix"):
        run_sync(ListWalk(swapped), objs.get)
    # A depth-1 node whose child is another depth-1 node: one id at two depths.
    sub = decode_as(objs[first.child], Node)
    loop = _put(objs, Node(sub.prefix, (NodeEntry(sub.children[0].slot, second.child),)))
    bad_top = _put(objs, Node(b"", (NodeEntry(first.slot, loop), second)))
    with pytest.raises(DecodeError):
        run_sync(ListWalk(bad_top), objs.get)
    # A leaf where the top node is due.
    leaf = sub.children[0].child
    with pytest.raises(DecodeError, match="expected Node"):
        run_sync(ListWalk(leaf), objs.get)


@given(garbage=st.binary(max_size=200), level=st.integers(0, BLOB_DEPTH))
def test_malformed_bytes_raise_decode_error_and_nothing_else(garbage: bytes, level: int) -> None:
    objs, top = _build(NAMES[:3], files=True)
    walk = SyncWalk(top, lambda _: False)
    try:
        while not walk.done:
            for oid in walk.needs():
                walk.feed(oid, garbage if walk.depth == level else objs.get(oid))
    except DecodeError:
        pass


# --------------------------------------------------------------------------- properties


@given(
    published=st.sets(name_strategy, max_size=40),
    others=st.sets(name_strategy, max_size=10),
    seed=st.integers(0, 2**32),
)
def test_resolve_finds_exactly_the_published_names(
    published: set[str], others: set[str], seed: int
) -> None:
    objs, top = _build(sorted(published))
    asked = sorted(published | others)
    resolved = _drive(ResolveWalk(top, asked), objs, random.Random(seed))
    assert {n for n, f in resolved.projects.items() if f is not None} == published
    assert set(resolved.projects) == set(asked) and not resolved.unknown
    listing = _drive(ListWalk(top), objs, random.Random(seed))
    assert {e.name for e in listing.projects} == published
