"""The CSV report: one RFC 4180 table (UTF-8, CRLF) with a ``kind`` column saying which row
kind each row is, and one fixed set of columns of which each kind fills its own
(docs/reports.md, "CSV"). One file because a report travels as one piece, like the bundle;
one header because every spreadsheet and CSV reader takes it, filtered by ``kind``.

Cells are the JSON report's values: empty for null, ``true``/``false``, decimal integers,
attributes and check lists as canonical JSON. Entries are attacker-influenced, and a
spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula: such a cell
(and one that starts with a tab, a carriage return or ``'``) gets a leading ``'``, which
``cell_value`` takes off again. Pure, standard library only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from typing import Any

from trusthook.audit.report_json import report_to_json
from trusthook.audit.report_model import Report
from trusthook.common.jcs import canonicalize

COLUMNS = (
    "kind",
    "name",
    "value",
    "index",
    "time",
    "end",
    "host_id",
    "hostname",
    "group",
    "attributes",
    "workload",
    "image",
    "image_digest",
    "container",
    "rootfs_digest",
    "config_digest",
    "launch_profile",
    "recnum",
    "stage",
    "host_time",
    "boot_id",
    "trusted",
    "encrypted",
    "identity",
    "compliant",
    "policy_version",
    "action",
    "move",
    "from_host_id",
    "from_hostname",
    "origin",
    "state",
    "checks",
    "event",
    "check",
    "message",
    "expected",
    "got",
    "path",
    "rule",
    "layers",
    "launches",
    "untrusted_launches",
    "non_compliant_launches",
    "hosts",
    "violations",
    "by",
    "reason",
    "auto",
    "operator",
    "serial",
    "version",
    "digest",
)
_RISKY = ("=", "+", "-", "@", "\t", "\r", "'")
Row = dict[str, Any]


def cell(value: object) -> str:
    """The text of one cell."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        text = canonicalize(value).decode()  # numbers as in the JSON report
    return "'" + text if text.startswith(_RISKY) else text


def cell_value(text: str) -> str:
    """A cell's text as the report held it (the guard against formulas taken off)."""
    return text[1:] if text.startswith("'") else text


def render_csv(report: Report) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows(report):
        writer.writerow([cell(row.get(c)) for c in COLUMNS])
    return out.getvalue().encode("utf-8")


def _meta(prefix: str, obj: Mapping[str, Any]) -> Iterator[Row]:
    for name, value in obj.items():
        if isinstance(value, list):
            for item in value:
                yield {"kind": "meta", "name": f"{prefix}.{name}", "value": item}
        elif isinstance(value, dict):
            for key, count in value.items():
                yield {"kind": "meta", "name": f"{prefix}.{name}.{key}", "value": count}
        else:
            yield {"kind": "meta", "name": f"{prefix}.{name}", "value": value}


def rows(report: Report) -> Iterator[Row]:
    """Every row, as column -> value, in the order written."""
    data = report_to_json(report)
    yield {"kind": "meta", "name": "format", "value": data["format"]}
    for part in ("parameters", "period", "checkpoint", "verification"):
        yield from _meta(part, data[part])
    for name, value in data["summary"].items():
        yield {"kind": "summary", "name": name, "value": value}
    yield from _hosts(data["hosts"])
    for launch in data["launches"]:
        yield {"kind": "launch", **launch}
    yield from _workloads(data["workloads"])
    yield from _with_reasons("move", data["moves"])
    for violation in data["violations"]:
        violation["event"] = violation.pop("kind")
    yield from _with_reasons("violation", data["violations"])
    for release in data["releases"]:
        reason = release.pop("reason") or {}
        released = release.pop("released")
        event = "released" if released else "release_refused"
        yield {"kind": "release", **release, "event": event, **reason}
    for admission in data["admissions"]:
        yield {"kind": "admission", **admission}
    for version in data["policy_versions"]:
        yield {"kind": "policy_version", **version}
    for action in data["operator_actions"]:
        event = action.pop("action")
        yield {"kind": "operator_action", **action, "event": event}


def _hosts(hosts: list[Row]) -> Iterator[Row]:
    for host in hosts:
        trust = host.pop("trust")
        yield {"kind": "host", **host}
        for segment in trust:
            yield {
                "kind": "trust",
                "host_id": host["host_id"],
                "state": segment["state"],
                "time": segment["start"],
                "end": segment["end"],
                "index": segment["entry"],
                "checks": segment["checks"],
            }


def _workloads(workloads: list[Row]) -> Iterator[Row]:
    for workload in workloads:
        places = workload.pop("locations")
        yield {"kind": "workload", **workload, "hosts": len(workload["hosts"])}
        for place in places:
            yield {"kind": "workload_location", "workload": workload["workload"], **place}


def _with_reasons(kind: str, items: list[Row]) -> Iterator[Row]:
    """A row per reason of each item (one with empty reason columns if it has none)."""
    for item in items:
        reasons = item.pop("reasons") or [{}]
        for reason in reasons:
            yield {"kind": kind, **item, **reason}
