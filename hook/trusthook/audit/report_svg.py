"""The HTML report's charts, inline SVG written here: host trust over time, launches per
workload per location, violations over time, moves over time (docs/reports.md, "HTML"). Each
chart is a string of markup for an HTML page (no ``xmlns``: the HTML parser places ``<svg>`` in
its namespace); every text from the log is escaped. Pure, standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from html import escape

from trusthook.audit.report_model import (
    MOVES,
    MoveKind,
    Report,
    ReportHost,
    TrustState,
    ViolationKind,
    location_label,
)

WIDTH = 1200
LABEL = 280  # the left column of host, workload and location names
PLOT = WIDTH - LABEL - 24
MAX_ROWS = 200  # rows drawn per chart; the tables hold them all
BUCKETS = 30
LEGEND_LINE = 16
STATE_COLOURS = {
    TrustState.TRUSTED: "#2e7d32",
    TrustState.UNTRUSTED: "#c62828",
    TrustState.STALE: "#ef9f00",
    TrustState.UNKNOWN: "#b0b0b0",
}
VIOLATION_COLOURS = {
    ViolationKind.UNTRUSTED_VERDICT: "#c62828",
    ViolationKind.REQUEST_REFUSED: "#6a1b9a",
    ViolationKind.ENROLLMENT_REFUSED: "#e65100",
    ViolationKind.NON_COMPLIANT_LAUNCH: "#ad1457",
    ViolationKind.TAMPERED_MOVE: "#4e342e",
    ViolationKind.DISALLOWED_MOVE: "#f9a825",
}
MOVE_COLOURS = {
    MoveKind.VERIFIED: "#2e7d32",
    MoveKind.TAMPERED: "#c62828",
    MoveKind.DISALLOWED: "#ef9f00",
}
LAUNCH_COLOUR = "#1565c0"


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _n(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


class _Axis:
    """Times of the period onto the plot's x coordinates."""

    def __init__(self, start: str, end: str) -> None:
        self.start = datetime.fromisoformat(start)
        self.span = (datetime.fromisoformat(end) - self.start).total_seconds()

    def fraction(self, time: str) -> float:
        if self.span <= 0:
            return 0.0
        seconds = (datetime.fromisoformat(time) - self.start).total_seconds()
        return min(1.0, max(0.0, seconds / self.span))

    def x(self, time: str) -> float:
        return LABEL + self.fraction(time) * PLOT

    def ticks(self, y: float, bottom: float, count: int = 5) -> str:
        shown = (
            "%H:%M:%S"
            if self.span <= 600
            else "%m-%d %H:%M"
            if self.span <= 2 * 86400
            else "%Y-%m-%d %H:%M"
        )
        parts = []
        for i in range(count):
            f = i / (count - 1)
            x = LABEL + f * PLOT
            moment = self.start.timestamp() + f * max(self.span, 0.0)
            label = datetime.fromtimestamp(moment, self.start.tzinfo).strftime(shown)
            anchor = "start" if i == 0 else "end" if i == count - 1 else "middle"
            parts.append(
                f'<line x1="{_n(x)}" y1="{_n(y)}" x2="{_n(x)}" y2="{_n(bottom)}" class="grid"/>'
                f'<text x="{_n(x)}" y="{_n(bottom + 14)}" text-anchor="{anchor}"'
                f' class="tick">{_e(label)}</text>'
            )
        return "".join(parts)


def _svg(chart: str, height: float, title: str, body: Iterable[str]) -> str:
    return (
        f'<svg viewBox="0 0 {WIDTH} {_n(height)}" width="100%" role="img"'
        f' aria-label="{_e(title)}" data-chart="{chart}" class="chart">'
        f"<title>{_e(title)}</title>{''.join(body)}</svg>"
    )


def _legend(items: Iterable[tuple[str, str]], y: float) -> str:
    return _wrapped_legend(items, y)[0]


