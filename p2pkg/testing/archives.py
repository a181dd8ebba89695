"""Build genuine, installable wheels and sdists (for tests and benchmarks).

The wheels follow the binary distribution format (PEP 427 / 491): a
``.dist-info`` with METADATA, WHEEL and a RECORD of sha256 digests, so pip
and uv install them. Sdists carry ``PKG-INFO`` and a ``pyproject.toml``
(setuptools backend) under ``{name}-{version}/``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.utils import canonicalize_name


def _dist_name(name: str) -> str:
    # Wheel/sdist filename escaping: normalized, '-' -> '_'.
    return canonicalize_name(name).replace("-", "_")


def metadata_text(
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    summary: str = "",
) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if summary:
        lines.append(f"Summary: {summary}")
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {r}" for r in requires_dist]
    return "\n".join(lines) + "\n\n"


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(
    out_dir: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    payload: bytes | int = b"",
    files: Mapping[str, bytes] | None = None,
    tag: str = "py3-none-any",
    compress: bool = False,
    date_time: tuple[int, int, int, int, int, int] = (2024, 1, 1, 0, 0, 0),
) -> Path:
    """Write ``{name}-{version}-{tag}.whl`` into ``out_dir`` and return its path.

    ``payload`` adds a data file to the package: bytes as given, or an int
    for that many random (incompressible) bytes. The module is importable
    and exposes ``__version__``. Every member is dated ``date_time``.
    """
    dist = _dist_name(name)
    module = dist
    if isinstance(payload, int):
        payload = os.urandom(payload)
    members: dict[str, bytes] = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n'.encode(),
    }
    if payload:
        members[f"{module}/payload.bin"] = payload
    members.update(files or {})
    info = f"{dist}-{version}.dist-info"
    members[f"{info}/METADATA"] = metadata_text(
        name, version, requires_python=requires_python, requires_dist=requires_dist
    ).encode()
    members[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: p2pkg.testing\nRoot-Is-Purelib: true\nTag: {tag}\n"
    ).encode()
    record = [_record_line(p, d) for p, d in members.items()] + [f"{info}/RECORD,,"]
    members[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out_dir / f"{dist}-{version}-{tag}.whl"
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    _write_zip(path, members, method, date_time)
    return path


def _write_zip(
    path: Path,
    members: Mapping[str, bytes],
    method: int,
    date_time: tuple[int, int, int, int, int, int] = (2024, 1, 1, 0, 0, 0),
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=method) as zf:
        for member, data in members.items():
            zi = zipfile.ZipInfo(member, date_time=date_time)
            zi.compress_type = method
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, data)
    tmp.replace(path)


def build_sdist(
    out_dir: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires_dist: Iterable[str] = (),
    payload: bytes | int = b"",
    mtime: int | None = None,
) -> Path:
    """Write ``{name}-{version}.tar.gz`` (setuptools-buildable) into ``out_dir``.

    Members are dated ``mtime`` (POSIX time), by default the time of the call.
    """
    dist = _dist_name(name)
    root = f"{dist}-{version}"
    if isinstance(payload, int):
        payload = os.urandom(payload)
    deps = ", ".join(f'"{r}"' for r in requires_dist)
    rp = f'requires-python = "{requires_python}"\n' if requires_python else ""
    pyproject = (
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = [{deps}]\n{rp}'
    )
    members = {
        f"{root}/PKG-INFO": metadata_text(
            name, version, requires_python=requires_python, requires_dist=requires_dist
        ).encode(),
        f"{root}/pyproject.toml": pyproject.encode(),
        f"{root}/{dist}/__init__.py": f'__version__ = "{version}"\n'.encode(),
    }
    if payload:
        members[f"{root}/{dist}/payload.bin"] = payload
    path = out_dir / f"{root}.tar.gz"
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tf:
        for member, data in members.items():
            ti = tarfile.TarInfo(member)
            ti.size = len(data)
            ti.mtime = int(time.time()) if mtime is None else mtime
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
    tmp.replace(path)
    return path
