"""A download in simulated time, decided by the product's own code.

:class:`SimFetch` is :meth:`p2pkg.roles.download.FileDownloader`'s span loop
with the sockets replaced by flows: the same
:class:`~p2pkg.core.schedule.Scheduler` (built with the same arguments from
the same :class:`~p2pkg.core.peers.PeerBook`) picks which peer gets which
span, learns latencies from first bytes and rates from finished spans,
pipelines, duplicates in the endgame and drops failing peers; the book
reserves and releases queued bytes, observes transfers, latencies and
failures, and bans a peer whose bytes fail verification. Chunks are
reported when a span's body has arrived (flow level: a span is the unit
of transfer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from netsim.sim.engine import Sim, Timer
from netsim.sim.network import Flow, Network, Node
from p2pkg.core.peers import PeerBook, Tier
from p2pkg.core.schedule import Failure, ScheduleConfig, Scheduler, Span

CHUNK = 80 * 1024  # FastCDC's average chunk here: avg_size 64 KiB + min_size 16 KiB


def chunk_lengths(size: int) -> list[int]:
    n = max(1, -(-size // CHUNK))
    base = [CHUNK] * (n - 1)
    return [*base, size - CHUNK * (n - 1)] if n > 1 else [max(1, size)]


@dataclass
class Server:
    """A node as a peer: what it holds and how it behaves."""

    node: Node
    kind: str = "honest"  # honest | corrupt (bad bytes) | liar (announces, holds nothing)
    holds: Callable[[str], bool] = field(default=lambda _name: True)
    served: float = 0.0  # bytes it sent

    @property
    def url(self) -> str:
        return self.node.name


@dataclass
class FetchOutcome:
    ok: bool
    seconds: float
    bytes_by_peer: dict[str, float]
    error: str = ""
    honest: bool = True  # every chunk kept came from an honest peer
    bans: int = 0  # peers this download banned (bad bytes)


class SimFetch:
    """One file, from ``peers``, into ``client`` (see the module doc)."""

    def __init__(
        self,
        sim: Sim,
        net: Network,
        client: Node,
        book: PeerBook,
        file: str,
        size: int,
        peers: list[tuple[Server, Tier]],
        on_done: Callable[[FetchOutcome], None],
        config: ScheduleConfig = ScheduleConfig(),  # noqa: B008 - frozen
    ) -> None:
        self.sim, self.net, self.client, self.book = sim, net, client, book
        self.file, self.size = file, size
        self.on_done = on_done
        self.servers = {s.url: s for s, _ in peers}
        for server, tier in peers:
            book.add(server.url, tier)
        now = sim.now
        live = [r for r in book.live(now) if r.url in self.servers]
        self.started = now
        self.sched = Scheduler(
            chunk_lengths(size),
            (),
            [(r.url, int(r.tier)) for r in live],
            now,
            config,
            rates=book.rates(),
            deferred=book.backoffs(now),
            latencies=book.latencies(),
            queued=book.queues(),
        )
        self.flows: dict[int, tuple[str, Span, Flow]] = {}
        self.received: dict[str, float] = {}
        self.kept_from: set[str] = set()  # peers whose chunks were kept
        self.bans = 0
        self._wakeup: Timer | None = None
        self.finished = False
        if not live:
            self._finish(False, "no peers")
            return
        self._pump()

    # ---------------------------------------------------------------- the loop

    def _pump(self) -> None:
        if self.finished:
            return
        sched, now = self.sched, self.sim.now
        if sched.complete:
            self._finish(True)
            return
        if sched.failed():
            summary = "; ".join(f"{n}: {s['dropped']}" for n, s in sched.peer_summary().items())
            self._finish(False, f"no peer could deliver ({summary})")
            return
        for name in sched.ready_peers(now):
            while (span := sched.assign(name, now)) is not None:
                self._start(name, span)
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        wakeup = sched.next_wakeup(now)
        if wakeup is not None:
            self._wakeup = self.sim.at(wakeup, self._pump)

    def _start(self, name: str, span: Span) -> None:
        server = self.servers[name]
        nbytes = span.stop - span.start
        self.book.reserve(name, nbytes)
        started = self.sim.now
        if server.kind == "liar" or not server.holds(self.file):
            # A 404 after one round trip: it does not hold the file.
            self.sim.after(self.net.rtt(server.node, self.client), self._absent, name, span, nbytes)
            return
        first: list[float] = []

        def first_byte(t: float) -> None:
            first.append(t)
            self.sched.first_byte(name, span, t)
            self.sim.after(0.0, self._pump)  # a long link may take more spans now

        def done(t: float) -> None:
            self.flows.pop(span.id, None)
            self.book.release(name, nbytes)
            server.served += nbytes
            self.received[name] = self.received.get(name, 0.0) + nbytes
            if server.kind == "corrupt":
                # Its chunks fail their BLAKE3 check: banned, its span goes back.
                self.book.ban(name, f"bad bytes in {self.file}", t)
                self.bans += 1
                self.sched.span_failed(name, span, t, Failure.BAD)
            else:
                for index in range(span.first, span.end):
                    if not self.sched.done[index]:
                        self.kept_from.add(name)
                    self.sched.chunk_done(name, index, t)
                seconds = self.sched.span_finished(name, span, t, nbytes)
                self.book.observe_transfer(name, nbytes, seconds)
                if first:
                    self.book.observe_latency(name, first[0] - started)
                self._outrun()
            self._pump()

        def failed(reason: str) -> None:
            self.flows.pop(span.id, None)
            self.book.release(name, nbytes)
            if self.finished:
                return
            self.book.observe_failure(name, self.sim.now)
            self.sched.span_failed(name, span, self.sim.now, Failure.ERROR, reason=reason)
            self._pump()

        flow = self.net.transfer(server.node, self.client, nbytes, done, failed, first_byte)
        self.flows[span.id] = (name, span, flow)

    def _absent(self, name: str, span: Span, nbytes: int) -> None:
        self.book.release(name, nbytes)
        if self.finished:
            return
        self.sched.span_failed(name, span, self.sim.now, Failure.ABSENT)
        self._pump()

    def _outrun(self) -> None:
        """Stop spans whose chunks are all in (an endgame duplicate lost the race)."""
        for sid, (_name, span, flow) in list(self.flows.items()):
            if not self.sched.still_needed(span):
                self._abandon(sid, _name, span, flow)

    def _abandon(self, sid: int, name: str, span: Span, flow: Flow) -> None:
        self.flows.pop(sid, None)
        self.book.release(name, span.stop - span.start)
        flow.on_fail = lambda _reason: None
        self.net.cancel(flow, "no longer needed")

    def _finish(self, ok: bool, error: str = "") -> None:
        self.finished = True
        if self._wakeup is not None:
            self._wakeup.cancel()
        for sid, (name, span, flow) in list(self.flows.items()):
            self._abandon(sid, name, span, flow)
        honest = all(self.servers[n].kind != "corrupt" for n in self.kept_from)
        self.on_done(
            FetchOutcome(
                ok, self.sim.now - self.started, dict(self.received), error, honest, self.bans
            )
        )


__all__ = ["CHUNK", "FetchOutcome", "Server", "SimFetch", "chunk_lengths"]
