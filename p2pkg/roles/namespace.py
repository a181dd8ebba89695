"""A verified, read-only view of a namespace: trusted root + object source.

Every object read through it is checked against its id by the source, and
every id comes from the trusted root's tree, so whatever this view returns
is what the master signed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from p2pkg.core import tree
from p2pkg.core.objects import (
    FileEntry,
    FileManifest,
    LeafEntry,
    ObjectId,
    Project,
    decode_as,
    normalize_name,
)
from p2pkg.core.root import decode_signed_root
from p2pkg.core.trust import TrustedRoot, trust_chain
from p2pkg.errors import NotFoundError
from p2pkg.io.store import Store


@dataclass(frozen=True, slots=True)
class Holding:
    """What of a namespace's metadata a (possibly partial) source holds."""

    #: Projects whose project object is held, in tree order.
    projects: tuple[str, ...]
    #: Projects named by the held leaves (held or not).
    listed: int
    subtrees_missing: int

    @property
    def partial(self) -> bool:
        return self.subtrees_missing > 0 or len(self.projects) < self.listed


@dataclass(frozen=True, slots=True)
class Namespace:
    """A trusted root and where to read its objects from.

    ``holds`` is set when the source may be partial (a store not marked
    full): it says whether an object is held, without reading it.
    """

    trusted: TrustedRoot
    get: tree.GetObject
    holds: Callable[[ObjectId], bool] | None = None

    @property
    def may_be_partial(self) -> bool:
        return self.holds is not None

    def project(self, name: str) -> Project | None:
        """The project ``name`` (any spelling), None if the namespace lacks it.

        Raises NotFoundError when the source lacks an object on the path.
        """
        return tree.resolve(self._find, self.trusted.root.tree, normalize_name(name)).project

    def require_project(self, name: str) -> Project:
        try:
            found = self.project(name)
        except NotFoundError:
            if self.holds is None:
                raise
            # An object on the path is not held: whether the project exists is unknown here.
            raise NotFoundError(
                f"project {normalize_name(name)!r} is not in this partial store"
                " (a cache fetches metadata on demand)"
            ) from None
        if found is None:
            raise NotFoundError(f"no project {normalize_name(name)!r} in namespace")
        return found

    def holding(self) -> Holding:
        """The projects whose metadata the source holds (all of them for a full source)."""
        if self.holds is None:
            names = tuple(e.name for e in self.projects())
            return Holding(names, len(names), 0)
        holds = self.holds
        walk = tree.held_projects(self._find, self.trusted.root.tree)
        names = tuple(e.name for e in walk.projects if holds(e.project))
        return Holding(names, len(walk.projects), walk.subtrees_missing)

    def held_manifests(self, project: Project) -> list[tuple[FileEntry, FileManifest | None]]:
        """Each file of ``project`` with its manifest, or None where the source lacks it."""
        return [(f, self._manifest_or_none(f.manifest)) for f in project.files]

    def _manifest_or_none(self, oid: ObjectId) -> FileManifest | None:
        data = self._find(oid)
        return None if data is None else decode_as(data, FileManifest)

    def _find(self, oid: ObjectId) -> bytes | None:
        if self.holds is not None and not self.holds(oid):
            return None
        return self.get(oid)

    def manifests(self, project: Project) -> list[FileManifest]:
        return [decode_as(self.get(f.manifest), FileManifest) for f in project.files]

    def projects(self) -> Iterator[LeafEntry]:
        return tree.iter_projects(self.get, self.trusted.root.tree)


def store_chain(store: Store) -> list[bytes]:
    """Every root a store holds, oldest first (what :func:`trust_chain` takes)."""
    return [store.root_at(v) for v in store.root_versions()]


def open_store_namespace(
    store: Store, pinned: frozenset[bytes] | None = None, now: float | None = None
) -> Namespace:
    """The store's latest root, verified from its chain.

    With ``pinned`` keys the chain must lead from a pinned key; without, the
    store's first root is the anchor (trust on first use, for a master
    inspecting its own store). A store not marked full may hold only part
    of the tree (:attr:`Namespace.holds`).
    """
    now = time.time() if now is None else now
    chain = store_chain(store)
    if not chain:
        raise NotFoundError(f"store {store.path} holds no signed root yet (run p2pkg publish)")
    if pinned is None:
        pinned = frozenset(decode_signed_root(chain[0])[1].keys)
    holds = None if store.is_full else store.has_object
    return Namespace(trust_chain(pinned, chain, now), store.get_object, holds)
