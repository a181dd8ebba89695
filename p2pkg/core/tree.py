"""The namespace tree: resolve and update (docs/protocol.md §3.5). Pure.

Projects are sharded by ``BLAKE3(normalized name)``: the top node (depth 0)
is indexed by the hash's first byte, the nodes below it by the second byte,
and those point at leaves listing ``(name, project id)``. Resolving a
project reads at most 3 objects below the root plus the project itself;
changing one project rewrites one leaf, two nodes and the root, whatever
the namespace's size. Empty subtrees are omitted; the top node always exists.

Reading the tree is :mod:`p2pkg.core.walk`'s job (walks as state machines,
one batch per level); the functions here are its synchronous wrappers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from p2pkg.core.objects import (
    TREE_LEVELS,
    Leaf,
    LeafEntry,
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
from p2pkg.core.walk import Listing, ListWalk, ResolveWalk, run_sync
from p2pkg.errors import NotFoundError

#: Returns the canonical bytes of an object (already checked against its id).
GetObject = Callable[[ObjectId], bytes]

#: Like :data:`GetObject`, but None for an object the source does not hold.
FindObject = Callable[[ObjectId], bytes | None]


@dataclass
class TreeWriter:
    """Collects the objects a tree update creates: id -> canonical bytes."""

    objects: dict[ObjectId, bytes] = field(default_factory=dict)

    def put(self, obj: TreeObject) -> ObjectId:
        data = encode(obj)
        oid = object_id(data)
        self.objects[oid] = data
        return oid


def empty_tree(out: TreeWriter) -> ObjectId:
    return out.put(Node(b"", ()))


@dataclass(frozen=True, slots=True)
class Resolution:
    """A project lookup: the project (or None) and the ids read on the way."""

    project: Project | None
    project_id: ObjectId | None
    path: tuple[ObjectId, ...]


def resolve(get: FindObject, tree: ObjectId, name: str) -> Resolution:
    """Find project ``name`` (normalized) under the tree rooted at ``tree``.

    A source that lacks an object on the path (``get`` returns None) raises
    NotFoundError: whether the project exists is unknown there.
    """
    walk = ResolveWalk(tree, [name])
    resolved = run_sync(walk, get)
    if resolved.unknown:
        raise NotFoundError(f"object {resolved.missing[0].hex()} on the path to {name!r} not held")
    # One name: each level read exactly one object, so the levels are the path.
    path = tuple(oid for level in walk.levels for oid in level)
    found = resolved.projects[name]
    if found is None:
        return Resolution(None, None, path)
    return Resolution(found.project, found.project_id, path)


def iter_projects(get: GetObject, tree: ObjectId) -> Iterator[LeafEntry]:
    """Every project in the tree, in tree order."""
    return iter(run_sync(ListWalk(tree), get).projects)


def held_projects(find: FindObject, tree: ObjectId) -> Listing:
    """Walk the held part of a tree: the projects it reaches and the subtrees it lacks.

    Unlike :func:`iter_projects`, a missing node or leaf is counted, not
    raised: for a partial store that is a fact, not an error.
    """
    return run_sync(ListWalk(tree), find)


def iter_tree_ids(get: GetObject, tree: ObjectId) -> Iterator[tuple[ObjectId, int]]:
    """Every node and leaf id with its depth (leaves have depth TREE_LEVELS)."""
    walk = ListWalk(tree)
    run_sync(walk, get)
    return ((oid, depth) for depth, level in enumerate(walk.levels) for oid in level)


def update(
    get: GetObject,
    tree: ObjectId | None,
    changes: Mapping[str, ObjectId | None],
    out: TreeWriter,
) -> ObjectId:
    """Apply ``name -> project id`` (None removes) and return the new tree id.

    Only the nodes and leaves on the changed names' paths are re-encoded and
    added to ``out``; everything else is shared with the old tree.
    """
    hashed = {name: (name_hash(name), pid) for name, pid in changes.items()}
    new = _update(get, tree, 0, b"", hashed, out)
    return new if new is not None else empty_tree(out)


def _update(
    get: GetObject,
    oid: ObjectId | None,
    depth: int,
    prefix: bytes,
    changes: Mapping[str, tuple[bytes, ObjectId | None]],
    out: TreeWriter,
) -> ObjectId | None:
    if depth == TREE_LEVELS:
        entries = {}
        if oid is not None:
            entries = {e.name: e.project for e in decode_as(get(oid), Leaf).projects}
        for name, (_, pid) in changes.items():
            if pid is None:
                entries.pop(name, None)
            else:
                entries[name] = pid
        if not entries:
            return None
        return out.put(Leaf(prefix, tuple(LeafEntry(n, p) for n, p in entries.items())))

    children = {}
    if oid is not None:
        children = {e.slot: e.child for e in decode_as(get(oid), Node).children}
    groups: dict[int, dict[str, tuple[bytes, ObjectId | None]]] = {}
    for name, change in changes.items():
        groups.setdefault(change[0][depth], {})[name] = change
    for slot, sub in groups.items():
        child = _update(get, children.get(slot), depth + 1, prefix + bytes([slot]), sub, out)
        if child is None:
            children.pop(slot, None)
        else:
            children[slot] = child
    if not children and depth > 0:
        return None
    return out.put(Node(prefix, tuple(NodeEntry(s, c) for s, c in children.items())))
