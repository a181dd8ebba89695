"""Which DHT records to announce now (sans-IO: keys and ``now`` in, keys out).

Provider records live ``ttl`` seconds on the nodes that hold them, so each
key is announced again once half of that has passed. Something new (a
synced root, an archive newly held) starts a round at once — and that round
announces only what is *due*: keys never announced, and the root record if
it changed. It used to announce every key again: a full seed holds up to
256 bin keys and syncs a root per release, so at a release a minute that
was 256 announcements (each a lookup plus k ADD_PROVIDER) a minute for
records that had not changed; netsim's ``pypi-10k`` counts the difference
(docs/results.md, "The DHT").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class AnnouncePlan:
    """When each key (and the root record) falls due again.

    Stored as instants, not as the time announced: ``due`` and ``next_due``
    then compare the same float with ``now``. (Comparing ``now - last`` in
    one and ``last + refresh`` in the other disagreed by a rounding error
    once in a while, and the announce loop woke for a key that was not due,
    at once, for ever: netsim's pypi-10k found it.)
    """

    ttl: float = 3600.0
    _due: dict[bytes, float] = field(default_factory=dict, repr=False)
    _root: tuple[bytes, float] | None = field(default=None, repr=False)

    @property
    def refresh(self) -> float:
        """Seconds after which an announced record is announced again (half its ttl)."""
        return self.ttl / 2

    def due(self, keys: Iterable[bytes], now: float) -> list[bytes]:
        """The keys among ``keys`` (all those held now) to announce at ``now``, in order.

        New keys and keys last announced ``refresh`` or more seconds ago; keys
        no longer held are forgotten (held again later, they are new again).
        """
        held = dict.fromkeys(keys)
        self._due = {k: t for k, t in self._due.items() if k in held}
        return [k for k in held if k not in self._due or now >= self._due[k]]

    def announced(self, key: bytes, now: float) -> None:
        """``key`` was announced at ``now`` (not called for a failed announcement: still due)."""
        self._due[key] = now + self.refresh

    def root_due(self, data: bytes, now: float) -> bool:
        """Whether the root record ``data`` should be put now: new, or ``refresh`` old."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        return self._root is None or self._root[0] != digest or now >= self._root[1]

    def root_put(self, data: bytes, now: float) -> None:
        self._root = (hashlib.blake2b(data, digest_size=16).digest(), now + self.refresh)

    def next_due(self, now: float) -> float:
        """When the next key falls due (``now + refresh`` when nothing is announced yet)."""
        times = list(self._due.values())
        if self._root is not None:
            times.append(self._root[1])
        return max(now, min(times)) if times else now + self.refresh


__all__ = ["AnnouncePlan"]