def _wrapped_legend(items: Iterable[tuple[str, str]], y: float) -> tuple[str, float]:
    """The legend from ``y`` on, a new line when one is full; and the last line's ``y``."""
    parts, x = [], float(LABEL)
    for label, colour in items:
        step = 24 + 8 * len(label)
        if x > LABEL and x + step > WIDTH:
            x, y = float(LABEL), y + LEGEND_LINE
        parts.append(
            f'<rect x="{_n(x)}" y="{_n(y - 10)}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{_n(x + 16)}" y="{_n(y)}" class="legend">{_e(label)}</text>'
        )
        x += step
    return "".join(parts), y


def _name(host: ReportHost) -> str:
    return host.hostname or host.host_id[:16]


def _clip(text: str, most: int = 40) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def trust_chart(report: Report) -> str:
    """One row per host: its trust segments across the period; a tick per launch."""
    title = "Host trust over time"
    hosts = report.hosts[:MAX_ROWS]
    if not hosts:
        return _svg("trust", 40, title, ['<text x="0" y="24">no hosts in the period</text>'])
    axis = _Axis(report.period.start, report.period.end)
    top, row = 36.0, 20.0
    bottom = top + row * len(hosts)
    body = [_legend(((s.value, STATE_COLOURS[s]) for s in TrustState), 16)]
    body.append(axis.ticks(top - 4, bottom))
    launches: dict[str, list[str]] = {}
    for launch in report.launches:
        launches.setdefault(launch.host_id, []).append(launch.time)
    for i, host in enumerate(hosts):
        y = top + i * row
        body.append(
            f'<text x="{LABEL - 8}" y="{_n(y + 13)}" text-anchor="end" class="label">'
            f"<title>{_e(host.host_id)}</title>{_e(_clip(_name(host)))}</text>"
        )
        for segment in host.trust:
            x0, x1 = axis.x(segment.start), axis.x(segment.end)
            why = f" ({', '.join(segment.checks)})" if segment.checks else ""
            body.append(
                f'<rect x="{_n(x0)}" y="{_n(y + 3)}" width="{_n(max(x1 - x0, 0.5))}"'
                f' height="12" fill="{STATE_COLOURS[segment.state]}"'
                f' data-state="{segment.state.value}"><title>{_e(_name(host))}:'
                f" {segment.state.value} from {_e(segment.start)} to {_e(segment.end)}"
                f"{_e(why)}</title></rect>"
            )
        for time in launches.get(host.host_id, ())[:500]:
            x = axis.x(time)
            body.append(
                f'<line x1="{_n(x)}" y1="{_n(y + 1)}" x2="{_n(x)}" y2="{_n(y + 17)}"'
                ' class="launch"/>'
            )
    if len(report.hosts) > MAX_ROWS:
        body.append(
            f'<text x="{LABEL}" y="{_n(bottom + 32)}">the first {MAX_ROWS} of'
            f" {len(report.hosts)} hosts; the table holds all</text>"
        )
    return _svg("trust", bottom + 40, title, body)


