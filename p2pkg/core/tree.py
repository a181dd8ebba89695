"""The namespace tree: resolve and update (docs/protocol.md §3.5). Pure.

Projects are sharded by ``BLAKE3(normalized name)``: the top node (depth 0)
is indexed by the hash's first byte, the nodes below it by the second byte,
and those point at leaves listing ``(name, project id)``. Resolving a
project reads at most 3 objects below the root plus the project itself;
changing one project rewrites one leaf, two nodes and the root, whatever
the namespace's size. Empty subtrees are omitted; the top node always exists.
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


def resolve(get: GetObject, tree: ObjectId, name: str) -> Resolution:
    """Find project ``name`` (normalized) under the tree rooted at ``tree``."""
    h = name_hash(name)
    path = [tree]
    node_id = tree
    for depth in range(TREE_LEVELS):
        node = decode_as(get(node_id), Node)
        child = node.child(h[depth])
        if child is None:
            return Resolution(None, None, tuple(path))
        node_id = child
        path.append(node_id)
    leaf = decode_as(get(node_id), Leaf)
    for entry in leaf.projects:
        if entry.name == name:
            path.append(entry.project)
            return Resolution(decode_as(get(entry.project), Project), entry.project, tuple(path))
    return Resolution(None, None, tuple(path))


def iter_projects(get: GetObject, tree: ObjectId) -> Iterator[LeafEntry]:
    """Every project in the tree, in tree order."""

    def walk(oid: ObjectId, depth: int) -> Iterator[LeafEntry]:
        if depth == TREE_LEVELS:
            yield from decode_as(get(oid), Leaf).projects
            return
        for entry in decode_as(get(oid), Node).children:
            yield from walk(entry.child, depth + 1)

    yield from walk(tree, 0)


@dataclass(frozen=True, slots=True)
class HeldTree:
    """The part of a tree a source holds (a cache or a subset seed holds only some paths)."""

    #: Every leaf entry of the held leaves, in tree order (the projects themselves
    #: may or may not be held).
    projects: tuple[LeafEntry, ...]
    #: Nodes and leaves that held nodes reference but the source lacks: the
    #: subtrees it does not hold.
    missing: tuple[ObjectId, ...]

    @property
    def subtrees_missing(self) -> int:
        return len(self.missing)


def held_projects(find: FindObject, tree: ObjectId) -> HeldTree:
    """Walk the held part of a tree: the projects it reaches and the subtrees it lacks.

    Unlike :func:`iter_projects`, a missing node or leaf is counted, not
    raised: for a partial store that is a fact, not an error.
    """
    projects: list[LeafEntry] = []
    missing: list[ObjectId] = []

    def walk(oid: ObjectId, depth: int) -> None:
        data = find(oid)
        if data is None:
            missing.append(oid)
        elif depth == TREE_LEVELS:
            projects.extend(decode_as(data, Leaf).projects)
        else:
            for entry in decode_as(data, Node).children:
                walk(entry.child, depth + 1)

    walk(tree, 0)
    return HeldTree(tuple(projects), tuple(missing))


def iter_tree_ids(get: GetObject, tree: ObjectId) -> Iterator[tuple[ObjectId, int]]:
    """Every node and leaf id with its depth (leaves have depth TREE_LEVELS)."""

    def walk(oid: ObjectId, depth: int) -> Iterator[tuple[ObjectId, int]]:
        yield oid, depth
        if depth < TREE_LEVELS:
            for entry in decode_as(get(oid), Node).children:
                yield from walk(entry.child, depth + 1)

    yield from walk(tree, 0)


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
