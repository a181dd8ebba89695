"""Command-line input errors (issue 10, item 6): one line naming the option, exit 2.

Every malformed option, SPEC or config value a user can type is refused
before anything starts with exactly one line on stderr that names what is
wrong, exit code 2 (docs/operators.md), and no traceback. Cases that need
the network stack (a port held by another socket, a host that does not
resolve, an address not of this machine) run the real CLI in a process;
the rest are refused while parsing, so click's runner shows the same line.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from p2pkg.cli import config_defaults, errors_as_exit, main, parse_duration, parse_size

KEY = "ed25519:" + "ab" * 32
PEER = "http://127.0.0.1:9"  # never reached: every case fails before a connection
BAD_URLS = {
    "not-a-url": "notaurl",
    "ftp": "ftp://h:1",
    "port-99999": "http://h:99999",
    "unclosed-ipv6": "http://[::1:8000",
}
#: Per command: the arguments that make it valid but for the option under test (a
#: later --listen wins over the free port given here).
ANY_PORT = ("--listen", "127.0.0.1:0")
BASE = {
    "fetch": ["fetch", "x", "--trust", KEY, "--peer", PEER],
    "seed": ["seed", "--store", "{tmp}/s", "--trust", KEY, "--upstream", PEER, *ANY_PORT],
    "cache": ["cache", "--store", "{tmp}/s", "--trust", KEY, "--peer", PEER, "--no-lan", *ANY_PORT],
    "serve": ["serve", "--store", "{tmp}/s", *ANY_PORT],
    "publish": ["publish", "--store", "{tmp}/s", "--key", "{tmp}/k"],
    "show": ["show", "--store", "{tmp}/s"],
    "verify": ["verify", "--store", "{tmp}/s"],
}


@dataclass(frozen=True)
class Case:
    """One bad input: the arguments, what the error line must name, and whether it needs sockets.

    ``{tmp}`` is the test's directory, ``{config}`` the config file written
    from ``config``, ``{tcp}`` / ``{udp}`` ports held by the test.
    """

    args: tuple[str, ...]
    names: tuple[str, ...]
    config: str | bytes | None = None
    net: bool = False
    env: tuple[tuple[str, str], ...] = ()


def opt(command: str, *extra: str, names: str, net: bool = False) -> Case:
    return Case((*BASE[command], *extra), (names,), net=net)


def cfg(text: str | bytes, *names: str) -> Case:
    """A config file with ``text``; ``show`` fails on it naming the file and ``names``."""
    return Case(("--config", "{config}", "show", "--store", "{tmp}/s"), ("{config}", *names), text)


CASES: dict[str, Case] = {
    # Peer URLs, on every command that takes one.
    **{
        f"{cmd}-{flag[2:]}-{what}": opt(cmd, flag, url, names=f"'{flag}'")
        for cmd, flag in [("fetch", "--peer"), ("seed", "--upstream"), ("cache", "--peer")]
        for what, url in BAD_URLS.items()
    },
    "publish-notify": opt("publish", "--notify", "ftp://h:1", names="'--notify'"),
    # Keys, on every command that pins one.
    **{
        f"{cmd}-trust": opt(cmd, "--trust", "garbage", names="'--trust'")
        for cmd in ["fetch", "seed", "cache", "show", "verify"]
    },
    # Sizes and durations.
    **{
        f"{cmd}-rate-{value}": opt(cmd, "--rate", value, names="'--rate'")
        for cmd in ["serve", "seed", "cache"]
        for value in ["garbage", "-5"]
    },
    "rate-zero": opt("serve", "--rate", "0", names="'--rate'"),
    "rate-two-dots": opt("serve", "--rate", "1.2.3", names="'--rate'"),  # was a ValueError
    "rate-huge": opt("serve", "--rate", "9" * 400, names="'--rate'"),  # was an OverflowError
    "max-size-garbage": opt("cache", "--max-size", "garbage", names="'--max-size'"),
    "max-size-negative": opt("cache", "--max-size", "-20GB", names="'--max-size'"),
    "expires-garbage": opt("publish", "--expires", "garbage", names="'--expires'"),
    "expires-negative": opt("publish", "--expires", "-1d", names="'--expires'"),
    "expires-zero": opt("publish", "--expires", "0", names="'--expires'"),
    "expires-huge": opt("publish", "--expires", "9" * 20 + "d", names="'--expires'"),
    "interval": opt("seed", "--interval", "soon", names="'--interval'"),
    "refresh": opt("cache", "--refresh", "-60s", names="'--refresh'"),
    # Addresses (syntax only: no socket involved).
    **{
        f"{cmd}-dht-bootstrap": opt(cmd, "--dht-bootstrap", "garbage", names="'--dht-bootstrap'")
        for cmd in ["fetch", "serve", "seed", "cache"]
    },
    "listen-port-digits": opt("serve", "--listen", "h:" + "9" * 5000, names="'--listen'"),
    "fetch-lan-interface": opt("fetch", "--lan-interface", "eth0", names="'--lan-interface'"),
    "cache-lan-interface": opt("cache", "--lan", "--lan-interface", "x", names="'--lan-interface'"),
    # SPECs: a usage error (2), not the 1 that verify reserves.
    "spec-invalid": Case(("fetch", "foo>>>1", "--trust", KEY, "--peer", PEER), ("'SPEC...'",)),
    "spec-empty": Case(("fetch", "", "--trust", KEY, "--peer", PEER), ("'SPEC...'",)),
    "spec-marker": Case(("fetch", "x; os_name=='nt'", "--trust", KEY), ("'SPEC...'",)),
    "spec-second": Case(("fetch", "ok", "a b", "--trust", KEY, "--peer", PEER), ("'SPEC...'",)),
    # The config file: wrong types and values name the file, the table and the key.
    "config-rate-array": cfg("[cache]\nrate = [1]\n", "[cache] rate", "array"),
    "config-peer-number": cfg("[fetch]\npeer = 3\n", "[fetch] peer", "integer"),
    "config-peer-url": cfg('[fetch]\npeer = ["notaurl"]\n', "[fetch] peer", "http URL"),
    "config-jobs-string": cfg('[fetch]\njobs = "x"\n', "[fetch] jobs", "integer"),
    "config-store-number": cfg("[show]\nstore = 3\n", "[show] store", "string"),
    "config-lan-string": cfg('[cache]\nlan = "yes"\n', "[cache] lan", "true or false"),
    "config-trust": cfg('[seed]\ntrust = ["garbage"]\n', "[seed] trust", "ed25519"),
    "config-expires": cfg("[publish]\nexpires = -5\n", "[publish] expires", "duration"),
    "config-max-size": cfg('[cache]\nmax-size = "lots"\n', "[cache] max-size", "size"),
    "config-upload-time": cfg('[publish]\nupload-time = "soon"\n', "upload-time", "upload time"),
    "config-listen": cfg('[serve]\nlisten = "h"\n', "[serve] listen", "HOST:PORT"),
    "config-unknown-key": cfg('[fetch]\npear = "x"\n', "[fetch] pear", "no such option"),
    "config-unknown-table": cfg("[fecth]\njobs = 1\n", "[fecth]", "not a command"),
    "config-command-value": cfg("fetch = 3\n", "fetch", "table"),
    "config-verbose-bool": cfg("verbose = true\n", "verbose", "integer"),
    "config-both-spellings": cfg("[cache]\nmax-size = 1\nmax_size = 2\n", "max", "twice"),
    "config-not-toml": cfg("[fetch\n", "table"),
    "config-not-utf8": cfg(b"[fetch]\njobs = 1 # \xff\n", "UTF-8"),
    # An unreadable config (as root, chmod does not stop reads: a directory
    # where the file should be, or a path through a regular file).
    "config-is-a-directory": Case(("--config", "{tmp}", "show"), ("{tmp}", "directory")),
    "config-under-a-file": Case(("--config", "{tmp}/k/config.toml", "show"), ("{tmp}/k",)),
    "config-missing": Case(("--config", "{tmp}/nope.toml", "show"), ("{tmp}/nope.toml",)),
    "default-config-is-a-directory": Case(
        ("show", "--store", "{tmp}/s"),
        ("{tmp}/xdg/p2pkg/config.toml", "directory"),
        env=(("XDG_CONFIG_HOME", "{tmp}/xdg"),),
    ),
    # Addresses this process cannot listen on: checked before anything starts.
    **{
        f"{cmd}-listen-in-use": opt(
            cmd, "--listen", "127.0.0.1:{tcp}", names="'--listen'", net=True
        )
        for cmd in ["serve", "seed", "cache"]
    },
    **{
        f"{cmd}-dht-listen-in-use": opt(
            cmd, "--dht-listen", "127.0.0.1:{udp}", names="'--dht-listen'", net=True
        )
        for cmd in ["serve", "seed", "cache"]
    },
    "fetch-dht-listen-in-use": opt(
        "fetch",
        *("--dht-listen", "127.0.0.1:{udp}", "--dht-bootstrap", "127.0.0.1:9"),
        names="'--dht-listen'",
        net=True,
    ),
    **{
        f"{cmd}-listen-unresolvable": opt(
            cmd, "--listen", "nosuchhost.invalid:0", names="'--listen'", net=True
        )
        for cmd in ["serve", "seed", "cache"]
    },
    "dht-listen-unresolvable": opt(
        "serve", "--dht-listen", "nosuchhost.invalid:0", names="'--dht-listen'", net=True
    ),
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no machine's own address.
    "listen-not-local": opt("serve", "--listen", "192.0.2.1:0", names="'--listen'", net=True),
    "lan-interface-not-local": opt(
        "cache", "--lan", "--lan-interface", "192.0.2.1", names="'--lan-interface'", net=True
    ),
}


def _params() -> list[object]:
    marks = {True: [pytest.mark.net], False: []}
    return [pytest.param(case, id=name, marks=marks[case.net]) for name, case in CASES.items()]


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_one_line_naming_it_exit_2(tmp_path: Path, case: Case) -> None:
    (tmp_path / "k").write_text("a regular file, where a directory is expected\n")
    (tmp_path / "xdg" / "p2pkg" / "config.toml").mkdir(parents=True)
    config = tmp_path / "p2pkg.toml"
    if case.config is not None:
        data = case.config if isinstance(case.config, bytes) else case.config.encode()
        config.write_bytes(data)
    with contextlib.ExitStack() as held:
        ports = {"tcp": "", "udp": ""}
        if case.net:  # a port another socket holds: a listener, and a bound UDP socket
            tcp = held.enter_context(socket.socket())
            tcp.bind(("127.0.0.1", 0))
            tcp.listen()
            udp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            udp.bind(("127.0.0.1", 0))
            ports = {"tcp": str(tcp.getsockname()[1]), "udp": str(udp.getsockname()[1])}

        def fill(text: str) -> str:
            return text.format(tmp=tmp_path, config=config, **ports)

        args = [fill(a) for a in case.args]
        # No user config leaks in: the default config dir is the test's own.
        env = {"XDG_CONFIG_HOME": str(tmp_path / "no-config"), **{k: fill(v) for k, v in case.env}}
        if case.net:  # the real CLI in a process, bounded
            done = subprocess.run(
                [sys.executable, "-m", "p2pkg.cli", *args],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, **env},
                check=False,
            )
            code, out, err = done.returncode, done.stdout, done.stderr
        else:  # refused while parsing: the same code path, in this process
            result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
            code, out, err = result.exit_code, result.stdout, result.stderr
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert code == 2, err
    for name in case.names:
        assert fill(name) in lines[0], lines[0]
    assert out == ""


def test_a_port_taken_after_the_check_is_still_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another process can bind between the check and the server: the bind error is one line."""
    with pytest.raises(SystemExit) as exited, errors_as_exit():
        raise OSError(errno.EADDRINUSE, "error while attempting to bind: address already in use")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("p2pkg: error: cannot listen")


