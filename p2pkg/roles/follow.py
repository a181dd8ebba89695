"""The root follower: the trusted root a node holds, and how it moves forward.

One part, used by the client, the seed and the cache alike:

* **Local chain** — at start the follower trusts the newest root of its
  store's chain that the pinned keys lead to
  (:func:`p2pkg.core.trust.trust_chain`, the one chain rule; expiry is
  checked when the root is *used*, not when it is loaded, so a node with
  an expired root still learns the newer one from its peers).
* **Refresh** — ask every live peer for its latest root, try offers newest
  first under the acceptance rules (threshold signatures by the trusted
  keys, no rollback, no fork, not expired; a key rotation is walked root by
  root), and trust the first one that passes. A peer whose root fails is
  logged, not banned: an old root is what a stale seed legitimately serves.
  A refresh never waits on the slowest peer (TUF's slow-retrieval attack):
  once one usable root is in, the others get a grace period (twice what the
  first took, at least ``grace``); nobody gets more than ``deadline``; a
  peer cut off is counted as a failure in the peer book.
* **Persistence policy** — ``persist=True`` records every accepted root in
  the store at once (client, cache: rollback protection across runs);
  ``persist=False`` leaves that to the caller (a seed records a root only
  once everything under it is synced, so the root it serves is complete).
* **Following** — :meth:`follow` refreshes every ``interval`` (at once when
  :meth:`poke`\\ d, e.g. by a push), hands each root to a callback, and backs
  off exponentially while peers fail; :meth:`current` is the on-demand
  form (refresh when older than ``max_age``, one refresh at a time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus

from p2pkg.config import LIMITS
from p2pkg.core.objects import decompress
from p2pkg.core.peers import Tier
from p2pkg.core.root import decode_signed_root
from p2pkg.core.trust import TrustedRoot, bootstrap, check_expiry, trust_chain, update, update_chain
from p2pkg.errors import (
    DecodeError,
    ExpiredRootError,
    FetchError,
    P2pkgError,
    PeerError,
    ProtocolError,
    SignatureError,
    TrustError,
)
from p2pkg.io.store import Store
from p2pkg.roles.links import Peer, PeerLinks
from p2pkg.roles.namespace import store_chain

log = logging.getLogger(__name__)

#: A key rotation is walked root by root; no chain is walked further than this.
MAX_CHAIN_WALK = 1000


def open_root(wire_bytes: bytes) -> bytes:
    """Canonical bytes of a root served as a zstd frame (bounded by the root limit)."""
    data = decompress(wire_bytes, LIMITS.max_root_size)
    decode_signed_root(data)
    return data


#: Pokes served at once before they are limited to one per ``min_gap``.
POKE_BURST = 3

#: Seconds before the first retry after a failed round (less when polls are closer).
RETRY_BASE = 5.0


@dataclass
class FollowState:
    """What the follow loop last saw (a seed's and a cache's status report it)."""

    last_attempt: float | None = None  # wall-clock time of the last refresh
    last_success: float | None = None
    last_error: str | None = None
    failures_in_a_row: int = 0


class RootFollower:
    """The trusted root of one namespace, refreshed from peers."""

    def __init__(
        self,
        pinned: frozenset[bytes],
        links: PeerLinks,
        store: Store | None = None,
        *,
        persist: bool = True,
        clock: Callable[[], float] = time.time,
        grace: float = 0.05,
        deadline: float = 10.0,
        learn_mirrors: bool = True,
    ) -> None:
        if not pinned:
            raise TrustError("at least one trusted key (--trust) is needed")
        self.pinned = pinned
        self.links = links
        self.store = store
        self.persist = persist
        self.clock = clock  # wall clock: root expiry is a date
        self.grace = grace  # seconds others may still answer after the first usable root
        self.deadline = deadline  # seconds a refresh waits at most for any root
        self.state = FollowState()
        self.learn_mirrors = learn_mirrors  # add a verified root's mirrors as peers
        #: Why the last refresh got no root at all (empty when some peer answered).
        self.unreachable: list[str] = []
        #: The root version each peer offered at the last refresh (its freshness).
        self.peer_versions: dict[str, int] = {}
        self._trusted: TrustedRoot | None = self._load()
        if self._trusted is not None:
            self._learn_mirrors(self._trusted)
        # Roots walked through to reach the current one (a key rotation): they
        # are recorded with it, or a restart could not re-walk the chain.
        self._walked: list[bytes] = []
        self._refreshed: float | None = None  # monotonic time of the last refresh
        self._announced = 0  # the newest root version a push named
        self._genuine = False  # the pending poke carries a root that verified
        self._lock = anyio.Lock()
        self._wake = anyio.Event()

    @property
    def trusted(self) -> TrustedRoot | None:
        """The newest root accepted (None before the first one)."""
        return self._trusted

    def _load(self) -> TrustedRoot | None:
        if self.store is None:
            return None
        chain = store_chain(self.store)
        if not chain:
            return None
        try:
            # Expiry is checked where the root is used: a node whose last root
            # expired while it was off must still be able to move forward.
            return trust_chain(self.pinned, chain, float("-inf"))
        except TrustError as exc:
            log.warning("local store's roots are not trusted by the pinned keys: %s", exc)
            return None

    # ------------------------------------------------------------------ refresh

    async def refresh(self) -> TrustedRoot:
        """Ask every live peer for its latest root; trust the newest the rules accept.

        With no newer root anywhere, the current one is returned if it has not
        expired. Raises :class:`FetchError` when no peer served an acceptable
        root and none is held, :class:`~p2pkg.errors.ExpiredRootError` when
        the only root left is expired.
        """
        base = self._trusted
        peers = [r.url for r in self.links.live()]
        offers: list[tuple[int, bytes, str]] = []
        problems: list[str] = []

        done: set[str] = set()  # peers that answered (a root or an error)
        answered = anyio.Event()  # a root at least as new as the one held arrived
        started = anyio.current_time()

        async def ask(url: str, tg: TaskGroup) -> None:
            try:
                data = await self._root_bytes(url)
            except PeerError as exc:
                log.info("no root from %s: %s", url, exc)
                problems.append(str(exc))
            else:
                version = decode_signed_root(data)[1].version
                offers.append((version, data, url))
                if base is None or version >= base.version:
                    answered.set()
            done.add(url)
            if len(done) == len(peers):
                tg.cancel_scope.cancel()  # everyone answered: stop the watchdog

        async def watchdog(tg: TaskGroup) -> None:
            # Slow retrieval (TUF): a peer that trickles its root must not hold
            # the refresh. Once one usable answer is in, the others get a grace
            # period (twice what the first took, at least ROOT_GRACE); nobody
            # gets more than ROOT_DEADLINE.
            with anyio.move_on_after(self.deadline):
                await answered.wait()
                waited = anyio.current_time() - started
                await anyio.sleep(max(self.grace, 2 * waited))
            tg.cancel_scope.cancel()

        if peers:
            async with anyio.create_task_group() as tg:
                for url in peers:
                    tg.start_soon(ask, url, tg)
                tg.start_soon(watchdog, tg)
        for url in (u for u in peers if u not in done):  # cut off: deprioritised, and said why
            log.info("root from %s: no answer within the refresh deadline", url)
            self.links.book.observe_failure(url, self.links.monotonic())
            problems.append(f"peer {url}: no root within the refresh deadline")
        self._refreshed = self.links.monotonic()
        self.peer_versions = {url: version for version, _, url in offers}
        offers.sort(key=lambda o: (-o[0], peers.index(o[2])))
        self.unreachable = [] if offers else problems
        now = self.clock()
        expired: ExpiredRootError | None = None  # why the newest offer failed, if it was age
        for version, data, url in offers:
            if base is not None and version <= base.version:
                if version < base.version:
                    log.warning("peer %s serves old root version %d (rollback?)", url, version)
                elif decode_signed_root(data)[0].root_bytes != base.signed.root_bytes:
                    # Roots never change once signed: another root of this version
                    # is a fork (the signer equivocated) or a forgery. Either way
                    # this peer serves what no honest peer would.
                    self.links.ban(url, f"serves another root of version {version} (fork)")
                continue
            try:
                accepted, walked = await self._accept(base, data, version, url, now)
            except (TrustError, PeerError, FetchError) as exc:
                # An expired root is a stale peer (said once, by the caller's
                # error when nothing better is on offer); the rest is a warning.
                level = logging.INFO if isinstance(exc, ExpiredRootError) else logging.WARNING
                log.log(level, "peer %s: root version %d rejected: %s", url, version, exc)
                problems.append(f"peer {url}: root version {version} rejected: {exc}")
                if isinstance(exc, ExpiredRootError):
                    expired = expired or exc  # a stale seed may do that: not banned
                elif isinstance(exc, TrustError):
                    # A root (or a chain to it) that the rules refuse: forged,
                    # rolled back or forked. Banned, so it costs one walk, not one
                    # per refresh.
                    self.links.ban(url, f"root version {version}: {exc}")
                continue
            self.adopt(accepted, walked)
            return accepted
        if base is not None:
            return check_expiry(base, now)
        if expired is not None:
            raise expired  # the newest root anyone offered is past its date (exit 3)
        detail = "; ".join(problems) or "no peers"
        raise FetchError(f"no peer served a root signed by the trusted key(s): {detail}")

    def adopt(self, trusted: TrustedRoot, walked: Sequence[bytes] = ()) -> None:
        """Make ``trusted`` current (recorded in the store when ``persist``).

        ``walked``: the roots between the previous one and ``trusted`` that a
        key rotation was followed through.
        """
        self._trusted = trusted
        self._walked = list(walked)
        self._learn_mirrors(trusted)
        if self.store is not None and self.persist:
            self.record(self.store)

    def _learn_mirrors(self, trusted: TrustedRoot) -> None:
        """Add the mirrors the signed root lists as configured-tier peers.

        The master vouches for them by signing the list, so a client that
        knows one URL learns every mirror (protocol §4.1). Their bytes are
        verified like anyone's; https mirrors are skipped (the peer client
        speaks plain HTTP: integrity comes from the hashes, not the channel).
        """
        if not self.learn_mirrors:
            return
        for url in trusted.root.mirrors:
            if url.startswith("http://") and url.rstrip("/") not in self.links.book:
                log.info("learned mirror %s from root version %d", url, trusted.version)
                self.links.add(Peer(url.rstrip("/"), Tier.MIRROR))

    def record(self, store: Store, *, full: bool | None = None) -> None:
        """Commit the current root, then the roots walked to reach it, to ``store``.

        The newest first: the store's latest root is never one whose tree was
        not the one synced (a seed calls this once the tree under the root is
        synced, with ``full`` for its store's mark).
        """
        assert self._trusted is not None
        store.commit(root=self._trusted.signed.encode(), full=full)
        for data in self._walked:
            store.commit(root=data)

    async def current(self, max_age: float) -> TrustedRoot:
        """The trusted root, refreshed first when the last refresh is older than ``max_age``.

        One refresh at a time: concurrent callers wait for it and share its
        result. When peers fail, the root held is kept (until it expires).
        """
        async with self._lock:
            stale = self._refreshed is None or self.links.monotonic() - self._refreshed > max_age
            if self._trusted is None or stale:
                try:
                    await self.refresh()
                except P2pkgError:
                    if self._trusted is None:
                        raise
                    self._refreshed = self.links.monotonic()
        assert self._trusted is not None
        return check_expiry(self._trusted, self.clock())

    def fresh(self, max_age: float) -> TrustedRoot | None:
        """The trusted root if :meth:`current` would return it without a refresh, else None."""
        trusted, refreshed = self._trusted, self._refreshed
        if trusted is None or refreshed is None or self.links.monotonic() - refreshed > max_age:
            return None
        try:
            return check_expiry(trusted, self.clock())
        except P2pkgError:
            return None

    # ------------------------------------------------------------------ follow

    def poke(self) -> None:
        """Wake :meth:`follow` now (a push said there is a new root)."""
        self._wake.set()

    @property
    def announced(self) -> int:
        """The newest root version a push named (0: none yet)."""
        return self._announced

    def pushed(self, frame: bytes, peer: str) -> bool:
        """A push from ``peer``: a signed root frame, or empty ("poll now"); True if it pokes.

        The frame is only a hint (never trusted or stored): it names a
        version. A version this node holds, or one a push already announced,
        wakes nothing — several upstreams pushing the same root cost one
        round, not one each; an empty or undecodable body still pokes (the
        follow loop rate-limits pokes).
        """
        version = None
        if frame:
            try:
                version = decode_signed_root(open_root(frame))[1].version
            except DecodeError as exc:
                log.info("malformed push from %s: %s", peer, exc)
                return False
        if version is not None:
            known = max(self._trusted.version if self._trusted else 0, self._announced)
            if version <= known:
                return False
            self._announced = version
            # A root that verifies against the trusted one is the master's own
            # word: it is served at once. Anything else (empty, unverifiable)
            # goes through the follow loop's rate limit.
            if self._trusted is not None:
                try:
                    update(self._trusted, open_root(frame), self.clock())
                except (TrustError, DecodeError):
                    pass
                else:
                    self._genuine = True
        log.info("push from %s%s: refreshing now", peer, f" (root v{version})" if version else "")
        self.poke()
        return True

    async def follow(
        self,
        on_root: Callable[[TrustedRoot], Awaitable[object]] | None = None,
        *,
        interval: float,
        max_backoff: float = 300.0,
        min_gap: float = 1.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Refresh every ``interval`` seconds until cancelled; ``on_root`` after each.

        A failed round (no peer reachable, ``on_root`` raised a p2pkg error)
        backs off from ``interval`` (at most :data:`RETRY_BASE`) doubling up
        to ``max_backoff``; a
        :meth:`poke` still wakes the loop at once, but pokes are rate-limited
        (a burst of :data:`POKE_BURST`, then one per ``min_gap`` seconds): a
        flood of pushes (anyone may POST an empty notify) costs one upstream
        poll per gap, not one each.
        :attr:`state` tells how it went.
        """
        task_status.started()
        st = self.state
        tokens, refilled = float(POKE_BURST), anyio.current_time()
        while True:
            # A fresh event before the round: a poke that arrives while the round
            # runs (a push during a long sync) wakes the next wait at once.
            self._wake = anyio.Event()
            self._genuine = False
            delay = interval
            st.last_attempt = self.clock()
            try:
                async with self._lock:  # never beside a refresh that current() runs
                    trusted = await self.refresh()
                if self.unreachable:
                    # Still serving what we hold; say so and back off.
                    raise FetchError("no peer reachable: " + "; ".join(self.unreachable))
                if on_root is not None:
                    await on_root(trusted)
            except P2pkgError as exc:
                st.failures_in_a_row += 1
                st.last_error = str(exc)
                exponent = min(st.failures_in_a_row - 1, 16)
                # From a short base, not the poll interval: a mirror polling
                # hourly whose upstream is briefly away retries in seconds.
                delay = min(max_backoff, min(interval, RETRY_BASE) * 2**exponent)
                log.warning("root refresh failed (retry in %.0fs): %s", delay, exc)
            else:
                st.failures_in_a_row = 0
                st.last_error = None
                st.last_success = self.clock()
            with anyio.move_on_after(delay) as waited:
                await self._wake.wait()
            if not waited.cancelled_caught and min_gap > 0 and not self._genuine:
                # Woken by a poke without a verified root. Such pokes are
                # rate-limited by a token bucket (a burst of POKE_BURST, then
                # one per min_gap): a flood costs one poll per gap, and the
                # pokes arriving while it waits join the next round.
                now = anyio.current_time()
                tokens = min(POKE_BURST, tokens + (now - refilled) / min_gap)
                refilled = now
                if tokens < 1:
                    await anyio.sleep((1 - tokens) * min_gap)
                    tokens, refilled = 1.0, anyio.current_time()
                tokens -= 1

    # ------------------------------------------------------------------ internals

    async def _root_bytes(self, url: str, version: int | None = None) -> bytes:
        frame = await self.links.link(url).root(version)
        try:
            return open_root(frame)
        except DecodeError as exc:
            raise ProtocolError(url, f"malformed root: {exc}") from None

    async def _walk(self, url: str, first: int, last: int) -> AsyncIterator[bytes]:
        """Roots ``first``..``last - 1`` from ``url``, one request each, in order."""
        if last - first > MAX_CHAIN_WALK:
            raise FetchError(f"root chain {first}..{last} is longer than {MAX_CHAIN_WALK}")
        for v in range(first, last):
            yield await self._root_bytes(url, v)

    async def _accept(
        self, base: TrustedRoot | None, data: bytes, version: int, url: str, now: float
    ) -> tuple[TrustedRoot, list[bytes]]:
        """The root in ``data`` if the rules accept it, and the roots walked to get there."""
        if base is None:
            try:
                return bootstrap(self.pinned, data, now), []
            except SignatureError:
                # The pinned key may have been rotated away: walk from version 1
                # (the anchor is the newest root a pinned key signed: all are needed).
                walked = [r async for r in self._walk(url, 1, version)]
                return trust_chain(self.pinned, [*walked, data], now), walked
        try:
            return update(base, data, now), []
        except SignatureError:
            # A key rotation: each root is checked as it arrives, so a peer whose
            # chain breaks costs one bad root, not the whole walk.
            current, walked = base, []
            async for between in self._walk(url, base.version + 1, version):
                current = update_chain(current, [between], float("-inf"))  # expiry: last only
                walked.append(between)
            return update_chain(current, [data], now), walked


__all__ = ["MAX_CHAIN_WALK", "POKE_BURST", "RETRY_BASE", "FollowState", "RootFollower", "open_root"]
