"""Upload times of published files: the policies, the CLI, and what uv sees."""

from __future__ import annotations

import json
import os
import struct
import time
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.testbed import Testbed
from p2pkg.cli import main
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.errors import PublishError
from p2pkg.io.archives import inspect_archive
from p2pkg.io.store import Store
from p2pkg.roles.namespace import open_store_namespace
from p2pkg.roles.publish import PublishResult, UploadTime, parse_upload_time, publish
from p2pkg.testing.archives import build_sdist, build_wheel, metadata_text

from .installers import uv_install

# The publish time every test passes as ``now``: near the real one, since
# reading the namespace back checks that the signed root has not expired.
NOW = int(time.time()) - 3600
NEXT_YEAR = tuple(time.gmtime(NOW + 366 * 86400)[:6])


def ts(text: str) -> int:
    """An ISO 8601 time (naive = UTC) as a POSIX time."""
    when = datetime.fromisoformat(text)
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def touch(path: Path, when: int) -> Path:
    os.utime(path, (when, when))
    return path


def _publish(store_dir: Path, key: Ed25519PrivateKey, *paths: Path, **kw: object) -> PublishResult:
    kw.setdefault("now", NOW)
    with Store.open(store_dir, create=True) as st:
        return publish(st, [key], list(paths), **kw)  # type: ignore[arg-type]


def times(store_dir: Path, key: Ed25519PrivateKey, project: str) -> dict[str, int]:
    with Store.open(store_dir) as st:
        ns = open_store_namespace(st, frozenset({public_bytes(key)}))
        return {m.filename: m.upload_time for m in ns.manifests(ns.require_project(project))}


def zip_sdist(
    out_dir: Path,
    name: str,
    version: str,
    date_time: tuple[int, int, int, int, int, int],
    extra: bytes = b"",
) -> Path:
    """A ``.zip`` sdist whose PKG-INFO member has the given date (and extra field)."""
    path = out_dir / f"{name}-{version}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(f"{name}-{version}/PKG-INFO", date_time=date_time)
        info.extra = extra
        zf.writestr(info, metadata_text(name, version))
    return path


# ---------------------------------------------------------------------- policies


