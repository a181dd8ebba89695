"""``p2pkg master`` (serve, keep signed, push) and ``p2pkg stats`` (downloads over mirrors)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from p2pkg.cli.app import main
from p2pkg.cli.exits import errors_as_exit
from p2pkg.cli.mirror_options import mirror_options, mirror_selection
from p2pkg.cli.options import (
    budget_options,
    check_bindable,
    dht_options,
    dht_service,
    emit,
    json_option,
    listen_option,
    run_forever,
    serve_role,
    server_config,
    signing_keys_option,
    store_option,
    url_list_option,
)
from p2pkg.cli.values import DURATION


@main.command()
@store_option
@signing_keys_option
@listen_option
@click.option(
    "--expires",
    type=DURATION,
    default="7d",
    show_default=True,
    help="Lifetime of each root the master signs.",
)
@click.option(
    "--resign-before",
    type=DURATION,
    default="2d",
    show_default=True,
    help="Re-sign the root (same tree, version + 1) when it expires within this.",
)
@click.option(
    "--every",
    type=DURATION,
    default="60s",
    show_default=True,
    help="With --from-index: poll the upstream index this often.",
)
@mirror_options
@budget_options
@dht_options
def master(
    store: Path,
    key: tuple[Path, ...],
    listen: str,
    expires: int,
    resign_before: int,
    every: int,
    from_index: str | None,
    projects: tuple[str, ...],
    requirements: Path | None,
    all_projects: bool,
    platforms: tuple[str, ...],
    python_versions: tuple[str, ...],
    no_sdists: bool,
    latest: int | None,
    prereleases: bool,
    max_connections: int,
    rate: int | None,
    dht_listen: str | None,
    dht_bootstrap: tuple[str, ...],
) -> None:
    """Run the master: serve the store, keep its root valid, push new roots.

    \b
    Seeds and caches subscribe when they start (no --notify lists): every
    new root — signed here, or published into the store by `p2pkg publish`
    in another process — is pushed to them at once, and to the DHT root
    record. The root is re-signed before it expires; a stopped master lets
    it expire, and clients then refuse it (freeze protection).
      p2pkg master --store /srv/p2pkg/store --key master.key --listen 0.0.0.0:8000
    \b
    With --from-index it mirrors an upstream index every --every (what
    `p2pkg publish --from-index` does, one root per run) and pushes the
    result at once:
      p2pkg master ... --from-index https://pypi.org/simple/ --requirements req.txt
    """
    from p2pkg.io.dht_service import STATE_FILE
    from p2pkg.io.keys import load_private_key
    from p2pkg.roles.master import Master, MasterConfig

    if resign_before >= expires:
        raise click.BadParameter("must be shorter than --expires", param_hint="'--resign-before'")
    host, port = check_bindable("--listen", listen)
    if from_index is None and (projects or requirements or all_projects):
        raise click.UsageError("--project, --requirements and --all need --from-index")
    if from_index is not None and not (projects or requirements or all_projects):
        raise click.UsageError("--from-index needs --project, --requirements or --all")
    filter_values = (platforms, python_versions, no_sdists, latest, prereleases)
    with errors_as_exit():
        keys = [load_private_key(k) for k in key]
        poll = None
        if from_index is not None:
            selection, filters = mirror_selection(
                projects, requirements, all_projects, filter_values
            )
            poll = _mirror_poll(store, keys, from_index, selection, filters, expires)
        role = Master(
            store,
            keys,
            poll=poll,
            config=MasterConfig(expires=expires, resign_before=resign_before, every=every),
            server_config=server_config(max_connections, rate),
            dht=dht_service(dht_listen, dht_bootstrap, store / STATE_FILE),
        )

    async def run() -> None:
        await serve_role(role.run, host, port, lambda url: f"master serving {store} on {url}")

    run_forever(run)


def _mirror_poll(
    store: Path, keys: list[Any], index_url: str, selection: Any, filters: Any, expires: int
) -> Callable[[], Awaitable[object]]:
    """One mirror run per call, in a worker thread with its own store connection.

    (The mirror runs its own event loop for its downloads and publishes in
    one transaction; the master's watcher sees the new root and pushes it.)
    """
    import logging

    import anyio

    from p2pkg.io.store import Store
    from p2pkg.roles.mirror import mirror_index

    log = logging.getLogger("p2pkg.master")

    def once() -> object:
        with Store.open(store) as st:
            result = mirror_index(
                st, keys, index_url, selection, filters=filters, expires_in=expires
            )
        counts = result.counts()
        log.info("mirrored %s: %s", index_url, counts)
        return counts

    async def poll() -> object:
        return await anyio.to_thread.run_sync(once)

    return poll


@main.command()
@store_option
@click.option(
    "--since",
    metavar="YYYY-MM-DD",
    help="First day to count (UTC; default: 31 days ago).",
)
@url_list_option(
    "--peer", "Also ask this node (besides the root's mirror list). Repeatable.", dest="peers"
)
@click.option("--csv", "as_csv", is_flag=True, help="One row per day, source and file.")
@json_option
def stats(
    store: Path, since: str | None, peers: tuple[str, ...], as_csv: bool, as_json: bool
) -> None:
    """Downloads summed over the master and every mirror, per file, project and mirror.

    \b
    Each mirror counts the downloads it served (no client addresses); a
    download split across peers counts once. The sums are what each mirror
    reports: a mirror can inflate its own counts, so one reporting far more
    than the others is flagged as an outlier.
      p2pkg stats --store /srv/p2pkg/store --since 2026-11-01 --csv > downloads.csv
    """
    import csv
    import datetime
    import sys

    import anyio

    from p2pkg.roles.stats import collect_stats

    if since is None:
        day = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=31)
    else:
        try:
            day = datetime.date.fromisoformat(since)
        except ValueError:
            raise click.BadParameter("must be YYYY-MM-DD", param_hint="'--since'") from None
    with errors_as_exit():
        result, errors = anyio.run(lambda: collect_stats(store, list(peers), since=day.isoformat()))
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["day", "source", "project", "filename", "downloads"])
        for (d, source, project, filename), n in sorted(result.rows.items()):
            writer.writerow([d, source, project, filename, n])
        return
    data = {
        "since": day.isoformat(),
        "total": result.total,
        "by_project": dict(result.by_project.most_common()),
        "by_file": dict(result.by_file.most_common()),
        "by_source": dict(result.by_source.most_common()),
        "by_day": dict(sorted(result.by_day.items())),
        "unknown_archives": result.unknown,
        "outliers": result.outliers,
        "unreachable": errors,
    }
    lines = [f"{result.total} downloads since {day.isoformat()}"]
    lines += [f"  {name}: {n}" for name, n in result.by_project.most_common(20)]
    lines.append("by source:")
    for source, n in result.by_source.most_common():
        flag = "  (outlier: far above the others)" if source in result.outliers else ""
        lines.append(f"  {source}: {n}{flag}")
    lines += [f"  {url}: unreachable ({why})" for url, why in errors.items()]
    emit(as_json, data, "\n".join(lines))
