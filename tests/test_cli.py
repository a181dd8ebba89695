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
    # A malformed key in an option is a usage error: exit 2, one line.
    assert "ed25519" in run("show", "--store", store, "--trust", "garbage", code=2)
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

    time.sleep(1.1)  # the subject: real time passes the 1 s expiry (the CLI reads the clock)
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
    assert "9 local failure (disk full, permission, I/O error)" in " ".join(out.split())
    assert "--trust" in run("show", "--help")
    assert run("fetch", "--help").startswith("Usage:")  # help is not an error: unchanged


KEY = "ed25519:" + "ab" * 32


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["fetch", "x", "--trust", KEY, "--peer", "htp:/x"], "'--peer'"),
        (["fetch", "x", "--trust", KEY, "--peer", "http://h:99999"], "'--peer'"),
        (["fetch", "x", "--trust", KEY, "--peer", "http://h:port"], "'--peer'"),
        (["fetch", "x", "--trust", KEY, "--peer", "https://h"], "'--peer'"),
        (["cache", "--trust", KEY, "--peer", "ftp://x"], "'--peer'"),
        (["seed", "--trust", KEY, "--upstream", "http://"], "'--upstream'"),
        (["publish", "--key", "k", "--notify", "seed:8000"], "'--notify'"),
        (["serve", "--listen", "127.0.0.1"], "'--listen'"),  # no port
        (["serve", "--listen", ":8000"], "'--listen'"),  # no host
        (["serve", "--listen", "h:65536"], "'--listen'"),  # port out of range
        (["serve", "--dht-listen", "h:x"], "'--dht-listen'"),
        (["fetch", "x", "--trust", KEY, "--dht-bootstrap", "h"], "'--dht-bootstrap'"),
        (["fetch", "x", "--trust", KEY, "--dht-bootstrap", "h:0"], "'--dht-bootstrap'"),
        (["show", "--trust", "ed25519:zz"], "'--trust'"),
        (["fetch", "x", "--trust", "garbage", "--peer", "http://h:1"], "'--trust'"),
        (["fetch", "x", "--peer", "http://h:1"], "--trust"),  # required, checked in the body
        (["fetch", "--no-such-flag"], "--no-such-flag"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], names: str) -> None:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and names in lines[0]
    assert result.stdout == ""


@pytest.mark.net
def test_serve_export_fetch_cli(tmp_path: Path, dist: Path, master: tuple[Path, str]) -> None:
    import subprocess
    import sys

    from .netutil import serve_process

    key, pub = master
    store = tmp_path / "store"
    build_wheel(dist, "demo", "1.0", payload=3 << 20)
    run("publish", "--store", str(store), "--key", str(key), str(dist))
    out = json.loads(
        run("export", "--store", str(store), "--out", str(tmp_path / "static"), "--json")
    )
    assert out["files"] == 1 and out["root_version"] == 1
    assert (tmp_path / "static" / "p2pkg" / "v1" / "root").exists()
    with serve_process(store) as (_, url):
        fetch = [sys.executable, "-m", "p2pkg.cli", "fetch", "demo", "--trust", pub, "--peer", url]
        done = subprocess.run(
            [*fetch, "--dest", str(tmp_path / "out"), "--json"], capture_output=True, check=True
        )
        result = json.loads(done.stdout)
        assert result["filename"] == "demo-1.0-py3-none-any.whl"
        assert (tmp_path / "out" / result["filename"]).stat().st_size == result["size"]
        missing = subprocess.run(
            [*fetch[:4], "nope", *fetch[5:], "--dest", str(tmp_path)],
            capture_output=True,
            check=False,
        )
        assert missing.returncode == 7 and missing.stderr.decode().count("\n") == 1
        # A bad SPEC is a usage error (exit 2, one line), caught before any peer is asked.
        bad_spec = subprocess.run(
            [*fetch[:4], "foo>>>", *fetch[5:], "--dest", str(tmp_path)],
            capture_output=True,
            check=False,
        )
        assert bad_spec.returncode == 2 and bad_spec.stderr.decode().count("\n") == 1
        assert b"invalid spec" in bad_spec.stderr
    dead = subprocess.run(fetch, capture_output=True, check=False)  # the peer is gone now
    assert dead.returncode == 8 and b"Traceback" not in dead.stderr
    assert run("fetch", "demo", "--peer", "http://127.0.0.1:9", code=2)  # --trust is required
