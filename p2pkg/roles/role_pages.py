"""What each serving role shows on its status page at ``/`` (see :mod:`p2pkg.roles.status_page`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from p2pkg.core.root import decode_signed_root
from p2pkg.roles.namespace_choice import DEFAULT_NAMESPACE
from p2pkg.roles.status_page import (
    Figure,
    Page,
    Table,
    human_ago,
    human_bytes,
    human_duration,
    human_rate,
    human_until,
    ratio,
    render,
)

if TYPE_CHECKING:
    from p2pkg.io.download_counts import DownloadCounts
    from p2pkg.io.http.server import Exchange, PeerServer
    from p2pkg.io.store import Store
    from p2pkg.roles.cache import Cache
    from p2pkg.roles.master import Master
    from p2pkg.roles.seed import Seeder
    from p2pkg.roles.session import Session

WARN_EXPIRY = 3 * 86400  # a root this close to expiry needs the master's attention
STALE_CHECK = 600  # no peer answered a root check for this long


def root_figures(
    ns: str,
    version: int | None,
    created: int | None,
    expires: int | None,
    checked: float | None = None,
    *,
    checks: bool = False,
) -> list[Figure]:
    """Root version, its age and expiry, and (``checks``) when a peer last confirmed it."""
    now = time.time()
    prefix = "" if ns == DEFAULT_NAMESPACE else f"{ns}: "
    key = "" if ns == DEFAULT_NAMESPACE else f"-{ns}"
    if version is None:
        return [Figure(prefix + "root", "none yet", "root-version" + key, "bad")]
    left = None if expires is None else expires - now
    level = "ok" if left is not None and left > WARN_EXPIRY else "warn"
    if left is not None and left <= 0:
        level = "bad"
    out = [
        Figure(
            prefix + "root version",
            str(version),
            "root-version" + key,
            level,
            note="signed " + human_ago(None if created is None else now - created),
        ),
        Figure(prefix + "root expires", human_until(left), "root-expires" + key, level),
    ]
    if checks:
        ago = None if checked is None else now - checked
        fresh = "ok" if ago is not None and ago < STALE_CHECK else "bad"
        out.append(
            Figure(prefix + "last checked with peers", human_ago(ago), "root-checked" + key, fresh)
        )
    return out


def store_root_figures(store: Store, ns: str = DEFAULT_NAMESPACE) -> list[Figure]:
    data = store.latest_root()
    if data is None:
        return root_figures(ns, None, None, None)
    root = decode_signed_root(data)[1]
    return root_figures(ns, root.version, root.created, root.expires)


def peer_table(session: Session, ns: str, title: str = "Peers") -> Table:
    """Each peer: tier, speed, latency, bytes received, errors, ban, and its root's freshness."""
    trusted = session.trusted
    versions = session.follower.peer_versions
    unreachable = " ".join(session.follower.unreachable)
    rows = []
    for r in session.book.summary(session.monotonic()):
        url = str(r["url"])
        seen = versions.get(url)
        if seen is None:
            fresh = "no answer" if url in unreachable else "—"
        elif trusted is not None and seen < trusted.version:
            fresh = f"{seen} ({_behind(trusted.version - seen)})"
        else:
            fresh = f"{seen} (current)"
        state = "banned: " + str(r["banned"]) if r["banned"] else "ok"
        if r["backed_off_for"]:
            state = f"backing off {r['backed_off_for']} s"
        latency = r["latency"]
        rows.append(
            [
                url,
                str(r["tier"]),
                human_rate(float(r["rate"])) if r["rate"] else "—",  # type: ignore[arg-type]
                "—" if latency is None else f"{1000 * float(latency):.0f} ms",  # type: ignore[arg-type]
                human_bytes(int(r["received"])),  # type: ignore[call-overload]
                str(r["failures_in_a_row"]),
                state,
                fresh,
            ]
        )
    suffix = "" if ns == DEFAULT_NAMESPACE else f" — {ns}"
    return Table(
        title + suffix,
        ["peer", "tier", "speed", "latency", "received", "errors in a row", "state", "root"],
        rows,
        "peers" + ("" if ns == DEFAULT_NAMESPACE else f"-{ns}"),
        empty="no peers known",
    )


