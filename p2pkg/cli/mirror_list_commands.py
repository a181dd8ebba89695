"""``p2pkg mirrors``: the signed mirror list in the namespace's root (protocol §4.1).

The master signs the URLs of the mirrors it vouches for into the root;
clients, seeds and caches that verify the root add them as configured-tier
peers, so a user who knows one URL finds every mirror.
"""

from __future__ import annotations

from pathlib import Path

import click

from p2pkg.cli.app import main
from p2pkg.cli.exits import errors_as_exit
from p2pkg.cli.options import (
    F,
    emit,
    json_option,
    parse_trust,
    signing_keys_option,
    store_option,
    trust_option,
    url_list_option,
)
from p2pkg.cli.values import DURATION


def _mirror_urls(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    from p2pkg.core.root import mirror_url_problem

    for url in values:
        problem = mirror_url_problem(url)
        if problem is not None:
            raise click.BadParameter(f"{url!r}: {problem}")
    return values


def _signing_options(f: F) -> F:
    f = click.option(
        "--expires",
        type=DURATION,
        default="30d",
        show_default=True,
        help="How long the new root stays valid.",
    )(f)
    return signing_keys_option(f)


@main.group()
def mirrors() -> None:
    """The mirrors the master vouches for, signed into the root.

    \b
      p2pkg mirrors add http://seed1:8000 http://seed2:8000 --key master.key
      p2pkg mirrors remove http://seed2:8000 --key master.key
      p2pkg mirrors list
    Clients that verify a root use its mirrors as configured peers: one
    --peer URL is enough to find them all.
    """


def _change(
    store: Path,
    key: tuple[Path, ...],
    expires: int,
    edit: str,
    urls: tuple[str, ...],
    as_json: bool,
) -> None:
    from p2pkg.errors import NotFoundError, PublishError
    from p2pkg.io.keys import load_private_key
    from p2pkg.io.store import Store
    from p2pkg.roles.namespace import open_store_namespace
    from p2pkg.roles.publish import Edits, publish

    with errors_as_exit():
        keys = [load_private_key(k) for k in key]
        with Store.open(store) as st:
            try:
                current = list(open_store_namespace(st).trusted.root.mirrors)
            except NotFoundError:
                raise PublishError("publish something first: the store holds no root") from None
            wanted = [u.rstrip("/") for u in urls]
            if edit == "add":
                new = current + [u for u in wanted if u not in current]
            else:
                missing = [u for u in wanted if u not in current]
                if missing:
                    raise PublishError(f"not in the mirror list: {', '.join(missing)}")
                new = [u for u in current if u not in wanted]
            result = publish(st, keys, [], expires_in=expires, edits=Edits(mirrors=new))
    data = {"mirrors": new, "version": result.version, "changed": result.changed}
    text = f"root version {result.version}: {len(new)} mirror(s)" + "".join(f"\n  {u}" for u in new)
    emit(as_json, data, text if result.changed else "mirror list unchanged")


@mirrors.command("add")
@store_option
@_signing_options
@json_option
@click.argument("urls", nargs=-1, required=True, callback=_mirror_urls)
def add(
    store: Path, key: tuple[Path, ...], expires: int, as_json: bool, urls: tuple[str, ...]
) -> None:
    """Add mirror URLs to the signed list (a new root)."""
    _change(store, key, expires, "add", urls, as_json)


@mirrors.command("remove")
@store_option
@_signing_options
@json_option
@click.argument("urls", nargs=-1, required=True, callback=_mirror_urls)
def remove(
    store: Path, key: tuple[Path, ...], expires: int, as_json: bool, urls: tuple[str, ...]
) -> None:
    """Remove mirror URLs from the signed list (a new root)."""
    _change(store, key, expires, "remove", urls, as_json)


@mirrors.command("list")
@store_option
@trust_option
@json_option
def list_(store: Path, trust: tuple[str, ...], as_json: bool) -> None:
    """The mirrors the store's latest verified root lists."""
    from p2pkg.io.store import Store
    from p2pkg.roles.namespace import open_store_namespace

    with errors_as_exit(), Store.open(store) as st:
        root = open_store_namespace(st, parse_trust(trust)).trusted.root
    urls = list(root.mirrors)
    emit(as_json, {"mirrors": urls, "version": root.version}, "\n".join(urls) or "(no mirrors)")


@mirrors.command("status")
@trust_option
@url_list_option(
    "--peer",
    "A peer to start from (repeatable); the root's mirror list is added.",
    dest="peers",
    required=True,
)
@click.option(
    "--project", "projects", multiple=True, metavar="NAME", help="Compare these projects."
)
@json_option
def status(
    trust: tuple[str, ...], peers: tuple[str, ...], projects: tuple[str, ...], as_json: bool
) -> None:
    """How fresh each mirror is: root lag, and per project fresh/behind/missing.

    \b
      p2pkg mirrors status --trust KEY --peer http://seed1:8000 --project requests
    Each mirror is asked for its root and, per project, resolves it through
    its own tree: "fresh" (the current project object), "behind" (another
    version of it), "missing" (it cannot serve it), "absent" (not in the
    namespace).
    """
    import anyio

    from p2pkg.roles.freshness import mirror_freshness

    pinned = parse_trust(trust)
    if pinned is None:
        raise click.UsageError("--trust is required", ctx=click.get_current_context())
    with errors_as_exit():
        newest, report = anyio.run(mirror_freshness, pinned, list(peers), projects)
    data = {
        "root_version": newest.version,
        "mirrors": [
            {
                "url": m.url,
                "root_version": m.version,
                "versions_behind": m.versions_behind,
                "lag_seconds": m.lag_seconds,
                "error": m.error,
                "projects": m.projects,
            }
            for m in report
        ],
    }
    lines = [f"newest root: version {newest.version}"]
    for m in report:
        if m.error is not None:
            lines.append(f"{m.url}: unreachable ({m.error})")
            continue
        head = f"{m.url}: root v{m.version}"
        if m.versions_behind:
            head += f", {m.versions_behind} behind ({m.lag_seconds} s older)"
        lines.append(head + "".join(f"\n  {n}: {s}" for n, s in m.projects.items()))
    emit(as_json, data, "\n".join(lines))
