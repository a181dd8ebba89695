"""The TOML config file: defaults per command, checked key by key when read."""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path
from typing import Any

import click

from p2pkg.cli.values import DurationType, SizeType


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
    # Through list_commands/get_command, not group.commands: p2pkg's group
    # imports its commands lazily, and a config file may name any of them.
    commands = {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}
    for key, value in data.items():
        command = commands.get(key)
        if command is None:
            if isinstance(value, dict):
                known = ", ".join(sorted(commands))
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