def test_default_is_the_source_files_mtime(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    whl = touch(build_wheel(dist, "demo", "1.0"), ts("2023-02-03T04:05:06"))
    sdist = touch(build_sdist(dist, "demo", "1.0"), ts("2022-12-31T23:59:59"))
    _publish(store_dir, key, dist)
    assert times(store_dir, key, "demo") == {
        whl.name: ts("2023-02-03T04:05:06"),
        sdist.name: ts("2022-12-31T23:59:59"),
    }


def test_now_is_the_publish_time(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    whl = touch(build_wheel(dist, "demo", "1.0"), ts("2023-02-03"))
    _publish(store_dir, key, whl, upload_time="now")
    assert times(store_dir, key, "demo") == {whl.name: NOW}


def test_archive_reads_the_metadata_members_time(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    whl = touch(build_wheel(dist, "demo", "1.0", date_time=(2023, 3, 4, 5, 6, 8)), NOW - 10)
    sdist = touch(build_sdist(dist, "demo", "1.0", mtime=ts("2023-03-04T05:00:00")), NOW - 10)
    zipped = touch(zip_sdist(dist, "other", "1.0", (2021, 7, 8, 9, 10, 12)), NOW - 10)
    _publish(store_dir, key, dist, upload_time="archive")
    assert times(store_dir, key, "demo") == {
        whl.name: ts("2023-03-04T05:06:08"),  # zip date_time, read as UTC
        sdist.name: ts("2023-03-04T05:00:00"),  # tar mtime of PKG-INFO
    }
    assert times(store_dir, key, "other") == {zipped.name: ts("2021-07-08T09:10:12")}


def test_archive_prefers_the_zip_extended_timestamp(dist: Path) -> None:
    # Info-ZIP's "UT" field is exact UTC; the DOS date beside it has no zone.
    exact = ts("2022-06-07T08:09:11")
    ut = struct.pack("<HHBi", 0x5455, 5, 1, exact)
    path = zip_sdist(dist, "demo", "1.0", (2022, 6, 7, 10, 9, 10), extra=ut)
    assert inspect_archive(path).recorded_time == exact


@pytest.mark.parametrize(
    ("recorded", "why"),
    [
        ((1980, 1, 1, 0, 0, 0), "zip's minimum date: nothing recorded"),
        (NEXT_YEAR, "in the future"),
        (0, "tar's 0 epoch: nothing recorded"),
    ],
)
def test_archive_falls_back_to_mtime(
    dist: Path,
    store_dir: Path,
    key: Ed25519PrivateKey,
    recorded: tuple[int, int, int, int, int, int] | int,
    why: str,
) -> None:
    if isinstance(recorded, int):
        path = build_sdist(dist, "demo", "1.0", mtime=recorded)
    else:
        path = build_wheel(dist, "demo", "1.0", date_time=recorded)
    touch(path, ts("2024-02-02"))
    _publish(store_dir, key, path, upload_time="archive")
    assert times(store_dir, key, "demo") == {path.name: ts("2024-02-02")}, why


def test_fixed_times_and_clamping(dist: Path, store_dir: Path, key: Ed25519PrivateKey) -> None:
    a = build_wheel(dist, "a", "1.0")
    b = build_wheel(dist, "b", "1.0")
    c = touch(build_wheel(dist, "c", "1.0"), NOW + 86400)  # a clock gone wrong
    d = build_wheel(dist, "d", "1.0")
    _publish(store_dir, key, a, upload_time=ts("2024-05-01T12:00:00"))
    _publish(store_dir, key, b, upload_time=NOW + 3600)
    _publish(store_dir, key, c)
    _publish(store_dir, key, d, upload_time=-5)
    assert times(store_dir, key, "a") == {a.name: ts("2024-05-01T12:00:00")}
    assert times(store_dir, key, "b") == {b.name: NOW}
    assert times(store_dir, key, "c") == {c.name: NOW}
    assert times(store_dir, key, "d") == {d.name: 0}


def test_per_file_mapping_overrides_the_policy(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    whl = build_wheel(dist, "demo", "1.0")
    sdist = build_sdist(dist, "demo", "1.0")
    _publish(
        store_dir,
        key,
        dist,
        upload_time="now",
        upload_times={
            whl.name: ts("2020-01-02T03:04:05"),
            "demo-9.9.tar.gz": 1,  # not being published: ignored
        },
    )
    assert times(store_dir, key, "demo") == {whl.name: ts("2020-01-02T03:04:05"), sdist.name: NOW}
    future = build_wheel(dist, "later", "1.0")
    _publish(store_dir, key, future, upload_times={future.name: NOW + 1})
    assert times(store_dir, key, "later") == {future.name: NOW}


def test_published_files_keep_their_upload_time(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey
) -> None:
    whl = build_wheel(dist, "demo", "1.0")
    first = _publish(store_dir, key, whl, upload_time=ts("2024-01-01"))
    again = _publish(store_dir, key, whl, upload_time="now", now=NOW + 100)
    assert not again.changed and again.root_id == first.root_id
    new = build_wheel(dist, "demo", "2.0")
    _publish(store_dir, key, whl, new, upload_time="now", now=NOW + 100)
    assert times(store_dir, key, "demo") == {whl.name: ts("2024-01-01"), new.name: NOW + 100}


@pytest.mark.parametrize("bad", ["yesterday", "MTIME", True])
def test_unknown_policy_is_a_publish_error(
    dist: Path, store_dir: Path, key: Ed25519PrivateKey, bad: object
) -> None:
    whl = build_wheel(dist, "demo", "1.0")
    with pytest.raises(PublishError, match="upload time"):
        _publish(store_dir, key, whl, upload_time=bad)
    with Store.open(store_dir) as st:
        assert st.latest_root() is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mtime", "mtime"),
        ("now", "now"),
        ("archive", "archive"),
        ("2024-05-01T12:00:00Z", ts("2024-05-01T12:00:00")),
        ("2024-05-01T14:00:00+02:00", ts("2024-05-01T12:00:00")),
        ("2024-05-01T12:00:00", ts("2024-05-01T12:00:00")),  # naive: UTC
        ("2024-05-01", ts("2024-05-01T00:00:00")),  # date: midnight UTC
    ],
)
def test_parse_upload_time(text: str, expected: UploadTime) -> None:
    assert parse_upload_time(text) == expected


# ---------------------------------------------------------------------- command line


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "master.key"
    code, out = cli("keygen", "--out", str(path))
    assert code == 0, out
    return path, out.strip()


def shown_times(store: Path, pub: str, project: str) -> dict[str, int]:
    code, out = cli("show", "--store", str(store), "--trust", pub, "--json", project)
    assert code == 0, out
    return {f["filename"]: f["upload_time"] for f in json.loads(out)["files"]}


def test_cli_fixed_iso_time(tmp_path: Path, dist: Path, key_file: tuple[Path, str]) -> None:
    key, pub = key_file
    store = tmp_path / "store"
    whl = build_wheel(dist, "demo", "1.0")
    args = ("publish", "--store", str(store), "--key", str(key), "--json")
    code, out = cli(*args, "--upload-time", "2024-05-01T12:00:00Z", str(whl))
    assert code == 0, out
    # --json reports the same keys as before upload times were a choice
    assert set(json.loads(out)) == {
        "notified",
        "namespace",
        "version",
        "root_id",
        "changed",
        "added",
        "unchanged",
        "objects_written",
    }
    assert shown_times(store, pub, "demo") == {whl.name: ts("2024-05-01T12:00:00")}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('upload_time = "2024-05-01"', ts("2024-05-01")),
        ('upload-time = "2024-05-01"', ts("2024-05-01")),  # spelled like the flag
        ("upload_time = 2024-05-01T12:00:00Z", ts("2024-05-01T12:00:00")),  # a TOML datetime
    ],
)
def test_cli_upload_time_from_the_config_file(
    tmp_path: Path, dist: Path, key_file: tuple[Path, str], setting: str, expected: int
) -> None:
    key, pub = key_file
    store = tmp_path / "store"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[publish]\nstore = "{store}"\nkey = ["{key}"]\n{setting}\n')
    whl = build_wheel(dist, "demo", "1.0")
    code, out = cli("--config", str(cfg), "publish", str(whl))
    assert code == 0, out
    assert shown_times(store, pub, "demo") == {whl.name: expected}


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01", "", "1714564800"])
def test_cli_bad_upload_time_is_a_usage_error(
    tmp_path: Path, dist: Path, key_file: tuple[Path, str], bad: str
) -> None:
    key, _ = key_file
    store = tmp_path / "store"
    whl = build_wheel(dist, "demo", "1.0")
    code, out = cli(
        "publish", "--store", str(store), "--key", str(key), "--upload-time", bad, str(whl)
    )
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--upload-time" in errors[0], out
    assert "Traceback" not in out
    assert not store.exists()  # refused before anything was written


