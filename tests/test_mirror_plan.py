"""The pure half of mirroring: filters, the diff against the namespace, requirements files."""

from __future__ import annotations

import hashlib

import pytest
from packaging.specifiers import SpecifierSet

from p2pkg.core.mirror_plan import (
    PROJECT_REMOVED_REASON,
    REMOVED_REASON,
    Filters,
    HeldFile,
    HeldProject,
    parse_requirements,
    plan_project,
    plan_vanished,
)
from p2pkg.core.upstream import UpstreamFile, UpstreamProject
from p2pkg.errors import SpecError


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def ufile(filename: str, **kw: object) -> UpstreamFile:
    base: dict[str, object] = {
        "filename": filename,
        "url": f"https://up.example/files/{filename}",
        "sha256": sha(filename),
    }
    base.update(kw)
    return UpstreamFile(**base)  # type: ignore[arg-type]


def project(*files: UpstreamFile, name: str = "demo", **kw: object) -> UpstreamProject:
    return UpstreamProject(name=name, files=files, **kw)  # type: ignore[arg-type]


def downloads(plan: object) -> list[str]:
    return sorted(f.filename for f in plan.download)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- the diff


def test_a_new_project_downloads_every_file() -> None:
    up = project(ufile("demo-1.0-py3-none-any.whl"), ufile("demo-1.0.tar.gz"))
    plan = plan_project(up, HeldProject())
    assert downloads(plan) == ["demo-1.0-py3-none-any.whl", "demo-1.0.tar.gz"]
    assert plan.changes and not plan.remove and not plan.yank and plan.status is None


def test_held_files_are_not_downloaded_again_and_their_yanks_follow_upstream() -> None:
    held = HeldProject(
        files={
            "demo-1.0.tar.gz": HeldFile(sha("demo-1.0.tar.gz"), None),
            "demo-1.1.tar.gz": HeldFile(sha("demo-1.1.tar.gz"), "old reason"),
            "demo-1.2.tar.gz": HeldFile(sha("demo-1.2.tar.gz"), None),
        }
    )
    up = project(
        ufile("demo-1.0.tar.gz", yanked="broken"),
        ufile("demo-1.1.tar.gz"),  # unyanked upstream
        ufile("demo-1.2.tar.gz"),
        ufile("demo-2.0.tar.gz"),
    )
    plan = plan_project(up, held)
    assert downloads(plan) == ["demo-2.0.tar.gz"]
    assert plan.yank == {"demo-1.0.tar.gz": "broken", "demo-1.1.tar.gz": None}


def test_an_unchanged_project_plans_nothing() -> None:
    held = HeldProject(files={"demo-1.0.tar.gz": HeldFile(sha("demo-1.0.tar.gz"), None)})
    assert not plan_project(project(ufile("demo-1.0.tar.gz")), held).changes


def test_a_vanished_file_becomes_a_tombstone_unless_the_project_is_quarantined() -> None:
    held = HeldProject(
        files={
            "demo-1.0.tar.gz": HeldFile(sha("demo-1.0.tar.gz"), None),
            "demo-2.0.tar.gz": HeldFile(sha("demo-2.0.tar.gz"), None),
        }
    )
    plan = plan_project(project(ufile("demo-2.0.tar.gz")), held)
    assert plan.remove == {"demo-1.0.tar.gz": REMOVED_REASON}
    # PEP 792: a quarantined project's page offers no files; they may come back.
    quarantined = plan_project(project(status="quarantined", status_reason="malware"), held)
    assert quarantined.remove == {}
    assert quarantined.status == ("quarantined", "malware")


def test_a_vanished_project_tombstones_every_file() -> None:
    held = HeldProject(files={"demo-1.0.tar.gz": HeldFile(b"\0" * 32, None)})
    assert plan_vanished("Demo", held).remove == {"demo-1.0.tar.gz": PROJECT_REMOVED_REASON}


def test_status_changes_only_when_it_differs() -> None:
    held = HeldProject(status="archived", status_reason="done")
    assert plan_project(project(status="archived", status_reason="done"), held).status is None
    assert plan_project(project(), held).status == ("active", None)


