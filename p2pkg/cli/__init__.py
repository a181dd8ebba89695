"""The ``p2pkg`` command line (click): ``p2pkg.cli:main`` is the entry point.

* :mod:`.app` — the command group, logging and the config option;
* :mod:`.exits` — exit codes and one-line errors;
* :mod:`.config` — the TOML config file, checked key by key;
* :mod:`.values` — sizes and durations (click types with bounds);
* :mod:`.options` — option types and callbacks (URLs, keys, sizes,
  durations, addresses that must be bindable) and shared option groups;
* :mod:`.namespace_commands` — keygen, publish, show, verify, export;
* :mod:`.network_commands` — serve, seed, cache, fetch;
* :mod:`.master_commands` — ``master``: serve, re-sign, push;
* :mod:`.mirror_list_commands` — ``mirrors add|remove|list``: the signed mirror list.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from p2pkg.cli.app import COMMAND_MODULES, main
from p2pkg.cli.config import config_defaults
from p2pkg.cli.exits import EXIT_CODES, errors_as_exit, exit_code_for
from p2pkg.cli.options import (
    check_bindable,
    check_interfaces,
    parse_url,
)
from p2pkg.cli.values import DURATION, SIZE, parse_duration, parse_size

if TYPE_CHECKING:
    from p2pkg.cli import (
        master_commands,
        mirror_list_commands,
        namespace_commands,
        network_commands,
    )

__all__ = [
    "DURATION",
    "EXIT_CODES",
    "SIZE",
    "check_bindable",
    "check_interfaces",
    "config_defaults",
    "errors_as_exit",
    "exit_code_for",
    "main",
    "master_commands",
    "mirror_list_commands",
    "namespace_commands",
    "network_commands",
    "parse_duration",
    "parse_size",
    "parse_url",
]


def __getattr__(name: str) -> ModuleType:
    # Lazy: the command modules are imported when a command runs (see
    # p2pkg.cli.app.COMMAND_MODULES), so `p2pkg fetch` starts fast.
    if f"p2pkg.cli.{name}" in COMMAND_MODULES.values():
        return importlib.import_module(f"p2pkg.cli.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