# ---------------------------------------------------------------------- what stays accepted


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("25MB", 25_000_000),
        ("1GiB", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("100k", 100_000),
        ("12345", 12345),
        (" 20 gb ", 20_000_000_000),
        (".5k", 500),
    ],
)
def test_sizes_parse_as_before(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("12h", 43_200), ("30d", 2_592_000), ("2w", 1_209_600), ("7", 7)],
)
def test_durations_parse_as_before(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_config_keys_are_spelled_like_flags_and_values_like_toml(tmp_path: Path) -> None:
    """Keys as the flags read them (``peer`` was ignored before: click's name is ``peers``)."""
    when = datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.UTC)
    data = {
        "verbose": 1,
        "fetch": {"peer": "http://seed:8000", "lan-interface": ["127.0.0.1"], "json": True},
        "cache": {"rate": 25_000_000, "max-size": "20GB", "lan": False, "refresh": 30},
        "publish": {"upload-time": when, "key": ["/etc/p2pkg/master.key"], "expires": "14d"},
    }
    ctx = click.Context(main)
    assert config_defaults(ctx, main, data, tmp_path / "c.toml") == {
        "verbose": 1,
        "fetch": {"peers": ["http://seed:8000"], "lan_interfaces": ["127.0.0.1"], "as_json": True},
        "cache": {"rate": "25000000", "max_size": "20GB", "lan": False, "refresh": "30"},
        "publish": {
            "upload_time": "2024-05-01T12:00:00+00:00",
            "key": ["/etc/p2pkg/master.key"],
            "expires": "14d",
        },
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_config_without_read_permission_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "p2pkg" / "config.toml"
    config.parent.mkdir()
    config.write_text("[show]\n")
    config.parent.chmod(0)  # the config dir: not even the file's existence can be seen
    try:
        env = {"XDG_CONFIG_HOME": str(tmp_path)}
        result = CliRunner().invoke(main, ["show"], env=env, catch_exceptions=False)
    finally:
        config.parent.chmod(0o700)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and str(config) in result.stderr
