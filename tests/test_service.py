"""Running as a service: SIGTERM mid-transfer, JSON logs, the sample config, contrib/ files."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import tomllib
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import click
import pytest

from netsim.testbed import Testbed, p2pkg_cmd, status
from p2pkg.cli import main
from p2pkg.cli.config import config_defaults
from tests.helpers import wait_until
from tests.netutil import make_master

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "contrib" / "config.toml"
SETTING = re.compile(r'# [a-z][a-z0-9-]* = ("|\[|true|false|[0-9])')  # a setting, not prose


def _file_url(cache: str, project: str) -> str:
    req = urllib.request.Request(
        f"{cache}/simple/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        page = json.loads(resp.read())
    return urljoin(f"{cache}/simple/{project}/", page["files"][0]["url"])


@pytest.mark.net
@pytest.mark.parametrize("role", ["cache", "seed"])
def test_sigterm_during_a_transfer_exits_0_within_5_s_and_the_store_verifies(
    role: str, tmp_path: Path
) -> None:
    master = make_master(tmp_path, big_size=8 << 20)
    store = tmp_path / role
    with Testbed() as bed:
        _, peer = bed.serve(master.store, "--rate", "1MB")  # an 8 MB archive takes ~8 s
        if role == "cache":
            proc, url = bed.cache(store, master.pub, [peer], "--no-lan", "--read-ahead", "0")
            target = _file_url(url, "big")
            reader = threading.Thread(target=lambda: _drain(target), daemon=True, name="installer")
            reader.start()
            wait_until(
                lambda: status(url)["downloads_in_progress"] >= 1,
                timeout=10,
                what="the download started",
            )
        else:
            proc, url = bed.seed(store, master.pub, [peer])
            wait_until(
                lambda: status(url).get("bytes_fetched", 0) > 0 or _partial(store),
                timeout=10,
                what="the sync is fetching",
            )
        time.sleep(0.5)  # well inside the transfer
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        took = time.monotonic() - started
    assert code == 0 and took < 5, (code, took)
    res = subprocess.run(
        p2pkg_cmd("verify", "--store", str(store)), capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def _drain(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            while resp.read(1 << 16):
                pass
    except OSError:
        pass  # cut when the cache stops: what an installer would see


def _partial(store: Path) -> bool:
    return any((store / "partial").glob("*")) if (store / "partial").exists() else False


@pytest.mark.net
def test_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    master = make_master(tmp_path, big_size=10_000)
    cmd = p2pkg_cmd(
        "-v", "--log-format", "json", "serve", "--store", str(master.store),
        "--listen", "127.0.0.1:0",
    )  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        records = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("serving" in r["message"] for r in records):
            line = proc.stderr.readline()
            if not line:
                break
            if line.startswith("{"):
                records.append(json.loads(line))
        assert records, "no JSON log line"
        for record in records:
            assert set(record) >= {"time", "level", "logger", "message"}
            assert record["time"].endswith("+00:00")
        assert any(r["level"] == "info" and "serving" in r["message"] for r in records)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_sample_config_names_every_option_and_loads(tmp_path: Path) -> None:
    """contrib/config.toml: every option of every command, documented, and valid as written."""
    text = SAMPLE.read_text()
    ctx = click.Context(main, info_name="p2pkg")
    commands = {n: main.get_command(ctx, n) for n in main.list_commands(ctx)}
    for name, command in commands.items():
        assert command is not None
        assert f"[{name}]" in text, name
        for param in command.params:
            if not param.expose_value or not isinstance(param, click.Option):
                continue
            flag = next(o[2:] for o in param.opts if o.startswith("--"))
            assert f"{flag} =" in text, (name, flag)
    # Every commented setting, uncommented, is a valid config (types and values checked).
    live = "\n".join(
        line[2:] if SETTING.match(line) else line
        for line in text.splitlines()
        if not line.startswith("# requirements = ")  # the file must exist to be valid
    )
    data = tomllib.loads(live)
    config_defaults(ctx, main, data, SAMPLE)


def test_contrib_has_a_dockerfile_and_systemd_units() -> None:
    docker = (ROOT / "contrib" / "Dockerfile").read_text()
    assert docker.startswith("# ") and "FROM python:3.11-slim" in docker
    assert "STOPSIGNAL SIGTERM" in docker and "USER p2pkg" in docker
    for role in ("master", "seed", "cache"):
        unit = (ROOT / "contrib" / "systemd" / f"p2pkg-{role}.service").read_text()
        assert f"ExecStart=/usr/local/bin/p2pkg --config /etc/p2pkg/config.toml {role}" in unit
        assert "KillSignal=SIGTERM" in unit and "DynamicUser=yes" in unit
