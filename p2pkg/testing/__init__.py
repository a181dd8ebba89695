"""Helpers for tests and netsim: genuine archives, in-memory signers."""
