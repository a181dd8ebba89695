"""Summing download counts reported by mirrors (pure).

Each source (a mirror, the master itself) reports ``{day: {blake3 hex:
downloads}}`` for the archives it served (the span at offset 0 counts, so
a download split across peers is counted once, by whoever served byte 0).
This sums them per file, per project and per source, names archives
through the namespace, and flags outliers: the numbers are what each mirror
*says* — a mirror can inflate its own counts and nothing here can prove
otherwise — so a source reporting far more than its peers is marked.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

#: A source is flagged when it reports more than this many times the median
#: of the sources (with at least :data:`MIN_SOURCES` of them)...
OUTLIER_FACTOR = 5.0
#: ...and at least this many downloads more than the median (small numbers are noise).
OUTLIER_MARGIN = 100
MIN_SOURCES = 3

Reported = Mapping[str, Mapping[str, int]]  # day -> blake3 hex -> downloads


@dataclass
class DownloadStats:
    """Downloads summed over sources."""

    by_file: Counter[str] = field(default_factory=Counter)  # filename
    by_project: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    by_day: Counter[str] = field(default_factory=Counter)
    #: (day, source, project, filename) -> downloads, for CSV
    rows: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    unknown: int = 0  # downloads of archives the namespace does not list (removed, other)
    outliers: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_source.values())


def outliers(totals: Mapping[str, int]) -> list[str]:
    """Sources reporting far more than the others (see :data:`OUTLIER_FACTOR`)."""
    if len(totals) < MIN_SOURCES:
        return []
    median = statistics.median(totals.values())
    return sorted(
        s for s, n in totals.items() if n > OUTLIER_FACTOR * median and n - median >= OUTLIER_MARGIN
    )


def summarize(
    reports: Mapping[str, Reported], names: Mapping[str, tuple[str, str]]
) -> DownloadStats:
    """Sum ``reports`` (source -> counts); ``names``: blake3 hex -> (project, filename)."""
    out = DownloadStats()
    for source, days in reports.items():
        out.by_source[source] += 0  # a source that served nothing still shows
        for day, files in days.items():
            for b3, n in files.items():
                if n <= 0:
                    continue
                out.by_source[source] += n
                out.by_day[day] += n
                named = names.get(b3)
                if named is None:
                    out.unknown += n
                    out.rows[(day, source, "", b3)] += n
                    continue
                project, filename = named
                out.by_file[filename] += n
                out.by_project[project] += n
                out.rows[(day, source, project, filename)] += n
    out.outliers = outliers(out.by_source)
    return out


__all__ = ["DownloadStats", "outliers", "summarize"]
