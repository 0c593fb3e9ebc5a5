"""The HTML report's tables, one section per row kind: hosts and their trust over time,
workloads and launches, moves, violations, key releases, admissions, policy versions, operator
actions and the period's entries by type (docs/reports.md, "HTML"). Pure, standard library
only.
"""

from __future__ import annotations

from trusthook.audit.report_markup import (
    Row,
    attributes_text,
    compliance_label,
    mono,
    move_label,
    reasons_html,
    state_label,
    table_html,
    verdict_label,
)
from trusthook.audit.report_model import Report, TrustState, location_label


def hosts(report: Report) -> str:
    rows = []
    for h in report.hosts:
        last = h.trust[-1].state if h.trust else None
        rows.append(
            Row(
                [
                    mono(h.host_id),
                    h.hostname,
                    h.group,
                    attributes_text(h.attributes),
                    state_label(last),
                    h.launches,
                    h.violations,
                ],
                {"host": h.host_id},
            )
        )
    trust = [
        Row(
            [
                h.hostname or mono(h.host_id[:16]),
                state_label(s.state),
                s.start,
                s.end,
                s.entry,
                ", ".join(s.checks),
            ],
            {"host": h.host_id, "state": s.state.value},
        )
        for h in report.hosts
        for s in h.trust
    ]
    return (
        '<section id="hosts"><h2>Hosts</h2>'
        + table_html(
            "hosts",
            ["host id", "hostname", "group", "attributes", "at the end", "launches", "violations"],
            rows,
            "no hosts in the period",
        )
        + "<h3>Trust over time</h3>"
        + table_html(
            "trust",
            ["host", "state", "from", "to", "since entry", "checks"],
            trust,
            "no hosts in the period",
        )
        + "</section>"
    )


def launches(report: Report) -> str:
    rows = [
        Row(
            [
                r.index,
                r.time,
                r.hostname or mono(r.host_id[:16]),
                location_label(r.group, r.attributes),
                r.workload,
                mono(r.image_digest),
                r.container,
                mono(r.rootfs_digest),
                mono(r.launch_profile),
                r.recnum,
                verdict_label(r.trusted),
                r.identity,
                compliance_label(r.compliant),
                r.policy_version,
                move_label(r.move),
            ],
            {"index": str(r.index), "host": r.host_id, "workload": r.workload},
        )
        for r in report.launches
    ]
    places = [
        Row(
            [
                w.workload,
                location_label(p.group, p.attributes),
                p.launches,
                p.untrusted_launches,
                p.non_compliant_launches,
                p.hosts,
            ],
            {"workload": w.workload},
        )
        for w in report.workloads
        for p in w.locations
    ]
    workloads = [
        Row(
            [
                w.workload,
                w.launches,
                w.untrusted_launches,
                w.non_compliant_launches,
                len(w.hosts),
                len(w.locations),
            ],
            {"workload": w.workload},
        )
        for w in report.workloads
    ]
    return (
        '<section id="workloads"><h2>Workloads</h2>'
        + table_html(
            "workloads",
            ["workload", "launches", "untrusted", "not compliant", "hosts", "locations"],
            workloads,
            "no launches in the period",
        )
        + "<h3>Per location</h3>"
        + table_html(
            "workload_locations",
            ["workload", "location", "launches", "untrusted", "not compliant", "hosts"],
            places,
            "no launches in the period",
        )
        + '</section><section id="launches"><h2>Launches</h2>'
        + table_html(
            "launches",
            [
                "entry",
                "time",
                "host",
                "location",
                "workload",
                "image digest",
                "container",
                "rootfs",
                "launch profile",
                "record",
                "verdict",
                "identity",
                "compliance",
                "policy version",
                "move",
            ],
            rows,
            "no launches in the period",
        )
        + "</section>"
    )


