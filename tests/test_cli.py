from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from p2pkg.cli import main
from p2pkg.testing.archives import build_sdist, build_wheel


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def master(tmp_path: Path) -> tuple[Path, str]:
    key = tmp_path / "master.key"
    pub = run("keygen", "--out", str(key)).strip()
    return key, pub


def test_keygen(tmp_path: Path, master: tuple[Path, str]) -> None:
    key, pub = master
    assert pub.startswith("ed25519:") and len(pub) == 8 + 64
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    out = run("keygen", "--out", str(key), code=5)
    assert "refusing to overwrite" in out and "Traceback" not in out
    data = json.loads(run("keygen", "--out", str(tmp_path / "k2"), "--json"))
    assert data["public_key"].startswith("ed25519:")


def test_publish_show_verify_json(tmp_path: Path, dist: Path, master: tuple[Path, str]) -> None:
    key, pub = master
    store = str(tmp_path / "store")
    build_wheel(dist, "demo", "1.0", payload=1000)
    build_sdist(dist, "demo", "1.0")
    out = json.loads(run("publish", "--store", store, "--key", str(key), "--json", str(dist)))
    assert out["version"] == 1 and len(out["added"]) == 2
    assert "nothing changed" in run("publish", "--store", store, "--key", str(key), str(dist))
    shown = json.loads(run("show", "--store", store, "--trust", pub, "--json", "demo"))
    assert {f["filename"] for f in shown["files"]} == {
        "demo-1.0-py3-none-any.whl",
        "demo-1.0.tar.gz",
    }
    assert "demo" in run("show", "--store", store)
    assert json.loads(run("verify", "--store", store, "--json"))["ok"] is True


def test_errors_are_one_line_with_exit_codes(
    tmp_path: Path, dist: Path, master: tuple[Path, str]
) -> None:
    key, _pub = master
    store = str(tmp_path / "store")
    bad = dist / "junk-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    out = run("publish", "--store", store, "--key", str(key), str(bad), code=5)
    assert out.startswith("p2pkg: error:") and out.count("\n") == 1
    bad.unlink()
    build_wheel(dist, "demo", "1.0")
    run("publish", "--store", store, "--key", str(key), str(dist))
    other = tmp_path / "other.key"
    other_pub = run("keygen", "--out", str(other)).strip()
    assert "wrong key" in run("publish", "--store", store, "--key", str(other), code=5)
    assert "pinned" in run("show", "--store", store, "--trust", other_pub, code=3)
    assert run("show", "--store", store, "nope", code=7).startswith("p2pkg: error:")
    assert "no store" in run("show", "--store", str(tmp_path / "absent"), code=6)
    assert "ed25519" in run("show", "--store", store, "--trust", "garbage", code=5)
    (tmp_path / "notakey").write_text("hello")
    run("publish", "--store", store, "--key", str(tmp_path / "notakey"), code=5)


def test_expired_root_is_refused_by_show(
    tmp_path: Path, dist: Path, master: tuple[Path, str]
) -> None:
    key, _ = master
    store = str(tmp_path / "store")
    build_wheel(dist, "demo", "1.0")
    run("publish", "--store", store, "--key", str(key), "--expires", "1s", str(dist))
    import time

    time.sleep(1.1)
    assert "expired" in run("show", "--store", store, code=3)
    assert "warning" in run("verify", "--store", store)  # store intact, root needs re-signing
    run("publish", "--store", store, "--key", str(key))  # re-sign
    run("show", "--store", store)


def test_config_file_supplies_defaults(
    tmp_path: Path, dist: Path, master: tuple[Path, str]
) -> None:
    key, _ = master
    store = tmp_path / "from-config"
    cfg = tmp_path / "p2pkg.toml"
    cfg.write_text(f'[publish]\nstore = "{store}"\nkey = ["{key}"]\n\n[show]\nstore = "{store}"\n')
    build_wheel(dist, "demo", "1.0")
    run("--config", str(cfg), "publish", str(dist))
    assert (store / "index.sqlite").exists()
    assert "demo" in run("--config", str(cfg), "show")
    # flags override the file
    run("--config", str(cfg), "show", "--store", str(tmp_path / "absent"), code=6)


def test_help_teaches() -> None:
    out = run("--help")
    assert "Exit codes" in out and "keygen" in out
    assert "--trust" in run("show", "--help")
