"""``python -m netsim run SCENARIO.toml --seed N [--out DIR]``: every strategy on one workload.

Results: ``DIR/NAME-seedN.json`` (every metric per strategy), a markdown
table ``DIR/NAME-seedN.md`` and bar plots ``DIR/NAME-seedN.png`` (origin
share, download p95, failures, corrupt installs); progress on stderr while
it runs.
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
    ("release_to_95pct_online_seeds_p50", "→ 95% of seeds up s", "{:.1f}"),
    ("downloads", "downloads", "{}"),
]


COLOURS = {
    "origin": "#888",
    "mirrors": "#c84",
    "cdn": "#48c",
    "p2pkg-list": "#7b7",
    "p2pkg": "#2a2",
}
DHT_COLUMNS = [
    ("dht_members", "DHT nodes", "{:,}"),
    ("dht_lookups_per_download", "lookups / download", "{:.2f}"),
    ("dht_rpcs_per_download", "RPCs / download", "{:.1f}"),
    ("dht_providers_per_discovery", "providers found", "{:.1f}"),
    ("announce_per_seed_per_hour.announces", "seed: announces / h", "{:,.0f}"),
    ("announce_per_seed_per_hour.rpcs", "seed: RPCs / h", "{:,.0f}"),
    ("announce_per_seed_per_hour.bytes", "seed: bytes / h", "{:,.0f}"),
    ("announce_per_seed_per_hour.announces_if_poke_sent_all", "seed: old rule / h", "{:,.0f}"),
    ("announce_per_cache_per_hour.announces", "cache: announces / h", "{:,.0f}"),
    ("announce_per_cache_per_hour.bytes", "cache: bytes / h", "{:,.0f}"),
    ("dht_busiest_member_bytes_per_hour", "busiest node: bytes / h", "{:,.0f}"),
]


def load(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def run(scenario: dict[str, Any], seed: int, progress: bool = True) -> dict[str, Any]:
    results = []

    def say(text: str) -> None:
        print(f"[{scenario['name']} seed {seed}] {text}", file=sys.stderr, flush=True)

    for strategy in scenario.get("strategies", ["origin", "mirrors", "cdn", "p2pkg"]):
        started = time.perf_counter()
        if progress:
            say(f"{strategy} ...")
        result = World(scenario, strategy, seed, say if progress else None).run()
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        results.append(result)
        if progress:
            say(
                f"{strategy}: {result['downloads']} downloads, "
                f"{result['events']} events in {result['wall_seconds']} s"
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
    dht = [r for r in report["results"] if "dht_members" in r]
    if dht:
        rows += ["", "| strategy | " + " | ".join(t for _, t, _ in DHT_COLUMNS) + " |"]
        rows.append("|---" * (len(DHT_COLUMNS) + 1) + "|")
        for r in dht:
            cells = [fmt.format(_dig(r, key)) for key, _, fmt in DHT_COLUMNS]
            rows.append(f"| {r['strategy']} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _dig(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        value = value.get(part, 0.0) if isinstance(value, dict) else 0.0
    return value


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars per strategy: origin share, download p95, failed share (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    results = report["results"]
    names = [r["strategy"] for r in results]
    panels = [
        ("origin share (%)", [100 * r["origin_share"] for r in results]),
        ("download p95 (s)", [r["download_p95"] or 0.0 for r in results]),
        ("failed downloads (%)", [100 * r["failed_share"] for r in results]),
        ("corrupt installs", [r["corrupt_completed"] for r in results]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(names, values, color=[COLOURS.get(n, "#aaa") for n in names])
        ax.set_ylim(bottom=0, top=max(values) * 1.1 if max(values) > 0 else 1)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{report['scenario']} (seed {report['seed']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    plot(report, args.out / f"{stem}.png")
    print(table(report))
    return 0


__all__ = ["load", "main", "run", "table"]
