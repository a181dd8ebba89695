"""Exit codes and one-line errors: every failure is one line on stderr and a documented code."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from p2pkg.errors import (
    LOCAL_ERRNOS,
    ArchiveError,
    DecodeError,
    FetchError,
    IntegrityError,
    KeyFileError,
    LocalError,
    NotFoundError,
    P2pkgError,
    PeerError,
    PolicyError,
    PublishError,
    SpecError,
    StoreError,
    TrustError,
    UpstreamError,
    first_p2pkg_error,
    local_error,
)

#: Exit codes (documented in ``p2pkg --help`` and docs/operators.md).
EXIT_CODES: dict[type[P2pkgError], int] = {
    TrustError: 3,
    IntegrityError: 4,
    DecodeError: 4,
    ArchiveError: 5,
    PublishError: 5,
    KeyFileError: 5,
    StoreError: 6,
    NotFoundError: 7,
    FetchError: 8,
    PeerError: 8,
    UpstreamError: 8,  # the index publish --from-index mirrors
    LocalError: 9,
    SpecError: 2,  # a requirement that does not parse (e.g. in a file): usage
    PolicyError: 2,  # a namespace order, pin or claim that cannot be followed
}
EXIT_HELP = """\b
Exit codes: 0 ok, 1 verify found problems, 2 usage error (an option, SPEC or
config value), 3 trust failure (signature, rollback, expiry), 4 corrupt or
malformed data, 5 bad input (archive, key, publish rule), 6 store error, 7 not
found, 8 network (no peer could deliver; a mirrored index failed), 9 local
failure (disk full, permission, I/O error)."""

log = logging.getLogger("p2pkg")


def exit_code_for(exc: P2pkgError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def fail(message: str, code: int) -> NoReturn:
    """Print ``p2pkg: error: <message>`` (its first line: errors are one line) and exit."""
    first = next((line for line in message.splitlines() if line.strip()), message)
    click.echo(f"p2pkg: error: {first.rstrip()}", err=True)
    sys.exit(code)


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Turn p2pkg errors into one readable line and their exit code.

    A task group's exception group is unwrapped first: its first p2pkg
    error, or its only exception, is what the user is told about.
    """
    try:
        try:
            yield
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
    except P2pkgError as exc:
        fail(str(exc), exit_code_for(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OSError as exc:
        # Local calls map their own errors (p2pkg.errors.local_io); one that
        # slipped through still means this machine, not bad input.
        if exc.errno in LOCAL_ERRNOS:
            fail(str(local_error(exc, None, "using")), EXIT_CODES[LocalError])
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            # A listen address check_bindable passed, taken in between: still
            # the address the user chose, so a usage error.
            fail(f"cannot listen: {exc.strerror or exc}", 2)
        where = f" {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", 1)


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    found = first_p2pkg_error(group)
    if found is not group:
        return found
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


class OneLineUsageGroup(click.Group):
    """A group whose usage errors are one line on stderr (exit 2), like p2pkg's other errors.

    click prints a usage error as a Usage line, a "Try --help" line and the
    error; p2pkg prints only ``Error: ...``. ``--help`` (and ``p2pkg`` alone,
    which shows the help) are unchanged.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


class UsageLine(click.ClickException):
    """A usage error shown as one line: ``Error: <message>`` and exit code 2."""

    exit_code = 2


def _one_line(exc: click.UsageError) -> click.ClickException:
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc  # its "message" is the help text
    return UsageLine(" ".join(exc.format_message().split()))
