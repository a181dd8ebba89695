"""``p2pkg master``: serve the namespace, keep it signed, push every new root."""

from __future__ import annotations

from pathlib import Path

import click

from p2pkg.cli.app import main
from p2pkg.cli.exits import errors_as_exit
from p2pkg.cli.options import (
    budget_options,
    check_bindable,
    dht_options,
    dht_service,
    listen_option,
    run_forever,
    serve_role,
    server_config,
    store_option,
)
from p2pkg.cli.values import DURATION


@main.command()
@store_option
@click.option(
    "--key",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file to sign with (repeat for multi-key namespaces).",
)
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
@budget_options
@dht_options
def master(
    store: Path,
    key: tuple[Path, ...],
    listen: str,
    expires: int,
    resign_before: int,
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
    """
    from p2pkg.io.dht_service import STATE_FILE
    from p2pkg.io.keys import load_private_key
    from p2pkg.roles.master import Master, MasterConfig

    if resign_before >= expires:
        raise click.BadParameter("must be shorter than --expires", param_hint="'--resign-before'")
    host, port = check_bindable("--listen", listen)
    with errors_as_exit():
        keys = [load_private_key(k) for k in key]
        role = Master(
            store,
            keys,
            config=MasterConfig(expires=expires, resign_before=resign_before),
            server_config=server_config(max_connections, rate),
            dht=dht_service(dht_listen, dht_bootstrap, store / STATE_FILE),
        )

    async def run() -> None:
        await serve_role(role.run, host, port, lambda url: f"master serving {store} on {url}")

    run_forever(run)
