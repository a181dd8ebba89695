"""The disk condition of a long-running role (seed, cache), for its status.

A full or failing disk is this machine's fault, never a peer's: the role
keeps serving what it holds, the operation that hit it fails (a seed's
sync backs off and retries, a cache answers the installer 507 or 500), and
the status page says what happened, where, and how much room is left, so
an operator sees "disk full" instead of a mysterious run of failures.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pkg.errors import LocalError

#: errnos that mean "out of room" (HTTP 507 Insufficient Storage), as opposed
#: to other local failures (permissions, I/O errors: HTTP 500).
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def http_status(exc: LocalError) -> int:
    """507 for a full disk or quota (RFC 4918), 500 for any other local failure."""
    return 507 if exc.errno in NO_ROOM else 500


@dataclass
class DiskCondition:
    """Local failures seen by one role's store, and the room left on its disk."""

    path: Path
    clock: Callable[[], float] = time.time
    errors: int = 0
    last_error: str | None = None
    last_time: float | None = None

    def note(self, exc: LocalError) -> None:
        """Record a local failure (the role logs it where it happened)."""
        self.errors += 1
        self.last_error = str(exc)
        self.last_time = self.clock()

    def report(self) -> dict[str, Any]:
        """Status fields: free bytes now, how many local errors, the last one and its age."""
        try:
            free: int | None = shutil.disk_usage(self.path).free
        except OSError:
            free = None
        return {
            "disk_free_bytes": free,
            "local_errors": self.errors,
            "last_local_error": self.last_error,
            "last_local_error_age_seconds": (
                None if self.last_time is None else int(self.clock() - self.last_time)
            ),
        }


__all__ = ["NO_ROOM", "DiskCondition", "http_status"]
