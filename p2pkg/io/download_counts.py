"""Downloads per archive per day, as one node counted them: no client addresses.

A download is counted where its first byte is served (a whole-file GET, or
the span starting at offset 0): a client that splits a file across four
peers is one download, counted by the peer that served byte 0. The counts
live in ``downloads.sqlite`` beside the store's index (the index stays the
store's alone), are kept in memory between flushes (one small transaction
a minute, not one per request) and for :data:`KEEP_DAYS` days. Served as
``GET /p2pkg/v1/stats[?since=YYYY-MM-DD]`` (protocol §6.7); a master sums
what its mirrors report (``p2pkg stats``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio

from p2pkg.errors import LocalError
from p2pkg.io.http.server import Exchange, PeerServer
from p2pkg.io.store import local_db

log = logging.getLogger(__name__)

FILENAME = "downloads.sqlite"
KEEP_DAYS = 400
DEFAULT_DAYS = 31  # what /stats answers without ?since=
MAX_ROWS = 200_000  # per answer
STATS_PATH = "/p2pkg/v1/stats"


def day_of(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).date().isoformat()


class DownloadCounts:
    """Counts for one store directory; :meth:`run` flushes them periodically."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = directory / FILENAME
        self.clock = clock
        self._pending: Counter[tuple[str, bytes]] = Counter()
        self._closed = False
        with local_db(self.path, "opening"):
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS downloads ("
                " day TEXT NOT NULL, blake3 BLOB NOT NULL, n INTEGER NOT NULL,"
                " PRIMARY KEY (day, blake3))"
            )

    def count(self, blake3: bytes) -> None:
        """One more download of ``blake3`` today (in memory until the next flush)."""
        self._pending[(day_of(self.clock()), blake3)] += 1

    def flush(self) -> None:
        """Write pending counts in one transaction; drop days beyond :data:`KEEP_DAYS`."""
        if not self._pending:
            return
        pending, self._pending = self._pending, Counter()
        oldest = (date.fromisoformat(day_of(self.clock())) - timedelta(days=KEEP_DAYS)).isoformat()
        try:
            with local_db(self.path, "writing"):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT INTO downloads (day, blake3, n) VALUES (?, ?, ?)"
                        " ON CONFLICT (day, blake3) DO UPDATE SET n = n + excluded.n",
                        [(d, b, n) for (d, b), n in pending.items()],
                    )
                    self._db.execute("DELETE FROM downloads WHERE day < ?", (oldest,))
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back itself (full)
                        self._db.execute("ROLLBACK")
                    raise
        except LocalError:
            self._pending.update(pending)  # kept for the next try (a full disk)
            raise

    def today(self) -> int:
        """Downloads counted today (UTC), pending ones included."""
        day = day_of(self.clock())
        return sum(self.since(day).get(day, {}).values())

    def since(self, day: str) -> dict[str, dict[str, int]]:
        """``{day: {blake3 hex: downloads}}`` from ``day`` on, pending counts included."""
        out: dict[str, dict[str, int]] = {}
        rows = self._db.execute(
            "SELECT day, blake3, n FROM downloads WHERE day >= ? ORDER BY day LIMIT ?",
            (day, MAX_ROWS),
        ).fetchall()
        for d, b, n in rows:
            out.setdefault(d, {})[bytes(b).hex()] = int(n)
        for (d, b), n in self._pending.items():
            if d >= day:
                per = out.setdefault(d, {})
                per[b.hex()] = per.get(b.hex(), 0) + n
        return out

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._closed:
            return
        try:
            self.flush()
        except LocalError as exc:
            log.warning("download counts not saved: %s", exc)
        self._closed = True
        self._db.close()

    def install(self, server: PeerServer) -> None:
        """Count what ``server`` serves and answer ``GET /p2pkg/v1/stats``."""
        server.protocol.on_download = self.count
        server.route(STATS_PATH, self.handle)

    async def handle(self, ex: Exchange) -> bool:
        if ex.path != STATS_PATH or ex.req.method not in ("GET", "HEAD"):
            return await ex.reply(404, b"not found")
        query = parse_qs(urlsplit(ex.req.target).query)
        since = query.get("since", [None])[0]
        if since is None:
            since = (
                date.fromisoformat(day_of(self.clock())) - timedelta(days=DEFAULT_DAYS)
            ).isoformat()
        try:
            since = date.fromisoformat(since).isoformat()
        except ValueError:
            return await ex.reply(400, b"since must be YYYY-MM-DD")
        body = json.dumps({"days": self.since(since)}, sort_keys=True).encode()
        return await ex.reply(200, body, ctype="application/json")

    async def run(self, every: float = 60.0) -> None:
        """Flush every ``every`` seconds until cancelled, and once more on the way out."""
        try:
            while True:
                await anyio.sleep(every)
                try:
                    self.flush()
                except LocalError as exc:
                    log.warning("download counts not saved (kept in memory): %s", exc)
        finally:
            self.close()


__all__ = ["FILENAME", "STATS_PATH", "DownloadCounts", "day_of"]