def test_a_changed_upstream_hash_is_a_conflict_not_a_download() -> None:
    held = HeldProject(files={"demo-1.0.tar.gz": HeldFile(b"\1" * 32, None)})
    plan = plan_project(project(ufile("demo-1.0.tar.gz")), held)
    assert not plan.download and not plan.remove
    assert [c.filename for c in plan.conflicts] == ["demo-1.0.tar.gz"]
    assert "immutable" in plan.conflicts[0].reason


def test_files_the_namespace_cannot_hold_are_skipped_with_a_reason() -> None:
    up = project(
        ufile("demo-1.0.tar.bz2"),
        ufile("demo-1.0-py2.7.egg"),
        ufile("other-1.0.tar.gz"),  # another project's file on this page
        ufile("demo-1.0.tar.gz"),
        ufile("demo-1.0.zip"),  # the same sdist release twice: .tar.gz kept
    )
    plan = plan_project(up, HeldProject())
    assert downloads(plan) == ["demo-1.0.tar.gz"]
    reasons = {s.filename: s.reason for s in plan.skipped}
    assert "not a wheel or sdist" in reasons["demo-1.0.tar.bz2"]
    assert "not a wheel or sdist" in reasons["demo-1.0-py2.7.egg"]
    assert "belongs to project 'other'" in reasons["other-1.0.tar.gz"]
    assert "same release" in reasons["demo-1.0.zip"]


def test_a_tombstoned_file_that_returns_upstream_is_downloaded_again() -> None:
    held = HeldProject(tombstones=frozenset({"demo-1.0.tar.gz"}))
    assert downloads(plan_project(project(ufile("demo-1.0.tar.gz")), held)) == ["demo-1.0.tar.gz"]


# ---------------------------------------------------------------------- filters

WHEELS = [
    "demo-1.0-py3-none-any.whl",
    "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
    "demo-1.0-cp311-cp311-win_amd64.whl",
    "demo-1.0-cp311-cp311-macosx_11_0_arm64.whl",
    "demo-1.0-cp38-abi3-musllinux_1_2_aarch64.whl",
]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(platforms=("linux",)), [0, 1, 2, 5]),
        (Filters(platforms=("manylinux*_x86_64",)), [0, 1, 2]),
        (Filters(platforms=("windows", "macos")), [0, 3, 4]),
        (Filters(platforms=("win_amd64",)), [0, 3]),
        (Filters(python_versions=("3.11",)), [0, 1, 3, 4, 5]),
        (Filters(python_versions=("3.12",)), [0, 2, 5]),
        (Filters(python_versions=("3.7",)), [0]),  # abi3 from 3.8 on
        (Filters(platforms=("linux",), python_versions=("3.12",)), [0, 2, 5]),
    ],
)
def test_platform_and_python_filters_on_wheel_tags(filters: Filters, expected: list[int]) -> None:
    plan = plan_project(project(*(ufile(w) for w in WHEELS)), HeldProject(), filters)
    assert downloads(plan) == sorted(WHEELS[i] for i in expected)


def test_python_filter_reads_requires_python_and_keeps_sdists_otherwise() -> None:
    up = project(
        ufile("demo-1.0.tar.gz", requires_python=">=3.12"),
        ufile("demo-0.9.tar.gz", requires_python=">=3.11.2"),  # some 3.11 admits it
        ufile("demo-0.8.tar.gz", requires_python="<3.11.5"),
        ufile("demo-0.7.tar.gz", requires_python="!=3.11.*"),
        ufile("demo-0.6.tar.gz", requires_python="garbage"),  # unreadable: kept
        ufile("demo-0.5.tar.gz"),
    )
    plan = plan_project(up, HeldProject(), Filters(python_versions=("3.11",)))
    assert downloads(plan) == [
        "demo-0.5.tar.gz",
        "demo-0.6.tar.gz",
        "demo-0.8.tar.gz",
        "demo-0.9.tar.gz",
    ]


