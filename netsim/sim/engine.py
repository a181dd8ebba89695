"""The event loop: a heap of (time, sequence, callback); deterministic by construction."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any


class Timer:
    """A scheduled callback; :meth:`cancel` stops it from running."""

    __slots__ = ("args", "cancelled", "fn", "sim", "time")

    def __init__(
        self, sim: Sim, time: float, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self.sim = sim
        self.time = time
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.sim.cancelled += 1


class Sim:
    """Simulated time, a seeded random source, and the events to come."""

    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.events = 0
        self.cancelled = 0  # cancelled timers still in the heap
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def at(self, time: float, fn: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(self, max(time, self.now), fn, args)
        heap = self._heap
        if self.cancelled > 100_000 and self.cancelled * 2 > len(heap):
            # Mostly dead entries (rescheduled completions): drop them, or a long
            # run's heap grows with every rate change.
            heap[:] = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(heap)
            self.cancelled = 0
        heapq.heappush(heap, (timer.time, next(self._seq), timer))
        return timer

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        return self.at(self.now + max(0.0, delay), fn, *args)

    def run(
        self,
        until: float,
        max_events: int = 200_000_000,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """Run events up to time ``until`` (bounded by ``max_events``).

        ``progress(now)`` is called every 100,000 events (a long run says how far it is).
        """
        heap = self._heap
        while heap and self.events < max_events:
            if progress is not None and self.events % 100_000 == 0:
                progress(self.now)
            time, _, timer = heap[0]
            if time > until:
                break
            heapq.heappop(heap)
            if timer.cancelled:
                self.cancelled -= 1
                continue
            self.now = time
            self.events += 1
            timer.cancelled = True  # it ran: a later cancel() is a no-op
            timer.fn(*timer.args)
        self.now = max(self.now, until) if not heap or heap[0][0] > until else self.now


__all__ = ["Sim", "Timer"]
