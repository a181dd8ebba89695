from __future__ import annotations

import pytest
from packaging.tags import Tag

from p2pkg.core.select import SpecError, candidates, parse_spec, python_allows

TAGS = [Tag("cp311", "cp311", "manylinux_2_17_x86_64"), Tag("py3", "none", "any")]
FILES = [
    "demo-1.0-py3-none-any.whl",
    "demo-1.0.tar.gz",
    "demo-2.0.tar.gz",
    "demo-2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    "demo-2.0-py3-none-any.whl",
    "demo-2.0-cp39-cp39-win_amd64.whl",
    "demo-3.0rc1-py3-none-any.whl",
]


def names(spec: str) -> list[str]:
    return [c.filename for c in candidates(FILES, parse_spec(spec), TAGS)]


def test_newest_stable_best_tag_first() -> None:
    got = names("demo")
    assert got[0] == "demo-2.0-cp311-cp311-manylinux_2_17_x86_64.whl"
    assert got[1:3] == ["demo-2.0-py3-none-any.whl", "demo-2.0.tar.gz"]
    assert "demo-2.0-cp39-cp39-win_amd64.whl" not in got
    assert "demo-3.0rc1-py3-none-any.whl" not in got  # pre-releases need asking


def test_specifiers() -> None:
    assert names("demo==1.0") == ["demo-1.0-py3-none-any.whl", "demo-1.0.tar.gz"]
    assert names("Demo<2")[0] == "demo-1.0-py3-none-any.whl"
    assert names("demo>=3.0rc1") == ["demo-3.0rc1-py3-none-any.whl"]
    assert names("demo>5") == []


def test_pinned_and_bad_specs() -> None:
    assert parse_spec("demo==1.0").pinned
    assert not parse_spec("demo>=1.0").pinned
    assert not parse_spec("demo==1.*").pinned
    for bad in ["", "demo==", "demo; python_version<'3'", "!!"]:
        with pytest.raises(SpecError):
            parse_spec(bad)


def test_python_allows() -> None:
    assert python_allows("", "3.11.7")
    assert python_allows(">=3.8", "3.11.7")
    assert not python_allows("<3", "3.11.7")
    assert python_allows("not a specifier", "3.11.7")
