"""How fresh each mirror is, per project: ``p2pkg mirrors status``.

A mirror is a seed (or cache) the master vouches for in the root's signed
``mirrors`` list, or any peer the user names. For each, this asks for its
latest root (verified against the pinned keys like any other root), and,
for each project asked about, resolves the project through *that mirror's*
tree from *that mirror alone* and compares the project object's id with the
one under the newest root:

* ``fresh`` — the same project object (byte for byte the current one);
* ``behind`` — another version of it (the mirror has not synced the root
  that changed it);
* ``missing`` — the current namespace has it and the mirror cannot serve it
  (an older root without it, or a partial mirror);
* ``absent`` — the namespace itself has no such project.

Plus, per mirror: its root version, versions behind and root lag in
seconds (how much older its root is than the newest).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import anyio

from p2pkg.core.objects import Project, encode, normalize_name, object_id
from p2pkg.core.trust import TrustedRoot
from p2pkg.errors import P2pkgError
from p2pkg.roles.session import Session


@dataclass(frozen=True, slots=True)
class MirrorFreshness:
    """One mirror's freshness: its root and, per project asked, a state."""

    url: str
    version: int | None = None  # None: no acceptable root from it
    versions_behind: int | None = None
    lag_seconds: int | None = None
    error: str | None = None
    projects: dict[str, str] = field(default_factory=dict)


def _ids(projects: dict[str, Project | None]) -> dict[str, bytes | None]:
    return {n: None if p is None else object_id(encode(p)) for n, p in projects.items()}


async def mirror_freshness(
    pinned: frozenset[bytes],
    peers: Sequence[str],
    projects: Iterable[str] = (),
    *,
    timeout: float = 20.0,
) -> tuple[TrustedRoot, list[MirrorFreshness]]:
    """The newest root among ``peers`` (and the mirrors it lists), and each mirror's freshness.

    Raises what a fetch would if no peer serves an acceptable root.
    """
    names = sorted({normalize_name(n) for n in projects})
    main = Session(pinned, peers)
    try:
        newest = await main.refresh_root()
        current = _ids(await main.projects(names)) if names else {}
    finally:
        main.close()
    urls = list(dict.fromkeys([*newest.root.mirrors, *(u.rstrip("/") for u in peers)]))
    urls = [u for u in urls if u.startswith("http://")]
    out: dict[str, MirrorFreshness] = {}

    async def one(url: str) -> None:
        # That mirror alone: its root, its tree, its objects (nothing learned).
        session = Session(pinned, [url], learn_mirrors=False)
        try:
            with anyio.fail_after(timeout):
                theirs = await session.refresh_root()
                try:  # one walk for all the projects, a batch per tree level
                    held = _ids(await session.projects(names)) if names else {}
                except P2pkgError:
                    # A partial mirror lacks some subtree: ask name by name to
                    # tell which projects it can serve.
                    held = {}
                    for name in names:
                        try:
                            held.update(_ids(await session.projects([name])))
                        except P2pkgError:
                            held[name] = None
        except (P2pkgError, TimeoutError) as exc:
            out[url] = MirrorFreshness(url, error=str(exc) or "timed out")
            return
        finally:
            session.close()
        states = {}
        for name in names:
            if current.get(name) is None:
                states[name] = "absent"
            elif held.get(name) == current[name]:
                states[name] = "fresh"
            elif held.get(name) is None:
                states[name] = "missing"
            else:
                states[name] = "behind"
        out[url] = MirrorFreshness(
            url,
            theirs.version,
            max(0, newest.version - theirs.version),
            max(0, newest.root.created - theirs.root.created),
            None,
            states,
        )

    async with anyio.create_task_group() as tg:
        for url in urls:
            tg.start_soon(one, url)
    return newest, [out[u] for u in urls]


__all__ = ["MirrorFreshness", "mirror_freshness"]
