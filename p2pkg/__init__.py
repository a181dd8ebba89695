"""p2pkg: peer-to-peer, content-addressed distribution of Python package archives.

The pure core (chunking, objects, root, trust, tree, schedule, select) takes
bytes and ``now`` and returns values; the shells (store, publish, http,
fetch, seed, cli) do the I/O. Programs use :class:`Client`::

    async with p2pkg.Client(trust="ed25519:...", peers=["http://127.0.0.1:8000"]) as c:
        path = await c.fetch("requests==2.32.3", "downloads/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Client", "SyncClient", "__version__"]

if TYPE_CHECKING:
    from p2pkg.roles.client import Client, SyncClient


def __getattr__(name: str) -> Any:
    # Lazy: `import p2pkg` stays cheap for the CLI's start-up time.
    if name in ("Client", "SyncClient"):
        from p2pkg.roles import client as api

        return getattr(api, name)
    raise AttributeError(name)
