"""Simulator, loopback testbed and benchmarks for p2pkg (not part of the package)."""
