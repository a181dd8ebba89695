"""Choose which archive a spec means (pure).

``SPEC`` is a PEP 508 requirement without markers: ``name``,
``name==1.0`` or ``name>=1,<2``. Candidates come from the project's
filenames (no manifest needed to rank them); the shell then checks each
chosen file's manifest for yanked (PEP 592: skipped unless pinned with
``==``) and Requires-Python. The newest allowed version wins; within it,
the wheel whose tags rank best for this interpreter, else the sdist.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag, sys_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from p2pkg.errors import SpecError


@dataclass(frozen=True, slots=True)
class Spec:
    name: str  # normalized
    specifier: SpecifierSet

    @property
    def pinned(self) -> bool:
        """``==X`` exactly (yanked files are allowed then, PEP 592)."""
        specs = list(self.specifier)
        return (
            len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version
        )


# A bare project name (PEP 508 names), the common case: no parser needed.
_BARE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_ANY_VERSION = SpecifierSet()


def parse_spec(text: str) -> Spec:
    if _BARE_NAME.fullmatch(text):
        return Spec(canonicalize_name(text), _ANY_VERSION)
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise SpecError(f"invalid spec {text!r}: {exc}") from None
    if req.marker is not None or req.url:
        raise SpecError(f"spec {text!r}: markers and URLs are not supported")
    return Spec(canonicalize_name(req.name), req.specifier)


@dataclass(frozen=True, slots=True)
class Candidate:
    filename: str
    version: Version
    rank: int  # lower is better; sdists rank after every compatible wheel


@functools.cache
def _interpreter_ranks() -> dict[Tag, int]:
    # sys_tags() yields ~900 tags; computing them once per process matters
    # when hundreds of archives are resolved in one run.
    return {t: i for i, t in enumerate(sys_tags())}


def tag_ranks(tags: Sequence[Tag] | None = None) -> dict[Tag, int]:
    """Tag -> rank (lower is better): of ``tags`` in order, or this interpreter's."""
    if tags is None:
        return _interpreter_ranks()
    return {t: i for i, t in enumerate(tags)}


def candidates(
    filenames: Iterable[str], spec: Spec, tags: Sequence[Tag] | None = None
) -> list[Candidate]:
    """Allowed files, best first: newest version, then best tag, then sdist."""
    ranks = tag_ranks(tags)
    sdist_rank = len(ranks) + 1
    out: list[Candidate] = []
    for filename in filenames:
        try:
            if filename.endswith(".whl"):
                _, version, _, file_tags = parse_wheel_filename(filename)
                matching = [ranks[t] for t in file_tags if t in ranks]
                if not matching:
                    continue
                rank = min(matching)
            else:
                _, version = parse_sdist_filename(filename)
                rank = sdist_rank
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue
        out.append(Candidate(filename, version, rank))
    allowed = set(spec.specifier.filter([c.version for c in out]))
    chosen = [c for c in out if c.version in allowed]
    chosen.sort(key=lambda c: c.rank)  # stable: best tag first within a version...
    chosen.sort(key=lambda c: c.version, reverse=True)  # ...newest version first
    return chosen


def python_allows(requires_python: str, python: str) -> bool:
    """Whether Requires-Python admits ``python`` (unparseable values admit it, as pip does)."""
    if not requires_python.strip():
        return True
    try:
        return SpecifierSet(requires_python).contains(python, prereleases=True)
    except InvalidSpecifier:
        return True


def project_of(filename: str) -> str | None:
    """The normalized project a wheel or sdist filename belongs to (None if neither)."""
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[0])
        return str(parse_sdist_filename(filename)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


# SpecError lives in the exception tree (p2pkg.errors); re-exported for callers
# that import it from here.
__all__ = [
    "Candidate",
    "Spec",
    "SpecError",
    "candidates",
    "parse_spec",
    "project_of",
    "python_allows",
]
