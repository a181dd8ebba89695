"""Derive netsim's workload tables from the real data in ``../shared/data`` (issue 13).

Run once (the output is committed): ``python -m netsim.derive_workload``.
Writes ``netsim/data/workload.json``:

* ``ranks``: the 15,000 most downloaded projects of March 2026 as
  ``[downloads, ...]`` by rank (names dropped; the simulator samples a rank
  from this table by weight — not from a fitted power law, which the data
  does not follow: its local slope runs from 0.48 to 2.09);
* ``month_downloads``, ``tail_projects``: the month's total over these, and
  how many more projects had downloads (at least 788,142 in all);
* ``wheel_sizes``: the measured sizes (bytes) of the latest wheels of the
  top 60 projects — the empirical size distribution a project's archive is
  drawn from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED
    top = json.loads((source / "top-pypi-30d.json").read_text())
    sizes = json.loads((source / "wheel-sizes-top60.json").read_text())
    ranks = [int(p["downloads"]) for p in top["projects"]]
    out = {
        "source": "derived by netsim/derive_workload.py from top-pypi-30d.json and "
        "wheel-sizes-top60.json (../shared/data)",
        "period": top["period"],
        "month_downloads": sum(ranks),
        "projects_with_downloads_at_least": top["projects_with_downloads_in_month_at_least"],
        "ranks": ranks,
        "wheel_sizes": sorted(int(s["size"]) for s in sizes),
    }
    target = HERE / "data" / "workload.json"
    target.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {target}: {len(ranks)} ranks, {len(out['wheel_sizes'])} sizes")


if __name__ == "__main__":
    main()