def workload_chart(report: Report) -> str:
    """Per workload, a bar per location: its launches, the untrusted part in red."""
    title = "Launches per workload per location"
    lines: list[tuple[str, str, int, int]] = []  # (kind, label, launches, untrusted)
    for workload in report.workloads:
        lines.append(("workload", workload.workload, workload.launches, 0))
        lines.extend(
            (
                "location",
                location_label(p.group, p.attributes),
                p.launches,
                p.untrusted_launches,
            )
            for p in workload.locations
        )
    if not lines:
        return _svg("workloads", 40, title, ['<text x="0" y="24">no launches in the period</text>'])
    shown = lines[:MAX_ROWS]
    most = max((n for kind, _, n, _ in shown if kind == "location"), default=1)
    top, row = 30.0, 20.0
    body = [
        _legend(
            (("launches", LAUNCH_COLOUR), ("untrusted", STATE_COLOURS[TrustState.UNTRUSTED])), 16
        )
    ]
    for i, (kind, label, launches, untrusted) in enumerate(shown):
        y = top + i * row
        if kind == "workload":
            body.append(
                f'<text x="4" y="{_n(y + 14)}" class="workload">{_e(_clip(label, 90))}'
                f' <tspan class="count">({launches})</tspan></text>'
            )
            continue
        body.append(
            f'<text x="{LABEL - 8}" y="{_n(y + 14)}" text-anchor="end" class="label">'
            f"{_e(_clip(label))}</text>"
        )
        good = (launches - untrusted) / max(most, 1) * PLOT
        bad = untrusted / max(most, 1) * PLOT
        body.append(
            f'<rect x="{LABEL}" y="{_n(y + 3)}" width="{_n(good)}" height="14"'
            f' fill="{LAUNCH_COLOUR}"><title>{_e(label)}: {launches} launches</title></rect>'
        )
        if untrusted:
            body.append(
                f'<rect x="{_n(LABEL + good)}" y="{_n(y + 3)}" width="{_n(bad)}" height="14"'
                f' fill="{STATE_COLOURS[TrustState.UNTRUSTED]}"><title>{_e(label)}:'
                f" {untrusted} untrusted launches</title></rect>"
            )
        body.append(
            f'<text x="{_n(LABEL + good + bad + 6)}" y="{_n(y + 14)}" class="count">'
            f"{launches}</text>"
        )
    bottom = top + row * len(shown)
    if len(lines) > MAX_ROWS:
        body.append(f'<text x="{LABEL}" y="{_n(bottom + 16)}">more in the table</text>')
    return _svg("workloads", bottom + 24, title, body)


def _stacked(
    report: Report,
    *,
    chart: str,
    title: str,
    marks: Sequence[tuple[str, StrEnum]],
    colours: Mapping[StrEnum, str],
    empty: str,
) -> str:
    """``marks`` (time, kind) counted per slice of the period (``BUCKETS`` slices), stacked
    by kind in the order of ``colours``; the legend gives each kind's total."""
    if not marks:
        return _svg(chart, 40, title, [f'<text x="0" y="24">{_e(empty)}</text>'])
    axis = _Axis(report.period.start, report.period.end)
    counts = [dict.fromkeys(colours, 0) for _ in range(BUCKETS)]
    for time, kind in marks:
        slot = min(BUCKETS - 1, int(axis.fraction(time) * BUCKETS))
        counts[slot][kind] += 1
    totals = {k: sum(c[k] for c in counts) for k in colours}
    most = max(sum(c.values()) for c in counts)
    legend, last = _wrapped_legend(((f"{k.value} ({totals[k]})", colours[k]) for k in colours), 16)
    top, height = last + 14, 160.0
    bottom = top + height
    body = [legend]
    body.append(axis.ticks(top, bottom))
    body.append(
        f'<text x="{LABEL - 8}" y="{_n(top + 10)}" text-anchor="end" class="tick">{most}</text>'
        f'<text x="{LABEL - 8}" y="{_n(bottom)}" text-anchor="end" class="tick">0</text>'
    )
    width = PLOT / BUCKETS
    for slot, by_kind in enumerate(counts):
        y = bottom
        for kind, n in by_kind.items():
            if not n:
                continue
            h = n / most * height
            y -= h
            body.append(
                f'<rect x="{_n(LABEL + slot * width + 1)}" y="{_n(y)}"'
                f' width="{_n(width - 2)}" height="{_n(h)}" fill="{colours[kind]}"'
                f' data-kind="{kind.value}"><title>{n} {kind.value}</title></rect>'
            )
    return _svg(chart, bottom + 24, title, body)


def violation_chart(report: Report) -> str:
    """Violations per slice of the period, stacked by kind."""
    return _stacked(
        report,
        chart="violations",
        title="Violations over time",
        marks=[(v.time, v.kind) for v in report.violations],
        colours={k: VIOLATION_COLOURS[k] for k in ViolationKind},
        empty="no violations in the period",
    )


def move_chart(report: Report) -> str:
    """Moves per slice of the period, stacked by kind (verified, tampered, disallowed)."""
    return _stacked(
        report,
        chart="moves",
        title="Moves over time",
        marks=[(m.time, m.move) for m in report.moves],
        colours={k: MOVE_COLOURS[k] for k in MOVES},
        empty="no moves in the period",
    )
