"""Trust rules as data tables (TUF's root-update tests are the model)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.core.root import SIGNATURE_CONTEXT, SignedRoot, decode_signed_root, public_bytes
from p2pkg.core.trust import bootstrap, trust_chain, update, update_chain
from p2pkg.errors import (
    ExpiredRootError,
    ForkError,
    NamespaceMismatchError,
    RollbackError,
    SignatureError,
    TrustError,
)
from p2pkg.testing.signer import DAY, NOW, make_root, signed_bytes, tamper_signature

A, B, C = (Ed25519PrivateKey.generate() for _ in range(3))
PIN_A = frozenset({public_bytes(A)})

Step = Callable[[], bytes]


@dataclass(frozen=True)
class Case:
    name: str
    chain: list[Step]  # offered one by one after bootstrapping v1 (keys A)
    error: type[TrustError] | None
    final_version: int = 0


def r(
    version: int, keys: list[Ed25519PrivateKey], signers: list[Ed25519PrivateKey], **kw: object
) -> Step:
    return lambda: signed_bytes(make_root(version, keys, **kw), signers)  # type: ignore[arg-type]


CASES = [
    Case("plain update", [r(2, [A], [A])], None, 2),
    Case("skipping versions is allowed", [r(7, [A], [A])], None, 7),
    Case("same root again is a no-op", [r(1, [A], [A])], None, 1),
    Case("rollback", [r(3, [A], [A]), r(2, [A], [A])], RollbackError),
    Case(
        "fork: same version, other tree",
        [r(2, [A], [A]), r(2, [A], [A], tree=b"\x22" * 32)],
        ForkError,
    ),
    Case("expired", [r(2, [A], [A], expires=NOW - 1, created=NOW - 10)], ExpiredRootError),
    Case("signed by an untrusted key", [r(2, [A], [B])], SignatureError),
    Case(
        "tampered signature",
        [lambda: tamper_signature(signed_bytes(make_root(2, [A]), [A]))],
        SignatureError,
    ),
    Case("rotation A->B signed by both", [r(2, [B], [A, B]), r(3, [B], [B])], None, 3),
    Case("rotation signed only by the new key", [r(2, [B], [B])], SignatureError),
    Case("rotation signed only by the old key", [r(2, [B], [A])], SignatureError),
    Case("old key after rotation", [r(2, [B], [A, B]), r(3, [B], [A])], SignatureError),
    Case("other namespace", [r(2, [A], [A], namespace="other")], NamespaceMismatchError),
    Case(
        "to 2-of-3",
        [r(2, [A, B, C], [A, B], threshold=2), r(3, [A, B, C], [B, C], threshold=2)],
        None,
        3,
    ),
    Case(
        "2-of-3 with one signature",
        [r(2, [A, B, C], [A, B], threshold=2), r(3, [A, B, C], [C], threshold=2)],
        SignatureError,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_update_rules(case: Case) -> None:
    trusted = bootstrap(PIN_A, signed_bytes(make_root(1, [A]), [A]), NOW)
    try:
        for step in case.chain:
            trusted = update(trusted, step(), NOW)
    except TrustError as exc:
        assert case.error is not None, f"unexpected {exc!r}"
        assert isinstance(exc, case.error), f"{case.name}: got {exc!r}"
        return
    assert case.error is None, f"{case.name}: accepted, expected {case.error.__name__}"
    assert trusted.version == case.final_version


BOOTSTRAP_CASES = [
    ("pinned key signs", PIN_A, signed_bytes(make_root(1, [A]), [A]), None),
    (
        "wrong pinned key",
        frozenset({public_bytes(B)}),
        signed_bytes(make_root(1, [A]), [A]),
        SignatureError,
    ),
    (
        "pinned but below own threshold",
        PIN_A,
        signed_bytes(make_root(1, [A, B], threshold=2), [A]),
        SignatureError,
    ),
    (
        "expired first root",
        PIN_A,
        signed_bytes(make_root(1, [A], expires=NOW, created=NOW - 5), [A]),
        ExpiredRootError,
    ),
]


@pytest.mark.parametrize(
    ("name", "pinned", "data", "error"), BOOTSTRAP_CASES, ids=[c[0] for c in BOOTSTRAP_CASES]
)
def test_bootstrap(
    name: str, pinned: frozenset[bytes], data: bytes, error: type[TrustError] | None
) -> None:
    if error is None:
        assert bootstrap(pinned, data, NOW).version == 1
    else:
        with pytest.raises(error):
            bootstrap(pinned, data, NOW)


def test_chain_may_pass_through_expired_roots_but_not_end_on_one() -> None:
    trusted = bootstrap(PIN_A, signed_bytes(make_root(1, [A]), [A]), NOW)
    old = signed_bytes(make_root(2, [B], expires=NOW - DAY, created=NOW - 2 * DAY), [A, B])
    live = signed_bytes(make_root(3, [B]), [B])
    assert update_chain(trusted, [old, live], NOW).version == 3
    with pytest.raises(ExpiredRootError):
        update_chain(trusted, [old], NOW)


def test_trust_chain_anchors_at_a_rotated_key() -> None:
    chain = [
        signed_bytes(make_root(1, [A]), [A]),
        signed_bytes(make_root(2, [B]), [A, B]),
        signed_bytes(make_root(3, [B]), [B]),
    ]
    assert trust_chain(PIN_A, chain, NOW).version == 3
    assert trust_chain(frozenset({public_bytes(B)}), chain, NOW).version == 3
    with pytest.raises(SignatureError):
        trust_chain(frozenset({public_bytes(C)}), chain, NOW)


def test_signature_covers_the_domain_context() -> None:
    root = make_root(2, [A])
    naked = A.sign(root.encode())  # no SIGNATURE_CONTEXT prefix
    forged = SignedRoot(root.encode(), ((public_bytes(A), naked),)).encode()
    trusted = bootstrap(PIN_A, signed_bytes(make_root(1, [A]), [A]), NOW)
    with pytest.raises(SignatureError):
        update(trusted, forged, NOW)
    assert SIGNATURE_CONTEXT.startswith(b"p2pkg/root/")


def test_signed_root_round_trip() -> None:
    data = signed_bytes(make_root(4, [A, B], threshold=2), [A, B])
    signed, root = decode_signed_root(data)
    assert signed.encode() == data
    assert root.version == 4 and root.threshold == 2
