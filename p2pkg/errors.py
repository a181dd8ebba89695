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
    ├── PeerError              one peer misbehaved or failed (carries ``peer``)
    │   ├── ProtocolError          malformed or out-of-limit HTTP from a peer
    │   ├── TransportError         connect failure, reset, timeout, stall
    │   ├── PeerBusyError          503 with Retry-After (the peer's "not now")
    │   ├── AbsentError            the peer does not hold it (404)
    │   └── BadDataError           bytes that fail verification: the peer is banned
    └── FetchError             no peer could deliver (all failed, banned or absent)

Every error carries the data a caller needs to act on it (object id,
expected, actual); the CLI maps each class to one readable line and an exit
code (``p2pkg.cli.EXIT_CODES``).
"""

from __future__ import annotations


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
