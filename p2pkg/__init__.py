"""p2pkg: peer-to-peer, content-addressed distribution of Python package archives.

The pure core (chunking, objects, root, trust, tree, schedule, select) takes
bytes and ``now`` and returns values; the shells (store, publish, http,
fetch, seed, cli) do the I/O. Programs use :class:`Client`::

    async with p2pkg.Client(trust="ed25519:...", peers=["http://127.0.0.1:8000"]) as c:
        path = await c.fetch("requests==2.32.3", "downloads/")

and :class:`MultiClient` to resolve by a search order over several
trusted namespaces (:class:`NamespaceSpec`, :class:`SearchPolicy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Client", "MultiClient", "NamespaceSpec", "SearchPolicy", "SyncClient", "__version__"]

if TYPE_CHECKING:
    from p2pkg.core.search_order import SearchPolicy
    from p2pkg.roles.client import Client, SyncClient
    from p2pkg.roles.multi_client import MultiClient
    from p2pkg.roles.namespace_choice import NamespaceSpec

_LAZY = {
    "Client": "p2pkg.roles.client",
    "SyncClient": "p2pkg.roles.client",
    "MultiClient": "p2pkg.roles.multi_client",
    "NamespaceSpec": "p2pkg.roles.namespace_choice",
    "SearchPolicy": "p2pkg.core.search_order",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import p2pkg` stays cheap for the CLI's start-up time.
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(module), name)
    raise AttributeError(name)
