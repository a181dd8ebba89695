"""Shared test helpers: store snapshots, bounded waits, the guard behind ``@pytest.mark.net``."""

from __future__ import annotations

import _posixsubprocess
import contextlib
import inspect
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

T = TypeVar("T")


def snapshot(store_dir: Path) -> tuple[object, ...]:
    """Everything observable in a store: every table's rows and every file's bytes."""
    db = sqlite3.connect(store_dir / "index.sqlite")
    try:
        tables = tuple(
            tuple(sorted(db.execute(f"SELECT * FROM {t}").fetchall()))
            for t in ("meta", "objects", "roots", "files", "chunks")
        )
    finally:
        db.close()
    files = tuple(
        sorted(
            (str(p.relative_to(store_dir)), p.read_bytes())
            for p in (store_dir / "files").rglob("*")
            if p.is_file()
        )
    )
    return tables, files


# ---------------------------------------------------------------------- bounded waits


def wait_until(
    condition: Callable[[], T], *, timeout: float = 10.0, what: str, step: float = 0.05
) -> T:
    """Poll ``condition()`` until it returns something truthy, and return that.

    For sync tests waiting on another process (a file appearing, a status
    field changing). Raises :class:`TimeoutError` naming ``what`` after
    ``timeout`` seconds; ``condition`` may take time itself (an HTTP query).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(step)


async def await_until(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    what: str,
    step: float = 0.02,
) -> T:
    """The async :func:`wait_until`: ``condition`` may be a coroutine function.

    Polls every ``step`` seconds (other tasks run in between) under
    ``anyio.move_on_after``; raises :class:`TimeoutError` naming ``what``.
    Prefer an Event when the code under test offers one; for fakes where no
    time passes, ``tests.fakes.until`` (checkpoints only) is the right tool.
    """
    with anyio.move_on_after(timeout):
        while True:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await anyio.sleep(step)
    raise TimeoutError(f"gave up after {timeout} s waiting for {what}")


# ---------------------------------------------------------------------- the `net` marker's guard

NET_MESSAGE = "test opens a network socket / starts a process but is not marked @pytest.mark.net"

#: Socket families a test without ``@pytest.mark.net`` may not use. AF_UNIX stays
#: allowed: every asyncio event loop makes a ``socketpair()`` for its self-pipe.
NET_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})


class UnmarkedNetError(Exception):
    """A test without ``@pytest.mark.net`` opened an IP socket or started a process.

    Not an :class:`OSError`: code under test that handles network errors must
    not swallow it (and the guard fails the test anyway if something does).
    """


#: One list of refusals per active :func:`offline` block, innermost last.
_blocks: list[list[str]] = []


def _refuse(what: str) -> UnmarkedNetError:
    _blocks[-1].append(what)
    return UnmarkedNetError(f"{NET_MESSAGE}: {what}")


_real_socket_init = socket.socket.__init__


def _socket_init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
    _real_socket_init(self, *args, **kwargs)
    # Checked after the fact, so a socket made from a file descriptor counts too.
    if self.family in NET_FAMILIES:
        self.close()
        raise _refuse(f"socket({self.family!r}, {self.type!r})")


def _ip_only(name: str) -> Callable[..., Any]:
    real = getattr(socket.socket, name)

    def method(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if self.family in NET_FAMILIES:  # a socket made before the guard started
            raise _refuse(f"socket.{name}{args!r}")
        return real(self, *args, **kwargs)

    return method


def _no_process(name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise _refuse(f"{name}{args[:1]!r}")

    return call


def _popen_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
    raise _refuse(f"subprocess.Popen({args!r})")


_PATCHES: list[tuple[object, str, object]] = [
    (socket.socket, "__init__", _socket_init),
    (socket.socket, "connect", _ip_only("connect")),
    (socket.socket, "connect_ex", _ip_only("connect_ex")),
    (socket.socket, "bind", _ip_only("bind")),
    # Popen covers subprocess.run, asyncio and anyio subprocesses and os.popen;
    # the rest are the other ways to start a process (fork_exec: multiprocessing).
    (subprocess.Popen, "__init__", _popen_init),
    (_posixsubprocess, "fork_exec", _no_process("fork_exec")),
    (os, "fork", _no_process("os.fork")),
    (os, "forkpty", _no_process("os.forkpty")),
    (os, "posix_spawn", _no_process("os.posix_spawn")),
    (os, "posix_spawnp", _no_process("os.posix_spawnp")),
    (os, "system", _no_process("os.system")),
]


@contextlib.contextmanager
def offline() -> Iterator[list[str]]:
    """Refuse IP sockets and new processes for the block's duration.

    Yields the list of what was refused in this block, so a caller can fail
    a test even when the code under test caught the error. Blocks nest: the
    innermost one records (and the patches come off with the outermost).
    """
    refused: list[str] = []
    saved: list[tuple[object, str, object]] = []
    if not _blocks:
        # What each target held itself (None: a class inherits it; restored by deleting ours).
        saved = [(target, name, vars(target).get(name)) for target, name, _ in _PATCHES]
        for target, name, replacement in _PATCHES:
            setattr(target, name, replacement)
    _blocks.append(refused)
    try:
        yield refused
    finally:
        _blocks.pop()
        if not _blocks:
            for target, name, original in saved:
                if original is None:
                    delattr(target, name)
                else:
                    setattr(target, name, original)


def is_offline() -> bool:
    """Whether an :func:`offline` block is active (in every test without ``net``)."""
    return bool(_blocks)


def offline_unless_net(item: pytest.Item) -> Generator[None, object, object]:
    """The body of the conftest hook wrappers: run one phase of ``item`` offline unless marked.

    Raises :class:`UnmarkedNetError` when the phase opened an IP socket or
    started a process, even if the code under test caught the first error.
    """
    if item.get_closest_marker("net") is not None:
        return (yield)
    with offline() as refused:
        try:
            result = yield
        except Exception as exc:
            if refused and not isinstance(exc, UnmarkedNetError):
                raise UnmarkedNetError(f"{NET_MESSAGE}: {refused[0]}") from exc
            raise
    if refused:  # the code under test caught the refusal: the test still fails
        raise UnmarkedNetError(f"{NET_MESSAGE}: {refused[0]}")
    return result
