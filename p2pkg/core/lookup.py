"""The DHT's iterative lookup as a pure state machine (sans-IO; ``now`` is passed in).

The driver (:meth:`p2pkg.io.dht.DhtNode.run_lookup`) owns the sockets and the
clock; this module owns every decision: whom to ask, when to stop, what the
answer is. The loop that drives it is::

    lookup = Lookup(target, contacts, now)
    while not lookup.done:
        for contact in lookup.next_requests(now):
            send the RPC to contact
        sleep until lookup.next_deadline() or the next reply
        feed each reply (on_response) or transport failure (on_failure)
    lookup.result

The rules (docs/protocol.md §9):

* Up to ``alpha`` queries are outstanding, closest first; a node is asked at
  most once per lookup.
* A query silent for ``soft_timeout`` no longer holds back the next one and
  counts as failed when deciding to stop, but it stays outstanding until
  ``hard_timeout``: a late answer is still used. So a dead node costs the
  soft timeout, not the hard one.
* Walking the known nodes by distance, skipping those failed or silent past
  the soft timeout: the lookup has converged once the ``k`` closest of them
  have all answered (or none is left to ask) and no query is still within its
  soft timeout.
* A provider lookup (``want`` given) stops as soon as ``want`` distinct
  *confirmed* providers are known (below).
* The whole lookup gives up after ``budget`` seconds with what it has.
* With ``per_host`` set, at most that many node ids per host
  (:func:`~p2pkg.core.dht_records.host_key`) are learned in one lookup, the
  first ones met: one machine with many ports cannot fill a lookup with ids
  of its choosing (the routing table has the same limit).

Provider addresses in replies are **hints** (docs/security.md, "DHT"): a
client opens connections to what a lookup returns, so a lying node must not
be able to aim those connections at a third party. The rules
(:class:`HintRules`):

* one reply contributes at most ``want`` addresses, and at most
  ``per_host`` ports of any one host; the rest of it is ignored;
* an address is *confirmed* when responders on ``vouchers`` distinct hosts
  named it, or when the responder naming it is on the address's own host
  (a node can always send us to itself, whatever we do);
* the answer holds the confirmed addresses first (most vouched for first,
  then in arrival order), then at most ``unconfirmed`` others, never more
  than ``per_host`` ports of one host, never more than ``want`` in all.

So one reply naming 16 ports of a victim yields at most ``unconfirmed``
(2) addresses, and a liar needs hosts of its own to get more confirmed.

Contacts are sanitized by the caller (well-formed ids and addresses); the
machine ignores duplicates, its own id, and responses to queries it is not
waiting for (never sent, sent to another address, already answered, or past
the hard timeout).
"""

from __future__ import annotations

import enum
from bisect import insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pkg.core.dht_records import host_key

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Contact:
    """A node as the lookup sees it: its id and where to reach it."""

    id: bytes
    address: Address


class StopReason(enum.Enum):
    """Why a lookup ended."""

    CONVERGED = "converged"  # the k closest known nodes answered or failed
    ENOUGH_PROVIDERS = "enough_providers"  # `want` confirmed providers are known
    DEADLINE = "deadline"  # the lookup's whole budget ran out
    STOPPED = "stopped"  # the driver called stop()


