"""Commands that talk to peers: serve, seed, cache, fetch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from p2pkg.cli.app import main
from p2pkg.cli.exits import errors_as_exit
from p2pkg.cli.options import (
    budget_options,
    check_bindable,
    check_interfaces,
    check_specs,
    dht_options,
    dht_service,
    emit,
    json_option,
    lan_interface_option,
    listen_option,
    parse_trust,
    run_forever,
    serve_role,
    server_config,
    store_option,
    trust_option,
    url_list_option,
)
from p2pkg.cli.progress import progress_bar
from p2pkg.cli.values import DURATION, SIZE


@main.command()
@store_option
@listen_option
@budget_options
@dht_options
def serve(
    store: Path,
    listen: str,
    max_connections: int,
    rate: int | None,
    dht_listen: str | None,
    dht_bootstrap: tuple[str, ...],
) -> None:
    """Serve a store to peers over HTTP (the master serves its own store this way).

    Serves the signed root, objects, chunks, chunk batches and whole
    archives with Range support (docs/protocol.md §6). Runs until Ctrl-C.
    """
    from p2pkg.io.dht_service import STATE_FILE
    from p2pkg.roles.serve import StoreServer

    host, port = check_bindable("--listen", listen)
    dht = dht_service(dht_listen, dht_bootstrap, store / STATE_FILE)
    role = StoreServer(store, server_config(max_connections, rate), dht=dht)

    async def run() -> None:
        await serve_role(role.run, host, port, lambda url: f"serving {store} on {url}")

    run_forever(run)


@main.command()
@store_option
@listen_option
@budget_options
@trust_option
@url_list_option(
    "--upstream",
    "Peer to follow (the master, other seeds). Repeatable; fetched in parallel.",
    required=True,
)
@click.option(
    "--project", "projects", multiple=True, metavar="NAME", help="Mirror only these projects."
)
@click.option(
    "--interval",
    type=DURATION,
    default="30s",
    show_default=True,
    help="Poll period when nothing is pushed.",
)
@dht_options
def seed(
    store: Path,
    listen: str,
    max_connections: int,
    rate: int | None,
    trust: tuple[str, ...],
    upstream: tuple[str, ...],
    projects: tuple[str, ...],
    interval: int,
    dht_listen: str | None,
    dht_bootstrap: tuple[str, ...],
) -> None:
    """Run a volunteer seeding node: follow the master's namespace and serve it.

    Polls the upstreams for a newer signed root (and takes pushes from
    `p2pkg publish --notify`), fetches only what changed, verifies every
    object and chunk, and serves everything it holds. GET /p2pkg/v1/status
    reports its freshness (synced version, lag). Runs until Ctrl-C.
    """
    from p2pkg.roles.seed import SeedConfig, Seeder

    pins = parse_trust(trust)
    if pins is None:
        raise click.UsageError("--trust PUBKEY is required (the master's key)")
    host, port = check_bindable("--listen", listen)
    config = SeedConfig(interval=float(interval))

    from p2pkg.io.dht_service import STATE_FILE

    dht = dht_service(dht_listen, dht_bootstrap, store / STATE_FILE)

    async def run() -> None:
        seeder = Seeder(
            store,
            pins,
            list(upstream),
            projects=projects,
            config=config,
            server_config=server_config(max_connections, rate),
            dht=dht,
        )
        try:
            await serve_role(seeder.run, host, port, lambda url: f"seed serving {store} on {url}")
        finally:
            await seeder.close()

    run_forever(run)


@main.command()
@store_option
@listen_option
@budget_options
@trust_option
@url_list_option("--peer", "Peer base URL. Repeatable.", dest="peers", required=True)
@click.option(
    "--max-size",
    type=SIZE,
    metavar="SIZE",
    help="Keep at most this much (e.g. 20GB); LRU eviction.",
)
@click.option(
    "--refresh",
    type=DURATION,
    default="60s",
    show_default=True,
    help="How stale the signed root may get.",
)
@click.option(
    "--lan/--no-lan",
    default=True,
    show_default=True,
    help="Announce this cache with DNS-SD (_p2pkg._tcp) and use other caches found there.",
)
@click.option(
    "--read-ahead",
    type=click.IntRange(0, 10_000),
    default=64,
    show_default=True,
    metavar="N",
    help="When a project page is served, fetch up to N projects of its dependency "
    "closure (pages, metadata, the archive an installer here would pick) before "
    "installers ask for them; 0 turns it off.",
)
@lan_interface_option
@dht_options
def cache(
    store: Path,
    listen: str,
    max_connections: int,
    rate: int | None,
    trust: tuple[str, ...],
    peers: tuple[str, ...],
    max_size: int | None,
    refresh: int,
    lan: bool,
    read_ahead: int,
    lan_interfaces: tuple[str, ...],
    dht_listen: str | None,
    dht_bootstrap: tuple[str, ...],
) -> None:
    """Run a LAN cache that pip and uv install from, unchanged.

    \b
    pip install --index-url http://HOST:PORT/simple/ PACKAGE
    uv pip install --index-url http://HOST:PORT/simple/ PACKAGE

    Pages (PEP 503/691/658) are built from the master's signed namespace;
    archives come from the peers, verified chunk by chunk, and are streamed to
    the installer as they arrive. The cache is a peer too, keeps serving what
    it holds when the peers are gone, and shows its status at http://HOST:PORT/.
    """
    from p2pkg.roles.cache import Cache, CacheConfig

    pins = parse_trust(trust)
    if pins is None:
        raise click.UsageError("--trust PUBKEY is required (the master's key)")
    host, port = check_bindable("--listen", listen)
    if lan:
        check_interfaces(lan_interfaces)
    config = CacheConfig(
        refresh_interval=float(refresh),
        max_size=max_size,
        lan=lan,
        lan_interfaces=lan_interfaces or None,
        read_ahead=read_ahead,
    )

    from p2pkg.io.dht_service import STATE_FILE

    dht = dht_service(dht_listen, dht_bootstrap, store / STATE_FILE)

    async def run() -> None:
        c = Cache(
            store,
            pins,
            list(peers),
            config=config,
            server_config=server_config(max_connections, rate),
            dht=dht,
        )  # c.run closes its store when it ends
        await serve_role(c.run, host, port, lambda url: f"cache serving {url}/simple/ on {url}")

    run_forever(run)


@main.command()
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...", callback=check_specs)
@trust_option
@url_list_option("--peer", "Peer base URL. Repeatable.", dest="peers")
@click.option(
    "--dest",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the archives to.",
)
@click.option("--file", "filename", metavar="FILENAME", help="Pick this exact archive (one SPEC).")
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local store to cache roots, objects and archives (enables upgrades from chunks).",
)
@click.option("--jobs", default=8, show_default=True, help="Archives fetched at the same time.")
@click.option(
    "--paranoid",
    is_flag=True,
    help="Also re-hash each whole file (sha256 and BLAKE3) after its chunks were checked.",
)
@click.option(
    "--lan/--no-lan",
    default=None,
    help="Look for caches on the LAN (DNS-SD) and prefer them "
    "[default: only when no --peer is given].",
)
@lan_interface_option
@dht_options
@json_option
def fetch(
    specs: tuple[str, ...],
    trust: tuple[str, ...],
    peers: tuple[str, ...],
    dest: Path,
    filename: str | None,
    store: Path | None,
    jobs: int,
    paranoid: bool,
    lan: bool | None,
    lan_interfaces: tuple[str, ...],
    dht_listen: str | None,
    dht_bootstrap: tuple[str, ...],
    as_json: bool,
) -> None:
    """Fetch archives from peers, verified against the master's key.

    \b
    SPEC is a project name, name==version, or a PEP 440 specifier
    ("requests>=2.30,<3"); several SPECs are fetched concurrently. Without
    --file, the newest allowed version's wheel that best matches this
    interpreter is chosen, else its sdist; yanked files are skipped unless
    pinned with ==.

    Chunks come from all peers in parallel and each is checked against its
    BLAKE3 id (from the signed manifest) as it arrives; a file appears in
    --dest only once every chunk has been. An interrupted fetch resumes.
    """
    from p2pkg.roles.client import Client

    pins = parse_trust(trust)
    if pins is None:
        raise click.UsageError("--trust PUBKEY is required (the master's key)")
    if not peers and lan is False and not dht_bootstrap:
        raise click.UsageError("at least one --peer URL is needed (or --lan, or --dht-bootstrap)")
    if filename is not None and len(specs) != 1:
        raise click.UsageError("--file needs exactly one SPEC")
    # Addresses are checked only where they will be bound: mDNS runs when the
    # LAN is on (the Client's rule), the DHT node only with --dht-bootstrap.
    if lan if lan is not None else (not peers and not dht_bootstrap):
        check_interfaces(lan_interfaces)
    dht_where = ("0.0.0.0", 0)
    if dht_listen and dht_bootstrap:
        dht_where = check_bindable("--dht-listen", dht_listen, udp=True)
    client = Client(
        pins,
        list(peers),
        store=store,
        lan=lan,
        lan_interfaces=lan_interfaces,
        dht_bootstrap=dht_bootstrap,
        dht_listen=dht_where,
        paranoid=paranoid,
    )
    results: list[dict[str, Any]] = []

    async def run() -> None:
        # Discovery order: LAN caches (tier 0), configured peers (1), the DHT (2).
        async with client:  # resolving finds peers first, then the root, then names
            if len(specs) == 1:
                manifest = await client.resolve(specs[0], filename)
                with progress_bar(f"fetching {manifest.filename}") as bar:
                    done = await client.fetch_file(manifest, dest, progress=bar)
                results.append(_fetch_result(done))
                return
            results.extend(
                _fetch_result(r) for r in await client.fetch_many(specs, dest, jobs=jobs)
            )

    import anyio

    with errors_as_exit():
        anyio.run(run)
    lines = [
        f"{r['path']}  ({r['size']} bytes, {r['bytes_from_network']} from the network, "
        f"{r['seconds']}s)"
        for r in results
    ]
    emit(as_json, results[0] if len(specs) == 1 else {"files": results}, "\n".join(lines))


def _fetch_result(done: Any) -> dict[str, Any]:
    manifest, stats = done.manifest, done.stats
    return {
        "path": str(done.path),
        "filename": manifest.filename,
        "version": manifest.version,
        "size": manifest.size,
        "sha256": manifest.sha256.hex(),
        "seconds": round(stats.seconds, 3),
        "bytes_from_network": stats.from_network,
        "bytes_from_local": stats.from_local,
        "peers": {u: s["received"] for u, s in stats.peers.items()},
    }
