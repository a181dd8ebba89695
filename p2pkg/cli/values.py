"""Sizes and durations as options take them (``2G``, ``7d``): click types with bounds."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import click

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
