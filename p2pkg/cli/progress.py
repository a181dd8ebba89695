"""The progress bar shown on a terminal by publish, verify and fetch.

A module of its own so that ``p2pkg fetch`` need not import the namespace
commands (start-up time counts for every small fetch).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
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
