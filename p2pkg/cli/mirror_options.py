"""The ``--from-index`` options shared by ``publish`` and ``master`` (mirroring an index)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from p2pkg.cli.options import F


def check_index_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Option callback: ``--from-index`` is an http(s) URL with a host."""
    from urllib.parse import urlsplit

    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http(s) index URL (https://HOST/simple/)")
    return value


def mirror_options(f: F) -> F:
    """``--from-index URL`` and what to mirror from it (projects, filters)."""
    f = click.option(
        "--prereleases",
        is_flag=True,
        help="With --from-index: pre-releases count for --latest and requirement specifiers.",
    )(f)
    f = click.option(
        "--latest",
        type=click.IntRange(min=1),
        metavar="N",
        help="With --from-index: only each project's N newest releases (PEP 440).",
    )(f)
    f = click.option("--no-sdists", is_flag=True, help="With --from-index: leave sdists out.")(f)
    f = click.option(
        "--python-version",
        "python_versions",
        multiple=True,
        metavar="X.Y",
        help="With --from-index: only files for this Python version "
        "(Requires-Python and wheel tags). Repeatable.",
    )(f)
    f = click.option(
        "--platform",
        "platforms",
        multiple=True,
        metavar="TAG",
        help="With --from-index: only wheels for this platform tag or glob "
        "(manylinux*_x86_64, win_amd64) or family (linux, macos, windows); pure "
        "wheels and sdists always. Repeatable.",
    )(f)
    f = click.option(
        "--all",
        "all_projects",
        is_flag=True,
        help="With --from-index: mirror every project the index lists.",
    )(f)
    f = click.option(
        "--requirements",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="With --from-index: mirror the projects a requirements file names "
        "(releases its version specifiers admit).",
    )(f)
    f = click.option(
        "--project",
        "projects",
        multiple=True,
        metavar="NAME",
        help="With --from-index: a project to mirror. Repeatable.",
    )(f)
    return click.option(
        "--from-index",
        metavar="URL",
        callback=check_index_url,
        help="Mirror this upstream index's simple API (e.g. https://pypi.org/simple/) instead "
        "of publishing PATHS: new files are downloaded, checked against the upstream's "
        "sha256 and published in one root, with the upstream's yanks, Requires-Python, "
        "upload times, provenance and project status. Incremental (docs/operators.md).",
    )(f)


#: (platforms, python versions, no sdists, latest N, prereleases) as the options give them.
FilterValues = tuple[tuple[str, ...], tuple[str, ...], bool, int | None, bool]


def mirror_selection(
    projects: tuple[str, ...],
    requirements: Path | None,
    all_projects: bool,
    filter_values: FilterValues,
) -> tuple[Any, Any]:
    """The (Selection, Filters) the options ask for; a bad requirement is a usage error."""
    from p2pkg.core.mirror_plan import Filters, parse_requirements
    from p2pkg.errors import SpecError
    from p2pkg.roles.mirror import Selection

    platforms, python_versions, no_sdists, latest, prereleases = filter_values
    try:
        filters = Filters(
            platforms=platforms,
            python_versions=python_versions,
            sdists=not no_sdists,
            latest=latest,
            prereleases=prereleases,
        )
        wanted = {}
        if requirements is not None:
            text = requirements.read_text(encoding="utf-8", errors="replace")
            wanted = parse_requirements(text, str(requirements))
    except SpecError as exc:
        raise click.UsageError(str(exc).splitlines()[0]) from None
    return Selection(projects=projects, requirements=wanted, all=all_projects), filters
