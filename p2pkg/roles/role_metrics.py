"""What each serving role reports on ``/metrics`` and checks on ``/healthz``.

Read from the roles' own counters at scrape time (see
:mod:`p2pkg.io.http.metrics`). Every per-namespace figure carries a
``namespace`` label (``default`` for a node trusting one namespace, the
store's own for ``serve`` and the master). Names and meanings are listed in
docs/operators.md ("Metrics").
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from p2pkg.core.root import decode_signed_root
from p2pkg.core.trust import check_expiry
from p2pkg.errors import P2pkgError
from p2pkg.io.http.metrics import Families
from p2pkg.roles.namespace_choice import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from p2pkg.io.dht_service import DhtService
    from p2pkg.io.store import Store
    from p2pkg.roles.cache import Cache
    from p2pkg.roles.disk import DiskCondition
    from p2pkg.roles.master import Master
    from p2pkg.roles.seed import Seeder
    from p2pkg.roles.session import Session

OWN = DEFAULT_NAMESPACE  # the label of a store served as it is (serve, master)


def root_metrics(
    fam: Families, version: int | None, created: int | None, expires: int | None, ns: str
) -> None:
    now = time.time()
    fam.gauge("root_version", "Version of the signed root held/trusted.", version, namespace=ns)
    fam.gauge(
        "root_age_seconds",
        "Seconds since the root held was signed.",
        None if created is None else now - created,
        namespace=ns,
    )
    fam.gauge(
        "root_expires_in_seconds",
        "Seconds until the root held expires (negative: expired).",
        None if expires is None else expires - now,
        namespace=ns,
    )


def store_root_metrics(fam: Families, store: Store, ns: str) -> None:
    """The root a store holds (its latest): version, age, time to expiry."""
    data = store.latest_root()
    if data is None:
        return
    root = decode_signed_root(data)[1]
    root_metrics(fam, root.version, root.created, root.expires, ns)


def store_metrics(fam: Families, store: Store, ns: str) -> None:
    files, size = store.stats()
    fam.gauge("store_files", "Archives held whole.", files, namespace=ns)
    fam.gauge("store_bytes", "Bytes of archives held.", size, namespace=ns)


def disk_metrics(fam: Families, disk: DiskCondition, ns: str) -> None:
    report = disk.report()
    fam.counter("local_errors", "Local I/O failures (a full disk...).", disk.errors, namespace=ns)
    fam.gauge("disk_free_bytes", "Free bytes on the store's disk.", report["disk_free_bytes"],
              namespace=ns)  # fmt: skip


def session_metrics(fam: Families, session: Session, ns: str, *, with_root: bool = True) -> None:
    """Trust and peers as a session sees them: root, last check, peers by tier, bans, bytes.

    ``with_root=False``: a seed, whose root figures are those of the store it serves.
    """
    trusted = session.trusted
    if trusted is not None and with_root:
        root = trusted.root
        root_metrics(fam, trusted.version, root.created, root.expires, ns)
    state = session.follower.state
    fam.gauge(
        "root_checked_seconds_ago",
        "Seconds since a peer last answered a root check (not the root's own age).",
        None if state.last_success is None else time.time() - state.last_success,
        namespace=ns,
    )
    fam.gauge("root_check_failures", "Root checks failed in a row.", state.failures_in_a_row,
              namespace=ns)  # fmt: skip
    rows = session.book.summary(session.monotonic())
    tiers = Counter(str(r["tier"]) for r in rows)
    received: Counter[str] = Counter()
    for r in rows:
        received[str(r["tier"])] += int(r["received"])  # type: ignore[call-overload]
    for tier in sorted(set(tiers) | {"lan", "mirror", "dht"}):
        fam.gauge("peers", "Known peers by tier.", tiers.get(tier, 0), namespace=ns, tier=tier)
        fam.counter("fetched_bytes", "Bytes fetched from peers, by the peers' tier.",
                    received.get(tier, 0), namespace=ns, tier=tier)  # fmt: skip
    fam.gauge("peers_banned", "Peers banned now (they sent bad bytes).",
              sum(1 for r in rows if r["banned"]), namespace=ns)  # fmt: skip
    fam.gauge("peers_unreachable", "Peers that did not answer the last root check.",
              len(session.follower.unreachable), namespace=ns)  # fmt: skip


def dht_metrics(fam: Families, dht: DhtService | None) -> None:
    if dht is None or dht.node is None:
        return
    protocol = getattr(dht.node, "protocol", None)
    if protocol is not None:
        fam.counter("dht_rpcs_answered", "DHT requests from other nodes answered.",
                    protocol.rpcs_answered)  # fmt: skip
        fam.counter("dht_rpcs_sent", "DHT calls sent.", protocol.rpcs_sent)
        fam.counter("dht_dropped", "DHT datagrams dropped (malformed, unasked).", protocol.dropped)
    records = sum(len(v) for v in dht.node.providers.records.values())
    fam.gauge("dht_provider_records", "Provider records this node keeps for others.", records)
    fam.gauge("dht_announced_keys", "Keys this node announces.", dht.announced)


def health_of_session(session: Session, ns: str) -> list[str]:
    """Problems: no trusted root, an expired one, or no peer answering."""
    problems = []
    trusted = session.trusted
    if trusted is None:
        problems.append(f"namespace {ns}: no trusted root yet")
    else:
        try:
            check_expiry(trusted, time.time())
        except P2pkgError as exc:
            problems.append(f"namespace {ns}: {exc}")
    if not session.peers:
        problems.append(f"namespace {ns}: no peers")
    elif session.follower.unreachable:
        problems.append(f"namespace {ns}: no peer reachable at the last root check")
    return problems


def health_of_store(store: Store) -> list[str]:
    data = store.latest_root()
    if data is None:
        return ["no root yet"]
    root = decode_signed_root(data)[1]
    if root.expires <= time.time():
        return [f"the root (version {root.version}) has expired"]
    return []


# ---------------------------------------------------------------------------- per role


def cache_metrics(cache: Cache, fam: Families) -> None:
    for name, ns in cache.namespaces.items():
        st = ns.stats
        fam.counter("cache_hits", "Archive requests answered from the store.", st.hits,
                    namespace=name)  # fmt: skip
        fam.counter("cache_misses", "Archive requests that needed a download.", st.misses,
                    namespace=name)  # fmt: skip
        fam.counter("served_bytes", "Archive bytes sent to installers, by source.",
                    st.bytes_from_cache, namespace=name, source="store")  # fmt: skip
        fam.counter("served_bytes", "Archive bytes sent to installers, by source.",
                    st.bytes_fetched, namespace=name, source="network")  # fmt: skip
        fam.counter("cache_evictions", "Archives evicted under --max-size.", st.evicted,
                    namespace=name)  # fmt: skip
        fam.counter("cache_failed_downloads", "Downloads no peer could complete.",
                    st.failed_downloads, namespace=name)  # fmt: skip
        fam.gauge("cache_downloads_in_progress", "Live downloads.", len(ns.live), namespace=name)
        store_metrics(fam, ns.store, name)
        session_metrics(fam, ns.session, name)
        disk_metrics(fam, ns.disk, name)
    fam.counter("read_ahead_projects", "Projects resolved ahead of installers.",
                cache.read_ahead.stats.projects)  # fmt: skip
    fam.counter("read_ahead_archives", "Archive downloads started ahead of installers.",
                cache.read_ahead.stats.archives)  # fmt: skip
    dht_metrics(fam, cache.dht)


def cache_health(cache: Cache) -> list[str]:
    return [p for name, ns in cache.namespaces.items() for p in health_of_session(ns.session, name)]


def seed_metrics(seeders: dict[str, Seeder], fam: Families) -> None:
    for name, seeder in seeders.items():
        fresh = seeder.freshness
        fam.gauge("sync_version", "Root version synced and served.", fresh.synced_version,
                  namespace=name)  # fmt: skip
        fam.gauge("sync_upstream_version", "Newest root version seen upstream.",
                  fresh.upstream_version, namespace=name)  # fmt: skip
        lag = None
        if fresh.upstream_version is not None and fresh.synced_version is not None:
            lag = max(0, fresh.upstream_version - fresh.synced_version)
        fam.gauge("sync_lag_versions", "Versions behind upstream.", lag, namespace=name)
        last = seeder.follower.state.last_success
        fam.gauge("sync_checked_seconds_ago", "Seconds since the last successful sync check.",
                  None if last is None else time.time() - last, namespace=name)  # fmt: skip
        fam.counter("sync_fetched_bytes", "Archive bytes fetched by syncing.",
                    fresh.bytes_fetched, namespace=name)  # fmt: skip
        fam.gauge("subscribers", "Nodes subscribed to this one's pushes.",
                  len(seeder.subscriptions.live()), namespace=name)  # fmt: skip
        store_metrics(fam, seeder.store, name)
        store_root_metrics(fam, seeder.store, name)  # what it serves (the synced root)
        session_metrics(fam, seeder.session, name, with_root=False)
        disk_metrics(fam, seeder.disk, name)
        dht_metrics(fam, seeder.dht)


def seed_health(seeders: dict[str, Seeder]) -> list[str]:
    out = []
    for name, seeder in seeders.items():
        out += [f"namespace {name}: {p}" for p in health_of_store(seeder.store)]
        if seeder.follower.unreachable:
            out.append(f"namespace {name}: no upstream reachable at the last check")
    return out


def master_metrics(master: Master, fam: Families) -> None:
    store_metrics(fam, master.store, OWN)
    store_root_metrics(fam, master.store, OWN)
    fam.counter("master_resigned", "Roots re-signed before expiry.", master.state.resigned)
    for url, (seen, _, _) in sorted(master.state.mirrors.items()):
        fam.gauge("mirror_root_version", "Root version each mirror of the signed list serves.",
                  seen, mirror=url)  # fmt: skip
    fam.counter("master_polls", "Upstream index polls (a mirroring master).", master.state.polls)
    fam.gauge("subscribers", "Nodes subscribed to pushes.", len(master.subscriptions.live()),
              namespace=OWN)  # fmt: skip
    dht_metrics(fam, master.dht)


def serve_metrics(store: Store, dht: DhtService | None, fam: Families) -> None:
    store_metrics(fam, store, OWN)
    store_root_metrics(fam, store, OWN)
    dht_metrics(fam, dht)


__all__ = [
    "cache_health",
    "cache_metrics",
    "health_of_store",
    "master_metrics",
    "seed_health",
    "seed_metrics",
    "serve_metrics",
]