def _behind(n: int) -> str:
    return f"{n} version{'' if n == 1 else 's'} behind"


async def reply(ex: Exchange, page: Page) -> bool:
    """Answer ``ex`` with ``page`` rendered (never cached: it is the state now)."""
    return await ex.reply(
        200, render(page), ctype="text/html; charset=utf-8", headers=[("Cache-Control", "no-cache")]
    )


def install(server: PeerServer, build: Callable[[Exchange], Page]) -> None:
    """Serve ``build(ex)`` at exactly ``/`` on ``server``."""

    async def page(ex: Exchange) -> bool:
        if ex.path != "/" or ex.req.method not in ("GET", "HEAD"):
            return await ex.reply(404, b"not found")
        return await reply(ex, build(ex))

    server.route("/", page)


# ---------------------------------------------------------------------------- roles


def cache_page(cache: Cache, host: str) -> Page:
    up = human_duration(time.time() - cache.started)
    page = Page(
        "p2pkg cache",
        f"namespaces: {', '.join(cache.policy.order)} · up {up}",
        hints=[
            f"pip install --index-url http://{host}/simple/ PACKAGE",
            f"uv pip install --index-url http://{host}/simple/ PACKAGE",
        ],
    )
    hits = sum(ns.stats.hits for ns in cache.namespaces.values())
    misses = sum(ns.stats.misses for ns in cache.namespaces.values())
    from_store = sum(ns.stats.bytes_from_cache for ns in cache.namespaces.values())
    fetched = sum(ns.stats.bytes_fetched for ns in cache.namespaces.values())
    failed = sum(ns.stats.failed_downloads for ns in cache.namespaces.values())
    for name, ns in cache.namespaces.items():
        trusted = ns.session.trusted
        page.figures += root_figures(
            name,
            trusted.version if trusted else None,
            trusted.root.created if trusted else None,
            trusted.root.expires if trusted else None,
            ns.session.follower.state.last_success,
            checks=True,
        )
    counts = [ns.store.stats() for ns in cache.namespaces.values()]  # one query each
    files, held = sum(c[0] for c in counts), sum(c[1] for c in counts)
    page.figures += [
        Figure(
            "downloads today",
            str(sum(ns.counts.today() for ns in cache.namespaces.values())),
            "downloads-today",
        ),
        Figure(
            "hit ratio",
            ratio(hits, hits + misses),
            "hit-ratio",
            note=f"{hits} hits, {misses} misses",
        ),
        Figure("served from the store", human_bytes(from_store), "bytes-from-store"),
        Figure("fetched from peers", human_bytes(fetched), "bytes-fetched"),
        Figure(
            "held",
            f"{files} files",
            "held",
            note=human_bytes(held)
            + (f" of {human_bytes(cache.config.max_size)}" if cache.config.max_size else ""),
        ),
        Figure("failed downloads", str(failed), "failed-downloads", "bad" if failed else "ok"),
    ]
    disk = cache.primary.disk.report()
    page.figures.append(
        Figure(
            "disk free",
            human_bytes(disk["disk_free_bytes"]),
            "disk-free",
            "bad" if disk["local_errors"] else "",
            note=f"{disk['local_errors']} local errors",
        )
    )
    for name, ns in cache.namespaces.items():
        page.tables.append(peer_table(ns.session, name))
    errors = [
        [human_ago(time.time() - e["time"]), name, str(e["file"]), str(e["error"])]
        for name, ns in cache.namespaces.items()
        for e in ns.stats.recent_errors
    ]
    page.tables.append(
        Table("Recent errors", ["when", "namespace", "file", "error"], errors[::-1], "errors")
    )
    if len(cache.namespaces) > 1:
        page.tables.append(
            Table(
                "Recent projects and the namespace that served them",
                ["project", "namespace"],
                [[p, n] for p, n in reversed(cache.served_from.items())],
                "served-from",
            )
        )
    return page


