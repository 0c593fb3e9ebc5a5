"""The HTML report: one self-contained page (inline CSS, inline SVG from ``report_svg``, no
script, no font, no request of any kind; a Content-Security-Policy that forbids them all),
a summary an auditor reads first, the charts, then a table per row kind (``report_html_tables``;
docs/reports.md, "HTML"). Every string from the log is escaped (``report_markup``); the policy
is the second wall. Elements carry ``data-`` attributes naming the figure or row they show, so
a test (or an auditor's script) can compare the page with the JSON report. Pure, standard
library only.
"""

from __future__ import annotations

from dataclasses import fields

from trusthook.audit import report_html_tables as tables
from trusthook.audit.report_markup import esc, mono
from trusthook.audit.report_model import Report
from trusthook.audit.report_svg import move_chart, trust_chart, violation_chart, workload_chart

POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'"
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1240px;
color:#1a1a1a;background:#fff;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin:0 0 4px}
h2{font-size:1.25em;margin:32px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:1.05em;margin:16px 0 6px}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px;margin:0}
.figures div{border:1px solid #ddd;border-radius:4px;padding:8px}
.figures dt{font-size:.85em;color:#555}.figures dd{margin:0;font-size:1.5em;font-weight:600}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
.facts dt{color:#555}.facts dd{margin:0}
.mono,pre,code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.9em;
overflow-wrap:anywhere}
pre{background:#f5f5f5;padding:8px;white-space:pre-wrap}
.warning{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}
table{border-collapse:collapse;width:100%;font-size:.85em;margin:4px 0 12px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}
.state{color:#fff;padding:0 6px;border-radius:3px;white-space:nowrap}
.chart{display:block;margin:8px 0 16px;font-size:12px}
.chart .label,.chart .legend,.chart .count,.chart .tick{fill:#333}
.chart .workload{font-weight:600;fill:#111}.chart .grid{stroke:#e4e4e4}
.chart .launch{stroke:#111;stroke-width:1.5}.empty{color:#777}
"""


_FIGURES = {
    "hosts": "Hosts",
    "hosts_always_trusted": "Hosts trusted throughout",
    "hosts_ever_untrusted": "Hosts untrusted at times",
    "launches": "Launches",
    "untrusted_launches": "Untrusted launches",
    "non_compliant_launches": "Non-compliant launches",
    "workloads": "Workloads",
    "locations": "Locations",
    "moves": "Moves to another host",
    "tampered_moves": "Tampered moves",
    "disallowed_moves": "Disallowed moves",
    "violations": "Violations",
    "untrusted_verdicts": "Untrusted verdicts",
    "refused_requests": "Refused requests",
    "refused_enrollments": "Refused enrollments",
    "releases": "Key releases",
    "release_refusals": "Refused releases",
    "admissions": "Admissions and enrollments",
    "policy_versions": "Policy versions applied",
    "operator_actions": "Operator actions",
}


def _summary(report: Report) -> str:
    s, p, c, v = report.summary, report.period, report.checkpoint, report.verification
    figures = "".join(
        f'<div><dt>{esc(_FIGURES[f.name])}</dt><dd data-figure="{f.name}">'
        f"{getattr(s, f.name)}</dd></div>"
        for f in fields(s)
    )
    params = report.parameters
    facts = [
        ("Period", f"{p.start} to {p.end} (from --since inclusive, to --until exclusive)"),
        ("Workload", params.workload if params.workload is not None else "all"),
        (
            "Trust after a verdict",
            f"{params.validity:g} s, then stale"
            if params.validity is not None
            else "until the next verdict",
        ),
        ("Entries in the period", str(p.entries)),
        ("Entries before it (state only)", str(p.earlier_entries)),
        ("Log", c.origin),
        ("Checkpoint tree size", str(c.size)),
        ("Checkpoint root", mono(c.root)),
        ("Newest entry in the bundle", c.newest_entry or "none"),
        ("Log key", mono(f"{c.key} ({c.key_anchor})")),
        ("Bundle", mono(f"{v.bundle}: {c.bundle_entries} entries, {c.selection}")),
    ]
    if c.extends is not None:
        facts.append(("Extends", f"the trusted checkpoint of tree size {c.extends}"))
    facts_html = "".join(
        f'<dt>{esc(k)}</dt><dd data-fact="{esc(k)}">{esc(val)}</dd>' for k, val in facts
    )
    warning = (
        ""
        if v.key_vouched
        else '<p class="warning">Nothing outside the bundle vouches for the log key: compare it'
        " with the key the server's operator publishes (trusthook audit key) and verify with"
        " --key.</p>"
    )
    commands = "\n".join(v.commands)
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<dl class="figures">{figures}</dl>'
        f'<h3>Computed from</h3><dl class="facts">{facts_html}</dl>'
        "<h3>Verify it</h3><p>Every figure here is computed from the audit-log entries of this"
        " bundle, verified against its signed checkpoint. These commands verify the bundle and"
        " recompute this report as JSON, with no server:</p>"
        f"<pre data-commands>{esc(commands)}</pre>{warning}</section>"
    )


def render_html(report: Report) -> bytes:
    """The page, UTF-8."""
    p = report.period
    title = f"trusthook compliance report {p.start} to {p.end}"
    charts = (
        '<section id="charts"><h2>Charts</h2>'
        f"<h3>Host trust over time (UTC)</h3>{trust_chart(report)}"
        f"<h3>Launches per workload per location</h3>{workload_chart(report)}"
        f"<h3>Violations over time (UTC)</h3>{violation_chart(report)}"
        f"<h3>Moves over time (UTC)</h3>{move_chart(report)}</section>"
    )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(POLICY)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
        f'<header><h1>Compliance report</h1><p data-format="{esc(report.format)}">'
        f"{esc(p.start)} to {esc(p.end)} · log {esc(report.checkpoint.origin)} at tree size"
        f" {report.checkpoint.size}</p></header>"
        + _summary(report)
        + charts
        + tables.hosts(report)
        + tables.launches(report)
        + tables.moves(report)
        + tables.violations(report)
        + tables.releases(report)
        + tables.admissions(report)
        + "</body></html>\n"
    )
    return page.encode("utf-8")
