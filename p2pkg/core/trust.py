"""Trust decisions on signed roots (docs/security.md, TUF's root rules).

Pure: bytes and ``now`` in, a :class:`TrustedRoot` out, or a :class:`TrustError`.

* **Bootstrap**: the first root a node accepts must carry a valid signature
  by at least one key the user pinned (``--trust``) and a threshold of its
  own keys.
* **Update**: a newer root must be signed by a threshold of the *trusted*
  root's keys (so keys rotate only through the previous keys) and by a
  threshold of its own keys.
* **Rollback**: a lower version is refused; the same version with other
  bytes is a fork (the signer equivocated) and is refused too.
* **Freeze**: the root a node ends on must not be expired. Intermediate
  roots walked through during a chain update may be (TUF 5.3.x).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pkg.core.objects import ObjectId
from p2pkg.core.root import Root, SignedRoot, decode_signed_root
from p2pkg.errors import (
    ExpiredRootError,
    ForkError,
    NamespaceMismatchError,
    RollbackError,
    SignatureError,
    TrustError,
)


@dataclass(frozen=True, slots=True)
class TrustedRoot:
    """A root that passed every check, with its envelope and id."""

    signed: SignedRoot
    root: Root
    id: ObjectId

    @property
    def version(self) -> int:
        return self.root.version


def _require_threshold(
    signed: SignedRoot, keys: Iterable[bytes], threshold: int, whose: str
) -> None:
    good = signed.signers(frozenset(keys))
    if len(good) < threshold:
        raise SignatureError(
            f"root needs {threshold} valid signature(s) from {whose} keys, has {len(good)}"
        )


def check_expiry(trusted: TrustedRoot, now: float) -> TrustedRoot:
    if trusted.root.expires <= now:
        raise ExpiredRootError(trusted.version, trusted.root.expires, now)
    return trusted


def _anchor(pinned: frozenset[bytes], data: bytes) -> TrustedRoot:
    signed, root = decode_signed_root(data)
    _require_threshold(signed, pinned, 1, "pinned")
    _require_threshold(signed, root.keys, root.threshold, "its own")
    return TrustedRoot(signed, root, signed.id)


def bootstrap(pinned: frozenset[bytes], data: bytes, now: float) -> TrustedRoot:
    """Accept a first root: signed by a pinned key and by its own threshold."""
    return check_expiry(_anchor(pinned, data), now)


def _step(trusted: TrustedRoot, data: bytes) -> TrustedRoot:
    signed, root = decode_signed_root(data)
    if root.namespace != trusted.root.namespace:
        raise NamespaceMismatchError(
            f"root for namespace {root.namespace!r}, trusted {trusted.root.namespace!r}"
        )
    new_id = signed.id
    if root.version < trusted.version:
        raise RollbackError(trusted.version, root.version)
    if root.version == trusted.version:
        if new_id != trusted.id and signed.root_bytes != trusted.signed.root_bytes:
            raise ForkError(root.version)
        return trusted
    _require_threshold(signed, trusted.root.keys, trusted.root.threshold, "the trusted root's")
    _require_threshold(signed, root.keys, root.threshold, "its own")
    return TrustedRoot(signed, root, new_id)


def update(trusted: TrustedRoot, data: bytes, now: float) -> TrustedRoot:
    """Move from ``trusted`` to the root in ``data`` if every rule allows it."""
    return check_expiry(_step(trusted, data), now)


def update_chain(trusted: TrustedRoot, chain: Iterable[bytes], now: float) -> TrustedRoot:
    """Walk roots in increasing version order; only the last must be unexpired."""
    current = trusted
    for data in chain:
        current = _step(current, data)
    return check_expiry(current, now)


def trust_chain(pinned: frozenset[bytes], chain: Sequence[bytes], now: float) -> TrustedRoot:
    """Trust the newest root of ``chain`` (roots in increasing version order).

    The anchor is the newest root a pinned key signed (so a node that pinned a
    key introduced by rotation need not validate roots from before it); every
    root after the anchor must follow the update rules; the last must be live.
    """
    if not chain:
        raise SignatureError("no root to trust")
    last_error: TrustError | None = None
    for start in range(len(chain) - 1, -1, -1):
        try:
            anchor = _anchor(pinned, chain[start])
        except TrustError as exc:
            last_error = exc
            continue
        return update_chain(anchor, chain[start + 1 :], now)
    assert last_error is not None
    raise last_error
