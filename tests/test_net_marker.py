"""The ``net`` marker is enforced: an unmarked test cannot open an IP socket or start a process.

The tests here without the marker run under the conftest guard themselves.
Each refusal they provoke on purpose is expected inside a nested
:func:`offline` block of its own (:func:`refused`): the guard fails a test
whose refusal was caught, and ``pytest.raises`` catches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from .helpers import NET_MESSAGE, UnmarkedNetError, is_offline, offline, offline_unless_net


@contextlib.contextmanager
def refused() -> Iterator[None]:
    """The block must be refused with the guard's message (alone or in a group: anyio's)."""
    with offline() as seen:
        try:
            yield
        except* UnmarkedNetError as group:
            assert all(NET_MESSAGE in str(e) for e in group.exceptions)
        else:
            pytest.fail("not refused")
    assert len(seen) == 1


def test_an_unmarked_test_runs_offline() -> None:
    assert is_offline()


@pytest.mark.net
def test_a_marked_test_does_not() -> None:
    assert not is_offline()


def test_an_unmarked_test_cannot_open_an_ip_socket() -> None:
    with refused():
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with refused():
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with refused():
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_an_unmarked_test_cannot_start_a_process() -> None:
    with refused():
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with refused():
        os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ)


def test_an_unmarked_test_may_use_unix_socket_pairs_and_event_loops() -> None:
    a, b = socket.socketpair()  # what every asyncio loop makes for its self-pipe
    with a, b:
        a.sendall(b"x")
        assert b.recv(1) == b"x"
    assert asyncio.run(asyncio.sleep(0, result=7)) == 7


@pytest.mark.anyio
async def test_an_unmarked_async_test_cannot_connect_or_spawn() -> None:
    with refused():
        await anyio.connect_tcp("127.0.0.1", 9)
    with refused():
        await anyio.run_process([sys.executable, "-c", "pass"])
    with refused():
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")


@pytest.mark.net
def test_a_marked_test_opens_sockets_and_starts_processes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] > 0
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.net
def test_the_guard_is_gone_after_its_block() -> None:
    originals = (socket.socket.__init__, subprocess.Popen.__init__, os.fork)
    with refused():
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    assert (socket.socket.__init__, subprocess.Popen.__init__, os.fork) == originals
    assert "connect" not in vars(socket.socket)  # inherited again, not a leftover copy
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


class _Item:
    """What the guard reads from a pytest item: its markers."""

    def __init__(self, *markers: str) -> None:
        self.markers = markers

    def get_closest_marker(self, name: str) -> Any:
        return name if name in self.markers else None


def _run_phase(item: _Item, body: Callable[[], object]) -> object:
    """Drive the conftest hook wrappers' body around ``body`` as pytest does."""
    phase = offline_unless_net(item)  # type: ignore[arg-type]
    next(phase)
    try:
        body()
    except Exception as exc:
        return phase.throw(exc)
    try:
        phase.send("result")
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the guard yielded twice")


def _connect() -> None:
    socket.create_connection(("127.0.0.1", 9), timeout=1)


def _swallowing() -> None:
    with contextlib.suppress(Exception):  # as code under test might: "peer unreachable"
        _connect()


def _swallowing_then_failing() -> None:
    _swallowing()
    raise ZeroDivisionError


def test_the_hooks_refuse_unmarked_tests_even_when_the_refusal_is_swallowed() -> None:
    with pytest.raises(UnmarkedNetError, match=NET_MESSAGE):
        _run_phase(_Item(), _connect)
    with pytest.raises(UnmarkedNetError, match=NET_MESSAGE):
        _run_phase(_Item(), _swallowing)
    with pytest.raises(UnmarkedNetError, match=NET_MESSAGE) as failed:  # failing otherwise
        _run_phase(_Item(), _swallowing_then_failing)
    assert isinstance(failed.value.__cause__, ZeroDivisionError)
    assert _run_phase(_Item(), lambda: None) == "result"
    with pytest.raises(ZeroDivisionError):
        _run_phase(_Item(), lambda: 1 / 0)


@pytest.mark.net
def test_the_hooks_let_marked_tests_through() -> None:
    assert _run_phase(_Item("net"), _swallowing) == "result"