def test_no_sdists() -> None:
    up = project(ufile("demo-1.0.tar.gz"), ufile("demo-1.0-py3-none-any.whl"))
    plan = plan_project(up, HeldProject(), Filters(sdists=False))
    assert downloads(plan) == ["demo-1.0-py3-none-any.whl"]


def test_latest_n_releases_by_pep_440_without_prereleases_unless_asked() -> None:
    up = project(
        *(ufile(f"demo-{v}.tar.gz") for v in ("1.9", "1.10", "2.0rc1", "1.2", "1.10.post1"))
    )
    plan = plan_project(up, HeldProject(), Filters(latest=2))
    assert downloads(plan) == ["demo-1.10.post1.tar.gz", "demo-1.10.tar.gz"]
    reasons = {s.filename: s.reason for s in plan.skipped}
    assert "pre-release" in reasons["demo-2.0rc1.tar.gz"]
    assert "latest 2" in reasons["demo-1.9.tar.gz"]
    pre = plan_project(up, HeldProject(), Filters(latest=2, prereleases=True))
    assert downloads(pre) == ["demo-1.10.post1.tar.gz", "demo-2.0rc1.tar.gz"]


def test_filters_never_drop_what_is_already_mirrored() -> None:
    held = HeldProject(files={"demo-1.0.tar.gz": HeldFile(sha("demo-1.0.tar.gz"), None)})
    up = project(ufile("demo-1.0.tar.gz"), ufile("demo-2.0.tar.gz"), ufile("demo-3.0.tar.gz"))
    plan = plan_project(up, held, Filters(latest=1))
    assert downloads(plan) == ["demo-3.0.tar.gz"]
    assert plan.remove == {}


def test_requirement_specifiers_select_versions() -> None:
    up = project(*(ufile(f"demo-{v}.tar.gz") for v in ("1.0", "1.5", "2.0", "2.1b1")))
    plan = plan_project(up, HeldProject(), specifiers=[SpecifierSet(">=1.5,<2.1")])
    assert downloads(plan) == ["demo-1.5.tar.gz", "demo-2.0.tar.gz"]
    # lines add up: any of them may admit a version; an unversioned line admits all
    either = plan_project(up, HeldProject(), specifiers=[SpecifierSet("==1.0"), SpecifierSet(">2")])
    assert downloads(either) == ["demo-1.0.tar.gz"]
    assert (
        len(
            plan_project(
                up, HeldProject(), specifiers=[SpecifierSet("==1.0"), SpecifierSet()]
            ).download
        )
        == 4
    )
    pre = plan_project(up, HeldProject(), Filters(prereleases=True), [SpecifierSet(">2")])
    assert downloads(pre) == ["demo-2.1b1.tar.gz"]


@pytest.mark.parametrize(
    "bad",
    [
        {"python_versions": ("3",)},
        {"python_versions": ("py3.11",)},
        {"latest": 0},
        {"platforms": ("",)},
    ],
)
def test_bad_filter_values_are_spec_errors(bad: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        Filters(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- requirements files


def test_parse_requirements() -> None:
    text = """\
# a comment
requests>=2.31 ; python_version >= "3.8"   # trailing comment
Django==4.2.* \\
    --hash=sha256:0000
-r other.txt
--index-url https://example/simple/

flask[async]
requests<2
pkg @ https://example/pkg-1.0.tar.gz
"""
    wanted = parse_requirements(text)
    assert set(wanted) == {"requests", "django", "flask", "pkg"}
    assert [str(s) for s in wanted["requests"]] == [">=2.31", "<2"]
    assert [str(s) for s in wanted["django"]] == ["==4.2.*"]
    assert [str(s) for s in wanted["flask"]] == [""]
    assert [str(s) for s in wanted["pkg"]] == [""]


def test_a_bad_requirement_names_the_file_and_line() -> None:
    with pytest.raises(SpecError, match=r"reqs.txt:2: not a requirement"):
        parse_requirements("ok\nnot a requirement!\n", "reqs.txt")
