"""Commands that talk to peers: serve, seed, cache, fetch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from p2pkg.cli.app import main
from p2pkg.cli.exits import errors_as_exit
from p2pkg.cli.namespace_options import namespace_options, namespace_specs, search_policy
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

#: What one --trust/--peer namespace is called (as in roles.namespace_choice).
DEFAULT_NAMESPACE = "default"


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
)
@namespace_options(policy=False)
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
    namespaces: tuple[str, ...],
    namespace_peers: tuple[str, ...],
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

    Several namespaces from one process and port: --namespace NAME=PUBKEY
    and --namespace-peer NAME=URL (its upstreams) for each; namespace NAME
    is served at http://HOST:PORT/ns/NAME (the first one at the top level
    too) from the store STORE/NAME.
    """
    from p2pkg.roles.seed import SeedConfig, Seeder

    specs = namespace_specs(trust, upstream, namespaces, namespace_peers)
    pins = parse_trust(trust)
    if specs is None and pins is None:
        raise click.UsageError(
            "--trust PUBKEY is required (the master's key), or --namespace NAME=PUBKEY"
        )
    if specs is None and not upstream:
        raise click.UsageError("at least one --upstream URL is needed")
    host, port = check_bindable("--listen", listen)
    config = SeedConfig(interval=float(interval))

    from p2pkg.io.dht_service import STATE_FILE

    dht = dht_service(dht_listen, dht_bootstrap, store / STATE_FILE)

    async def run() -> None:
        if specs is not None:
            from p2pkg.roles.seed_group import SeedGroup

            group = SeedGroup(
                store,
                specs,
                projects=projects,
                config=config,
                server_config=server_config(max_connections, rate),
                dht=dht,
            )
            try:
                await serve_role(
                    group.run,
                    host,
                    port,
                    lambda url: f"seed serving {', '.join(n.name for n in specs)} on {url}",
                )
            finally:
                await group.close()
            return
        seeder = Seeder(
            store,
            pins or frozenset(),
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
@url_list_option("--peer", "Peer base URL. Repeatable.", dest="peers")
@namespace_options()
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
    namespaces: tuple[str, ...],
    namespace_peers: tuple[str, ...],
    order: str | None,
    pins: tuple[str, ...],
    claims: tuple[str, ...],
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

    Several namespaces (a site's private packages beside the public index):
    --namespace NAME=PUBKEY and --namespace-peer NAME=URL for each, then
    --order, --claim and --pin decide which one serves a project — always
    whole, never a mix, so a public upload cannot shadow a private name
    (dependency confusion). /simple/ is the merged index, /ns/NAME/simple/
    one namespace alone; each store is STORE/NAME.
    """
    from p2pkg.roles.cache import Cache, CacheConfig

    specs = namespace_specs(trust, peers, namespaces, namespace_peers)
    policy = None
    keys: frozenset[bytes] | None = frozenset()
    if specs is None:
        if order or pins or claims:
            raise click.UsageError("--order, --pin and --claim need --namespace NAME=PUBKEY")
        keys = parse_trust(trust)
        if keys is None:
            raise click.UsageError(
                "--trust PUBKEY is required (the master's key), or --namespace NAME=PUBKEY"
            )
        if not peers:
            raise click.UsageError("at least one --peer URL is needed")
    else:
        with errors_as_exit():
            policy = search_policy(specs, order, pins, claims)
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
            keys or frozenset(),
            list(peers),
            namespaces=specs or (),
            policy=policy,
            config=config,
            server_config=server_config(max_connections, rate),
            dht=dht,
        )  # c.run closes its stores when it ends
        await serve_role(c.run, host, port, lambda url: f"cache serving {url}/simple/ on {url}")

    run_forever(run)


@main.command()
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...", callback=check_specs)
@trust_option
@url_list_option("--peer", "Peer base URL. Repeatable.", dest="peers")
@namespace_options()
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
    namespaces: tuple[str, ...],
    namespace_peers: tuple[str, ...],
    order: str | None,
    pins: tuple[str, ...],
    claims: tuple[str, ...],
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

    With several namespaces (--namespace NAME=PUBKEY, --namespace-peer
    NAME=URL, --order, --claim, --pin) each SPEC resolves in the one
    namespace that serves its project, by the rules a cache's index uses.
    """
    ns_specs = namespace_specs(trust, peers, namespaces, namespace_peers)
    if ns_specs is not None:
        if lan or dht_bootstrap:
            raise click.UsageError("--lan and --dht-bootstrap serve one namespace (--trust)")
        if filename is not None and len(specs) != 1:
            raise click.UsageError("--file needs exactly one SPEC")
        with errors_as_exit():
            policy = search_policy(ns_specs, order, pins, claims)
        _fetch_namespaces(ns_specs, policy, specs, dest, filename, store, jobs, paranoid, as_json)
        return
    if order or pins or claims:
        raise click.UsageError("--order, --pin and --claim need --namespace NAME=PUBKEY")
    from p2pkg.roles.client import Client

    keys = parse_trust(trust)
    if keys is None:
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
        keys,
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
                results.append(_fetch_result(done, DEFAULT_NAMESPACE))
                return
            results.extend(
                _fetch_result(r, DEFAULT_NAMESPACE)
                for r in await client.fetch_many(specs, dest, jobs=jobs)
            )

    import anyio

    with errors_as_exit():
        anyio.run(run)
    _emit_fetched(as_json, results, several=len(specs) > 1)


def _fetch_namespaces(
    ns_specs: list[Any],
    policy: Any,
    specs: tuple[str, ...],
    dest: Path,
    filename: str | None,
    store: Path | None,
    jobs: int,
    paranoid: bool,
    as_json: bool,
) -> None:
    """``p2pkg fetch --namespace ...``: each spec from the namespace that serves it."""
    import anyio

    from p2pkg.roles.multi_client import MultiClient

    client = MultiClient(ns_specs, policy, store=store, paranoid=paranoid)
    results: list[dict[str, Any]] = []

    async def run() -> None:
        async with client:
            if len(specs) == 1:
                ns, manifest = await client.resolve(specs[0], filename)
                with progress_bar(f"fetching {manifest.filename} ({ns})") as bar:
                    done = await client.fetch_file(ns, manifest, dest, progress=bar)
                results.append(_fetch_result(done, ns))
                return
            fetched = await client.fetch_many(specs, dest, jobs=jobs)
            results.extend(_fetch_result(r, ns) for ns, r in fetched)

    with errors_as_exit():
        anyio.run(run)
    _emit_fetched(as_json, results, several=len(specs) > 1)


def _emit_fetched(as_json: bool, results: list[dict[str, Any]], *, several: bool) -> None:
    lines = [
        f"{r['path']}  ({r['size']} bytes"
        + (f" from {r['namespace']}" if r["namespace"] != DEFAULT_NAMESPACE else "")
        + f", {r['bytes_from_network']} from the network, {r['seconds']}s)"
        for r in results
    ]
    emit(as_json, {"files": results} if several else results[0], "\n".join(lines))


def _fetch_result(done: Any, namespace: str) -> dict[str, Any]:
    manifest, stats = done.manifest, done.stats
    return {
        "namespace": namespace,
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
