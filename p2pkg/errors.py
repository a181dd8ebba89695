"""The whole p2pkg exception tree.

::

    P2pkgError
    ├── DecodeError            malformed or out-of-limit bytes (objects, roots, keys)
    ├── IntegrityError         bytes that do not hash to what was promised
    ├── TrustError             a root we must not accept
    │   ├── SignatureError         not signed by enough trusted keys
    │   ├── RollbackError          version lower than one already accepted
    │   ├── ForkError              same version, different content
    │   ├── ExpiredRootError       past its ``expires`` (freeze attack)
    │   └── NamespaceMismatchError a root for another namespace
    ├── ArchiveError           a file that is not a valid wheel / sdist
    ├── PublishError           a publish that would break the namespace's rules
    ├── StoreError             a missing, locked or inconsistent store
    ├── KeyFileError           an unreadable or malformed key file
    ├── NotFoundError          a project / file / object the namespace does not hold
    ├── SpecError              a SPEC that is not a valid requirement (``name>=1,<2``)
    ├── LocalError             this machine's disk or database failed (full, permission, I/O)
    ├── PeerError              one peer misbehaved or failed (carries ``peer``)
    │   ├── ProtocolError          malformed or out-of-limit HTTP from a peer
    │   ├── TransportError         connect failure, reset, timeout, stall
    │   │   └── TooSlowError       answering below the rate floor (backed off, not banned)
    │   ├── PeerBusyError          503 with Retry-After (the peer's "not now")
    │   ├── AbsentError            the peer does not hold it (404)
    │   └── BadDataError           bytes that fail verification: the peer is banned
    ├── FetchError             no peer could deliver (all failed, banned or absent)
    └── UpstreamError          an index being mirrored failed (status, connection, size)

Every error carries the data a caller needs to act on it (object id,
expected, actual); the CLI maps each class to one readable line and an exit
code (``p2pkg.cli.EXIT_CODES``).

Errors are mapped once, at the boundary where they arise: socket failures
become :class:`TransportError` in ``p2pkg.io.http`` and nowhere else; a
failing local file or database call becomes :class:`LocalError` where it is
made (:func:`local_io`), so a full disk is never mistaken for a failing peer.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Iterator
from contextlib import contextmanager


class P2pkgError(Exception):
    """Base of every error p2pkg raises on purpose."""


class DecodeError(P2pkgError):
    """Input bytes are malformed, non-canonical or exceed a size limit.

    The single error every decoder raises for bad input (h11's rule: for any
    bytes, a decoder returns a value or raises DecodeError, nothing else).
    """


class IntegrityError(P2pkgError):
    """Data does not match the hash (or size) that a signed object promised."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class TrustError(P2pkgError):
    """A signed root that must not be accepted."""


class SignatureError(TrustError):
    """Not enough valid signatures from the keys that must sign."""


class RollbackError(TrustError):
    """A root whose version is lower than one already accepted."""

    def __init__(self, trusted: int, offered: int) -> None:
        super().__init__(f"root version {offered} is older than trusted version {trusted}")
        self.trusted = trusted
        self.offered = offered


class ForkError(TrustError):
    """Two different roots carry the same version: the signer equivocated."""

    def __init__(self, version: int) -> None:
        super().__init__(f"two different roots claim version {version}")
        self.version = version


class ExpiredRootError(TrustError):
    """The root's ``expires`` has passed (protects against indefinite freeze)."""

    def __init__(self, version: int, expires: int, now: float) -> None:
        super().__init__(f"root version {version} expired at {expires} (now {int(now)})")
        self.version = version
        self.expires = expires
        self.now = now


class NamespaceMismatchError(TrustError):
    """A root for a different namespace than the trusted one."""


class ArchiveError(P2pkgError):
    """A file that is not a valid wheel or sdist (bad name, truncated, no metadata)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class PublishError(P2pkgError):
    """A publish that would violate the namespace's rules (e.g. filename reuse)."""


class StoreError(P2pkgError):
    """The store is missing, locked by another process, or inconsistent."""


class KeyFileError(P2pkgError):
    """A key file or public-key string that cannot be read."""


class NotFoundError(P2pkgError):
    """The namespace holds no such project, file or object."""


class SpecError(P2pkgError):
    """A spec that is not a valid requirement (bad syntax, markers, URLs)."""


class PolicyError(P2pkgError):
    """A namespace search order, pin or claim that cannot be followed (a usage error)."""


#: errno values that mean "this machine cannot do it" rather than "bad input":
#: what :func:`local_io` turns into :class:`LocalError`.
LOCAL_ERRNOS = frozenset(
    {
        _errno.ENOSPC,
        _errno.EDQUOT,
        _errno.EIO,
        _errno.EACCES,
        _errno.EPERM,
        _errno.EROFS,
        _errno.EFBIG,
    }
)

