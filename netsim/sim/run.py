"""``python -m netsim run SCENARIO.toml --seed N [--out DIR]``: every strategy on one workload.

Results: ``DIR/NAME-seedN.json`` (every metric per strategy) and a
markdown table ``DIR/NAME-seedN.md``; progress on stderr while it runs.
Deterministic for a seed: the same file twice gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from netsim.sim.world import World

COLUMNS = [
    ("origin_share", "origin share", "{:.1%}"),
    ("download_p50", "download p50 s", "{:.3f}"),
    ("download_p95", "p95 s", "{:.3f}"),
    ("download_p99", "p99 s", "{:.3f}"),
    ("install_p95", "install p95 s", "{:.3f}"),
    ("failed_share", "failed", "{:.2%}"),
    ("corrupt_completed", "corrupt installed", "{}"),
    ("release_to_95pct_seeds_p50", "release → 95% seeds s", "{:.1f}"),
    ("downloads", "downloads", "{}"),
]


def load(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def run(scenario: dict[str, Any], seed: int, progress: bool = True) -> dict[str, Any]:
    results = []
    for strategy in scenario.get("strategies", ["origin", "mirrors", "cdn", "p2pkg"]):
        started = time.perf_counter()
        if progress:
            print(f"[{scenario['name']} seed {seed}] {strategy} ...", file=sys.stderr, flush=True)
        result = World(scenario, strategy, seed).run()
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        results.append(result)
        if progress:
            print(
                f"[{scenario['name']} seed {seed}] {strategy}: {result['downloads']} downloads, "
                f"{result['events']} events in {result['wall_seconds']} s",
                file=sys.stderr,
                flush=True,
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"scenario": scenario["name"], "seed": seed, "peak_rss_bytes": peak, "results": results}


def table(report: dict[str, Any]) -> str:
    head = "| strategy | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    rows = [head, rule]
    for r in report["results"]:
        cells = ["—" if r.get(key) is None else fmt.format(r[key]) for key, _, fmt in COLUMNS]
        rows.append(f"| {r['strategy']} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netsim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a scenario")
    r.add_argument("scenario", type=Path)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)
    scenario = load(args.scenario)
    report = run(scenario, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{scenario['name']}-seed{args.seed}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(table(report))
    print(table(report))
    return 0


__all__ = ["load", "main", "run", "table"]
