"""The pure core: bytes and ``now`` in, values and events out; no I/O (docs/architecture.md)."""
