"""Walks of the namespace tree as pure state machines (docs/protocol.md §3.5). Pure.

A walk never reads anything itself. It says which objects it needs next —
a whole tree level at once, deduplicated — and is fed their canonical bytes
(already checked against their ids by whoever fetched them), or None where
the source does not hold one (a cache or a ``--project`` seed holds only
some paths). So the same walk runs over a store (:func:`run_sync`) and over
peers, one batch request per level (:func:`run_async`), and is tested by
feeding it bytes in any order.

The protocol, shared by every walk::

    while not walk.done:
        ids = walk.needs()        # every id of the current level not fed yet
        walk.feed(oid, data)      # for each of them, in any order
    walk.result()

Level ``d`` holds the objects ``d`` steps below the root's tree id: nodes
(depth 0 and 1), leaves (:data:`LEAF_DEPTH`), projects, file manifests and
core-metadata blobs. Bytes that do not decode as what their depth calls for
raise :class:`~p2pkg.errors.DecodeError`; a walk that raised is spent.

The walks:

* :class:`ResolveWalk` — names to projects (or None), stopping at projects;
  callers fetch the manifests they pick as one more batch.
* :class:`ListWalk` — every ``(name, project id)`` the tree lists; fed None
  for a missing node or leaf, it counts that subtree instead of failing.
* :class:`SyncWalk` — what a seed lacks, down to manifests and blobs,
  skipping every subtree the store already holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from p2pkg.core.objects import (
    TREE_LEVELS,
    Blob,
    FileManifest,
    Leaf,
    LeafEntry,
    Node,
    ObjectId,
    Project,
    decode_as,
    name_hash,
)
from p2pkg.errors import DecodeError

R = TypeVar("R")

#: Depth of each kind below the tree id (§3.5): nodes are at 0 .. TREE_LEVELS-1.
LEAF_DEPTH = TREE_LEVELS
PROJECT_DEPTH = TREE_LEVELS + 1
FILE_DEPTH = TREE_LEVELS + 2
BLOB_DEPTH = TREE_LEVELS + 3


class Walk(ABC, Generic[R]):
    """The level-by-level frontier every walk shares; subclasses say what to follow.

    Ids are content hashes and an object's depth fixes its kind, so an id
    met again at the same depth is the same object (asked for once) and an
    id met at two depths is a malformed tree (DecodeError).
    """

    def __init__(self, start: Iterable[ObjectId]) -> None:
        self._depth_of: dict[ObjectId, int] = {}
        self._level: dict[ObjectId, None] = {}  # current level, not fed yet (ordered set)
        self._next: dict[ObjectId, None] = {}
        self._levels: list[tuple[ObjectId, ...]] = []
        self._depth = -1
        for oid in start:
            self._want(oid)
        self._advance()

    @property
    def done(self) -> bool:
        """True once nothing more is needed: :meth:`result` is ready."""
        return not self._level

    @property
    def depth(self) -> int:
        """Depth of the level being fed (0 = the tree's top node)."""
        return self._depth

    @property
    def levels(self) -> tuple[tuple[ObjectId, ...], ...]:
        """Every id asked for so far, level by level (index = depth)."""
        return tuple(self._levels)

    def needs(self) -> list[ObjectId]:
        """The ids wanted now: the current level's, minus those already fed."""
        return list(self._level)

    def feed(self, oid: ObjectId, data: bytes | None) -> None:
        """Give the canonical bytes of ``oid`` (None: the source does not hold it).

        ``oid`` must be one of :meth:`needs`; anything else is a caller bug
        (ValueError). Bytes that do not decode as the object due here raise
        DecodeError.
        """
        if oid not in self._level:
            raise ValueError(f"object {oid.hex()} is not needed now")
        del self._level[oid]
        self._visit(oid, data)
        if not self._level:
            self._advance()

    def result(self) -> R:
        """What the walk found; only once :attr:`done`."""
        if not self.done:
            raise RuntimeError("the walk is not finished")
        return self._result()

    def _want(self, oid: ObjectId) -> None:
        """Ask for ``oid`` one level below the current one."""
        depth = self._depth + 1
        known = self._depth_of.setdefault(oid, depth)
        if known != depth:
            raise DecodeError(f"object {oid.hex()} is referenced at depths {known} and {depth}")
        self._next[oid] = None

    def _advance(self) -> None:
        self._level, self._next = self._next, {}
        self._depth += 1
        if self._level:
            self._levels.append(tuple(self._level))

    @abstractmethod
    def _visit(self, oid: ObjectId, data: bytes | None) -> None:
        """Take one object of the current level; :meth:`_want` its children."""

    @abstractmethod
    def _result(self) -> R: ...


class _TreeWalk(Walk[R]):
    """Nodes and leaves, along every path or only the paths to ``names`` (§3.5).

    Each node and leaf is checked to carry the prefix of the slot that led
    to it, so a subtree hung at the wrong place is a DecodeError rather than
    a project silently absent. Below leaves, subclasses decide
    (:meth:`_entry`, :meth:`_below`).
    """

    def __init__(self, tree: ObjectId, names: Iterable[str] | None, *, start: bool = True) -> None:
        self._hashes = None if names is None else {n: name_hash(n) for n in names}
        # The prefixes the paths to ``names`` go through: a node's child is followed
        # only if its prefix is one of them.
        self._paths = (
            None
            if self._hashes is None
            else {h[:d] for h in self._hashes.values() for d in range(1, TREE_LEVELS + 1)}
        )
        self._prefix: dict[ObjectId, bytes] = {tree: b""}  # node/leaf id -> its expected prefix
        self._missing: list[ObjectId] = []
        super().__init__([tree] if start else [])

    def _visit(self, oid: ObjectId, data: bytes | None) -> None:
        if data is None:
            self._missing.append(oid)
        elif self.depth < LEAF_DEPTH:
            node = decode_as(data, Node)
            self._check_prefix(oid, node.prefix)
            for e in node.children:
                prefix = node.prefix + bytes([e.slot])
                if self._paths is None or prefix in self._paths:
                    if self._prefix.setdefault(e.child, prefix) != prefix:
                        raise DecodeError(f"object {e.child.hex()} hangs under two slots")
                    self._follow(oid, e.child)
        elif self.depth == LEAF_DEPTH:
            leaf = decode_as(data, Leaf)
            self._check_prefix(oid, leaf.prefix)
            for entry in leaf.projects:
                if self._hashes is None or entry.name in self._hashes:
                    self._entry(oid, entry)
        else:
            self._below(oid, data)

    def _check_prefix(self, oid: ObjectId, prefix: bytes) -> None:
        if prefix != self._prefix[oid]:
            raise DecodeError(
                f"tree object {oid.hex()} has prefix {prefix.hex()!r},"
                f" its place is {self._prefix[oid].hex()!r}"
            )

    def _follow(self, parent: ObjectId, child: ObjectId) -> None:
        """Take ``child`` (of ``parent``) into the next level."""
        self._want(child)

    def _unknown(self) -> frozenset[str]:
        """The names whose path crosses an object the source lacks."""
        if self._hashes is None:
            return frozenset()
        prefixes = [self._prefix[oid] for oid in self._missing if oid in self._prefix]
        return frozenset(
            n for n, h in self._hashes.items() if any(h.startswith(p) for p in prefixes)
        )

    @abstractmethod
    def _entry(self, leaf: ObjectId, entry: LeafEntry) -> None:
        """A leaf entry on the walk's paths."""

    def _below(self, oid: ObjectId, data: bytes) -> None:
        raise AssertionError(f"{type(self).__name__} does not go below leaves")


# --------------------------------------------------------------------------- resolve


@dataclass(frozen=True, slots=True)
class Found:
    """A resolved project and its id."""

    project_id: ObjectId
    project: Project


@dataclass(frozen=True, slots=True)
class Resolved:
    """The outcome of a :class:`ResolveWalk`."""

    #: Every name whose answer the source allowed: the project, or None when the
    #: tree does not list the name.
    projects: Mapping[str, Found | None]
    #: Names whose path crosses an object the source lacks (partial sources):
    #: whether they exist is unknown here. Not keys of ``projects``.
    unknown: frozenset[str]
    #: The ids the source lacked.
    missing: tuple[ObjectId, ...]


class ResolveWalk(_TreeWalk[Resolved]):
    """Resolve normalized project names: top node, node, leaf, project (§3.5).

    With many names, each level is one batch: at most 4 levels whatever the
    number of names.
    """

    def __init__(self, tree: ObjectId, names: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(names))
        self._names_of: dict[ObjectId, list[str]] = {}  # project id -> names listing it
        self._found: dict[str, Found] = {}
        super().__init__(tree, wanted, start=bool(wanted))

    def _entry(self, leaf: ObjectId, entry: LeafEntry) -> None:
        self._names_of.setdefault(entry.project, []).append(entry.name)
        self._follow(leaf, entry.project)

    def _below(self, oid: ObjectId, data: bytes) -> None:
        project = decode_as(data, Project)
        for name in self._names_of[oid]:
            self._found[name] = Found(oid, project)

    def _unknown(self) -> frozenset[str]:
        lacking = [n for oid in self._missing for n in self._names_of.get(oid, ())]
        return super()._unknown() | frozenset(lacking)

    def _result(self) -> Resolved:
        assert self._hashes is not None
        unknown = self._unknown()
        projects = {n: self._found.get(n) for n in self._hashes if n not in unknown}
        return Resolved(projects, unknown, tuple(self._missing))


# --------------------------------------------------------------------------- list


@dataclass(frozen=True, slots=True)
class Listing:
    """The projects a tree lists, as far as the source holds it."""

    #: Every entry of the leaves read, in tree order (the project objects
    #: themselves may or may not be held).
    projects: tuple[LeafEntry, ...]
    #: Nodes and leaves that read nodes reference but the source lacks: the
    #: subtrees it does not hold (always empty for a full source).
    missing: tuple[ObjectId, ...]

    @property
    def subtrees_missing(self) -> int:
        return len(self.missing)


class ListWalk(_TreeWalk[Listing]):
    """Every ``(name, project id)`` of the tree: nodes and leaves, 3 levels.

    Fed None for a node or leaf, it records the subtree as missing: for a
    partial store that is a fact, not an error. The ids read, with their
    depth, are :attr:`Walk.levels`.
    """

    def __init__(self, tree: ObjectId) -> None:
        self._entries: list[tuple[bytes, LeafEntry]] = []
        super().__init__(tree, None)

    def _entry(self, leaf: ObjectId, entry: LeafEntry) -> None:
        self._entries.append((self._prefix[leaf], entry))

    def _result(self) -> Listing:
        # Leaves may be fed in any order; their prefixes give tree order back
        # (entries within a leaf are already sorted, and the sort is stable).
        entries = sorted(self._entries, key=lambda pe: pe[0])
        return Listing(tuple(e for _, e in entries), tuple(sorted(self._missing)))


# --------------------------------------------------------------------------- sync


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What a seed fetched, and how it hangs together, for bottom-up commits."""

    #: The ids fetched, level by level, each level sorted (index = depth;
    #: :data:`FILE_DEPTH` are manifests, :data:`BLOB_DEPTH` core-metadata blobs).
    levels: tuple[tuple[ObjectId, ...], ...]
    #: Parent -> the children that were fetched (held children are left out).
    children: Mapping[ObjectId, tuple[ObjectId, ...]]
    #: Ids the source did not deliver.
    missing: tuple[ObjectId, ...]
    #: Wanted names the tree does not list (a subset sync).
    absent: frozenset[str]

    def level(self, depth: int) -> tuple[ObjectId, ...]:
        return self.levels[depth] if depth < len(self.levels) else ()


class SyncWalk(_TreeWalk[SyncPlan]):
    """What a store lacks under a tree: nodes, leaves, projects, manifests, blobs.

    Seeds commit bottom-up (docs/architecture.md), so an object ``held``
    says the store holds implies its whole subtree is held: the walk does
    not descend into it. With ``names`` only the paths to those projects are
    followed; there held nodes and leaves are still read (``held`` is not
    asked about them), because a node held for other projects need not lead
    to these ones — only projects and what is below them are skipped.
    """

    def __init__(
        self,
        tree: ObjectId,
        held: Callable[[ObjectId], bool],
        names: Iterable[str] | None = None,
    ) -> None:
        self._held = held
        self._subset = names is not None
        self._children: dict[ObjectId, list[ObjectId]] = {}
        self._listed: set[str] = set()
        super().__init__(tree, names, start=self._subset or not held(tree))

    def _follow(self, parent: ObjectId, child: ObjectId) -> None:
        if (not self._subset or self.depth >= LEAF_DEPTH) and self._held(child):
            return
        self._children.setdefault(parent, []).append(child)
        self._want(child)

    def _entry(self, leaf: ObjectId, entry: LeafEntry) -> None:
        self._listed.add(entry.name)
        self._follow(leaf, entry.project)

    def _below(self, oid: ObjectId, data: bytes) -> None:
        if self.depth == PROJECT_DEPTH:
            for f in decode_as(data, Project).files:
                self._follow(oid, f.manifest)
        elif self.depth == FILE_DEPTH:
            manifest = decode_as(data, FileManifest)
            # A manifest's blobs: core metadata (PEP 658), provenance (PEP 740).
            for blob in manifest_blobs(manifest):
                self._follow(oid, blob)
        else:
            decode_as(data, Blob)

    def _result(self) -> SyncPlan:
        # Sorted, so the plan does not depend on the order objects were fed in.
        levels = tuple(tuple(sorted(level)) for level in self.levels)
        children = {p: tuple(sorted(set(c))) for p, c in self._children.items()}
        absent = frozenset(self._hashes or ()) - self._listed
        return SyncPlan(levels, children, tuple(sorted(self._missing)), absent)


def manifest_blobs(manifest: FileManifest) -> list[ObjectId]:
    """The blobs a manifest points to: core metadata, then provenance."""
    out = []
    if manifest.core_metadata is not None:
        out.append(manifest.core_metadata.blob)
    if manifest.provenance is not None:
        out.append(manifest.provenance.blob)
    return out


# --------------------------------------------------------------------------- drivers


def run_sync(walk: Walk[R], get: Callable[[ObjectId], bytes | None]) -> R:
    """Drive ``walk`` over a local source, one object at a time.

    ``get`` returns canonical bytes or None (e.g. ``Store.find_object``); a
    ``get`` that raises for a missing object (``Store.get_object``) makes a
    missing object an error instead.
    """
    while not walk.done:
        for oid in walk.needs():
            walk.feed(oid, get(oid))
    return walk.result()


async def run_async(
    walk: Walk[R],
    get_many: Callable[[list[ObjectId]], Awaitable[Mapping[ObjectId, bytes]]],
) -> R:
    """Drive ``walk`` with one ``get_many`` call per level (e.g. one ``POST /objects``).

    An id missing from the mapping ``get_many`` returns is fed as None.
    """
    while not walk.done:
        want = walk.needs()
        got = await get_many(want)
        for oid in want:
            walk.feed(oid, got.get(oid))
    return walk.result()


__all__ = [
    "BLOB_DEPTH",
    "FILE_DEPTH",
    "LEAF_DEPTH",
    "PROJECT_DEPTH",
    "Found",
    "ListWalk",
    "Listing",
    "ResolveWalk",
    "Resolved",
    "SyncPlan",
    "SyncWalk",
    "Walk",
    "manifest_blobs",
    "run_async",
    "run_sync",
]
