"""Choosing the namespace that serves a project, over the network: the I/O shell of
:class:`~p2pkg.core.search_order.SearchPolicy`.

The candidates (claims, pins, order) are asked at once — a page's latency
is the slowest lookup, not their sum — and the first candidate in the
order that lists the project wins. A candidate that cannot answer (its
peers unreachable, its root expired) before a later one that has the
project is an error, never a fall-through: falling through to the next
namespace during an outage is dependency confusion by another name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from p2pkg.core.objects import normalize_name
from p2pkg.core.search_order import SearchPolicy
from p2pkg.errors import P2pkgError
from p2pkg.roles.links import Peer

#: The name a node trusting one namespace (``--trust`` / ``--peer``) gives it.
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    """One trusted namespace: its name, the keys its roots must be signed by, its peers."""

    name: str
    pinned: frozenset[bytes]
    peers: Sequence[str | Peer] = field(default_factory=tuple)


async def choose_namespace(
    policy: SearchPolicy, project: str, has: Callable[[str], Awaitable[bool]]
) -> str | None:
    """The namespace that serves ``project`` (None: no namespace may serve it).

    ``has(namespace)`` says whether that namespace lists the project; it
    raises :class:`~p2pkg.errors.P2pkgError` when the namespace cannot say.
    That error is raised here when it comes from a candidate ahead of the
    one chosen (or when no candidate has the project).
    """
    candidates = policy.candidates(normalize_name(project))
    answers: dict[str, bool | P2pkgError] = {}

    async def ask(ns: str) -> None:
        try:
            answers[ns] = await has(ns)
        except P2pkgError as exc:
            answers[ns] = exc

    if len(candidates) == 1:
        await ask(candidates[0])
    else:
        async with anyio.create_task_group() as tg:
            for ns in candidates:
                tg.start_soon(ask, ns)
    for ns in candidates:
        answer = answers[ns]
        if isinstance(answer, P2pkgError):
            raise answer
        if answer:
            return ns
    return None


async def choose_many(
    policy: SearchPolicy,
    projects: Sequence[str],
    lookup: Callable[[str, list[str]], Awaitable[Mapping[str, bool]]],
) -> dict[str, str | None]:
    """:func:`choose_namespace` for many projects: one ``lookup`` per namespace.

    ``lookup(namespace, names)`` says which of ``names`` that namespace
    lists (one batch walk of its tree); the namespaces are asked at once.
    """
    names = list(dict.fromkeys(normalize_name(p) for p in projects))
    wanted: dict[str, list[str]] = {}
    for name in names:
        for ns in policy.candidates(name):
            wanted.setdefault(ns, []).append(name)
    answers: dict[str, Mapping[str, bool] | P2pkgError] = {}

    async def ask(ns: str) -> None:
        try:
            answers[ns] = await lookup(ns, wanted[ns])
        except P2pkgError as exc:
            answers[ns] = exc

    async with anyio.create_task_group() as tg:
        for ns in wanted:
            tg.start_soon(ask, ns)
    out: dict[str, str | None] = {}
    for name in names:
        out[name] = None
        for ns in policy.candidates(name):
            answer = answers[ns]
            if isinstance(answer, P2pkgError):
                raise answer
            if answer.get(name):
                out[name] = ns
                break
    return out


__all__ = ["DEFAULT_NAMESPACE", "NamespaceSpec", "choose_many", "choose_namespace"]
