from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from p2pkg.errors import ArchiveError
from p2pkg.io.archives import inspect_archive
from p2pkg.testing.archives import build_sdist, build_wheel


def test_wheel_metadata(dist: Path) -> None:
    whl = build_wheel(dist, "Demo.Pkg", "1.0.post1", requires_python=">=3.9", payload=1000)
    info = inspect_archive(whl)
    assert info.project == "demo-pkg"
    assert info.version == "1.0.post1"
    assert info.requires_python == ">=3.9"
    assert info.core_metadata is not None and b"Name: Demo.Pkg" in info.core_metadata


def test_sdist_metadata(dist: Path) -> None:
    info = inspect_archive(build_sdist(dist, "demo", "2.0", requires_python=">=3.8"))
    assert (info.project, info.version, info.requires_python) == ("demo", "2.0", ">=3.8")
    assert info.core_metadata is None  # PEP 658 metadata is served for wheels only


@pytest.mark.parametrize("suffix", [".whl", ".tar.gz"])
def test_truncated_archives_rejected(dist: Path, suffix: str) -> None:
    build = build_wheel if suffix == ".whl" else build_sdist
    path = build(dist, "demo", "1.0", payload=200_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ArchiveError, match=r"truncated|unreadable"):
        inspect_archive(path)


def test_not_an_archive(dist: Path) -> None:
    path = dist / "demo-1.0-py3-none-any.whl"
    path.write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(ArchiveError):
        inspect_archive(path)
    other = dist / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ArchiveError, match=r"not a \.whl"):
        inspect_archive(other)


@pytest.mark.parametrize("bad", ["demo.whl", "demo-1.0.whl", "demo-notaversion-py3-none-any.whl"])
def test_bad_wheel_filenames(dist: Path, bad: str) -> None:
    good = build_wheel(dist, "demo", "1.0")
    target = dist / bad
    good.rename(target)
    with pytest.raises(ArchiveError):
        inspect_archive(target)


def test_name_in_metadata_must_match_filename(dist: Path) -> None:
    whl = build_wheel(dist, "demo", "1.0")
    evil = dist / "requests-1.0-py3-none-any.whl"
    whl.rename(evil)  # demo's wheel renamed to look like another project's
    with pytest.raises(ArchiveError, match=r"requests|dist-info"):
        inspect_archive(evil)


def test_version_in_metadata_must_match(dist: Path) -> None:
    path = dist / "demo-1.0.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = b"Metadata-Version: 2.1\nName: demo\nVersion: 9.9\n\n"
        ti = tarfile.TarInfo("demo-1.0/PKG-INFO")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    with pytest.raises(ArchiveError, match="version"):
        inspect_archive(path)


def test_wheel_without_metadata(dist: Path) -> None:
    path = dist / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo/__init__.py", "")
        zf.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    with pytest.raises(ArchiveError, match="METADATA"):
        inspect_archive(path)


def test_corrupt_metadata_crc(dist: Path) -> None:
    whl = build_wheel(dist, "demo", "1.0")
    data = bytearray(whl.read_bytes())
    i = data.find(b"Name: demo")
    data[i] ^= 0x20
    whl.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        inspect_archive(whl)