@dataclass(frozen=True, slots=True)
class HintRules:
    """How provider addresses named in replies become a lookup's answer (see the module)."""

    per_host: int = 2  # ports of one host: taken from one reply, and in the answer
    unconfirmed: int = 2  # addresses in the answer that no second host vouched for
    vouchers: int = 2  # distinct responder hosts that confirm an address

    def __post_init__(self) -> None:
        if self.per_host < 1 or self.unconfirmed < 0 or self.vouchers < 1:
            raise ValueError("need per_host >= 1, unconfirmed >= 0, vouchers >= 1")


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What a finished lookup found."""

    nodes: tuple[Contact, ...]  # the (up to) k closest nodes that answered, closest first
    # The answer of a provider lookup, at most `want`: confirmed providers first
    # (most vouched for first), then the few unconfirmed hints (HintRules).
    providers: tuple[Address, ...]
    reason: StopReason
    queried: int  # queries sent
    answered: int  # queries answered (late answers included)
    failed: int  # queries that failed or passed the hard timeout
    elapsed: float  # seconds from the start to the stop
    hints: tuple[Address, ...] = ()  # the unconfirmed addresses among `providers`


@dataclass(frozen=True, slots=True)
class _Query:
    """An outstanding query. Timeouts are stored as instants so that every
    comparison with ``now`` agrees with :meth:`Lookup.next_deadline` (computing
    ``now - sent`` instead can round the other way and miss a wake-up)."""

    contact: Contact
    soft_at: float
    hard_at: float


def distance(a: bytes, b: bytes) -> int:
    """Kademlia's XOR metric (ids as big-endian integers, like ``kademlia.node.Node``)."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class Lookup:
    """One iterative lookup of ``target``: feed it events, ask it what to send.

    Every method that takes ``now`` first applies the timeouts that passed by
    then; ``now`` is any monotonic clock in seconds (an earlier value than one
    seen before is treated as that one).
    """

    def __init__(
        self,
        target: bytes,
        contacts: Iterable[Contact],
        now: float,
        *,
        k: int = 20,
        alpha: int = 3,
        soft_timeout: float = 0.25,
        hard_timeout: float = 2.0,
        budget: float | None = None,
        want: int | None = None,
        exclude: Iterable[bytes] = (),
        per_host: int | None = None,
        hints: HintRules | None = None,
    ) -> None:
        """Start a lookup from ``contacts`` (the routing table's closest to ``target``).

        ``budget`` defaults to ``4 * hard_timeout + 2`` seconds; ``want`` makes it
        a provider lookup; ``exclude`` lists ids never to ask (our own);
        ``per_host`` caps the node ids learned per host (None: no cap);
        ``hints`` says how provider addresses become the answer.
        """
        if k < 1 or alpha < 1:
            raise ValueError("k and alpha must be at least 1")
        if not 0 < soft_timeout <= hard_timeout:
            raise ValueError("need 0 < soft_timeout <= hard_timeout")
        if per_host is not None and per_host < 1:
            raise ValueError("per_host must be at least 1")
        self.target = target
        self.k = k
        self.alpha = alpha
        self.soft_timeout = soft_timeout
        self.hard_timeout = hard_timeout
        self.want = want
        self.per_host = per_host
        self.hints = hints or HintRules()
        self._start = now
        self._now = now
        self._end = now + (4 * hard_timeout + 2.0 if budget is None else budget)
        self._exclude = frozenset(exclude)
        self._known: dict[bytes, Contact] = {}
        self._order: list[tuple[int, bytes]] = []  # known ids by distance to the target
        self._in_flight: dict[bytes, _Query] = {}
        self._answered: dict[bytes, Contact] = {}
        self._failed: set[bytes] = set()
        self._hosts: dict[str, int] = {}  # node ids learned per host (with per_host)
        # provider address -> hosts of the responders that named it, in arrival order
        self._vouched: dict[Address, set[str]] = {}
        self._queried = 0
        self._result: LookupResult | None = None
        self._learn(contacts)
        self._advance(now)  # no contacts: done at once; a budget of 0: done at once

    # ------------------------------------------------------------------ queries

    @property
    def done(self) -> bool:
        """True once the lookup has stopped (see :attr:`result`)."""
        return self._result is not None

    @property
    def result(self) -> LookupResult:
        """The outcome; only once :attr:`done`."""
        if self._result is None:
            raise RuntimeError("the lookup has not finished")
        return self._result

    def next_requests(self, now: float) -> list[Contact]:
        """Whom to query now (closest first); each is then outstanding, sent at ``now``."""
        self._advance(now)
        if self._result is not None:
            return []
        to_ask = self._walk()
        # Queries silent past the soft timeout do not hold a slot: a dead node
        # must not stall the lookup until its hard timeout.
        free = self.alpha - self._fresh()
        asked = to_ask[: max(0, free)]
        for contact in asked:
            self._in_flight[contact.id] = _Query(
                contact, self._now + self.soft_timeout, self._now + self.hard_timeout
            )
        self._queried += len(asked)
        return asked

    def next_deadline(self) -> float | None:
        """When the driver must call back (with any method taking ``now``), or None once done.

        The earliest of: a query reaching its soft timeout (frees its slot and may
        end the lookup), a query reaching its hard timeout, the lookup's budget.
        """
        if self._result is not None:
            return None
        deadline = self._end
        for query in self._in_flight.values():
            deadline = min(deadline, query.hard_at if self._slow(query) else query.soft_at)
        return deadline

    # ------------------------------------------------------------------ events

    def on_response(
        self,
        contact: Contact,
        nodes: Sequence[Contact],
        providers: Sequence[Address],
        now: float,
    ) -> bool:
        """``contact`` answered with closer ``nodes`` (and, for a provider lookup, ``providers``;
        they are ignored otherwise).

        Returns False, dropping the answer, when no query to exactly this
        contact is outstanding (unsolicited, a duplicate, from another address,
        past the hard timeout, or after the end).
        """
        self._advance(now)
        query = self._in_flight.get(contact.id)
        # `!=` also drops an answer for an id we asked that comes from another address.
        if self._result is not None or query is None or query.contact != contact:
            return False
        del self._in_flight[contact.id]
        self._answered[contact.id] = contact
        if self.want is not None:
            self._tally(contact, providers, self.want)
            confirmed, _ = self._answer()
            if len(confirmed) >= self.want:
                self._finish(StopReason.ENOUGH_PROVIDERS)
                return True
        self._learn(nodes)
        self._settle()
        return True

    def on_failure(self, contact: Contact, now: float) -> bool:
        """The query to ``contact`` failed (no usable answer by the transport's timeout).

        Returns False, ignoring it, when no query to this contact is outstanding.
        """
        self._advance(now)
        query = self._in_flight.get(contact.id)
        if self._result is not None or query is None or query.contact != contact:
            return False
        del self._in_flight[contact.id]
        self._failed.add(contact.id)
        self._settle()
        return True

    def stop(self, now: float) -> None:
        """End the lookup now with what it has (the driver's own reason, e.g. a value found)."""
        self._advance(now)
        if self._result is None:
            self._finish(StopReason.STOPPED)

    # ------------------------------------------------------------------ internals

    def _learn(self, contacts: Iterable[Contact]) -> None:
        for contact in contacts:
            # First address wins: a later reply cannot redirect a node we know.
            if contact.id in self._known or contact.id in self._exclude:
                continue
            if self.per_host is not None:
                host = host_key(contact.address[0])
                if self._hosts.get(host, 0) >= self.per_host:
                    continue
                self._hosts[host] = self._hosts.get(host, 0) + 1
            self._known[contact.id] = contact
            insort(self._order, (distance(contact.id, self.target), contact.id))

    def _slow(self, query: _Query) -> bool:
        return self._now >= query.soft_at

    def _fresh(self) -> int:
        return sum(1 for q in self._in_flight.values() if not self._slow(q))

    def _advance(self, now: float) -> None:
        if self._result is not None:
            return
        self._now = max(self._now, now)
        expired = [i for i, q in self._in_flight.items() if self._now >= q.hard_at]
        for node_id in expired:
            del self._in_flight[node_id]
            self._failed.add(node_id)
        if self._now >= self._end:
            self._finish(StopReason.DEADLINE)
        else:
            self._settle()

    def _walk(self) -> list[Contact]:
        """Whom to ask next: an empty list means the k closest usable nodes all answered.

        Walks known nodes by distance, skipping failed ones and those silent
        past the soft timeout (a late answer brings them back), counting the
        answered and collecting the not yet asked until ``k`` of the two; a
        query within its soft timeout is neither (it may still bring closer nodes).
        """
        count = 0
        to_ask: list[Contact] = []
        for _, node_id in self._order:
            if node_id in self._failed:
                continue
            query = self._in_flight.get(node_id)
            if query is not None and self._slow(query):
                continue
            if node_id in self._answered:
                count += 1
                if count >= self.k:
                    break
                continue
            if query is None:
                to_ask.append(self._known[node_id])
            if len(to_ask) + count >= self.k:
                break
        return to_ask

    def _settle(self) -> None:
        """Stop if converged: nothing left to ask near the target and nothing fresh in flight."""
        if self._result is not None:
            return
        if self._fresh() == 0 and not self._walk():
            self._finish(StopReason.CONVERGED)

    def _finish(self, reason: StopReason) -> None:
        answered = sorted(self._answered.values(), key=lambda c: distance(c.id, self.target))
        confirmed, hints = self._answer()
        self._result = LookupResult(
            nodes=tuple(answered[: self.k]),
            providers=(*confirmed, *hints),
            reason=reason,
            queried=self._queried,
            answered=len(self._answered),
            failed=len(self._failed),
            elapsed=self._now - self._start,
            hints=tuple(hints),
        )
        self._in_flight.clear()

    def _tally(self, contact: Contact, providers: Sequence[Address], want: int) -> None:
        """Count ``contact``'s host as a voucher for the addresses its reply names."""
        responder = host_key(contact.address[0])
        taken: dict[str, int] = {}
        seen: set[Address] = set()
        for provider in providers:
            if len(seen) >= want:
                break  # one reply contributes at most `want` addresses
            host = host_key(provider[0])
            if provider in seen or taken.get(host, 0) >= self.hints.per_host:
                continue
            seen.add(provider)
            taken[host] = taken.get(host, 0) + 1
            self._vouched.setdefault(provider, set()).add(responder)

    def _confirmed(self, provider: Address) -> bool:
        vouchers = self._vouched[provider]
        return len(vouchers) >= self.hints.vouchers or host_key(provider[0]) in vouchers

    def _answer(self) -> tuple[list[Address], list[Address]]:
        """The answer so far: (confirmed providers, unconfirmed hints), under HintRules."""
        if self.want is None:
            return [], []
        rules = self.hints
        per_host: dict[str, int] = {}

        def room(provider: Address) -> bool:
            host = host_key(provider[0])
            if per_host.get(host, 0) >= rules.per_host:
                return False
            per_host[host] = per_host.get(host, 0) + 1
            return True

        ranked = sorted(  # stable: among equals, the order they arrived in
            (p for p in self._vouched if self._confirmed(p)),
            key=lambda p: len(self._vouched[p]),
            reverse=True,
        )
        confirmed = [p for p in ranked if room(p)][: self.want]
        hints: list[Address] = []
        for provider in self._vouched:
            if len(confirmed) + len(hints) >= self.want or len(hints) >= rules.unconfirmed:
                break
            if not self._confirmed(provider) and room(provider):
                hints.append(provider)
        return confirmed, hints


__all__ = ["Address", "Contact", "HintRules", "Lookup", "LookupResult", "StopReason", "distance"]
