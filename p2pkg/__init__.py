"""p2pkg: peer-to-peer, content-addressed distribution of Python package archives.

The pure core (chunking, objects, root, trust, tree) takes bytes and ``now``
and returns values; the shells (store, publish, cli) do the I/O.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
