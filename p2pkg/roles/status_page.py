"""The status page every serving role shows at ``/``: readable at a glance.

A :class:`Page` is a title, a row of key figures (each with a level: ok,
warn or bad, and a stable ``id`` for scripts and tests) and tables; it is
rendered as one self-contained HTML document — inline CSS, no scripts, no
external assets — that refreshes itself every 10 seconds. Numbers are in
human units ("1.4 GB", "3 min ago", "in 29 days"); the same figures, raw,
are at ``/p2pkg/v1/status`` (JSON) and ``/metrics``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

REFRESH_SECONDS = 10


@dataclass(frozen=True, slots=True)
class Figure:
    label: str
    value: str
    id: str
    level: str = ""  # "", "ok", "warn", "bad"
    note: str = ""


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    id: str
    empty: str = "none"


@dataclass
class Page:
    title: str
    subtitle: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # shown as code lines (how to use it)


# ---------------------------------------------------------------------------- units


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(bytes_per_second: float | None) -> str:
    return "—" if not bytes_per_second else human_bytes(bytes_per_second) + "/s"


def human_duration(seconds: float) -> str:
    s = abs(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def human_ago(seconds: float | None) -> str:
    return "never" if seconds is None else human_duration(seconds) + " ago"


def human_until(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 0:
        return "expired " + human_duration(seconds) + " ago"
    return "in " + human_duration(seconds)


def ratio(part: float, whole: float) -> str:
    return "—" if not whole else f"{100 * part / whole:.0f} %"


# ---------------------------------------------------------------------------- HTML

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:70em;color:#222;padding:0 1em}
h1{font-size:1.5em;margin:0}h2{font-size:1.1em;margin:1.6em 0 .4em}
.sub{color:#666;margin:.2em 0 1em}
.figs{display:flex;flex-wrap:wrap;gap:.6em}
.fig{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:9em;background:#fafafa}
.fig .l{color:#666;font-size:.8em}.fig .v{font-size:1.3em;font-weight:600}
.fig .n{color:#666;font-size:.75em}
.ok{border-left:5px solid #2a2}.warn{border-left:5px solid #e90}.bad{border-left:5px solid #d22}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right}
code{background:#f3f3f3;padding:.1em .3em;border-radius:3px}
.empty{color:#888}
"""


def render(page: Page) -> bytes:
    """The page as one HTML document (no external assets, refreshing itself)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{esc(page.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(page.title)}</h1>",
        f'<p class="sub">{esc(page.subtitle)}</p>' if page.subtitle else "",
    ]
    for hint in page.hints:
        parts.append(f"<p><code>{esc(hint)}</code></p>")
    parts.append('<div class="figs">')
    for f in page.figures:
        note = f'<div class="n">{esc(f.note)}</div>' if f.note else ""
        parts.append(
            f'<div class="fig {esc(f.level)}" id="{esc(f.id)}"><div class="l">{esc(f.label)}</div>'
            f'<div class="v">{esc(f.value)}</div>{note}</div>'
        )
    parts.append("</div>")
    for t in page.tables:
        parts.append(f'<h2>{esc(t.title)}</h2><table id="{esc(t.id)}">')
        parts.append("<tr>" + "".join(f"<th>{esc(c)}</th>" for c in t.columns) + "</tr>")
        if not t.rows:
            parts.append(
                f'<tr><td class="empty" colspan="{len(t.columns)}">{esc(t.empty)}</td></tr>'
            )
        for row in t.rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts).encode()


__all__ = [
    "Figure",
    "Page",
    "Table",
    "human_ago",
    "human_bytes",
    "human_duration",
    "human_rate",
    "human_until",
    "ratio",
    "render",
]
