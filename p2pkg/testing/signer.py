"""An in-memory root signer for tests (python-tuf's RepositorySimulator idea)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.core.objects import ObjectId
from p2pkg.core.root import Root, SignedRoot, public_bytes, sign_root

NOW = 1_700_000_000
DAY = 86_400


def make_root(
    version: int,
    keys: Sequence[Ed25519PrivateKey],
    *,
    threshold: int = 1,
    namespace: str = "test",
    tree: bytes = b"\x11" * 32,
    created: int = NOW,
    expires: int = NOW + 30 * DAY,
) -> Root:
    return Root(
        namespace=namespace,
        version=version,
        created=created,
        expires=expires,
        threshold=threshold,
        keys=tuple(sorted(public_bytes(k) for k in keys)),
        tree=ObjectId(tree),
    )


def signed_bytes(root: Root, signers: Sequence[Ed25519PrivateKey]) -> bytes:
    return sign_root(root, list(signers)).encode()


def tamper_signature(data: bytes) -> bytes:
    """Flip one bit in the last signature of an encoded signed root."""
    out = bytearray(data)
    out[-1] ^= 1
    return bytes(out)


__all__ = ["DAY", "NOW", "SignedRoot", "make_root", "signed_bytes", "tamper_signature"]
