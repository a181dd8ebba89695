"""``p2pkg use``: pip and uv pointed at a checked cache, with a temporary HOME, and undone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from netsim.testbed import p2pkg_cmd
from p2pkg.roles.cache import Cache, CacheConfig
from p2pkg.roles.use import BLOCK_START, ConfigFileError, write_uv
from tests.installers import uv
from tests.netutil import make_master, services

OTHER_KEY = "ed25519:" + "22" * 32


def _env(home: Path) -> dict[str, str]:
    """This machine's environment minus pip's and uv's settings, with HOME at ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "XDG_"))}
    return {**env, "HOME": str(home), "UV_CACHE_DIR": str(home / "uv-cache")}


def _run(cmd: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(home), check=False)


@pytest.mark.net
@pytest.mark.slow
@pytest.mark.anyio
async def test_use_points_pip_and_uv_at_a_checked_cache_and_undo_restores(tmp_path: Path) -> None:
    master = make_master(tmp_path, big_size=50_000)
    home = tmp_path / "home"
    pip_conf = home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True)
    before = "[global]\ntimeout = 60\n# a comment the user wrote\n"
    pip_conf.write_text(before)
    async with services() as svc:
        peer = (await svc.server(master.store)).url
        cache = Cache(tmp_path / "cache", master.pins, [peer], config=CacheConfig(read_ahead=0))
        url = await svc.start(cache.run)

        def scenario() -> None:
            # A cache that does not serve the trusted namespace: refused, nothing written.
            res = _run(p2pkg_cmd("use", url, "--trust", OTHER_KEY), home)
            assert res.returncode == 8, res.stderr
            assert "no namespace signed by the trusted key" in res.stderr
            assert "Traceback" not in res.stderr
            assert pip_conf.read_text() == before
            assert not (home / ".config" / "uv" / "uv.toml").exists()

            res = _run(p2pkg_cmd("use", url, "--trust", master.pub, "--json"), home)
            assert res.returncode == 0, res.stderr
            out = json.loads(res.stdout)
            assert out["index_url"] == f"{url}/simple/" and out["namespace"] == "default"
            assert {c["tool"] for c in out["changes"]} == {"pip", "uv"}

            python = [sys.executable, "-m", "pip"]
            listed = _run([*python, "config", "list"], home).stdout
            assert f"global.index-url='{url}/simple/'" in listed
            assert "global.timeout='60'" in listed  # the user's own setting kept

            # uv reads the written default index: an install with no index flag.
            assert _run([uv(), "venv", str(tmp_path / "venv")], home).returncode == 0
            res = _run(
                [uv(), "pip", "install", "--python", str(tmp_path / "venv" / "bin" / "python"),
                 "small"],
                home,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            assert cache.stats.misses + cache.stats.hits >= 1  # it came through the cache

            # Using it again keeps the original for --undo.
            assert _run(p2pkg_cmd("use", url, "--trust", master.pub), home).returncode == 0
            res = _run(p2pkg_cmd("use", "--undo"), home)
            assert res.returncode == 0, res.stderr
            assert "restored as it was" in res.stdout and "removed" in res.stdout
            assert pip_conf.read_text() == before
            assert not (home / ".config" / "uv" / "uv.toml").exists()
            assert "index-url" not in _run([*python, "config", "list"], home).stdout
            res = _run(p2pkg_cmd("use", "--undo"), home)
            assert res.returncode == 0 and "nothing to undo" in res.stdout

        await anyio.to_thread.run_sync(scenario)


def test_uv_config_keeps_the_users_content_and_refuses_a_second_default(tmp_path: Path) -> None:
    path = tmp_path / "uv.toml"
    path.write_text("native-tls = true\n\n[pip]\ncompile-bytecode = true\n")
    write_uv(path, "http://a:1/simple/")
    write_uv(path, "http://b:2/simple/")  # replaces its own block
    text = path.read_text()
    assert text.count(BLOCK_START) == 1 and "http://b:2/simple/" in text
    assert "native-tls = true" in text and "compile-bytecode = true" in text
    import tomllib

    parsed = tomllib.loads(text)
    assert parsed["index"] == [{"url": "http://b:2/simple/", "default": True}]
    path.write_text('[[index]]\nurl = "http://mine/simple/"\ndefault = true\n')
    with pytest.raises(ConfigFileError, match="already sets a default index"):
        write_uv(path, "http://a:1/simple/")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["use", "http://127.0.0.1:9"], "--trust PUBKEY is required"),
        (["use", "--trust", OTHER_KEY], "give the cache's URL, or --lan"),
        (["use", "http://127.0.0.1:9", "--lan", "--trust", OTHER_KEY], "give the cache's URL"),
        (["use", "--undo", "http://127.0.0.1:9"], "--undo takes no URL"),
        (["use", "ftp://x", "--trust", OTHER_KEY], "not an http URL"),
    ],
)
def test_use_usage_errors(args: list[str], says: str) -> None:
    from click.testing import CliRunner

    from p2pkg.cli import main

    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and says in res.output and res.exception is not None
    assert isinstance(res.exception, SystemExit)


@pytest.mark.net
@pytest.mark.anyio
async def test_use_lan_finds_the_cache_announced_on_loopback(tmp_path: Path) -> None:
    master = make_master(tmp_path, big_size=50_000)
    home = tmp_path / "home"
    async with services() as svc:
        peer = (await svc.server(master.store)).url
        config = CacheConfig(read_ahead=0, lan=True, lan_interfaces=("127.0.0.1",))
        cache = Cache(tmp_path / "cache", master.pins, [peer], config=config)
        url = await svc.start(cache.run)
        cmd = p2pkg_cmd(
            "use", "--lan", "--lan-interface", "127.0.0.1", "--trust", master.pub, "--pip", "--json"
        )
        res = await anyio.to_thread.run_sync(_run, cmd, home)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["url"] == url
        assert f"index-url = {url}/simple/" in (home / ".config/pip/pip.conf").read_text()
        assert not (home / ".config/uv/uv.toml").exists()  # --pip only
