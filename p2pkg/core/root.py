"""The signed root: the only mutable, only signed object (docs/protocol.md §4).

A :class:`Root` names the namespace, its version, validity window, the keys
allowed to sign the *next* root (and their threshold) and the id of the
namespace tree. A :class:`SignedRoot` is a root's canonical bytes plus
Ed25519 signatures over ``b"p2pkg/root/v1\\x00" + root_bytes``. Pure code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from p2pkg.config import LIMITS, Limits
from p2pkg.core.codec import Reader, Writer, check_strictly_sorted
from p2pkg.core.objects import FORMAT, Kind, ObjectId, object_id, peek_kind
from p2pkg.errors import DecodeError, KeyFileError

SIGNATURE_CONTEXT = b"p2pkg/root/v1\x00"
PUBKEY_LEN = 32
SIG_LEN = 64
PUBKEY_PREFIX = "ed25519:"
_NAMESPACE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,62}[a-z0-9])?$")


def check_namespace(name: str) -> None:
    if not _NAMESPACE_RE.match(name):
        raise DecodeError(f"invalid namespace name {name!r} (a-z, 0-9, '.', '-'; 1-64 chars)")


def mirror_url_problem(url: str, limits: Limits = LIMITS) -> str | None:
    """Why ``url`` cannot be in a root's mirror list (None when it can).

    ``http(s)://host[:port][/path]``: no user info, query or fragment, no
    whitespace, at most ``max_url_len`` bytes. (Clients use the http ones;
    p2pkg's peer client speaks plain HTTP, content is verified by hash.)
    """
    if len(url.encode()) > limits.max_url_len:
        return f"longer than {limits.max_url_len} bytes"
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be http://HOST[:PORT][/PATH] (or https)"
    if parts.username is not None or parts.query or parts.fragment:
        return "must not carry user info, a query or a fragment"
    if port == 0:
        return "port 0"
    return None


@dataclass(frozen=True, slots=True)
class Root:
    """The signed part of a root."""

    namespace: str
    version: int
    created: int
    expires: int
    threshold: int
    keys: tuple[bytes, ...]
    tree: ObjectId
    upstream_serial: int = 0
    mirrors: tuple[str, ...] = ()

    def encode(self) -> bytes:
        w = Writer()
        w.u8(Kind.ROOT)
        w.u8(FORMAT)
        w.text(self.namespace)
        w.uvarint(self.version)
        w.uvarint(self.created)
        w.uvarint(self.expires)
        w.uvarint(self.threshold)
        keys = sorted(self.keys)
        w.uvarint(len(keys))
        for k in keys:
            w.raw(k)
        w.hash(self.tree)
        w.uvarint(self.upstream_serial)
        w.uvarint(len(self.mirrors))
        for m in self.mirrors:
            w.text(m)
        return w.getvalue()


def decode_root(data: bytes, limits: Limits = LIMITS) -> Root:
    """Decode the signed part of a root; checks structure, not signatures."""
    if peek_kind(data) != Kind.ROOT:
        raise DecodeError("not a root object")
    r = Reader(data)
    r.raw(2)
    namespace = r.text(64)
    check_namespace(namespace)
    version = r.uvarint()
    if version < 1:
        raise DecodeError("root version must be >= 1")
    created = r.uvarint()
    expires = r.uvarint()
    if expires <= created:
        raise DecodeError("root expires before it was created")
    threshold = r.uvarint(limits.max_keys)
    keys = tuple(r.items(limits.max_keys, PUBKEY_LEN, lambda r: r.raw(PUBKEY_LEN)))
    check_strictly_sorted(list(keys), "root keys")
    if not 1 <= threshold <= len(keys):
        raise DecodeError(f"threshold {threshold} impossible with {len(keys)} keys")
    tree = ObjectId(r.hash())
    serial = r.uvarint()
    mirrors = tuple(r.items(limits.max_mirrors, 1, lambda r: r.text(limits.max_url_len)))
    r.end()
    return Root(namespace, version, created, expires, threshold, keys, tree, serial, mirrors)


@dataclass(frozen=True, slots=True)
class SignedRoot:
    """A root's canonical bytes with the signatures over them."""

    root_bytes: bytes
    signatures: tuple[tuple[bytes, bytes], ...]  # (public key, signature), sorted by key

    def encode(self) -> bytes:
        w = Writer()
        w.u8(Kind.SIGNED_ROOT)
        w.u8(FORMAT)
        w.bytes_(self.root_bytes)
        sigs = sorted(self.signatures)
        w.uvarint(len(sigs))
        for key, sig in sigs:
            w.raw(key)
            w.raw(sig)
        return w.getvalue()

    @property
    def id(self) -> ObjectId:
        return object_id(self.encode())

    @property
    def root(self) -> Root:
        return decode_root(self.root_bytes)

    def signers(self, allowed: frozenset[bytes]) -> frozenset[bytes]:
        """Keys in ``allowed`` whose signature over the root verifies."""
        message = SIGNATURE_CONTEXT + self.root_bytes
        good = set()
        for key, sig in self.signatures:
            if key not in allowed:
                continue
            try:
                Ed25519PublicKey.from_public_bytes(key).verify(sig, message)
            except (InvalidSignature, ValueError):
                continue
            good.add(key)
        return frozenset(good)


def decode_signed_root(data: bytes, limits: Limits = LIMITS) -> tuple[SignedRoot, Root]:
    """Decode a signed root envelope and the root inside it (signatures unchecked)."""
    if len(data) > limits.max_root_size:
        raise DecodeError(f"root of {len(data)} bytes exceeds {limits.max_root_size}")
    if peek_kind(data) != Kind.SIGNED_ROOT:
        raise DecodeError("not a signed root")
    r = Reader(data)
    r.raw(2)
    root_bytes = r.bytes_(limits.max_root_size)
    sigs = r.items(
        limits.max_keys,
        PUBKEY_LEN + SIG_LEN,
        lambda r: (r.raw(PUBKEY_LEN), r.raw(SIG_LEN)),
    )
    r.end()
    check_strictly_sorted([k for k, _ in sigs], "signature keys")
    root = decode_root(root_bytes, limits)
    return SignedRoot(root_bytes, tuple(sigs)), root


def sign_root(root: Root, private_keys: list[Ed25519PrivateKey]) -> SignedRoot:
    """Sign ``root`` with each key; signatures are deterministic (Ed25519)."""
    root_bytes = root.encode()
    message = SIGNATURE_CONTEXT + root_bytes
    sigs = {public_bytes(k): k.sign(message) for k in private_keys}
    return SignedRoot(root_bytes, tuple(sorted(sigs.items())))


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def format_pubkey(key: bytes) -> str:
    """The one-line form ``--trust`` accepts: ``ed25519:<64 hex digits>``."""
    return PUBKEY_PREFIX + key.hex()


def parse_pubkey(text: str) -> bytes:
    """Parse ``ed25519:<hex>`` (the output of ``p2pkg keygen``)."""
    text = text.strip()
    if not text.startswith(PUBKEY_PREFIX):
        raise KeyFileError(f"public key must start with {PUBKEY_PREFIX!r}: {text[:20]!r}")
    try:
        key = bytes.fromhex(text[len(PUBKEY_PREFIX) :])
    except ValueError:
        raise KeyFileError("public key is not hex") from None
    if len(key) != PUBKEY_LEN:
        raise KeyFileError(f"public key must be {PUBKEY_LEN} bytes, got {len(key)}")
    try:
        Ed25519PublicKey.from_public_bytes(key)
    except ValueError as exc:
        raise KeyFileError(f"invalid Ed25519 public key: {exc}") from None
    return key
