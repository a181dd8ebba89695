"""Fetching from several trusted namespaces by one search policy (``p2pkg fetch --namespace``).

::

    specs = [NamespaceSpec("corp", corp_keys, ["http://10.0.0.5:8000"]),
             NamespaceSpec("public", public_keys, ["http://seed.example:8000"])]
    policy = SearchPolicy.parse(["corp", "public"], claims=["corp=acme-*"])
    async with MultiClient(specs, policy) as c:
        for namespace, result in await c.fetch_many(["acme-utils", "requests"], "dl/"):
            ...

A spec resolves in the one namespace the policy chooses for its project —
the same rules the cache's merged index follows (claims, pins, order; a
namespace that cannot answer ahead of the one that has the project is an
error, never a fall-through). Each namespace is a :class:`Client` of its
own: its keys, peers and (``store/NAME``) store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from p2pkg.core.objects import FileManifest, normalize_name
from p2pkg.core.search_order import SearchPolicy
from p2pkg.core.select import parse_spec
from p2pkg.errors import NotFoundError, first_p2pkg_error
from p2pkg.roles.client import Client, FetchResult
from p2pkg.roles.download import Progress
from p2pkg.roles.namespace_choice import NamespaceSpec, choose_many


class MultiClient:
    """Several :class:`Client`\\ s, one per namespace, and the policy choosing among them."""

    def __init__(
        self,
        namespaces: Sequence[NamespaceSpec],
        policy: SearchPolicy | None = None,
        *,
        store: str | Path | None = None,
        paranoid: bool = False,
    ) -> None:
        if not namespaces:
            raise ValueError("at least one namespace")
        self.policy = policy or SearchPolicy.parse([n.name for n in namespaces])
        self.clients = {
            n.name: Client(
                n.pinned,
                n.peers,
                store=Path(store) / n.name if store is not None else None,
                lan=False,
                paranoid=paranoid,
            )
            for n in namespaces
        }
        self._refreshed: set[str] = set()

    async def __aenter__(self) -> MultiClient:
        entered: list[Client] = []
        try:
            for client in self.clients.values():
                await client.__aenter__()
                entered.append(client)
        except BaseException:
            for client in entered:
                await client.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients.values():
            await client.__aexit__()

    async def _lookup(self, ns: str, names: list[str]) -> Mapping[str, bool]:
        client = self.clients[ns]
        if ns not in self._refreshed:
            await client.refresh()  # the newest root, once per run
            self._refreshed.add(ns)
        found = await client.session.projects(names)
        return {name: project is not None for name, project in found.items()}

    async def choose(self, specs: Sequence[str]) -> dict[str, str]:
        """Each spec -> the namespace its project comes from; NotFoundError if none may."""
        names = {spec: normalize_name(parse_spec(spec).name) for spec in specs}
        chosen = await choose_many(self.policy, list(names.values()), self._lookup)
        out: dict[str, str] = {}
        for spec, name in names.items():
            ns = chosen[name]
            if ns is None:
                claimer = self.policy.claimer(name)
                if claimer is not None:
                    raise NotFoundError(
                        f"{name} is claimed by namespace {claimer!r}, which lacks it"
                    )
                where = ", ".join(self.policy.candidates(name))
                raise NotFoundError(f"no project {name} in the namespaces {where}")
            out[spec] = ns
        return out

    async def resolve(self, spec: str, filename: str | None = None) -> tuple[str, FileManifest]:
        """The namespace ``spec`` resolves in, and the manifest of the archive it means."""
        ns = (await self.choose([spec]))[spec]
        return ns, await self.clients[ns].resolve(spec, filename)

    async def fetch_file(
        self,
        namespace: str,
        manifest: FileManifest,
        dest: str | Path,
        *,
        progress: Progress | None = None,
    ) -> FetchResult:
        return await self.clients[namespace].fetch_file(manifest, dest, progress=progress)

    async def fetch_many(
        self, specs: Sequence[str], dest: str | Path, *, jobs: int = 8
    ) -> list[tuple[str, FetchResult]]:
        """Fetch several specs, each from its namespace; (namespace, result) per archive."""
        chosen = await self.choose(specs)
        groups: dict[str, list[str]] = {}
        for spec in specs:
            groups.setdefault(chosen[spec], []).append(spec)
        results: dict[str, list[FetchResult]] = {}

        async def one(ns: str, group: list[str]) -> None:
            results[ns] = await self.clients[ns].fetch_many(group, dest, jobs=jobs)

        try:
            async with anyio.create_task_group() as tg:
                for ns, group in groups.items():
                    tg.start_soon(one, ns, group)
        except BaseExceptionGroup as group:
            raise first_p2pkg_error(group) from None
        return [(ns, r) for ns in groups for r in results[ns]]


__all__ = ["MultiClient"]
