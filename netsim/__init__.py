"""Simulator, loopback testbed and benchmarks for p2pkg (not part of the package)."""

import os as _os

# Network hygiene: the demo and benchmarks start caches and clients that use
# mDNS; keep it on the loopback interface unless the operator says otherwise.
_os.environ.setdefault("P2PKG_LAN_INTERFACE", "127.0.0.1")
