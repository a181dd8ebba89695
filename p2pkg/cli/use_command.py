"""``p2pkg use``: make the user's pip and uv install through a p2pkg cache."""

from __future__ import annotations

from typing import Any

import click

from p2pkg.cli.app import main
from p2pkg.cli.exits import errors_as_exit
from p2pkg.cli.options import (
    check_interfaces,
    emit,
    json_option,
    lan_interface_option,
    parse_trust,
    parse_url,
    trust_option,
)


@main.command()
@click.argument("url", required=False, metavar="[URL]")
@click.option("--lan", is_flag=True, help="Find the cache on the LAN (DNS-SD) instead of a URL.")
@click.option("--pip", "pip_", is_flag=True, help="Configure pip only.")
@click.option("--uv", "uv_", is_flag=True, help="Configure uv only.")
@click.option("--undo", is_flag=True, help="Put the pip and uv configuration back as it was.")
@trust_option
@lan_interface_option
@json_option
def use(
    url: str | None,
    lan: bool,
    pip_: bool,
    uv_: bool,
    undo: bool,
    trust: tuple[str, ...],
    lan_interfaces: tuple[str, ...],
    as_json: bool,
) -> None:
    """Make pip and uv install through a p2pkg cache (your user configuration).

    \b
    p2pkg use http://cache-host:3141 --trust ed25519:...
    p2pkg use --lan --trust ed25519:...      # the cache announced on the LAN
    p2pkg use --undo                         # back to how it was

    The cache must serve a namespace signed by a key you trust: its root is
    fetched and verified before anything is written. Then pip's
    global.index-url (~/.config/pip/pip.conf) and uv's default index
    (~/.config/uv/uv.toml) point at URL/simple/; the files as they were are
    saved first, and --undo restores them exactly. Without --pip or --uv,
    both are configured.
    """
    import anyio

    from p2pkg.roles import use as impl

    tools = [t for t, on in (("pip", pip_), ("uv", uv_)) if on] or ["pip", "uv"]
    backups = impl.Backups(impl.backup_dir())
    if undo:
        if url or lan:
            raise click.UsageError("--undo takes no URL and no --lan")
        with errors_as_exit():
            changes = backups.restore(tools)
        _report(as_json, None, changes, undo=True)
        return
    pins = parse_trust(trust)
    if pins is None:
        raise click.UsageError(
            "--trust PUBKEY is required: the key the cache's namespace is signed by"
        )
    if (url is None) == (not lan):
        raise click.UsageError("give the cache's URL, or --lan to find one")
    if url is not None:
        url = parse_url(url).rstrip("/")
    if lan:
        check_interfaces(lan_interfaces)

    async def find_and_check() -> tuple[str, str]:
        base = url if url is not None else await impl.find_on_lan(pins, lan_interfaces, 2.0)
        return base, await impl.check_cache(base, pins)

    with errors_as_exit():
        base, namespace = anyio.run(find_and_check)
        index_url = f"{base}/simple/"
        changes = impl.apply(index_url, tools, backups)
    _report(as_json, {"url": base, "index_url": index_url, "namespace": namespace}, changes)


def _report(
    as_json: bool, cache: dict[str, str] | None, changes: list[Any], *, undo: bool = False
) -> None:
    rows = [{"tool": c.tool, "path": str(c.path), "change": c.what} for c in changes]
    lines = [f"{c.tool}: {c.path}: {c.what}" for c in changes]
    if undo and not changes:
        lines = ["nothing to undo: p2pkg use has not changed pip or uv here"]
    elif not undo and cache is not None:
        lines.insert(0, f"using {cache['url']} (namespace {cache['namespace']}, verified)")
        lines.append("undo with: p2pkg use --undo")
    emit(as_json, {**(cache or {}), "undo": undo, "changes": rows}, "\n".join(lines))
