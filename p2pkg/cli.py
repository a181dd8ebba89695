"""The ``p2pkg`` command line (click).

Errors are one line on stderr and an exit code from :data:`EXIT_CODES`;
``--json`` prints one JSON document on stdout for scripts. Defaults can come
from a TOML config file (``--config``, or ``p2pkg/config.toml`` in the user
config dir) whose tables are named after commands; flags override it::

    [publish]
    store = "/srv/p2pkg/store"
    key = ["/etc/p2pkg/master.key"]
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import platformdirs

from p2pkg import __version__
from p2pkg.errors import (
    ArchiveError,
    DecodeError,
    IntegrityError,
    KeyFileError,
    NotFoundError,
    P2pkgError,
    PublishError,
    StoreError,
    TrustError,
)

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes (documented in ``p2pkg --help`` and docs/operators.md).
EXIT_CODES: dict[type[P2pkgError], int] = {
    TrustError: 3,
    IntegrityError: 4,
    DecodeError: 4,
    ArchiveError: 5,
    PublishError: 5,
    KeyFileError: 5,
    StoreError: 6,
    NotFoundError: 7,
}
EXIT_HELP = """\b
Exit codes: 0 ok, 1 verify found problems, 2 usage error, 3 trust failure
(signature, rollback, expiry), 4 corrupt or malformed data, 5 bad input
(archive, key, publish rule), 6 store error, 7 not found."""

log = logging.getLogger("p2pkg")


def exit_code_for(exc: P2pkgError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"p2pkg: error: {message}", err=True)
    sys.exit(code)


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Turn p2pkg errors into one readable line and their exit code."""
    try:
        yield
    except P2pkgError as exc:
        fail(str(exc), exit_code_for(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", 1)


def default_store() -> Path:
    return platformdirs.user_data_path("p2pkg") / "store"


def default_config() -> Path:
    return platformdirs.user_config_path("p2pkg") / "config.toml"


def load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Read the TOML config into click's default_map (flags still override it)."""
    path = Path(value) if value else default_config()
    if not path.is_file():
        if value:
            raise click.BadParameter(f"{path} does not exist")
        return value
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise click.BadParameter(f"{path}: {exc}") from None
    ctx.default_map = {**(ctx.default_map or {}), **data}
    return value


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(f)


def store_option(f: F) -> F:
    return click.option(
        "--store",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_store,
        show_default="user data dir/p2pkg/store",
        help="Store directory.",
    )(f)


def trust_option(f: F) -> F:
    return click.option(
        "--trust",
        "trust",
        multiple=True,
        metavar="PUBKEY",
        help="Pin the master's public key (ed25519:<hex>, as printed by keygen). Repeatable.",
    )(f)


def parse_trust(values: tuple[str, ...]) -> frozenset[bytes] | None:
    from p2pkg.root import parse_pubkey

    return frozenset(parse_pubkey(v) for v in values) if values else None


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``30d`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not m:
        raise click.BadParameter(f"not a duration: {text!r} (e.g. 30d, 12h)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    seconds = int(m.group(1)) * unit
    if seconds <= 0:
        raise click.BadParameter("duration must be positive")
    return seconds


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


@click.group(epilog=EXIT_HELP)
@click.version_option(__version__, prog_name="p2pkg")
@click.option(
    "--config",
    callback=load_config,
    is_eager=True,
    expose_value=False,
    metavar="FILE",
    help="TOML file of defaults, one table per command (default: user config dir).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """p2pkg: peer-to-peer distribution of Python packages under a signed namespace.

    \b
    A master signs a namespace of archives:
      p2pkg keygen --out master.key          # prints the public key to pin
      p2pkg publish --key master.key dist/   # ingest wheels/sdists, sign a new root
      p2pkg show                             # what the namespace holds (verified)
      p2pkg verify                           # re-hash everything in the store
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (created with mode 0600).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@json_option
def keygen(out: Path, force: bool, as_json: bool) -> None:
    """Create an Ed25519 signing key; print the public key to pin with --trust.

    Keep the private key secret: whoever holds it can sign the namespace.
    The printed line (ed25519:<hex>) is what clients, seeds and caches pass
    to --trust.
    """
    from p2pkg.keys import generate_key_file
    from p2pkg.root import format_pubkey

    with errors_as_exit():
        pub = format_pubkey(generate_key_file(out, force=force))
    emit(as_json, {"public_key": pub, "private_key_file": str(out)}, pub)


@main.command()
@store_option
@click.option(
    "--key",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file to sign with (repeat for multi-key namespaces).",
)
@click.option("--namespace", help="Namespace name (first publish only; default 'main').")
@click.option(
    "--expires",
    default="30d",
    show_default=True,
    help="How long the new root stays valid (s/m/h/d/w). Re-sign before then.",
)
@click.option(
    "--rotate-to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Hand the namespace to this new key: the root is signed by old and new keys.",
)
@click.option("--yank", multiple=True, metavar="FILENAME", help="Mark a published file yanked.")
@click.option("--yank-reason", default="", help="Reason shown for --yank.")
@click.option("--unyank", multiple=True, metavar="FILENAME", help="Clear a file's yank.")
@json_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def publish(
    store: Path,
    key: tuple[Path, ...],
    namespace: str | None,
    expires: str,
    rotate_to: Path | None,
    yank: tuple[str, ...],
    yank_reason: str,
    unyank: tuple[str, ...],
    as_json: bool,
    paths: tuple[Path, ...],
) -> None:
    """Publish wheels and sdists (files or directories) and sign a new root.

    Archives are validated (name and version must match their metadata),
    copied into the store, chunked and hashed; the projects they belong to
    and the root are rewritten and signed with version + 1. Publishing a
    file that is already published is a no-op. With no PATHS (and no
    --yank/--rotate-to), the namespace is re-signed with a fresh expiry.
    """
    from p2pkg.keys import load_private_key
    from p2pkg.publish import publish as do_publish
    from p2pkg.store import Store

    seconds = parse_duration(expires)
    with errors_as_exit():
        keys = [load_private_key(k) for k in key]
        new_key = load_private_key(rotate_to) if rotate_to else None
        with Store.open(store, create=True) as st, _progress("publishing") as bar:
            result = do_publish(
                st,
                keys,
                list(paths),
                namespace=namespace,
                expires_in=seconds,
                rotate_to=new_key,
                yank=dict.fromkeys(yank, yank_reason),
                unyank=unyank,
                progress=bar,
            )
    data = {
        "namespace": result.namespace,
        "version": result.version,
        "root_id": result.root_id.hex(),
        "changed": result.changed,
        "added": list(result.added),
        "unchanged": list(result.unchanged),
        "objects_written": result.objects_written,
    }
    if result.changed:
        text = (
            f"root version {result.version} id {result.root_id.hex()} "
            f"({len(result.added)} added, {len(result.unchanged)} unchanged)"
        )
    else:
        text = (
            f"nothing changed: root version {result.version} id {result.root_id.hex()} "
            f"({len(result.unchanged)} already published)"
        )
    emit(as_json, data, text)


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal (created once the total is known), else nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    bars: list[Any] = []

    def advance(done: int, total: int) -> None:
        if not bars:
            bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            bars.append(bar.__enter__())
        bars[0].update(done - bars[0].pos)

    try:
        yield advance
    finally:
        for bar in bars:
            bar.__exit__(None, None, None)


@main.command()
@store_option
@trust_option
@json_option
@click.argument("project", required=False)
def show(store: Path, trust: tuple[str, ...], as_json: bool, project: str | None) -> None:
    """Show the namespace (verified): the root, its projects, or one project's files."""
    from p2pkg.namespace import open_store_namespace
    from p2pkg.store import Store

    with errors_as_exit(), Store.open(store) as st:
        ns = open_store_namespace(st, parse_trust(trust))
        root = ns.trusted.root
        head = {
            "namespace": root.namespace,
            "version": root.version,
            "root_id": ns.trusted.id.hex(),
            "created": root.created,
            "expires": root.expires,
            "keys": [f"ed25519:{k.hex()}" for k in root.keys],
            "threshold": root.threshold,
        }
        if project is None:
            names = [e.name for e in ns.projects()]
            data = {**head, "projects": sorted(names)}
            lines = [
                f"namespace {root.namespace} version {root.version} "
                f"(expires {_fmt_time(root.expires)}), {len(names)} project(s)",
                *sorted(names),
            ]
        else:
            proj = ns.require_project(project)
            manifests = ns.manifests(proj)
            files = [
                {
                    "filename": m.filename,
                    "version": m.version,
                    "size": m.size,
                    "sha256": m.sha256.hex(),
                    "blake3": m.blake3.hex(),
                    "requires_python": m.requires_python or None,
                    "yanked": m.yanked,
                    "upload_time": m.upload_time,
                    "chunks": len(m.chunks),
                    "core_metadata": m.core_metadata is not None,
                }
                for m in manifests
            ]
            data = {**head, "project": proj.name, "files": files}
            lines = [f"{proj.name}: {len(files)} file(s)"]
            for f in files:
                flags = " [yanked]" if f["yanked"] is not None else ""
                lines.append(f"  {f['filename']}  {f['size']} bytes  sha256={f['sha256']}{flags}")
    emit(as_json, data, "\n".join(lines))


def _fmt_time(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


@main.command()
@store_option
@trust_option
@json_option
def verify(store: Path, trust: tuple[str, ...], as_json: bool) -> None:
    """Re-hash every object and archive in the store and check the root chain.

    Exits 1 if anything the store claims is missing or does not match its
    hash; warnings (leftovers of an interrupted write, an expired root) do
    not fail the check.
    """
    from p2pkg.store import Store
    from p2pkg.verify import verify_store

    with errors_as_exit(), Store.open(store) as st, _progress("verifying") as bar:
        report = verify_store(st, parse_trust(trust), progress=bar)
    data = {
        "ok": report.ok,
        "problems": report.problems,
        "warnings": report.warnings,
        "counts": report.counts,
    }
    lines = [f"problem: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    summary = ", ".join(f"{k}={v}" for k, v in sorted(report.counts.items()))
    lines.append(("ok: " if report.ok else "FAILED: ") + summary)
    emit(as_json, data, "\n".join(lines))
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
