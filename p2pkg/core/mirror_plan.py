"""What one mirroring run does to one project (pure): filters and the diff.

``publish --from-index`` reads an upstream project page
(:class:`~p2pkg.core.upstream.UpstreamProject`) and what the namespace
already holds of that project (:class:`HeldProject`), and this module says
what to do (:class:`ProjectPlan`): which files to download, which yanks
changed, which held files vanished upstream (they become tombstones), and
whether the project status changed. It fetches and writes nothing.

**Filters** (:class:`Filters`, like bandersnatch's) apply to files the
namespace does not hold yet; a file already mirrored is never dropped
because a filter changed or the "latest N" window moved on, only when the
upstream no longer lists it:

* ``platforms``: wheels whose platform tag matches one of the patterns
  (``fnmatch`` globs such as ``manylinux*_x86_64``, or the families
  ``linux``, ``macos``, ``windows``); ``any`` wheels and sdists always pass;
* ``python_versions`` (``3.11``): the file's Requires-Python admits some
  release of that version, and a wheel's tags name an interpreter it runs on
  (``py3``, ``cp311``, ``cp38-abi3`` for 3.8 and later...);
* ``sdists``: False leaves sdists out;
* requirement specifiers (``--requirements``): a version must satisfy one
  of the project's lines (PEP 440; pre-releases only where the specifier
  names one, or with ``prereleases``);
* ``latest``: only the N highest versions (PEP 440) among the files that
  pass the filters above; pre-releases neither count nor are kept unless
  ``prereleases``.

**Refused** outright, whatever the filters (reported as skipped): formats
the namespace cannot hold (only ``.whl``, ``.tar.gz``, ``.zip``), a file
another project's page lists, and a second file for the same release and
tags (``foo-1.0.tar.gz`` beside ``foo-1.0.zip``: the namespace, like PyPI
today, holds one sdist per release; ``.tar.gz`` is preferred). A held file
whose upstream sha256 changed is a *conflict*: published files are
immutable, so it is reported and left as it is.

**Removals.** A held file the upstream page no longer lists becomes a
tombstone (never a silent deletion), except while the upstream marks the
project ``quarantined`` (PEP 792: it then offers no files, and the files
may return). :func:`parse_requirements` reads a requirements file's
project names and specifiers.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from p2pkg.core.objects import normalize_name
from p2pkg.core.upstream import UpstreamFile, UpstreamProject
from p2pkg.errors import SpecError

#: Archive formats a namespace holds (p2pkg.io.archives).
FORMATS = (".whl", ".tar.gz", ".zip")
#: Platform families a ``--platform`` value may name instead of a tag pattern.
PLATFORM_FAMILIES: Mapping[str, tuple[str, ...]] = {
    "linux": ("linux_*", "manylinux*", "musllinux*"),
    "macos": ("macosx_*",),
    "windows": ("win32", "win_*"),
}
_PY_VERSION = re.compile(r"^(\d+)\.(\d+)$")
_INTERPRETER = re.compile(r"^([a-z]+)(\d)(\d*)$")
REMOVED_REASON = "removed upstream"
PROJECT_REMOVED_REASON = "project removed upstream"


@dataclass(frozen=True, slots=True)
class Filters:
    """Which upstream files a mirror takes (module docstring); defaults take all."""

    platforms: tuple[str, ...] = ()
    python_versions: tuple[str, ...] = ()
    sdists: bool = True
    latest: int | None = None
    prereleases: bool = False

    def __post_init__(self) -> None:
        for value in self.python_versions:
            if not _PY_VERSION.match(value):
                raise SpecError(f"not a Python version: {value!r} (expected X.Y, e.g. 3.12)")
        if self.latest is not None and self.latest < 1:
            raise SpecError(f"latest must be at least 1, not {self.latest}")
        for value in self.platforms:
            if not value or any(c.isspace() for c in value):
                raise SpecError(f"not a platform tag or pattern: {value!r}")


@dataclass(frozen=True, slots=True)
class HeldFile:
    """What the namespace holds for one filename: its sha256 and yank."""

    sha256: bytes
    yanked: str | None


@dataclass(frozen=True, slots=True)
class HeldProject:
    """What the namespace holds of one project (empty: a project new to it)."""

    files: Mapping[str, HeldFile] = field(default_factory=dict)
    tombstones: frozenset[str] = frozenset()
    status: str = "active"
    status_reason: str | None = None

    @property
    def exists(self) -> bool:
        return bool(self.files or self.tombstones)


@dataclass(frozen=True, slots=True)
class Skipped:
    """An upstream file not taken, and why."""

    filename: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProjectPlan:
    """What to do to one project (module docstring)."""

    name: str
    download: tuple[UpstreamFile, ...] = ()
    #: Held filename -> the upstream's yank (None: not yanked), where it differs.
    yank: Mapping[str, str | None] = field(default_factory=dict)
    #: Held filename -> tombstone reason.
    remove: Mapping[str, str] = field(default_factory=dict)
    #: The upstream's status and reason, where they differ from the held ones.
    status: tuple[str, str | None] | None = None
    skipped: tuple[Skipped, ...] = ()
    conflicts: tuple[Skipped, ...] = ()

    @property
    def changes(self) -> bool:
        """Whether the namespace changes (downloads may still fail)."""
        return bool(self.download or self.yank or self.remove or self.status is not None)


# ---------------------------------------------------------------------- the diff


def plan_project(
    upstream: UpstreamProject,
    held: HeldProject,
    filters: Filters | None = None,
    specifiers: Iterable[SpecifierSet] = (),
) -> ProjectPlan:
    """The plan for one project: ``upstream``'s page against what is ``held``.

    ``specifiers`` are the project's requirement lines (none, or one
    without a specifier: every version).
    """
    filters = filters or Filters()
    name = normalize_name(upstream.name)
    specs = tuple(specifiers)
    if any(not str(s) for s in specs):
        specs = ()  # an unversioned line wants every version, pre-releases too
    listed: dict[str, UpstreamFile] = {}
    for f in upstream.files:
        listed.setdefault(f.filename, f)  # a page listing a filename twice: the first

    yank: dict[str, str | None] = {}
    conflicts: list[Skipped] = []
    skipped: list[Skipped] = []
    candidates: list[tuple[UpstreamFile, Version]] = []
    for f in listed.values():
        have = held.files.get(f.filename)
        if have is not None:
            if f.sha256 is not None and f.sha256 != have.sha256:
                conflicts.append(
                    Skipped(
                        f.filename,
                        f"upstream sha256 {f.sha256.hex()} differs from the published "
                        f"{have.sha256.hex()} (published files are immutable)",
                    )
                )
            elif f.yanked != have.yanked:
                yank[f.filename] = f.yanked
            continue
        why, version = _refusal(f.filename, name)
        if why is None:
            why = _filtered_out(f, filters, specs, version)
        if why is not None:
            skipped.append(Skipped(f.filename, why))
        else:
            assert version is not None
            candidates.append((f, version))

    if filters.latest is not None:
        candidates, dropped = _latest(candidates, filters.latest, filters.prereleases)
        skipped += dropped

    download, dupes = _one_per_release(candidates, held.files)
    skipped += dupes

    remove: dict[str, str] = {}
    if upstream.status != "quarantined":
        remove = {f: REMOVED_REASON for f in sorted(held.files) if f not in listed}

    status: tuple[str, str | None] | None = (upstream.status, upstream.status_reason)
    if status == (held.status, held.status_reason):
        status = None
    return ProjectPlan(
        name=name,
        download=tuple(download),
        yank=yank,
        remove=remove,
        status=status,
        skipped=tuple(skipped),
        conflicts=tuple(conflicts),
    )


def plan_vanished(name: str, held: HeldProject) -> ProjectPlan:
    """The plan for a held project whose page the upstream no longer has (404)."""
    gone = dict.fromkeys(sorted(held.files), PROJECT_REMOVED_REASON)
    return ProjectPlan(name=normalize_name(name), remove=gone)


def _refusal(filename: str, project: str) -> tuple[str | None, Version | None]:
    """Why a filename cannot be mirrored at all (None: it can), and its version."""
    if not filename.endswith(FORMATS):
        return "not a wheel or sdist the namespace holds (.whl, .tar.gz, .zip)", None
    try:
        if filename.endswith(".whl"):
            owner, version, _, _ = parse_wheel_filename(filename)
        else:
            owner, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename) as exc:
        return f"unparseable filename ({exc})", None
    if owner != project:
        return f"belongs to project {owner!r}, not {project!r}", None
    return None, version


def _filtered_out(
    f: UpstreamFile, filters: Filters, specs: tuple[SpecifierSet, ...], version: Version | None
) -> str | None:
    """Why the filters leave ``f`` out (None: they keep it)."""
    wheel = f.filename.endswith(".whl")
    if not wheel and not filters.sdists:
        return "sdists are not mirrored (--no-sdists)"
    tags = parse_wheel_filename(f.filename)[3] if wheel else frozenset[Tag]()
    if wheel and filters.platforms and not any(_platform_ok(t.platform, filters) for t in tags):
        return f"no platform tag matches {', '.join(filters.platforms)}"
    if filters.python_versions and not any(
        _python_ok(f.requires_python, tags, wheel, text) for text in filters.python_versions
    ):
        return f"not for Python {', '.join(filters.python_versions)}"
    # Pre-releases explicitly: packaging's default admits them when nothing else matches.
    if (
        specs
        and version is not None
        and not any(
            s.contains(version, prereleases=filters.prereleases or bool(s.prereleases))
            for s in specs
        )
    ):
        return f"version {version} is not wanted ({' or '.join(map(str, specs))})"
    return None


def _platform_ok(platform: str, filters: Filters) -> bool:
    if platform == "any":
        return True
    for wanted in filters.platforms:
        patterns = PLATFORM_FAMILIES.get(wanted.lower(), (wanted,))
        if any(fnmatch.fnmatchcase(platform, p) for p in patterns):
            return True
    return False


def _python_ok(requires_python: str, tags: Iterable[Tag], wheel: bool, text: str) -> bool:
    major, minor = (int(x) for x in text.split("."))
    if requires_python:
        try:
            spec = SpecifierSet(requires_python)
        except InvalidSpecifier:
            spec = None  # an unreadable Requires-Python excludes nothing
        # "3.11" is admitted when some 3.11.z is: ">=3.11.2" and "<3.11.5" both are.
        if spec is not None and not any(
            spec.contains(f"{major}.{minor}.{z}", prereleases=True) for z in (0, 99)
        ):
            return False
    if not wheel:
        return True
    return any(_interpreter_ok(t, major, minor) for t in tags)


def _interpreter_ok(tag: Tag, major: int, minor: int) -> bool:
    found = _INTERPRETER.match(tag.interpreter)
    if found is None:
        return False
    tag_major, tag_minor = int(found.group(2)), found.group(3)
    if tag_major != major:
        return False
    if not tag_minor:  # py3, cp3: any 3.x
        return True
    if tag.abi == "abi3":  # the stable ABI: that version and later
        return int(tag_minor) <= minor
    return int(tag_minor) == minor


def _latest(
    candidates: list[tuple[UpstreamFile, Version]], n: int, prereleases: bool
) -> tuple[list[tuple[UpstreamFile, Version]], list[Skipped]]:
    versions = sorted(
        {v for _, v in candidates if prereleases or not v.is_prerelease}, reverse=True
    )
    keep = set(versions[:n])
    taken = [(f, v) for f, v in candidates if v in keep]
    dropped = [
        Skipped(
            f.filename,
            "a pre-release (--prereleases takes them)"
            if v.is_prerelease and not prereleases
            else f"not among the latest {n} releases",
        )
        for f, v in candidates
        if v not in keep
    ]
    return taken, dropped


def _identity(filename: str) -> tuple[object, ...]:
    """What PyPI (and publish) treat as one file: name, version, and tags of a wheel."""
    if filename.endswith(".whl"):
        name, version, build, tags = parse_wheel_filename(filename)
        return ("wheel", name, version, build, frozenset(tags))
    name, version = parse_sdist_filename(filename)
    return ("sdist", name, version)


def _one_per_release(
    candidates: list[tuple[UpstreamFile, Version]], held: Mapping[str, HeldFile]
) -> tuple[list[UpstreamFile], list[Skipped]]:
    taken: dict[tuple[object, ...], str] = {}
    for filename in held:
        if filename.endswith(FORMATS):
            try:
                taken.setdefault(_identity(filename), filename)
            except (InvalidWheelFilename, InvalidSdistFilename):
                continue
    out: list[UpstreamFile] = []
    skipped: list[Skipped] = []
    # .tar.gz before .zip: the sdist kept when an old release has both.
    for f, _ in sorted(candidates, key=lambda c: c[0].filename.endswith(".zip")):
        identity = _identity(f.filename)
        if identity in taken:
            skipped.append(Skipped(f.filename, f"same release and tags as {taken[identity]}"))
            continue
        taken[identity] = f.filename
        out.append(f)
    return out, skipped


# ---------------------------------------------------------------------- requirements files


def parse_requirements(
    text: str, where: str = "requirements"
) -> dict[str, tuple[SpecifierSet, ...]]:
    """Project names and version specifiers from a requirements file's text.

    One requirement per line (``name[extras] specifier ; markers``); ``#``
    comments, blank lines and option lines (``-r``, ``--index-url``...) are
    skipped, a trailing ``\\`` joins lines, and ``--hash`` options after a
    requirement are ignored. Markers are ignored (a mirror serves every
    environment); a URL requirement names its project with no specifier.
    Several lines for one project add up: a version any of them admits is
    wanted. Raises :class:`SpecError` naming ``where`` and the line.
    """
    out: dict[str, list[SpecifierSet]] = {}
    for number, line in _logical_lines(text):
        if line.startswith("-"):
            continue
        bare = re.split(r"\s+--?[a-z]", line, maxsplit=1)[0].strip()  # per-line options
        try:
            req = Requirement(bare)
        except InvalidRequirement as exc:
            raise SpecError(f"{where}:{number}: not a requirement: {bare[:80]!r} ({exc})") from None
        specs = out.setdefault(canonicalize_name(req.name), [])
        specs.append(SpecifierSet() if req.url else req.specifier)
    return {name: tuple(specs) for name, specs in out.items()}


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            yield start, line
    if pending.strip():
        yield start, pending.strip()


__all__ = [
    "FORMATS",
    "PLATFORM_FAMILIES",
    "PROJECT_REMOVED_REASON",
    "REMOVED_REASON",
    "Filters",
    "HeldFile",
    "HeldProject",
    "ProjectPlan",
    "Skipped",
    "parse_requirements",
    "plan_project",
    "plan_vanished",
]
