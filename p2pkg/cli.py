"""The ``p2pkg`` command line (click).

Errors are one line on stderr and an exit code from :data:`EXIT_CODES`; a
usage error (a malformed URL, HOST:PORT, key, size, duration or SPEC, an
address that cannot be listened on, a bad config value) is one line naming
the option and exit code 2, checked before anything starts. ``--json``
prints one JSON document on stdout for scripts.

Defaults can come from a TOML config file (``--config``, or
``p2pkg/config.toml`` in the user config dir) whose tables are named after
commands; flags override it. Keys are spelled like the flags, and every
value is checked as the flag's would be when the file is read (a wrong type
is one usage line naming the file, table and key)::

    [publish]
    store = "/srv/p2pkg/store"
    key = ["/etc/p2pkg/master.key"]
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

from p2pkg import __version__
from p2pkg.errors import (
    LOCAL_ERRNOS,
    ArchiveError,
    DecodeError,
    FetchError,
    IntegrityError,
    KeyFileError,
    LocalError,
    NotFoundError,
    P2pkgError,
    PeerError,
    PublishError,
    SpecError,
    StoreError,
    TrustError,
    local_error,
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
    FetchError: 8,
    PeerError: 8,
    LocalError: 9,
    SpecError: 2,  # a requirement that does not parse (e.g. in a file): usage
}
EXIT_HELP = """\b
Exit codes: 0 ok, 1 verify found problems, 2 usage error (an option, SPEC or
config value), 3 trust failure (signature, rollback, expiry), 4 corrupt or
malformed data, 5 bad input (archive, key, publish rule), 6 store error, 7 not
found, 8 network (no peer could deliver), 9 local failure (disk full,
permission, I/O error)."""

log = logging.getLogger("p2pkg")


def exit_code_for(exc: P2pkgError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def fail(message: str, code: int) -> NoReturn:
    """Print ``p2pkg: error: <message>`` (its first line: errors are one line) and exit."""
    first = next((line for line in message.splitlines() if line.strip()), message)
    click.echo(f"p2pkg: error: {first.rstrip()}", err=True)
    sys.exit(code)


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Turn p2pkg errors into one readable line and their exit code.

    A task group's exception group is unwrapped first: its first p2pkg
    error, or its only exception, is what the user is told about.
    """
    try:
        try:
            yield
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
    except P2pkgError as exc:
        fail(str(exc), exit_code_for(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OSError as exc:
        # Local calls map their own errors (p2pkg.errors.local_io); one that
        # slipped through still means this machine, not bad input.
        if exc.errno in LOCAL_ERRNOS:
            fail(str(local_error(exc, None, "using")), EXIT_CODES[LocalError])
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            # A listen address check_bindable passed, taken in between: still
            # the address the user chose, so a usage error.
            fail(f"cannot listen: {exc.strerror or exc}", 2)
        where = f" {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", 1)


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    from p2pkg.roles.client import first_p2pkg_error

    found = first_p2pkg_error(group)
    if found is not group:
        return found
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


class OneLineUsageGroup(click.Group):
    """A group whose usage errors are one line on stderr (exit 2), like p2pkg's other errors.

    click prints a usage error as a Usage line, a "Try --help" line and the
    error; p2pkg prints only ``Error: ...``. ``--help`` (and ``p2pkg`` alone,
    which shows the help) are unchanged.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


class UsageLine(click.ClickException):
    """A usage error shown as one line: ``Error: <message>`` and exit code 2."""

    exit_code = 2


def _one_line(exc: click.UsageError) -> click.ClickException:
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc  # its "message" is the help text
    return UsageLine(" ".join(exc.format_message().split()))


def default_store() -> Path:
    import platformdirs  # lazy: start-up time counts for every small fetch

    return platformdirs.user_data_path("p2pkg") / "store"


def default_config() -> Path:
    import platformdirs

    return platformdirs.user_config_path("p2pkg") / "config.toml"


#: The most of a config file read: far more than any real config, and a bound
#: on what ``--config /dev/zero`` (or a wrong path) would make us read.
MAX_CONFIG_BYTES = 1 << 20


def load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Read the TOML config into click's default_map (flags still override it).

    Every key is checked against the option it names, at once and for every
    table: a wrong type or value is one usage error naming the file, the
    table and the key (not a failure later, or a value silently ignored).
    """
    path = Path(value) if value else default_config()
    raw = _read_config(path, explicit=bool(value))
    if raw is None:
        return value
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path}: {exc}") from None
    if not isinstance(ctx.command, click.Group):  # pragma: no cover - the option is main's
        raise TypeError("--config belongs to a command group")
    defaults = config_defaults(ctx, ctx.command, data, path)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _read_config(path: Path, *, explicit: bool) -> bytes | None:
    """The config file's bytes, or None when the default file is absent.

    Raises click.BadParameter (one line naming the file) when the file is a
    directory, unreadable or too large; an explicit ``--config`` must exist.
    """
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if explicit:
            raise click.BadParameter(f"{path} does not exist") from None
        return None
    except NotADirectoryError:
        if explicit:
            raise click.BadParameter(f"{path} does not exist (a parent is a file)") from None
        return None  # e.g. HOME=/dev/null: there is no config dir, so no config
    except IsADirectoryError:
        raise click.BadParameter(f"{path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror or exc} (fix it or pass --config FILE)"
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise click.BadParameter(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    return raw


def config_defaults(
    ctx: click.Context, group: click.Group, data: dict[str, Any], path: Path
) -> dict[str, Any]:
    """A parsed config as click's default_map, every key checked; raises click.BadParameter.

    Tables are named after commands (``[fetch]``); top-level keys are the
    group's own options (``verbose``). Keys are spelled like the flags
    (``max-size``, ``peer``) or like click's parameter names (``max_size``,
    ``peers``). A value is checked as the flag would be: its TOML type
    against the option's type, then the option's own validation; an array
    stands for a repeatable option, and a single value for an array of one.
    """
    out: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for key, value in data.items():
        command = group.commands.get(key)
        if command is None:
            if isinstance(value, dict):
                known = ", ".join(sorted(group.commands))
                raise click.BadParameter(f"{path}: [{key}] is not a command (one of {known})")
            top[key] = value
        elif not isinstance(value, dict):
            raise click.BadParameter(f"{path}: {key} must be a table ([{key}]), not a value")
        else:
            sub = click.Context(command, info_name=key, parent=ctx)
            out[key] = _table_defaults(sub, command, value, f"{path}: [{key}]")
    out.update(_table_defaults(ctx, group, top, f"{path}:"))
    return out


def _table_defaults(
    ctx: click.Context, command: click.Command, table: dict[str, Any], where: str
) -> dict[str, Any]:
    names = _config_names(command)
    out: dict[str, Any] = {}
    for key, toml_value in table.items():
        param = names.get(key)
        if param is None or param.name is None:
            flags = {o[2:] for p in set(names.values()) for o in p.opts if o.startswith("--")}
            known = ", ".join(sorted(flags)) or "none"
            raise click.BadParameter(f"{where} {key}: no such option (options: {known})")
        if param.name in out:
            raise click.BadParameter(f"{where} {key}: set twice (under two spellings)")
        try:
            value = _from_toml(param, toml_value)
            # What click will do with the default when the command runs, done
            # now so that the error names the file and the key.
            converted = param.type_cast_value(ctx, value)
            if param.callback is not None:
                param.callback(ctx, param, converted)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{where} {key}: {exc.message}") from None
        out[param.name] = value
    return out


def _config_names(command: click.Command) -> dict[str, click.Parameter]:
    """Config keys a command takes: its long flags (``max-size``, ``max_size``) and param names."""
    names: dict[str, click.Parameter] = {}
    for param in command.params:
        if not param.expose_value or param.name is None:
            continue  # --config, --version, --help: not settings
        names[param.name] = param
        for opt in param.opts:
            if opt.startswith("--"):
                names[opt[2:]] = names[opt[2:].replace("-", "_")] = param
    return names


_TOML_TYPES: list[tuple[type, str]] = [
    (bool, "a boolean"),  # before int: a bool is an int in Python
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
]


def _toml_kind(value: Any) -> str:
    return next((name for cls, name in _TOML_TYPES if isinstance(value, cls)), "a date or time")


def _from_toml(param: click.Parameter, value: Any) -> Any:
    """A TOML value as the value click expects for ``param``; raises click.BadParameter.

    Only the TOML type is checked here (the option's type and callback check
    the value): booleans for flags, integers for counts, strings for the
    rest; a size or duration may be a number (bytes, seconds), and a TOML
    date-time stands for its ISO 8601 text.
    """
    if param.multiple or param.nargs != 1:  # repeatable: an array, or one value
        items = value if isinstance(value, list) else [value]
        return [_scalar_from_toml(param, item, many=True) for item in items]
    return _scalar_from_toml(param, value, many=False)


def _scalar_from_toml(param: click.Parameter, value: Any, *, many: bool) -> Any:
    kind = param.type
    if isinstance(kind, click.types.BoolParamType):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(kind, click.types.IntParamType):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(kind, click.types.FloatParamType):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    elif isinstance(kind, SizeType | DurationType):
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # rate = 25000000, interval = 30: bytes, seconds
        ok, expected = isinstance(value, str), _expected_text(kind)
    else:  # strings, paths, choices
        if isinstance(value, datetime.date | datetime.time):
            value = value.isoformat()  # upload-time = 2024-05-01T12:00:00Z (a TOML date-time)
        ok, expected = isinstance(value, str), "a string"
    if not ok:
        if many:
            expected += " (or an array of them)"
        raise click.BadParameter(f"expected {expected}, got {_toml_kind(value)} ({value!r})")
    return value


def _expected_text(kind: SizeType | DurationType) -> str:
    if isinstance(kind, SizeType):
        return 'a size (a string such as "25MB", or a number of bytes)'
    return 'a duration (a string such as "30d", or a number of seconds)'


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
        show_default="user data dir/p2pkg/store",
        help="Store directory.",
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


#: Bounds on sizes and durations given as options: far beyond any real use,
#: and small enough that what is computed from them stays in range (a root's
#: expiry is a uvarint and is shown as a calendar date).
MAX_SIZE = 1 << 60  # 1 EiB
MAX_DURATION = 100 * 365 * 86400  # 100 years


def parse_size(text: str) -> int:
    """``25MB``, ``1.5GiB``, ``100k`` or plain bytes (at most :data:`MAX_SIZE`).

    Raises click.BadParameter.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m or len(m.group(1)) > 40:
        raise click.BadParameter(f"not a size: {text!r} (e.g. 25MB, 1GiB)")
    base = 1024 if m.group(3).startswith("i") else 1000
    power = " kmgt".index(m.group(2) or " ")
    # Decimal, not float: exact for "1.1GB", and no overflow on 400 digits.
    size = int(Decimal(m.group(1)) * base**power)
    if size > MAX_SIZE:
        raise click.BadParameter(f"size too large: {text!r} (at most {MAX_SIZE} bytes)")
    return size


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` or plain seconds (positive, at most 100 years).

    Raises click.BadParameter.
    """
    m = re.fullmatch(r"\s*(\d{1,20})\s*([smhdw]?)\s*", text)
    if not m:
        raise click.BadParameter(f"not a duration: {text!r} (e.g. 30d, 12h, 90s)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    seconds = int(m.group(1)) * unit
    if seconds <= 0:
        raise click.BadParameter(f"duration must be positive, got {text!r}")
    if seconds > MAX_DURATION:
        raise click.BadParameter(f"duration too long: {text!r} (at most 100 years)")
    return seconds


class SizeType(click.ParamType[int]):
    """An option's size (:func:`parse_size`) as a positive number of bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            size = parse_size(str(value))  # str(): a number from the config file
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)
        if size < 1:
            self.fail(f"size must be at least 1 byte, got {value!r}", param, ctx)
        return size


class DurationType(click.ParamType[int]):
    """An option's duration (:func:`parse_duration`) in seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_duration(str(value))  # str(): a number from the config file
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


SIZE = SizeType()
DURATION = DurationType()


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


def _check_specs(
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


def _check_upload_time(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Option callback: ``--upload-time`` is a policy name or an ISO 8601 time."""
    from p2pkg.roles.publish import parse_upload_time

    try:
        parse_upload_time(value)
    except PublishError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


@click.group(cls=OneLineUsageGroup, epilog=EXIT_HELP)
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
      p2pkg keygen --out master.key          # prints the public key (KEY) to pin
      p2pkg publish --key master.key dist/   # ingest wheels/sdists, sign a new root
      p2pkg show                             # what the namespace holds (verified)
      p2pkg verify                           # re-hash everything in the store
      p2pkg serve --listen 0.0.0.0:8000      # serve it to peers
    \b
    Volunteers mirror it, sites cache it, anyone fetches it (all verified):
      p2pkg seed --trust KEY --upstream http://master:8000
      p2pkg cache --trust KEY --peer http://seed:8000
          pip install --index-url http://cache-host:8000/simple/ requests
      p2pkg fetch requests --trust KEY --peer http://seed:8000 --dest wheels/
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
    from p2pkg.core.root import format_pubkey
    from p2pkg.io.keys import generate_key_file

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
    type=DURATION,
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
@click.option(
    "--notify",
    multiple=True,
    metavar="URL",
    callback=check_urls,
    help="Push the new root to this seed. Repeatable.",
)
@click.option(
    "--upload-time",
    default="mtime",
    show_default=True,
    metavar="mtime|now|archive|ISO-8601",
    callback=_check_upload_time,
    help="Upload time given to new files (PEP 691; uv --exclude-newer and lockfiles "
    "go by it): mtime = each file's modification time, now = the publish time, "
    "archive = the build time recorded inside the archive, or one fixed ISO 8601 "
    "time, e.g. --upload-time 2024-05-01T12:00:00Z (a date alone is midnight UTC). "
    "Files already published keep theirs.",
)
@json_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def publish(
    store: Path,
    key: tuple[Path, ...],
    namespace: str | None,
    expires: int,
    rotate_to: Path | None,
    yank: tuple[str, ...],
    yank_reason: str,
    unyank: tuple[str, ...],
    notify: tuple[str, ...],
    upload_time: str,
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
    from p2pkg.io.keys import load_private_key
    from p2pkg.io.store import Store
    from p2pkg.roles.publish import parse_upload_time
    from p2pkg.roles.publish import publish as do_publish

    when = parse_upload_time(upload_time)  # checked by _check_upload_time
    with errors_as_exit():
        keys = [load_private_key(k) for k in key]
        new_key = load_private_key(rotate_to) if rotate_to else None
        with Store.open(store, create=True) as st, _progress("publishing") as bar:
            result = do_publish(
                st,
                keys,
                list(paths),
                namespace=namespace,
                expires_in=expires,
                rotate_to=new_key,
                yank=dict.fromkeys(yank, yank_reason),
                unyank=unyank,
                progress=bar,
                upload_time=when,
            )
    pushed: dict[str, str] = {}
    if notify and result.changed:
        pushed = _push_root(store, notify)
    data = {
        "notified": pushed,
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


def _push_root(store: Path, urls: tuple[str, ...]) -> dict[str, str]:
    import anyio

    from p2pkg.io.store import Store
    from p2pkg.roles.seed import notify

    with Store.open(store) as st:
        latest = st.latest_root_stored()
    assert latest is not None
    out = anyio.run(notify, list(urls), latest[2])
    for url, outcome in out.items():
        if outcome != "ok":
            click.echo(f"p2pkg: warning: could not notify {url}: {outcome}", err=True)
    return out


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
    from p2pkg.io.store import Store
    from p2pkg.roles.namespace import open_store_namespace

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
            # A cache or a --project seed holds only some tree paths: list what it holds.
            held = ns.holding()
            names = sorted(held.projects)
            data = {**head, "projects": names, "partial": held.partial}
            summary = f"{len(names)} project(s)"
            if held.partial:
                data["subtrees_missing"] = held.subtrees_missing
                summary = (
                    f"partial store: metadata for {len(names)} project(s) "
                    f"({held.subtrees_missing} subtree(s) not held)"
                )
            lines = [
                f"namespace {root.namespace} version {root.version} "
                f"(expires {_fmt_time(root.expires)}), {summary}",
                *names,
            ]
        else:
            proj = ns.require_project(project)
            partial = ns.may_be_partial and ns.holding().partial
            files = [_show_file(st, m, f.filename, partial) for f, m in ns.held_manifests(proj)]
            data = {**head, "project": proj.name, "files": files, "partial": partial}
            title = f"{proj.name}: {len(files)} file(s)"
            lines = [title + (" (partial store: [held] = archive held here)" if partial else "")]
            for f in files:
                if "size" not in f:
                    lines.append(f"  {f['filename']}  (metadata not held)")
                    continue
                flags = " [yanked]" if f["yanked"] is not None else ""
                flags += " [held]" if f.get("held") else ""
                lines.append(f"  {f['filename']}  {f['size']} bytes  sha256={f['sha256']}{flags}")
    emit(as_json, data, "\n".join(lines))


def _show_file(st: Any, m: Any, filename: str, partial: bool) -> dict[str, Any]:
    """One file of ``show PROJECT``; on a partial store, whether its archive is held."""
    if m is None:  # a partial store holds the project but not this manifest
        return {"filename": filename, "held": False, "metadata_held": False}
    out = {
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
    if partial:
        out["held"] = st.has_file(m.blake3)
    return out


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
    from p2pkg.io.store import Store
    from p2pkg.roles.verify import verify_store

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
        help="Connections beyond this are answered 503 (Retry-After).",
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


def _dht_service(listen: str | None, bootstrap: tuple[str, ...], state: Path | None) -> Any:
    """A DhtService when either DHT option was given, else None."""
    if not listen and not bootstrap:
        return None
    from p2pkg.io.dht_service import DhtService, parse_hostport

    where = check_bindable("--dht-listen", listen, udp=True) if listen else ("0.0.0.0", 0)
    return DhtService(where, [parse_hostport(b) for b in bootstrap], state)


async def _serve(run: Callable[..., Any], host: str, port: int, line: Callable[[str], str]) -> None:
    """Start a role's ``run`` and say where it serves; it runs until cancelled."""
    import anyio

    async with anyio.create_task_group() as tg:
        url = await tg.start(run, host, port)
        click.echo(line(url), err=True)


def _server_config(max_connections: int, rate: int | None) -> Any:
    from p2pkg.io.http.server import ServerConfig

    return ServerConfig(max_connections=max_connections, rate=rate)


def _run_forever(coro_fn: Callable[[], Any]) -> None:
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
    dht = _dht_service(dht_listen, dht_bootstrap, store / STATE_FILE)
    role = StoreServer(store, _server_config(max_connections, rate), dht=dht)

    async def run() -> None:
        await _serve(role.run, host, port, lambda url: f"serving {store} on {url}")

    _run_forever(run)


@main.command()
@store_option
@listen_option
@budget_options
@trust_option
@click.option(
    "--upstream",
    multiple=True,
    required=True,
    metavar="URL",
    callback=check_urls,
    help="Peer to follow (the master, other seeds). Repeatable; fetched in parallel.",
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

    dht = _dht_service(dht_listen, dht_bootstrap, store / STATE_FILE)

    async def run() -> None:
        seeder = Seeder(
            store,
            pins,
            list(upstream),
            projects=projects,
            config=config,
            server_config=_server_config(max_connections, rate),
            dht=dht,
        )
        try:
            await _serve(seeder.run, host, port, lambda url: f"seed serving {store} on {url}")
        finally:
            await seeder.close()

    _run_forever(run)


@main.command()
@store_option
@listen_option
@budget_options
@trust_option
@click.option(
    "--peer",
    "peers",
    multiple=True,
    required=True,
    metavar="URL",
    callback=check_urls,
    help="Peer base URL. Repeatable.",
)
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
    )

    from p2pkg.io.dht_service import STATE_FILE

    dht = _dht_service(dht_listen, dht_bootstrap, store / STATE_FILE)

    async def run() -> None:
        c = Cache(
            store,
            pins,
            list(peers),
            config=config,
            server_config=_server_config(max_connections, rate),
            dht=dht,
        )  # c.run closes its store when it ends
        await _serve(c.run, host, port, lambda url: f"cache serving {url}/simple/ on {url}")

    _run_forever(run)


@main.command()
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...", callback=_check_specs)
@trust_option
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="URL",
    callback=check_urls,
    help="Peer base URL. Repeatable.",
)
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
    BLAKE3 id as it arrives; a file appears in --dest only once its sha256
    and BLAKE3 match the signed manifest. An interrupted fetch resumes.
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
    )
    results: list[dict[str, Any]] = []

    async def run() -> None:
        # Discovery order: LAN caches (tier 0), configured peers (1), the DHT (2).
        async with client:  # resolving finds peers first, then the root, then names
            if len(specs) == 1:
                manifest = await client.resolve(specs[0], filename)
                with _progress(f"fetching {manifest.filename}") as bar:
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


@main.command()
@store_option
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the static peer layout to.",
)
@json_option
def export(store: Path, out: Path, as_json: bool) -> None:
    """Export a store as static files that any HTTP server can serve as a peer.

    Serve OUT with nginx or `python -m http.server` and give its URL to
    --peer/--upstream: clients fetch whole archives or byte ranges from it.
    Incremental; the root is written last.
    """
    from p2pkg.io.store import Store
    from p2pkg.roles.export import export_store

    with errors_as_exit(), Store.open(store) as st:
        result = export_store(st, out)
    data = {"objects": result.objects, "files": result.files, "root_version": result.root_version}
    emit(as_json, data, f"exported to {out}: {result.objects} objects, {result.files} files")


if __name__ == "__main__":  # pragma: no cover
    main()
