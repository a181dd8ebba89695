"""The ``p2pkg`` command group (click).


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

import importlib
import logging

import click

from p2pkg import __version__
from p2pkg.cli.config import load_config
from p2pkg.cli.exits import EXIT_HELP, OneLineUsageGroup

#: The module that registers each command. A command's module is imported
#: only when that command runs (or for ``--help`` and a config file, which
#: need them all): start-up time counts for every small ``p2pkg fetch``, and
#: the master, mirror and publish commands pull in imports fetch never uses.
COMMAND_MODULES: dict[str, str] = {
    "keygen": "p2pkg.cli.namespace_commands",
    "publish": "p2pkg.cli.namespace_commands",
    "show": "p2pkg.cli.namespace_commands",
    "verify": "p2pkg.cli.namespace_commands",
    "export": "p2pkg.cli.namespace_commands",
    "serve": "p2pkg.cli.network_commands",
    "seed": "p2pkg.cli.network_commands",
    "cache": "p2pkg.cli.network_commands",
    "fetch": "p2pkg.cli.network_commands",
    "master": "p2pkg.cli.master_commands",
    "stats": "p2pkg.cli.master_commands",
    "mirrors": "p2pkg.cli.mirror_list_commands",
    "use": "p2pkg.cli.use_command",
}


class LazyGroup(OneLineUsageGroup):
    """The command group whose commands are imported on first use (see :data:`COMMAND_MODULES`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, registered or not yet imported (sorted, as click lists them)."""
        return sorted({*super().list_commands(ctx), *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command, importing the module that registers it the first time."""
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(module)  # its @main.command() registers it
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, epilog=EXIT_HELP)
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
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="P2PKG_LOG_FORMAT",
    help="Log lines as text, or one JSON object per line (time, level, logger, message) "
    "for journald/Loki/ELK. Env: P2PKG_LOG_FORMAT.",
)
def main(verbose: int, log_format: str) -> None:
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
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLogFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``.

    An exception's traceback goes in ``exception``; a record never spans lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        out = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)