def moves(report: Report) -> str:
    rows = [
        Row(
            [
                m.index,
                m.time,
                m.identity,
                m.workload,
                (m.from_hostname or mono(m.from_host_id[:16]))
                if m.from_host_id is not None
                else "not in the bundle",
                m.origin,
                m.hostname or mono(m.host_id[:16]),
                location_label(m.group, m.attributes),
                move_label(m.move),
                reasons_html(m.reasons),
            ],
            {"index": str(m.index), "workload": m.workload, "move": m.move.value},
        )
        for m in report.moves
    ]
    return (
        '<section id="moves"><h2>Moves</h2><p>Launches of an identity on another host than'
        " the one that created it (its origin), judged against that origin.</p>"
        + table_html(
            "moves",
            [
                "entry",
                "time",
                "identity",
                "workload",
                "from host",
                "origin entry",
                "to host",
                "location",
                "move",
                "reasons",
            ],
            rows,
            "no moves in the period",
        )
        + "</section>"
    )


def violations(report: Report) -> str:
    rows = [
        Row(
            [
                v.index,
                v.time,
                v.hostname or mono(v.host_id[:16]),
                v.kind.value,
                v.workload,
                v.action,
                reasons_html(v.reasons),
                v.path,
            ],
            {"index": str(v.index), "kind": v.kind.value},
        )
        for v in report.violations
    ]
    return (
        '<section id="violations"><h2>Violations</h2>'
        + table_html(
            "violations",
            ["entry", "time", "host", "kind", "workload", "action", "reasons", "path"],
            rows,
            "no violations in the period",
        )
        + "</section>"
    )


def releases(report: Report) -> str:
    rows = [
        Row(
            [
                r.index,
                r.time,
                r.hostname or mono((r.host_id or "")[:16]),
                r.workload,
                mono(r.image),
                state_label(TrustState.TRUSTED, "released")
                if r.released
                else state_label(TrustState.UNTRUSTED, "refused"),
                r.container,
                r.rule,
                r.layers,
                r.policy_version,
                reasons_html([r.reason]) if r.reason is not None else "",
            ],
            {"index": str(r.index), "released": "true" if r.released else "false"},
        )
        for r in report.releases
    ]
    return (
        '<section id="releases"><h2>Key releases and refusals</h2>'
        + table_html(
            "releases",
            [
                "entry",
                "time",
                "host",
                "workload",
                "image",
                "outcome",
                "container",
                "rule",
                "layers",
                "policy version",
                "why refused",
            ],
            rows,
            "no key releases or refusals in the period",
        )
        + "</section>"
    )


def admissions(report: Report) -> str:
    rows = [
        Row(
            [
                a.index,
                a.time,
                a.hostname or mono(a.host_id[:16]),
                a.event,
                a.group,
                attributes_text(a.attributes),
                a.by,
                a.reason,
            ],
            {"index": str(a.index), "host": a.host_id},
        )
        for a in report.admissions
    ]
    actions = [
        Row([o.index, o.time, o.operator, o.action, o.serial, o.by], {"index": str(o.index)})
        for o in report.operator_actions
    ]
    versions = [
        Row(
            [v.index, v.time, v.version, mono(v.digest), v.by, v.reason],
            {"index": str(v.index), "version": str(v.version)},
        )
        for v in report.policy_versions
    ]
    by_event = [
        Row([event, count], {"event": event}) for event, count in report.period.by_event.items()
    ]
    return (
        '<section id="admissions"><h2>Admissions and enrollments</h2>'
        + table_html(
            "admissions",
            ["entry", "time", "host", "decision", "group", "attributes", "by", "reason"],
            rows,
            "no admissions or enrollments in the period",
        )
        + '</section><section id="policy-versions"><h2>Policy versions applied</h2>'
        + table_html(
            "policy_versions",
            ["entry", "time", "version", "digest", "by", "reason"],
            versions,
            "no policy version applied in the period",
        )
        + '</section><section id="operator-actions"><h2>Operator actions</h2>'
        + table_html(
            "operator_actions",
            ["entry", "time", "operator", "action", "serial", "by"],
            actions,
            "no operator actions in the period",
        )
        + '</section><section id="entries"><h2>Entries in the period, by type</h2>'
        + table_html("entries", ["event", "entries"], by_event, "no entries in the period")
        + "</section>"
    )