# errno -> (condition, what to do about it); the message is one line.
_CONDITIONS: dict[int, tuple[str, str]] = {
    _errno.ENOSPC: ("no space left on device", "free some space and retry"),
    _errno.EDQUOT: ("disk quota exceeded", "free some space and retry"),
    _errno.EFBIG: ("file too large", "over the file system's file size limit"),
    _errno.EACCES: ("permission denied", "check the owner and mode of the path"),
    _errno.EPERM: ("operation not permitted", "check the owner and mode of the path"),
    _errno.EROFS: ("read-only file system", "use a writable directory"),
    _errno.EIO: ("I/O error", "check the disk"),
}


class LocalError(P2pkgError):
    """A local file or database operation failed: disk full, permission, I/O error.

    This machine's fault, never a peer's: it aborts the whole operation at
    once (no retry on other peers, no peer is penalised or banned) and the
    CLI exits with its own code. ``path`` is the file or directory involved,
    ``errno`` the OS error number (None when SQLite reported it without
    one), ``doing`` what was being done ("writing", "reading", "syncing"...).
    """

    def __init__(self, path: str, errno: int | None, doing: str, detail: str = "") -> None:
        condition, advice = _CONDITIONS.get(errno or 0, (detail or "local failure", ""))
        message = f"{condition} {doing} {path}"
        if advice:
            message += f" ({advice})"
        super().__init__(message)
        self.path = path
        self.errno = errno
        self.doing = doing


def local_error(exc: OSError, path: str | os.PathLike[str] | None, doing: str) -> LocalError:
    """The :class:`LocalError` for ``exc``, raised while ``doing`` ``path``.

    ``path`` None takes the OS error's own file name. The caller raises it
    (``raise local_error(exc, path, "writing") from exc``).
    """
    where = path if path is not None else exc.filename
    return LocalError(
        os.fsdecode(where) if where is not None else "?",
        exc.errno,
        doing,
        detail=exc.strerror or str(exc),
    )


@contextmanager
def local_io(path: str | os.PathLike[str] | None, doing: str) -> Iterator[None]:
    """Map an OSError meaning a local failure (:data:`LOCAL_ERRNOS`) to :class:`LocalError`.

    Use it only around local file and database calls, never around sockets:
    a peer's connection failing is a :class:`TransportError`, mapped in
    ``p2pkg.io.http``. Other OSErrors (ENOENT, ...) pass through unchanged.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in LOCAL_ERRNOS:
            raise
        raise local_error(exc, path, doing) from exc


class PeerError(P2pkgError):
    """Something one peer did; other peers may still serve the request."""

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(f"peer {peer}: {message}")
        self.peer = peer


class ProtocolError(PeerError):
    """The peer spoke malformed or out-of-limit HTTP, or an unexpected status."""

    def __init__(self, peer: str, message: str, status: int | None = None) -> None:
        super().__init__(peer, message)
        self.status = status


class TransportError(PeerError):
    """Connection refused, reset, timed out or stalled."""


class TooSlowError(TransportError):
    """A peer that answers, but below the rate floor (``ClientConfig.min_rate``).

    ``rate`` is what it delivered, in bytes/s, over the window that failed:
    the peer book keeps it as the peer's rate, so the peer is asked last and
    given the smallest spans (slowness is not proof of malice: no ban).
    """

    def __init__(self, peer: str, message: str, rate: float) -> None:
        super().__init__(peer, f"too slow: {message}")
        self.rate = rate


class PeerBusyError(PeerError):
    """The peer answered 503: over its connection or bandwidth budget."""

    def __init__(self, peer: str, retry_after: float) -> None:
        super().__init__(peer, f"busy, retry after {retry_after:g}s")
        self.retry_after = retry_after


class AbsentError(PeerError):
    """The peer answered 404: it does not hold this object or file (not a fault)."""


class BadDataError(PeerError):
    """The peer sent bytes that do not match their id: it gets banned."""


class FetchError(P2pkgError):
    """No peer could deliver what was asked (all failed, were banned, or none had it)."""


class UpstreamError(P2pkgError):
    """An upstream index that ``publish --from-index`` mirrors failed or misbehaved.

    A connection failure, a timeout, an unexpected status (after the bounded
    retries), a body over its size limit. ``url`` is what was asked for,
    ``status`` the HTTP status when one came back. A network failure (exit 8).
    """

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        super().__init__(f"upstream {url}: {message}")
        self.url = url
        self.status = status


def first_p2pkg_error(group: BaseExceptionGroup) -> BaseException:
    """The first p2pkg error inside a task group's exception group (else the group).

    Parallel work (a task group) fails with an exception group; callers that
    handle p2pkg errors (the CLI, a seed's follow loop, the Client) raise
    this instead, so one failed child reads as its own error.
    """
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = first_p2pkg_error(exc)
            if inner is not exc:
                return inner
        elif isinstance(exc, P2pkgError):
            return exc
    return group
