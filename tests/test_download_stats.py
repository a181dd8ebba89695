"""Download counts: counted where byte 0 is served, summed over mirrors by the master."""

from __future__ import annotations

from pathlib import Path

from p2pkg.core.download_stats import outliers, summarize
from p2pkg.io.download_counts import DownloadCounts
from p2pkg.roles.stats import OWN


def test_summarize_sums_per_file_project_source_and_names_archives() -> None:
    names = {"aa": ("demo", "demo-1.0.whl"), "bb": ("demo", "demo-1.0.tar.gz")}
    stats = summarize(
        {
            "http://s1": {"2026-11-01": {"aa": 3, "bb": 1}, "2026-11-02": {"aa": 2}},
            "http://s2": {"2026-11-02": {"aa": 1, "zz": 4}},
            OWN: {},
        },
        names,
    )
    assert stats.by_file == {"demo-1.0.whl": 6, "demo-1.0.tar.gz": 1}
    assert stats.by_project == {"demo": 7}
    assert stats.by_source == {"http://s1": 6, "http://s2": 5, OWN: 0}
    assert stats.by_day == {"2026-11-01": 4, "2026-11-02": 7}
    assert stats.unknown == 4 and stats.total == 11
    assert stats.rows[("2026-11-02", "http://s2", "demo", "demo-1.0.whl")] == 1


def test_a_source_reporting_far_more_than_the_others_is_flagged() -> None:
    assert outliers({"a": 100, "b": 120, "c": 90, "liar": 5000}) == ["liar"]
    assert outliers({"a": 1, "b": 2, "c": 30}) == []  # small numbers are noise
    assert outliers({"a": 10, "liar": 5000}) == []  # too few sources to say


def test_counts_survive_a_restart_and_keep_no_addresses(tmp_path: Path) -> None:
    counts = DownloadCounts(tmp_path, clock=lambda: 1_800_000_000)
    counts.count(b"\x01" * 32)
    counts.count(b"\x01" * 32)
    counts.close()
    again = DownloadCounts(tmp_path, clock=lambda: 1_800_000_000)
    assert again.since("2020-01-01") == {"2027-01-15": {"01" * 32: 2}}
    columns = [r[1] for r in again._db.execute("PRAGMA table_info(downloads)")]
    assert columns == ["day", "blake3", "n"]
    again.close()