def seed_page(seeders: dict[str, Seeder], counts: DownloadCounts | None = None) -> Page:
    page = Page("p2pkg seed", "namespaces: " + ", ".join(seeders))
    for name, seeder in seeders.items():
        fresh = seeder.freshness
        page.figures += store_root_figures(seeder.store, name)
        lag = None
        if fresh.upstream_version is not None and fresh.synced_version is not None:
            lag = max(0, fresh.upstream_version - fresh.synced_version)
        state = seeder.follower.state
        files, held = seeder.store.stats()
        prefix = "" if name == DEFAULT_NAMESPACE else f"{name}: "
        key = "" if name == DEFAULT_NAMESPACE else f"-{name}"
        page.figures += [
            Figure(
                prefix + "behind upstream",
                "—" if lag is None else f"{lag} versions",
                "lag" + key,
                "ok" if lag == 0 else "warn",
                note=f"upstream {fresh.upstream_version}",
            ),
            Figure(
                prefix + "last sync check",
                human_ago(None if state.last_success is None else time.time() - state.last_success),
                "synced" + key,
                "bad" if state.failures_in_a_row else "ok",
                note=state.last_error or "",
            ),
            Figure(
                prefix + "held",
                f"{files} files",
                "held" + key,
                note=human_bytes(held),
            ),
            Figure(prefix + "downloads today", str(seeder.counts.today()), "downloads-today" + key),
            Figure(
                prefix + "subscribers", str(len(seeder.subscriptions.live())), "subscribers" + key
            ),
        ]
        page.tables.append(peer_table(seeder.session, name, "Upstreams"))
    return page


def master_page(master: Master) -> Page:
    page = Page("p2pkg master", str(master.store_path))
    files, held = master.store.stats()
    page.figures += store_root_figures(master.store)
    page.figures += [
        Figure("archives", str(files), "held", note=human_bytes(held)),
        Figure("downloads today", str(master.counts.today()), "downloads-today"),
        Figure("subscribers", str(len(master.subscriptions.live())), "subscribers"),
        Figure("re-signed", str(master.state.resigned), "resigned"),
    ]
    if master.state.last_poll_error:
        page.figures.append(
            Figure("last poll", "failed", "poll", "bad", note=master.state.last_poll_error)
        )
    newest = master.store.latest_root_stored()
    version = newest[0] if newest else None
    rows = []
    for url, (seen, error, checked) in sorted(master.state.mirrors.items()):
        if seen is None:
            fresh = "no answer: " + (error or "?")
        elif version is not None and seen < version:
            fresh = _behind(version - seen)
        else:
            fresh = "current"
        rows.append(
            [url, "—" if seen is None else str(seen), fresh, human_ago(time.time() - checked)]
        )
    page.tables.append(
        Table(
            "Mirrors (the signed list)",
            ["mirror", "root version", "freshness", "checked"],
            rows,
            "mirrors",
            empty="no mirrors listed in the root",
        )
    )
    page.tables.append(
        Table("Subscribers", ["url"], [[u] for u in master.subscriptions.live()], "subscribers")
    )
    return page


def serve_page(store: Store, server: PeerServer, counts: DownloadCounts) -> Page:
    page = Page("p2pkg serve", str(store.path))
    files, held = store.stats()
    page.figures += store_root_figures(store)
    page.figures += [
        Figure("archives", str(files), "held", note=human_bytes(held)),
        Figure("downloads today", str(counts.today()), "downloads-today"),
        Figure("connections", f"{server.stats.active} / {server.max_connections}", "connections"),
        Figure("sent", human_bytes(server.stats.bytes_sent), "bytes-sent"),
    ]
    return page


__all__ = ["cache_page", "install", "master_page", "reply", "seed_page", "serve_page"]
