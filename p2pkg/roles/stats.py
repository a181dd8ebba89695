"""The master's download statistics: ask every mirror, sum (``p2pkg stats``).

The mirrors are the root's signed list plus any extra URLs; each answers
``GET /p2pkg/v1/stats?since=DAY`` (:mod:`p2pkg.io.download_counts`). The
master's own counts are read from its store directory. Archives are named
through the store's namespace; the sums and the outlier flags are
:func:`p2pkg.core.download_stats.summarize`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import anyio

from p2pkg.core.download_stats import DownloadStats, Reported, summarize
from p2pkg.core.objects import Project, decode_as
from p2pkg.errors import P2pkgError, ProtocolError
from p2pkg.io.download_counts import STATS_PATH, DownloadCounts
from p2pkg.io.http.client import PeerClient
from p2pkg.io.store import Store
from p2pkg.roles.namespace import open_store_namespace

MAX_STATS_BODY = 64 * 1024 * 1024
OWN = "(this store)"


def archive_names(store: Store) -> dict[str, tuple[str, str]]:
    """BLAKE3 hex -> (project, filename) for every archive the store's namespace lists."""
    ns = open_store_namespace(store)
    out: dict[str, tuple[str, str]] = {}
    for entry in ns.projects():
        project = decode_as(ns.get(entry.project), Project)
        for m in ns.manifests(project):
            out[m.blake3.hex()] = (project.name, m.filename)
    return out


async def _fetch(url: str, since: str) -> Reported:
    client = PeerClient(url)
    try:
        status, body, _ = await client.get_bytes(f"{STATS_PATH}?since={since}", MAX_STATS_BODY)
    finally:
        client.close()
    if status != 200:
        raise ProtocolError(url, f"stats: HTTP {status}")
    try:
        days = json.loads(body)["days"]
        return {str(d): {str(b): int(n) for b, n in files.items()} for d, files in days.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(url, f"stats: malformed answer ({exc})") from None


async def collect_stats(
    store_dir: Path, extra: Sequence[str] = (), *, since: str
) -> tuple[DownloadStats, dict[str, str]]:
    """Sum the master's own counts and every mirror's; also (source -> error) for the silent."""
    with Store.open(store_dir) as store:
        names = archive_names(store)
        mirrors = open_store_namespace(store).trusted.root.mirrors
    counts = DownloadCounts(store_dir)
    try:
        reports: dict[str, Reported] = {OWN: counts.since(since)}
    finally:
        counts.close()
    errors: dict[str, str] = {}
    urls = [u for u in dict.fromkeys([*mirrors, *extra]) if u.startswith("http://")]

    async def one(url: str) -> None:
        try:
            with anyio.fail_after(30):
                reports[url] = await _fetch(url, since)
        except (P2pkgError, TimeoutError) as exc:
            errors[url] = str(exc) or "timed out"

    async with anyio.create_task_group() as tg:
        for url in urls:
            tg.start_soon(one, url)
    return summarize(reports, names), errors


__all__ = ["OWN", "archive_names", "collect_stats"]