# ---------------------------------------------------------------------- installers


@pytest.mark.slow
@pytest.mark.net
def test_uv_exclude_newer_goes_by_the_published_upload_time(
    tmp_path: Path, dist: Path, key: Ed25519PrivateKey
) -> None:
    old = build_wheel(dist, "oldpkg", "1.0")
    new = build_wheel(dist, "oldpkg", "2.0")
    store = tmp_path / "master"
    with Store.open(store, create=True) as st:
        publish(st, [key], [old], upload_time=ts("2024-01-15"))
        publish(st, [key], [new], upload_time=ts("2025-03-01"))
    pub = format_pubkey(public_bytes(key))
    with Testbed() as bed:
        _, master = bed.serve(store)
        _, cache = bed.cache(tmp_path / "cache", pub, [master])
        index = f"{cache}/simple/"

        req = urllib.request.Request(
            f"{index}oldpkg/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            page = json.loads(resp.read())
        assert {f["filename"]: f["upload-time"] for f in page["files"]} == {
            old.name: "2024-01-15T00:00:00.000000Z",
            new.name: "2025-03-01T00:00:00.000000Z",
        }

        assert (
            uv_install(tmp_path, "venv-old", index, "oldpkg", "--exclude-newer", "2024-06-01")
            == "1.0"
        )
        assert uv_install(tmp_path, "venv-new", index, "oldpkg") == "2.0"
