"""Fakes for the Link seam: peers serving roots and objects with seeded faults, fake clocks.

A :class:`FakeLink` is one peer as :class:`p2pkg.core.link.Link` describes
it. It holds signed roots by version and object frames by id, counts every
call, and misbehaves as its ``mode`` says (one of :data:`MODES`). A test can
hold every call at a ``gate`` (an :class:`anyio.Event` it sets later) to make
a peer slow without sleeping. A ``trickle`` peer answers as the HTTP client
sees a peer sending a byte a second: nothing for ``trickle_for`` seconds,
then :class:`~p2pkg.io.http.client.TooSlowError` (the client's rate floor).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Sequence

import anyio
from anyio.lowlevel import checkpoint
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pkg.core.link import Sink
from p2pkg.core.objects import ObjectId, compress, decompress
from p2pkg.errors import AbsentError, PeerBusyError, ProtocolError, TooSlowError, TransportError
from p2pkg.testing.signer import DAY, NOW, make_root, signed_bytes

#: ok, and the ways a peer fails: refused, reset mid-answer, bad bytes, 404, 503,
#: never answers, cannot answer ``POST /objects`` (a static file server), answers
#: below the rate floor (cut off by the client after ``trickle_for`` seconds).
MODES = ("ok", "drop", "reset", "corrupt", "absent", "busy", "stall", "static", "trickle")

#: The master's key, the key it rotates to, and a forger's key nobody trusts.
A, B, F = (Ed25519PrivateKey.generate() for _ in range(3))


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition()`` holds (the caller bounds it: fail_after)."""
    while not condition():
        await checkpoint()


class FakeClock:
    """A clock that moves only when the test says so (``clock=`` / ``monotonic=``)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def frame(canonical: bytes) -> bytes:
    """The wire form of an object or root (a zstd frame)."""
    return compress(canonical)


def tree_id(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def honest_roots(newest: int, *, rotate_at: int | None = None) -> dict[int, bytes]:
    """Canonical signed roots v1..``newest`` of the master (A, rotating to B at ``rotate_at``)."""
    out = {}
    for v in range(1, newest + 1):
        if rotate_at is None or v < rotate_at:
            keys, signers = [A], [A]
        else:
            keys, signers = [B], [A, B] if v == rotate_at else [B]
        root = make_root(v, keys, tree=tree_id(f"honest {v}"), created=NOW + v)
        out[v] = signed_bytes(root, signers)
    return out


def bogus_root(
    version: int,
    *,
    keys: Sequence[Ed25519PrivateKey] = (A,),
    signers: Sequence[Ed25519PrivateKey] = (F,),
    label: str = "bogus",
    expires: int = NOW + 30 * DAY,
) -> bytes:
    """A root honest peers never serve: forged (default), forked or expired."""
    root = make_root(version, keys, tree=tree_id(label), created=NOW, expires=expires)
    return signed_bytes(root, signers)


class FakeLink:
    """One peer: roots by version (``latest`` for "newest"), objects by id, a fault mode."""

    def __init__(
        self,
        url: str,
        *,
        roots: dict[int, bytes] | None = None,
        latest: int | None = None,
        objects: dict[ObjectId, bytes] | None = None,
        lies: dict[ObjectId, bytes] | None = None,
        mode: str = "ok",
        rng: random.Random | None = None,
        trickle_for: float = 5.0,
    ) -> None:
        assert mode in MODES, mode
        self.url = url
        self.roots = {v: frame(r) for v, r in (roots or {}).items()}  # version -> frame
        self.latest = latest
        self.held = {oid: frame(data) for oid, data in (objects or {}).items()}
        self.lies = dict(lies or {})  # oid -> frame served in its place
        self.mode = mode
        self.rng = rng or random.Random(0)
        self.trickle_for = trickle_for  # real seconds before the floor cuts a trickle
        self.gate: anyio.Event | None = None  # when set by the test: calls wait for it
        self.calls: Counter[str] = Counter()
        self.versions_asked: list[int | None] = []
        self.batches: list[list[ObjectId]] = []
        self.damaged = 0  # answers a corrupt peer damaged

    async def _enter(self, what: str) -> None:
        self.calls[what] += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.mode == "stall":
            await anyio.Event().wait()  # never set: the peer never answers
        if self.mode == "trickle":
            await anyio.sleep(self.trickle_for)
            raise TooSlowError(self.url, "1 B/s below the floor 32768 B/s", 1.0)
        if self.mode == "drop":
            raise TransportError(self.url, "connection refused")
        if self.mode == "reset":
            await checkpoint()
            raise TransportError(self.url, "connection reset by peer")
        if self.mode == "absent":
            raise AbsentError(self.url, f"{what}: not held (404)")
        if self.mode == "busy":
            raise PeerBusyError(self.url, 1.0)

    def _serve(self, data: bytes) -> bytes:
        """``data`` as this peer sends it: corrupt peers damage every answer."""
        if self.mode != "corrupt":
            return data
        self.damaged += 1
        if self.rng.random() < 0.5:
            return data[: self.rng.randrange(1, len(data))]  # a broken frame
        canonical = bytearray(decompress(data))
        canonical[self.rng.randrange(len(canonical))] ^= 1 << self.rng.randrange(8)
        return frame(bytes(canonical))  # a sound frame of the wrong bytes

    async def span(self, blake3: bytes, start: int, stop: int, size: int, sink: Sink) -> None:
        raise AbsentError(self.url, "no archives here")

    async def chunks(self, ids: Sequence[bytes], size: int, sink: Sink) -> None:
        raise AbsentError(self.url, "no chunks here")

    async def object(self, oid: ObjectId) -> bytes:
        await self._enter("object")
        data = self.lies.get(oid) or self.held.get(oid)
        if data is None:
            raise AbsentError(self.url, f"object {oid.hex()[:16]}: not held (404)")
        return self._serve(data)

    async def objects(self, oids: Sequence[ObjectId]) -> list[bytes]:
        self.batches.append(list(oids))
        await self._enter("objects")
        if self.mode == "static":
            raise ProtocolError(self.url, "object batch: HTTP 405", 405)
        return [
            self._serve(d) if (d := self.lies.get(o) or self.held.get(o)) else b"" for o in oids
        ]

    async def root(self, version: int | None = None) -> bytes:
        self.versions_asked.append(version)
        await self._enter("root")
        v = (self.latest or max(self.roots, default=0)) if version is None else version
        data = self.roots.get(v)
        if data is None:
            raise AbsentError(self.url, f"root {v}: not held (404)")
        return self._serve(data)

    def close(self) -> None:
        pass


__all__ = [
    "MODES",
    "A",
    "B",
    "F",
    "FakeClock",
    "FakeLink",
    "bogus_root",
    "frame",
    "honest_roots",
    "tree_id",
    "until",
]
