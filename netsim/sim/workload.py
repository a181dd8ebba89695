"""What clients install, from the real rank table (``netsim/data/workload.json``).

A project is drawn by its share of the month's downloads (the table's
15,000 ranks, or the scenario's top N of them) — sampled from the table,
not a fitted power law. Its archive's size is drawn, per project and
deterministically, from the measured sizes of the top projects' wheels.
Version 1 of every project exists when the run starts (every seed and
mirror holds it); a new release is a new file, held by nobody yet.
"""

from __future__ import annotations

import bisect
import itertools
import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "data" / "workload.json"


class Workload:
    def __init__(self, scenario: dict[str, Any], rng: Any) -> None:
        table = json.loads(DATA.read_text())
        count = int(scenario.get("projects", {}).get("count", len(table["ranks"])))
        weights = table["ranks"][:count]
        total = float(sum(weights))
        self.cdf = [c / total for c in itertools.accumulate(weights)]
        sizes = table["wheel_sizes"]
        self.size = [sizes[(rank * 7919) % len(sizes)] for rank in range(count)]
        self.version = [1] * count
        p = scenario.get("install", {})
        self.per_install = (int(p.get("min_projects", 1)), int(p.get("max_projects", 10)))

    def _rank(self, rng: Any) -> int:
        return min(len(self.cdf) - 1, bisect.bisect_left(self.cdf, rng.random()))

    def file(self, rank: int) -> tuple[str, int]:
        return f"p{rank}-{self.version[rank]}", self.size[rank]

    def is_initial(self, file: str) -> bool:
        return file.endswith("-1")

    def install(self, rng: Any) -> list[tuple[str, int]]:
        """The files of one install: distinct projects drawn by download share."""
        want = rng.randint(*self.per_install)
        ranks: list[int] = []
        for _ in range(want * 4):
            rank = self._rank(rng)
            if rank not in ranks:
                ranks.append(rank)
            if len(ranks) == want:
                break
        return [self.file(r) for r in ranks]

    def new_release(self, rng: Any) -> tuple[str, int]:
        rank = self._rank(rng)
        self.version[rank] += 1
        return self.file(rank)


__all__ = ["Workload"]
