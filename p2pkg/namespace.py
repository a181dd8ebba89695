"""A verified, read-only view of a namespace: trusted root + object source.

Every object read through it is checked against its id by the source, and
every id comes from the trusted root's tree, so whatever this view returns
is what the master signed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from p2pkg import tree
from p2pkg.errors import NotFoundError
from p2pkg.objects import FileManifest, LeafEntry, Project, decode_as, normalize_name
from p2pkg.root import decode_signed_root
from p2pkg.store import Store
from p2pkg.trust import TrustedRoot, trust_chain


@dataclass(frozen=True, slots=True)
class Namespace:
    """A trusted root and where to read its objects from."""

    trusted: TrustedRoot
    get: tree.GetObject

    def project(self, name: str) -> Project | None:
        return tree.resolve(self.get, self.trusted.root.tree, normalize_name(name)).project

    def require_project(self, name: str) -> Project:
        found = self.project(name)
        if found is None:
            raise NotFoundError(f"no project {normalize_name(name)!r} in namespace")
        return found

    def manifests(self, project: Project) -> list[FileManifest]:
        return [decode_as(self.get(f.manifest), FileManifest) for f in project.files]

    def projects(self) -> Iterator[LeafEntry]:
        return tree.iter_projects(self.get, self.trusted.root.tree)


def store_chain(store: Store) -> list[bytes]:
    return [store.root_at(v) for v in store.root_versions()]


def open_store_namespace(
    store: Store, pinned: frozenset[bytes] | None = None, now: float | None = None
) -> Namespace:
    """The store's latest root, verified from its chain.

    With ``pinned`` keys the chain must lead from a pinned key; without, the
    store's first root is the anchor (trust on first use, for a master
    inspecting its own store).
    """
    now = time.time() if now is None else now
    chain = store_chain(store)
    if not chain:
        raise NotFoundError(f"store {store.path} holds no signed root yet (run p2pkg publish)")
    if pinned is None:
        pinned = frozenset(decode_signed_root(chain[0])[1].keys)
    return Namespace(trust_chain(pinned, chain, now), store.get_object)
