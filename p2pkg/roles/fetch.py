"""Transitional alias: the engine now lives in :mod:`p2pkg.roles.session` and its parts."""

from __future__ import annotations

from p2pkg.roles.follow import open_root
from p2pkg.roles.links import Peer
from p2pkg.roles.session import FetchStats, Progress
from p2pkg.roles.session import Session as Fetcher

__all__ = ["FetchStats", "Fetcher", "Peer", "Progress", "open_root"]
