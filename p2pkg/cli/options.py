"""Option types, callbacks and shared option groups: a bad value is one usage line (exit 2)."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from p2pkg.cli.config import default_store
from p2pkg.cli.exits import errors_as_exit
from p2pkg.cli.values import (
    SIZE,
)
from p2pkg.errors import (
    KeyFileError,
    PublishError,
    SpecError,
)

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(f)


def _check_listen(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Option callback: ``HOST:PORT`` to bind (port 0 picks a free one)."""
    if value is not None:
        parse_listen(value)
    return value


def _check_bootstrap(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Option callback: each ``HOST:PORT`` is a node to reach (port 1-65535)."""
    for value in values:
        try:
            port = parse_listen(value)[1]
        except click.BadParameter:
            port = 0
        if port == 0:
            raise click.BadParameter(f"expected HOST:PORT with a port of 1-65535, got {value!r}")
    return values


def store_option(f: F) -> F:
    return click.option(
        "--store",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_store,
        envvar="P2PKG_STORE",
        show_default="user data dir/p2pkg/store",
        help="Store directory. Env: P2PKG_STORE.",
    )(f)


def trust_option(f: F) -> F:
    return click.option(
        "--trust",
        "trust",
        multiple=True,
        metavar="PUBKEY",
        callback=check_trust,
        help="Pin the master's public key (ed25519:<hex>, as printed by keygen). Repeatable.",
    )(f)


def parse_trust(values: tuple[str, ...]) -> frozenset[bytes] | None:
    from p2pkg.core.root import parse_pubkey

    return frozenset(parse_pubkey(v) for v in values) if values else None


def check_trust(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Option callback: every ``--trust`` value is a well-formed key (else a usage error)."""
    from p2pkg.core.root import parse_pubkey

    for value in values:
        try:
            parse_pubkey(value)
        except KeyFileError as exc:
            raise click.BadParameter(str(exc)) from None
    return values


def parse_url(text: str) -> str:
    """A peer's base URL, ``http://HOST[:PORT][/PATH]``; raises click.BadParameter.

    Only plain HTTP: peers are not trusted for anything, every byte is
    verified against the signed root (docs/security.md).
    """
    try:
        parts = urlsplit(text)
        port = parts.port  # ValueError when not a number in 0-65535
    except ValueError:
        raise click.BadParameter(f"{text!r} has a bad port (expected 1-65535)") from None
    if parts.scheme == "https":
        raise click.BadParameter(
            f"{text!r}: https is not supported (peers speak plain HTTP; "
            "every byte is verified against the signed root)"
        )
    if parts.scheme != "http" or not parts.hostname:
        raise click.BadParameter(f"{text!r} is not an http URL (http://HOST[:PORT][/PATH])")
    if port == 0 or "@" in parts.netloc or parts.query or parts.fragment:
        raise click.BadParameter(
            f"{text!r} is not a peer base URL (http://HOST[:PORT][/PATH], "
            "no user, query or fragment)"
        )
    return text


def check_urls(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Option callback for ``--peer`` / ``--upstream`` / ``--notify``: each value a peer URL."""
    for value in values:
        parse_url(value)
    return values


def url_list_option(
    name: str, help_text: str, *, dest: str | None = None, required: bool = False
) -> Callable[[F], F]:
    """A repeatable peer-URL option (``--peer``, ``--upstream``, ``--notify``), checked."""

    def apply(f: F) -> F:
        decls = (name, dest) if dest else (name,)
        return click.option(
            *decls,
            multiple=True,
            required=required,
            metavar="URL",
            callback=check_urls,
            help=help_text,
        )(f)

    return apply


def signing_keys_option(f: F) -> F:
    """``--key FILE`` (repeatable, required): the master's private key(s)."""
    return click.option(
        "--key",
        multiple=True,
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Private key file to sign with (repeat for multi-key namespaces).",
    )(f)


def _check_ips(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Option callback: each value an IP address (an interface's, for mDNS)."""
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise click.BadParameter(f"not an IP address: {value!r} (e.g. 192.168.1.10)") from None
    return values


def check_specs(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Argument callback: every SPEC is a requirement p2pkg resolves (else a usage error)."""
    from p2pkg.core.select import parse_spec

    for value in values:
        try:
            parse_spec(value)
        except SpecError as exc:  # packaging adds lines pointing at the error: keep the first
            raise click.BadParameter(str(exc).splitlines()[0]) from None
    return values


def check_upload_time(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Option callback: ``--upload-time`` is a policy name or an ISO 8601 time."""
    from p2pkg.roles.publish import parse_upload_time

    try:
        parse_upload_time(value)
    except PublishError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


# ---------------------------------------------------------------------- network roles


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6); port 0-65535. Raises click.BadParameter."""
    host, sep, port = text.rpartition(":")
    digits = sep and port.isascii() and port.isdigit() and len(port) <= 5
    if not digits or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT with a port of 0-65535, got {text!r}")
    host = host.strip("[]")
    if not host:
        raise click.BadParameter(f"expected HOST:PORT, got {text!r} (no host)")
    return host, int(port)


_BIND_HINTS = {
    errno.EADDRINUSE: "another process holds it; pick another port, or 0 for a free one",
    errno.EADDRNOTAVAIL: "not an address of this machine",
    errno.EACCES: "ports below 1024 need privileges",
}


def check_bindable(option: str, text: str, *, udp: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` that this process can listen on; raises click.BadParameter naming ``option``.

    Resolves the host and binds a socket to every address as the server
    will (TCP: each address, SO_REUSEADDR, v6-only; UDP: the first that
    binds), then closes them, so a host that does not resolve or a port in
    use is one usage line before anything starts, not an error from inside
    a running role. (Another process can still take the port in between:
    :func:`errors_as_exit` turns that bind error into one line too.)
    """
    import socket

    host, port = parse_listen(text)
    hint = f"'{option}'"
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise click.BadParameter(f"cannot resolve {host!r}: {reason}", param_hint=hint) from None
    first: OSError | None = None
    with ExitStack() as sockets:
        for family, type_, proto, _name, addr in dict.fromkeys(infos):
            try:
                sock = sockets.enter_context(socket.socket(family, type_, proto))
            except OSError:
                continue  # an address family this machine lacks: asyncio skips it too
            if not udp:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                first = first or exc
                if not udp:
                    break
            else:
                if udp:
                    return host, port
    if first is not None:
        why = first.strerror or str(first)
        extra = f" ({_BIND_HINTS[first.errno]})" if first.errno in _BIND_HINTS else ""
        raise click.BadParameter(f"cannot listen on {text}: {why}{extra}", param_hint=hint)
    return host, port


def check_interfaces(values: tuple[str, ...]) -> None:
    """Each ``--lan-interface`` is an address of this machine; raises click.BadParameter.

    mDNS binds to it: checked before anything starts, like :func:`check_bindable`.
    """
    import ipaddress
    import socket

    for value in values:
        family = socket.AF_INET6 if ipaddress.ip_address(value).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((value, 0))
            except OSError as exc:
                raise click.BadParameter(
                    f"{value} is not an address of this machine ({exc.strerror or exc})",
                    param_hint="'--lan-interface'",
                ) from None


def listen_option(f: F) -> F:
    return click.option(
        "--listen",
        default="127.0.0.1:8000",
        show_default=True,
        metavar="HOST:PORT",
        callback=_check_listen,
        help="Address to serve on (port 0 picks a free port).",
    )(f)


def budget_options(f: F) -> F:
    f = click.option(
        "--max-connections",
        default=512,
        show_default=True,
        help=(
            "Connections served at once; one client address may hold a quarter "
            "(at least 128), idle ones are freed for newcomers, beyond it 503 "
            "(Retry-After). Lowered to fit the open-files limit."
        ),
    )(f)
    return click.option(
        "--rate",
        type=SIZE,
        metavar="SIZE",
        help="Upload cap per second for the whole server, e.g. 25MB; past it, 503.",
    )(f)


def lan_interface_option(f: F) -> F:
    return click.option(
        "--lan-interface",
        "lan_interfaces",
        multiple=True,
        envvar="P2PKG_LAN_INTERFACE",
        metavar="IP",
        callback=_check_ips,
        help="Use mDNS only on this interface address (repeatable; default: all). "
        "Env: P2PKG_LAN_INTERFACE.",
    )(f)


def dht_options(f: F) -> F:
    f = click.option(
        "--dht-bootstrap",
        "dht_bootstrap",
        multiple=True,
        metavar="HOST:PORT",
        callback=_check_bootstrap,
        help="Join the DHT through this node (repeatable).",
    )(f)
    return click.option(
        "--dht-listen",
        metavar="HOST:PORT",
        callback=_check_listen,
        help="Run a DHT node on this UDP address (default with --dht-bootstrap: 0.0.0.0:0).",
    )(f)


def dht_service(listen: str | None, bootstrap: tuple[str, ...], state: Path | None) -> Any:
    """A DhtService when either DHT option was given, else None."""
    if not listen and not bootstrap:
        return None
    from p2pkg.io.dht_service import DhtService, parse_hostport

    where = check_bindable("--dht-listen", listen, udp=True) if listen else ("0.0.0.0", 0)
    return DhtService(where, [parse_hostport(b) for b in bootstrap], state)


async def serve_role(
    run: Callable[..., Any], host: str, port: int, line: Callable[[str], str]
) -> None:
    """Start a role's ``run`` and say where it serves; it runs until cancelled."""
    import anyio

    async with anyio.create_task_group() as tg:
        url = await tg.start(run, host, port)
        click.echo(line(url), err=True)


def server_config(max_connections: int, rate: int | None) -> Any:
    from p2pkg.io.http.server import ServerConfig

    return ServerConfig(max_connections=max_connections, rate=rate)


def run_forever(coro_fn: Callable[[], Any]) -> None:
    """Run a server coroutine until Ctrl-C / SIGTERM, then exit cleanly."""
    import signal

    import anyio

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await coro_fn()
            tg.cancel_scope.cancel()

    with errors_as_exit():
        anyio.run(main)
