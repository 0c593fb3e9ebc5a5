"""Compliance reports (docs/reports.md) on hand-built audit logs: the trust timeline, workloads
per location, violations, releases, the workload filter and the period's edges; launch
compliance, moves (with and without their origin in the bundle), a host's attributes changed by
`host_tagged`, the policy versions applied; the JSON reference form and the CSV and HTML that
must hold the same figures; HTML that shows hostile strings as text; and the command on a
bundle (verified first: a tampered one is refused, naming its first bad entry, with nothing
written) and on the server's database."""

from __future__ import annotations

import copy
import csv
import io
import json
import shlex
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.test_admission import HOST, Server, make_server
from tests.unit.test_cli_imports import loaded
from trusthook.audit.bundle import Bundle, export_bundle
from trusthook.audit.checkpoint import Checkpoint, sign_checkpoint
from trusthook.audit.entry import AuditEntry, EventType, Subject, SubjectKind
from trusthook.audit.note import NoteSigner
from trusthook.audit.report import Parameters, Report, Source, build_report, render
from trusthook.audit.report_csv import COLUMNS, cell_value, rows
from trusthook.audit.report_json import render_json, report_from_json, report_to_json
from trusthook.audit.report_model import MoveKind, TrustState, ViolationKind
from trusthook.audit.tree import MemoryTree
from trusthook.audit.verify import VerifiedBundle, verify_bundle
from trusthook.cli import main
from trusthook.common import b64
from trusthook.common.clock import iso
from trusthook.errors import AuditLogError, NotFoundError, RequestError
from trusthook.server.auditlog import load_signer
from trusthook.server.run import Paths, load_ca, open_store
from trusthook.server.service import ServerService

ORIGIN = "audit.example.com/trusthook"
SIGNER = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
KEY = SIGNER.verifier_key.encode()
T0 = datetime(2026, 12, 1, tzinfo=UTC)
A, B, C = "aa" * 32, "bb" * 32, "cc" * 32
APP = "registry.example/app:1"
APP_DIGEST = "sha256:" + "a1" * 32
OTHER_DIGEST = "sha256:" + "b2" * 32
SINCE, UNTIL = iso(T0), iso(T0 + timedelta(minutes=12))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def launch(container: str, image: str | None, digest: str | None, trusted: bool) -> dict[str, Any]:
    return {
        "container": container,
        "image": image,
        "image_digest": digest,
        "rootfs_digest": "sha256:" + "0f" * 32,
        "config_digest": "sha256:" + "1e" * 32,
        "launch_profile": "sha256:" + "2d" * 32,
        "recnum": 7,
        "stage": "createRuntime",
        "host_time": "2026-12-01T00:04:00.000000Z",
        "boot_id": "b00t",
        "trusted": trusted,
    }


# (minutes after T0, event, subject id, detail); subject kind host unless an operator acts
EVENTS: list[tuple[float, EventType, str, dict[str, Any]]] = [
    (
        -60,
        EventType.HOST_APPROVED,
        A,
        {
            "group": "prod",
            "attributes": {"country": "DE", "region": "eu-1"},
            "by": "alice",
            "reason": "",
        },
    ),
    (-59, EventType.ENROLLED, A, {"hostname": "node-a", "group": "prod", "reenrolled": False}),
    (-30, EventType.ATTESTED, A, {"trusted": True, "reasons": []}),
    (0, EventType.HOST_PENDING, B, {"hostname": "node-b", "group": None, "note": ""}),
    (
        1,
        EventType.HOST_APPROVED,
        B,
        {"group": "lab", "attributes": {"country": "FR"}, "by": "bob", "reason": "rack 4"},
    ),
    (2, EventType.ENROLLED, B, {"hostname": "node-b", "group": "lab", "reenrolled": False}),
    (
        3,
        EventType.ATTESTED,
        B,
        {
            "trusted": False,
            "reasons": [
                {"check": "pcr", "message": "PCR 7 differs", "expected": "00", "got": "ff"}
            ],
        },
    ),
    (4, EventType.LAUNCHED, A, launch("c1", APP, APP_DIGEST, True)),
    (
        4,
        EventType.RELEASED,
        A,
        {
            "image": APP_DIGEST,
            "container": "c1",
            "rule": "app",
            "layers": 2,
            "launch_profile": "sha256:" + "2d" * 32,
        },
    ),
    (5, EventType.LAUNCHED, B, launch("c2", None, OTHER_DIGEST, False)),
    (
        6,
        EventType.RELEASE_REFUSED,
        B,
        {
            "image": OTHER_DIGEST,
            "check": "untrusted",
            "message": "the host is not trusted",
            "expected": None,
            "got": None,
        },
    ),
    (
        7,
        EventType.REQUEST_REFUSED,
        B,
        {"path": "/v1/attestations", "check": "request_signature", "message": "no signature"},
    ),
    (
        8,
        EventType.ENROLLMENT_REFUSED,
        C,
        {"check": "credential", "message": "wrong credential activation answer"},
    ),
    (9, EventType.ATTESTED, B, {"trusted": True, "reasons": []}),
    (
        10,
        EventType.OPERATOR_ACTION,
        "alice",
        {"action": "operator_cert_issued", "serial": "1a", "by": "root"},
    ),
    (
        11,
        EventType.HOST_REVOKED,
        A,
        {
            "group": "prod",
            "attributes": {"country": "DE", "region": "eu-1"},
            "by": "alice",
            "reason": "decommissioned",
        },
    ),
    (12, EventType.ATTESTED, A, {"trusted": True, "reasons": []}),  # at --until: outside
]


def entries_of(events: Sequence[tuple[float, EventType, str, dict[str, Any]]]) -> list[AuditEntry]:
    """The entries of the tables here; a ``launched`` row that is one launch (``launch()``,
    with its verdict's ``trusted``) is a ``launched`` entry holding that one launch."""
    out = []
    for index, (minutes, event, subject, given) in enumerate(events):
        detail = given
        if event is EventType.LAUNCHED and "launches" not in given:
            one = {k: v for k, v in given.items() if k != "trusted"}
            detail = {"trusted": given["trusted"], "launches": [one]}
        operator = event in (EventType.OPERATOR_ACTION, EventType.POLICY_VERSION)
        kind = SubjectKind.OPERATOR if operator else SubjectKind.HOST
        out.append(
            AuditEntry.at(
                index=index,
                moment=at(minutes),
                event=event,
                subject=Subject(kind=kind, id=subject),
                detail=detail,
            )
        )
    return out


@dataclass
class Log:
    entries: list[AuditEntry]
    tree: MemoryTree = field(default_factory=MemoryTree)

    def __post_init__(self) -> None:
        for e in self.entries:
            self.tree.append(e.leaf_hash())

    def bundle(self, first: int = 0, last: int | None = None) -> Bundle:
        last = len(self.entries) - 1 if last is None else last
        size = len(self.entries)
        note = sign_checkpoint(
            Checkpoint(origin=ORIGIN, size=size, root=self.tree.root(size)), SIGNER
        )
        return export_bundle(
            self.tree,
            key=SIGNER.verifier_key,
            checkpoint=note,
            entries=self.entries[first : last + 1],
        )


LOG = Log(entries_of(EVENTS))


def verified(bundle: Bundle | None = None) -> VerifiedBundle:
    return verify_bundle(bundle or LOG.bundle(), key=SIGNER.verifier_key)


def report(bundle: str = "b.json", **parameters: Any) -> Report:
    parameters.setdefault("since", SINCE)
    parameters.setdefault("until", UNTIL)
    return build_report(
        verified(), parameters=Parameters(**parameters), source=Source(bundle=bundle)
    )


def segments(
    r: Report, host_id: str
) -> list[tuple[str, float, float, int | None, tuple[str, ...]]]:
    (host,) = [h for h in r.hosts if h.host_id == host_id]

    def minutes(text: str) -> float:
        return (datetime.fromisoformat(text) - T0).total_seconds() / 60

    return [
        (s.state.value, minutes(s.start), minutes(s.end), s.entry, s.checks) for s in host.trust
    ]


# the computation


def test_each_host_has_its_trust_over_the_period() -> None:
    r = report()
    assert [h.host_id for h in r.hosts] == [A, B, C]
    # trusted since entry 2, before the period (it set the state at its start), until revoked
    assert segments(r, A) == [
        ("trusted", 0, 11, 2, ()),
        ("untrusted", 11, 12, 15, ("revoked",)),
    ]
    assert segments(r, B) == [
        ("untrusted", 0, 2, 3, ("pending",)),
        ("untrusted", 2, 3, 5, ("not_attested",)),
        ("untrusted", 3, 9, 6, ("pcr",)),
        ("trusted", 9, 12, 13, ()),
    ]
    assert segments(r, C) == [("unknown", 0, 12, None, ())]  # a refusal says nothing of trust
    a = r.hosts[0]
    assert (a.hostname, a.group, dict(a.attributes)) == (
        "node-a",
        "prod",
        {"country": "DE", "region": "eu-1"},
    )
    assert r.summary.hosts_always_trusted == 0 and r.summary.hosts_ever_untrusted == 2


def test_a_validity_makes_an_old_trusted_verdict_stale() -> None:
    r = report(validity=300.0)
    assert segments(r, A) == [
        ("stale", 0, 11, 2, ("stale",)),  # the verdict at -30 min went stale at -25 min
        ("untrusted", 11, 12, 15, ("revoked",)),
    ]
    assert segments(r, B)[-1] == ("trusted", 9, 12, 13, ())  # 3 minutes old at the end
    r = report(validity=60.0)
    assert segments(r, B)[-2:] == [("trusted", 9, 10, 13, ()), ("stale", 10, 12, 13, ("stale",))]


def test_without_earlier_entries_the_start_is_unknown() -> None:
    bundle = LOG.bundle(first=3)  # the period only: the approval and verdict of A are outside
    r = build_report(
        verified(bundle),
        parameters=Parameters(since=SINCE, until=UNTIL),
        source=Source(bundle="b.json"),
    )
    assert segments(r, A) == [("unknown", 0, 11, None, ()), ("untrusted", 11, 12, 15, ("revoked",))]
    assert r.launches[0].group is None and dict(r.launches[0].attributes) == {}
    assert r.period.earlier_entries == 0


def test_launches_ran_where_their_host_was_admitted() -> None:
    r = report()
    assert [
        (x.index, x.workload, x.host_id, x.group, dict(x.attributes), x.trusted) for x in r.launches
    ] == [
        (7, APP, A, "prod", {"country": "DE", "region": "eu-1"}, True),
        (9, OTHER_DIGEST, B, "lab", {"country": "FR"}, False),  # no reference: its digest
    ]
    assert [(w.workload, w.launches, w.untrusted_launches, w.hosts) for w in r.workloads] == [
        (APP, 1, 0, (A,)),
        (OTHER_DIGEST, 1, 1, (B,)),
    ]
    (place,) = r.workloads[0].locations
    assert (place.group, dict(place.attributes), place.launches, place.hosts) == (
        "prod",
        {"country": "DE", "region": "eu-1"},
        1,
        1,
    )
    assert r.summary.locations == 2 and r.summary.untrusted_launches == 1


def test_a_launch_without_image_names_is_an_unknown_image() -> None:
    events = [(1, EventType.LAUNCHED, A, launch("c9", None, None, True))]
    log = Log(entries_of(events))
    r = build_report(
        verify_bundle(log.bundle()), parameters=Parameters(), source=Source(bundle="b")
    )
    assert r.launches[0].workload == "unknown image"


def _one(container: str, image: str | None) -> dict[str, Any]:
    return {k: v for k, v in launch(container, image, None, True).items() if k != "trusted"}


def test_a_verdict_holds_its_launches_and_launched_entries_the_rest() -> None:
    """An appraisal's launches ride in its verdict entry, the rest in ``launched`` entries
    (docs/audit.md §2): each is its own launch row, in order, with the entry's index and its
    verdict's trust; a refused verdict's launches are untrusted launches."""
    verdict = {"trusted": True, "reasons": [], "launches": [_one("c1", APP), _one("c2", APP)]}
    more = {"trusted": True, "launches": [_one("c3", APP)]}
    refused = {
        "trusted": False,
        "reasons": [{"check": "pcr", "message": "PCR 7 differs"}],
        "launches": [_one("c4", APP)],
    }
    events = [
        (1, EventType.ATTESTED, A, verdict),
        (1, EventType.LAUNCHED, A, more),
        (2, EventType.ATTESTED, A, refused),
    ]
    r = build_report(
        verify_bundle(Log(entries_of(events)).bundle()),
        parameters=Parameters(),
        source=Source(bundle="b"),
    )
    assert [(x.container, x.index, x.trusted) for x in r.launches] == [
        ("c1", 0, True),
        ("c2", 0, True),
        ("c3", 1, True),
        ("c4", 2, False),
    ]
    assert [w.untrusted_launches for w in r.workloads] == [1]
    assert [v.kind for v in r.violations] == [ViolationKind.UNTRUSTED_VERDICT]


def test_violations_releases_admissions_and_operator_actions() -> None:
    r = report()
    assert [(v.index, v.kind, [x.check for x in v.reasons]) for v in r.violations] == [
        (6, ViolationKind.UNTRUSTED_VERDICT, ["pcr"]),
        (11, ViolationKind.REQUEST_REFUSED, ["request_signature"]),
        (12, ViolationKind.ENROLLMENT_REFUSED, ["credential"]),
    ]
    pcr = r.violations[0].reasons[0]
    assert (pcr.message, pcr.expected, pcr.got) == ("PCR 7 differs", "00", "ff")
    assert r.violations[1].path == "/v1/attestations"
    assert [(x.index, x.released, x.workload, x.container) for x in r.releases] == [
        (8, True, APP, "c1"),  # its launch's workload, by host and container
        (10, False, OTHER_DIGEST, None),  # by the image digest of a launch
    ]
    assert r.releases[1].reason is not None and r.releases[1].reason.check == "untrusted"
    assert [(x.index, x.event, x.group) for x in r.admissions] == [
        (3, "host_pending", None),
        (4, "host_approved", "lab"),
        (5, "enrolled", "lab"),
        (15, "host_revoked", "prod"),
    ]
    assert [(o.operator, o.action, o.serial) for o in r.operator_actions] == [
        ("alice", "operator_cert_issued", "1a")
    ]
    s = r.summary
    assert (s.violations, s.untrusted_verdicts, s.refused_requests, s.refused_enrollments) == (
        3,
        1,
        1,
        1,
    )
    assert (s.releases, s.release_refusals, s.admissions, s.operator_actions) == (1, 1, 4, 1)


def test_the_period_includes_since_and_excludes_until() -> None:
    r = report()
    assert r.period.entries == 13  # entries 3 (at --since) to 15; 16 is at --until
    assert (r.period.earlier_entries, r.period.later_entries) == (3, 1)
    assert r.period.by_event["attested"] == 2
    assert report(until=iso(at(12) + timedelta(microseconds=1))).period.entries == 14
    assert report(since=iso(at(0) + timedelta(microseconds=1))).period.entries == 12
    r = report(since=None, until=None)  # open: the first and the last entry
    assert (r.period.start, r.period.end, r.period.entries) == (iso(at(-60)), iso(at(12)), 17)
    with pytest.raises(AuditLogError, match="no audit entries in the period"):
        report(since=iso(at(100)), until=None)


def test_the_workload_filter_keeps_its_launches_releases_and_hosts() -> None:
    r = report(workload=APP)
    assert [h.host_id for h in r.hosts] == [A]
    assert [x.index for x in r.launches] == [7] and [x.index for x in r.releases] == [8]
    assert r.violations == () and [x.index for x in r.admissions] == [15]
    assert len(r.operator_actions) == 1  # about no host: kept
    r = report(workload=OTHER_DIGEST)
    assert [h.host_id for h in r.hosts] == [B]
    assert [x.index for x in r.violations] == [6, 11] and [x.index for x in r.releases] == [10]
    assert report(workload="nothing").hosts == ()
    assert "--workload registry.example/app:1" in report(workload=APP).verification.commands[-1]


def test_the_report_names_its_checkpoint_and_the_commands_that_check_it() -> None:
    r = report(validity=180.0)
    c = r.checkpoint
    assert (c.origin, c.size, c.key, c.key_anchor) == (ORIGIN, len(EVENTS), KEY, "pinned")
    assert c.root == b64.encode(verified().checkpoint.root)
    assert c.newest_entry == iso(at(12)) and c.bundle_entries == len(EVENTS)
    verify, recompute = r.verification.commands
    assert verify == f"trusthook audit verify b.json --key {KEY}"
    assert recompute == (
        f"trusthook report --bundle b.json --key {KEY} --since {SINCE} --until {UNTIL}"
        " --validity 180 --format json recomputed.json"
    )
    unanchored = build_report(
        verify_bundle(LOG.bundle()), parameters=Parameters(), source=Source(bundle="b")
    )
    assert not unanchored.verification.key_vouched
    assert unanchored.verification.commands[0] == "trusthook audit verify b"


# the formats


def test_json_is_canonical_and_reads_back_as_the_same_report() -> None:
    r = report(validity=90.5, workload=APP)
    raw = render_json(r)
    assert raw == render(r, "json")
    data = json.loads(raw)
    assert (
        raw == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert data["format"] == "trusthook-report/v2"
    assert report_from_json(raw) == r
    assert render_json(report()) == render_json(report())  # the same bytes every time


def test_json_with_another_shape_is_refused() -> None:
    data = report_to_json(report())
    bad = copy.deepcopy(data)
    bad["hosts"][0]["trust"][0]["state"] = "fine"
    with pytest.raises(AuditLogError, match=r"report\.hosts\[0\]\.trust\[0\]\.state got 'fine'"):
        report_from_json(json.dumps(bad))
    bad = copy.deepcopy(data)
    del bad["summary"]["hosts"]
    with pytest.raises(AuditLogError, match=r"report\.summary\.hosts got nothing"):
        report_from_json(json.dumps(bad))
    with pytest.raises(AuditLogError, match="report format got"):
        report_from_json(json.dumps({**data, "format": "v0"}))


def csv_rows(raw: bytes) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    return [{k: cell_value(v) for k, v in row.items()} for row in reader]


def text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def test_csv_holds_the_json_figures() -> None:
    r = report()
    data = report_to_json(r)
    rows = csv_rows(render(r, "csv"))
    kinds = {row["kind"] for row in rows}
    assert kinds == {
        "meta", "summary", "host", "trust", "launch", "workload", "workload_location",
        "violation", "release", "admission", "operator_action",
    }  # fmt: skip
    summary = {row["name"]: int(row["value"]) for row in rows if row["kind"] == "summary"}
    assert summary == data["summary"]
    meta = {row["name"]: row["value"] for row in rows if row["kind"] == "meta"}
    assert meta["checkpoint.root"] == data["checkpoint"]["root"]
    assert meta["period.by_event.attested"] == "2"
    launches = [row for row in rows if row["kind"] == "launch"]
    for row, launch_json in zip(launches, data["launches"], strict=True):
        assert {k: row[k] for k in launch_json} == {k: text(v) for k, v in launch_json.items()}
    trust = [
        (row["host_id"], row["state"], row["time"], row["end"])
        for row in rows
        if row["kind"] == "trust"
    ]
    assert trust == [
        (h["host_id"], s["state"], s["start"], s["end"]) for h in data["hosts"] for s in h["trust"]
    ]
    violations = [
        (row["index"], row["event"], row["check"]) for row in rows if row["kind"] == "violation"
    ]
    assert violations == [
        (str(v["index"]), v["kind"], reason["check"])
        for v in data["violations"]
        for reason in v["reasons"]
    ]


# hostile strings

HOSTILE = '<script>alert("x")</script>'
HOSTILE_IMAGE = '"><img src=http://evil.example/x onerror=alert(1)>'


def hostile_report() -> Report:
    events: list[tuple[float, EventType, str, dict[str, Any]]] = [
        (0, EventType.HOST_APPROVED, A, {"group": "</style><b>", "attributes": {"rack": HOSTILE}}),
        (1, EventType.ENROLLED, A, {"hostname": HOSTILE}),
        (
            2,
            EventType.ATTESTED,
            A,
            {"trusted": False, "reasons": [{"check": HOSTILE, "message": "=cmd|' /C calc'!A0"}]},
        ),
        (3, EventType.LAUNCHED, A, launch(HOSTILE, HOSTILE_IMAGE, None, True)),
        (
            4,
            EventType.RELEASE_REFUSED,
            A,
            {"image": HOSTILE_IMAGE, "check": "x", "message": HOSTILE},
        ),
        (5, EventType.HOST_TAGGED, A, {"attributes": {HOSTILE: "=1+1"}, "reason": HOSTILE}),
        (  # a move of a hostile identity, with a hostile reason and action
            6,
            EventType.LAUNCHED,
            A,
            {
                **launch("c2", HOSTILE_IMAGE, None, True),
                "identity": HOSTILE,
                "compliant": False,
                "move": "tampered",
                "action": HOSTILE,
                "violations": [{"check": HOSTILE, "message": "=cmd|' /C calc'!A0"}],
            },
        ),
        (7, EventType.POLICY_VERSION, HOSTILE, {"version": 2, "digest": HOSTILE}),
    ]
    log = Log(entries_of(events))
    return build_report(
        verify_bundle(log.bundle()),
        parameters=Parameters(workload=HOSTILE_IMAGE),
        source=Source(bundle="<b>.json"),
    )


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_shows_hostile_strings_as_text() -> None:
    page = render(hostile_report(), "html").decode()
    assert HOSTILE not in page and HOSTILE_IMAGE not in page and "</style><b>" not in page
    parser = Elements()
    parser.feed(page)
    names = {tag for tag, _ in parser.tags}
    assert not names & {"script", "img", "iframe", "link", "object", "embed"}
    for _tag, attrs in parser.tags:
        assert not any(name.startswith("on") for name in attrs), attrs
        assert all(
            not (v or "").startswith("http") for k, v in attrs.items() if k in ("src", "href")
        )
    shown = "".join(parser.text)
    assert HOSTILE in shown and HOSTILE_IMAGE in shown  # as text, unescaped back by the parser
    tables = page_of(page).tables
    assert len(tables["moves"]) == len(tables["policy_versions"]) == 1
    policy = [
        a["content"] for t, a in parser.tags if a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert policy == [
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'"
    ]
    assert "<b>" not in page.split("<style>")[1].split("</style>")[0]


def test_csv_guards_cells_that_a_spreadsheet_would_run() -> None:
    raw = render(hostile_report(), "csv").decode()
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    cells = [v for row in reader for v in row.values() if v]
    assert not [v for v in cells if v.startswith(("=", "+", "-", "@"))]
    assert "'=cmd|' /C calc'!A0" in cells
    assert "=cmd|' /C calc'!A0" in [cell_value(v) for v in cells]


class Page(HTMLParser):
    """What a report page shows: its summary figures (``data-figure``) and every table's rows
    (their ``data-`` attributes), as a browser's DOM or our own text holds them."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self.tables: dict[str, list[dict[str, str | None]]] = {}
        self.charts: list[str] = []
        self.links: list[str] = []
        self._figure: str | None = None
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action")]
        self._figure = a.get("data-figure")
        if "data-table" in a:
            self._table = a["data-table"]
            self.tables[self._table or ""] = []
        if tag == "svg" and a.get("data-chart"):
            self.charts.append(a["data-chart"] or "")
        if tag == "tr" and self._table is not None and any(k.startswith("data-") for k in a):
            self.tables[self._table].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._figure:
            self.figures[self._figure] = data
            self._figure = None


def page_of(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def test_the_html_holds_the_json_figures() -> None:
    r = report()
    data = report_to_json(r)
    page = page_of(render(r, "html").decode())
    assert {k: int(v) for k, v in page.figures.items()} == data["summary"]
    assert [row["data-host"] for row in page.tables["hosts"]] == [A, B, C]
    assert [row["data-workload"] for row in page.tables["workloads"]] == [APP, OTHER_DIGEST]
    assert [row["data-index"] for row in page.tables["launches"]] == ["7", "9"]
    assert [row["data-index"] for row in page.tables["violations"]] == ["6", "11", "12"]
    assert len(page.tables["trust"]) == sum(len(h["trust"]) for h in data["hosts"])
    assert page.charts == ["trust", "workloads", "violations", "moves"]
    assert page.links == []


# the command


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.json"
    path.write_bytes(LOG.bundle().to_bytes())
    return path


def run(*argv: str) -> int:
    return main(["report", *argv])


def test_the_command_reports_on_a_verified_bundle(
    bundle_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    period = ["--since", "2026-12-01T01:00:00+01:00", "--until", UNTIL]
    assert (
        run("--bundle", str(bundle_file), "--key", KEY, *period, "--format", "json", str(out)) == 0
    )
    # --since in another offset: the same time; the bundle named as the auditor has it
    assert out.read_bytes() == render_json(report(bundle="bundle.json"))
    printed = capsys.readouterr().out
    assert (
        "report of 13 audit entries" in printed and "3 hosts, 2 launches, 3 violations" in printed
    )
    assert f"trusthook audit verify bundle.json --key {KEY}" in printed
    for form in ("html", "csv"):
        assert (
            run(
                "--bundle",
                str(bundle_file),
                "--key",
                KEY,
                "--format",
                form,
                str(tmp_path / f"r.{form}"),
            )
            == 0
        )
    assert (tmp_path / "r.html").read_bytes().startswith(b"<!DOCTYPE html>")
    assert run("--bundle", str(bundle_file), "--format", "json", str(out)) == 1  # never overwritten
    assert "exists; name a new file" in capsys.readouterr().err


def test_the_command_refuses_a_tampered_bundle_and_writes_nothing(
    bundle_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(bundle_file.read_bytes())
    data["entries"][9]["detail"]["trusted"] = True  # B's untrusted launch made trusted
    bundle_file.write_text(json.dumps(data))
    out = tmp_path / "report.html"
    assert run("--bundle", str(bundle_file), "--key", KEY, str(out)) == 1
    err = capsys.readouterr().err
    assert err == "trusthook: audit entry 9: altered: it does not hash to its leaf in the log\n"
    assert not out.exists() and list(tmp_path.iterdir()) == [bundle_file]


def test_the_command_refuses_a_bundle_under_another_key(
    bundle_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(32))).verifier_key
    assert run("--bundle", str(bundle_file), "--key", other.encode(), str(tmp_path / "r")) == 1
    assert "audit bundle key got" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "--since: got 'yesterday', expected an RFC 3339 time"),
        (["--since", "2026-12-01T00:00:00"], "expected a time with its UTC offset"),
        (["--since", UNTIL, "--until", SINCE], "expected a time after --since"),
        (["--validity", "0"], "--validity: got 0.0, expected a number of seconds above 0"),
        (["--bundle-out", "x"], "--bundle-out is for --config"),
    ],
)
def test_the_command_refuses_bad_arguments(
    bundle_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert run("--bundle", str(bundle_file), *argv, str(tmp_path / "r")) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# on the server's database


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path)
    yield s
    s.store.dispose()


def server_config(server: Server, tmp_path: Path) -> Path:
    path = tmp_path / "server.toml"
    state = server.config_data["server"]["state_dir"]
    path.write_text(
        f'[server]\nstate_dir = "{state}"\n[attestation]\nvalidity = 120\n'
        "[groups.lab]\n[groups.payments]\n"
    )
    return path


def test_with_config_the_bundle_is_written_and_the_report_recomputes_from_it(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = T0.timestamp()
    record = server.store.record_event
    record(
        host_id=HOST,
        event_name="approved",
        detail={"group": "lab", "attributes": {"country": "DE"}},
        now=base,
    )
    record(
        host_id=HOST, event_name="enrolled", detail={"hostname": "n1", "group": "lab"}, now=base + 1
    )
    one = {k: v for k, v in launch("c1", APP, APP_DIGEST, True).items() if k != "trusted"}
    record(
        host_id=HOST,
        event_name="attested",
        detail={"reasons": [], "launches": [one]},
        now=base + 60,
    )
    record(
        host_id=HOST,
        event_name="refused",
        detail={"reasons": [{"check": "pcr", "message": "m"}]},
        now=base + 600,
    )
    record(host_id=HOST, event_name="attested", detail={"reasons": []}, now=base + 3600)
    config = server_config(server, tmp_path)
    out = tmp_path / "report.json"
    since, until = iso(at(0.5)), iso(at(50))
    period = ["--since", since, "--until", until]
    argv = ["--config", str(config), *period, "--history-since", SINCE, "--format", "json"]
    assert run(*argv, str(out)) == 0
    written = tmp_path / "report.json.bundle.json"
    key = load_signer(Paths(server.state_dir).audit_key).verifier_key.encode()
    printed = capsys.readouterr().out
    assert f"bundle   {written}" in printed
    assert main(["audit", "verify", str(written), "--key", key]) == 0
    data = json.loads(out.read_bytes())
    assert data["parameters"]["validity"] == 120  # the server's
    assert data["summary"]["launches"] == 1 and data["summary"]["untrusted_verdicts"] == 1
    assert data["launches"][0]["attributes"] == {"country": "DE"}  # from before the period
    (host,) = data["hosts"]
    assert [(s["state"], s["checks"]) for s in host["trust"]] == [
        ("untrusted", ["not_attested"]),  # enrolled before the period, not attested yet
        ("trusted", []),
        ("stale", ["stale"]),  # 120 s after the verdict at +60 s
        ("untrusted", ["pcr"]),
    ]
    # the auditor's recomputation from the written bundle is the same report, byte for byte
    recompute = shlex.split(data["verification"]["commands"][-1])
    assert recompute[:4] == ["trusthook", "report", "--bundle", "report.json.bundle.json"]
    again = tmp_path / "again.json"
    args = recompute[2:-3]
    args[1] = str(written)
    assert run(*args, "--format", "json", str(again)) == 0
    assert again.read_bytes() == out.read_bytes()
    # nothing is overwritten: the report exists, and so does a bundle
    assert run(*argv, str(out)) == 1
    assert run(*argv, "--bundle-out", str(written), str(tmp_path / "new.json")) == 1
    assert not (tmp_path / "new.json").exists()


def test_with_config_an_empty_period_is_refused(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.store.record_event(
        host_id=HOST, event_name="attested", detail={"reasons": []}, now=T0.timestamp()
    )
    config = server_config(server, tmp_path)
    out = tmp_path / "r.html"
    assert run("--config", str(config), "--since", iso(at(5)), str(out)) == 1
    assert "no audit entries in that time range" in capsys.readouterr().err
    assert list(tmp_path.glob("r.html*")) == []


def test_an_open_period_ends_with_what_its_newest_entry_decided() -> None:
    r = report(since=None, until=None)
    assert segments(r, A)[-1] == ("trusted", 12, 12, 16, ())  # the verdict at the very end
    assert r.hosts[0].trust[-2].state is TrustState.UNTRUSTED


def test_a_workload_the_policy_manifest_named_is_the_launchs_workload() -> None:
    named = {**launch("c7", APP, APP_DIGEST, True), "workload": "payments-api"}
    unnamed = {**launch("c8", APP, APP_DIGEST, True), "workload": None}
    log = Log(entries_of([(1, EventType.LAUNCHED, A, named), (2, EventType.LAUNCHED, A, unnamed)]))
    r = build_report(
        verify_bundle(log.bundle()), parameters=Parameters(), source=Source(bundle="b")
    )
    assert [x.workload for x in r.launches] == ["payments-api", APP]


@pytest.mark.parametrize("argv", [["--help"], ["report", "--help"]])
def test_help_loads_no_report_code(tmp_path: Path, argv: list[str]) -> None:
    code, modules = loaded(tmp_path / "agent.sock", *argv)  # no agent: --help asks none
    assert code == 0
    assert [m for m in modules if m.startswith(("trusthook.audit", "trusthook.cli.report"))] == []


def test_the_servers_report_is_the_commands(server: Server) -> None:
    config = server.service._config
    store = open_store(config)  # as the server runs: with its log key
    service = ServerService(config=config, store=store, ca=load_ca(config), ek_roots=())
    try:
        check_the_servers_report(server, service)
    finally:
        store.dispose()


def check_the_servers_report(server: Server, service: ServerService) -> None:
    server.store.record_event(
        host_id=HOST,
        event_name="refused",
        detail={"reasons": [{"check": "pcr"}]},
        now=T0.timestamp(),
    )
    body, media_type = service.audit_report(
        None, since=SINCE, until=UNTIL, workload=None, form="json"
    )
    assert media_type == "application/json"
    data = json.loads(body)
    assert (
        data["summary"]["untrusted_verdicts"] == 1 and data["checkpoint"]["key_anchor"] == "pinned"
    )
    assert data["parameters"]["validity"] == 180  # the server's [attestation] validity
    export, verify, _ = data["verification"]["commands"]
    assert export == (
        f"trusthook audit export --config /etc/trusthook/server.toml --since {SINCE}"
        f" --until {UNTIL} bundle.json"
    )
    assert verify.startswith("trusthook audit verify bundle.json --key ")
    html, media_type = service.audit_report(
        None, since=None, until=None, workload=None, form="html"
    )
    assert media_type == "text/html; charset=utf-8" and html.startswith(b"<!DOCTYPE html>")
    for since, until, message in (
        ("noon", None, "since: got 'noon', expected an RFC 3339 time"),
        (UNTIL, SINCE, "until: got"),
    ):
        with pytest.raises(RequestError, match=message):
            service.audit_report(None, since=since, until=until, workload=None, form="csv")
    with pytest.raises(NotFoundError, match="no audit entries in that time range"):
        service.audit_report(None, since=UNTIL, until=None, workload=None, form="csv")


# compliance, moves and policy versions

D1, D2 = "sha256:" + "d1" * 32, "sha256:" + "d2" * 32
CHANGED_ROOTFS = "sha256:" + "99" * 32
WEB, API = "shop/web", "shop/api"


def reason(message: str, expected: str | None = None, got: str | None = None) -> dict[str, Any]:
    return {"check": "workload", "message": message, "expected": expected, "got": got}


def appraised(
    container: str,
    identity: str | None,
    workload: str | None,
    *,
    compliant: bool,
    move: str | None,
    violations: Sequence[dict[str, Any]] = (),
    action: str = "untrust",
    version: int = 2,
    trusted: bool = True,
    rootfs: str | None = None,
) -> dict[str, Any]:
    """A ``launched`` entry's detail with its appraisal against a policy (docs/audit.md §2)."""
    detail = launch(container, APP, APP_DIGEST, trusted)
    if rootfs is not None:
        detail["rootfs_digest"] = rootfs
    return {
        **detail,
        "policy_version": version,
        "identity": identity,
        "workload": workload,
        "compliant": compliant,
        "violations": list(violations),
        "action": action,
        "move": move,
        "encrypted": False,
    }


TAMPERED = reason(
    "container c4 of workload shop/web: a tampered move of shop/web-1: its root filesystem is"
    " not the one it was created with (on host aaaa)",
    "sha256:" + "0f" * 32,
    CHANGED_ROOTFS,
)
OUTSIDE = reason(
    "container c6 of workload shop/api: it may not run at this host's location: placement"
    " 'country = DE': the host's country is FR",
    "country = DE",
    "FR",
)
# A and B in group prod, A in DE, B in FR until it is tagged (DE, zone a) at minute 4.
POLICY_EVENTS: list[tuple[float, EventType, str, dict[str, Any]]] = [
    (-60, EventType.HOST_APPROVED, A, {"group": "prod", "attributes": {"country": "DE"}}),
    (-59, EventType.ENROLLED, A, {"hostname": "node-a", "group": "prod"}),
    (-58, EventType.HOST_APPROVED, B, {"group": "prod", "attributes": {"country": "FR"}}),
    (-57, EventType.ENROLLED, B, {"hostname": "node-b", "group": "prod"}),
    (-50, EventType.POLICY_VERSION, "alice", {"version": 1, "digest": D1, "by": "alice"}),
    (-40, EventType.ATTESTED, A, {"trusted": True, "reasons": []}),
    (  # 6: creates shop/web-1 on A, before the period
        -40,
        EventType.LAUNCHED,
        A,
        appraised("c0", "shop/web-1", WEB, compliant=True, move="origin", version=1),
    ),
    (
        0,
        EventType.POLICY_VERSION,
        "bob",
        {"version": 2, "digest": D2, "by": "bob", "reason": "pin the root filesystem"},
    ),
    (
        1,
        EventType.LAUNCHED,
        A,
        appraised("c1", "shop/web-1", WEB, compliant=True, move="same_host"),
    ),
    (2, EventType.LAUNCHED, B, appraised("c2", "shop/web-1", WEB, compliant=True, move="verified")),
    (
        3,
        EventType.ATTESTED,
        B,
        {"trusted": False, "reasons": [TAMPERED]},  # action untrust: the verdict says so too
    ),
    (  # 11
        3,
        EventType.LAUNCHED,
        B,
        appraised(
            "c4",
            "shop/web-1",
            WEB,
            compliant=False,
            move="tampered",
            violations=[TAMPERED],
            trusted=False,
            rootfs=CHANGED_ROOTFS,
        ),
    ),
    (
        4,
        EventType.HOST_TAGGED,
        B,
        {
            "by": "alice",
            "reason": "moved to Frankfurt",
            "group": "prod",
            "attributes": {"country": "DE", "zone": "a"},
        },
    ),
    (  # 13: not compliant under audit, no lineage (its first launch is not compliant)
        5,
        EventType.LAUNCHED,
        B,
        appraised(
            "c6",
            "shop/api-1",
            API,
            compliant=False,
            move=None,
            violations=[OUTSIDE],
            action="audit",
        ),
    ),
    (  # 14: a disallowed move whose origin the bundle does not hold
        6,
        EventType.LAUNCHED,
        B,
        appraised(
            "c7", "shop/web-2", WEB, compliant=False, move="disallowed", violations=[OUTSIDE]
        ),
    ),
    (7, EventType.LAUNCHED, A, launch("c8", APP, APP_DIGEST, True)),  # no policy in the entry
    (
        8,
        EventType.RELEASED,
        A,
        {"image": APP_DIGEST, "container": "c1", "rule": "app", "layers": 1, "policy_version": 2},
    ),
    (
        9,
        EventType.RELEASE_REFUSED,
        B,
        {"image": APP_DIGEST, "container": "c6", "check": "workload", "message": "placement"},
    ),
]
POLICY_LOG = Log(entries_of(POLICY_EVENTS))


def policy_report(first: int = 0, **parameters: Any) -> Report:
    parameters.setdefault("since", SINCE)
    parameters.setdefault("until", UNTIL)
    return build_report(
        verify_bundle(POLICY_LOG.bundle(first=first), key=SIGNER.verifier_key),
        parameters=Parameters(**parameters),
        source=Source(bundle="b.json"),
    )


def test_each_launch_carries_its_appraisal_against_the_policy() -> None:
    r = policy_report()
    assert [
        (x.index, x.identity, x.workload, x.compliant, x.policy_version, x.move, x.action)
        for x in r.launches
    ] == [
        (8, "shop/web-1", WEB, True, 2, MoveKind.SAME_HOST, "untrust"),
        (9, "shop/web-1", WEB, True, 2, MoveKind.VERIFIED, "untrust"),
        (11, "shop/web-1", WEB, False, 2, MoveKind.TAMPERED, "untrust"),
        (13, "shop/api-1", API, False, 2, None, "audit"),
        (14, "shop/web-2", WEB, False, 2, MoveKind.DISALLOWED, "untrust"),
        (15, None, APP, None, None, None, None),  # recorded without a policy
    ]
    assert r.launches[0].encrypted is False and r.launches[-1].encrypted is None
    s = r.summary
    assert (s.launches, s.untrusted_launches, s.non_compliant_launches) == (6, 1, 3)
    assert [(w.workload, w.launches, w.non_compliant_launches) for w in r.workloads] == [
        (APP, 1, 0),
        (API, 1, 1),
        (WEB, 4, 2),
    ]
    web = r.workloads[2]
    assert [(dict(p.attributes), p.launches, p.non_compliant_launches) for p in web.locations] == [
        ({"country": "DE"}, 1, 0),  # A
        ({"country": "DE", "zone": "a"}, 1, 1),  # B, after it was tagged
        ({"country": "FR"}, 2, 1),
    ]
    assert r.releases[0].policy_version == 2 and r.releases[1].policy_version is None


def test_a_non_compliant_launch_is_one_violation_of_its_own_kind() -> None:
    r = policy_report()
    assert [(v.index, v.kind, v.workload, v.action) for v in r.violations] == [
        (10, ViolationKind.UNTRUSTED_VERDICT, None, None),  # the host's verdict: another entry
        (11, ViolationKind.TAMPERED_MOVE, WEB, "untrust"),
        (13, ViolationKind.NON_COMPLIANT_LAUNCH, API, "audit"),
        (14, ViolationKind.DISALLOWED_MOVE, WEB, "untrust"),
    ]
    tampered = r.violations[1].reasons[0]
    assert (tampered.check, tampered.expected, tampered.got) == (
        "workload",
        "sha256:" + "0f" * 32,
        CHANGED_ROOTFS,
    )
    assert r.violations[2].reasons[0].message.startswith("container c6 of workload shop/api")
    s = r.summary
    # every non-compliant launch is exactly one violation: the moves are not counted again
    assert (
        s.violations
        == 4
        == (
            s.untrusted_verdicts
            + s.refused_requests
            + s.refused_enrollments
            + s.non_compliant_launches
        )
    )
    assert (s.moves, s.tampered_moves, s.disallowed_moves) == (3, 1, 1)
    assert [(h.host_id, h.violations) for h in r.hosts] == [(A, 0), (B, 4)]


def test_moves_name_the_host_their_identity_was_created_on() -> None:
    r = policy_report()
    assert [(m.index, m.identity, m.workload, m.host_id, m.hostname, m.move) for m in r.moves] == [
        (9, "shop/web-1", WEB, B, "node-b", MoveKind.VERIFIED),
        (11, "shop/web-1", WEB, B, "node-b", MoveKind.TAMPERED),
        (14, "shop/web-2", WEB, B, "node-b", MoveKind.DISALLOWED),
    ]
    verified, tampered, disallowed = r.moves
    # the origin launch lies before the period: the bundle holds it, so the report knows it
    assert (verified.from_host_id, verified.from_hostname, verified.origin) == (A, "node-a", 6)
    assert (tampered.from_host_id, tampered.origin) == (A, 6)
    assert [x.check for x in tampered.reasons] == ["workload"] and verified.reasons == ()
    assert (disallowed.from_host_id, disallowed.from_hostname, disallowed.origin) == (None,) * 3
    assert [x.message for x in disallowed.reasons] == [OUTSIDE["message"]]
    assert dict(disallowed.attributes) == {"country": "DE", "zone": "a"}  # where it landed
    assert dict(verified.attributes) == {"country": "FR"}


def test_without_the_origin_in_the_bundle_a_move_comes_from_no_known_host() -> None:
    r = policy_report(first=7)  # from the policy version on: the origin launch is not there
    assert [(m.index, m.from_host_id, m.from_hostname, m.origin) for m in r.moves] == [
        (9, None, None, None),
        (11, None, None, None),
        (14, None, None, None),
    ]
    assert r.summary.moves == 3 and r.summary.tampered_moves == 1


def test_a_host_tagged_entry_changes_its_location_from_then_on() -> None:
    r = policy_report()
    b = [(x.index, dict(x.attributes)) for x in r.launches if x.host_id == B]
    assert b == [
        (9, {"country": "FR"}),
        (11, {"country": "FR"}),
        (13, {"country": "DE", "zone": "a"}),  # after the tag at entry 12
        (14, {"country": "DE", "zone": "a"}),
    ]
    (tagged,) = [x for x in r.admissions if x.event == "host_tagged"]
    assert (tagged.index, tagged.host_id, tagged.hostname, tagged.group) == (
        12,
        B,
        "node-b",
        "prod",
    )
    assert (dict(tagged.attributes), tagged.by, tagged.reason) == (
        {"country": "DE", "zone": "a"},
        "alice",
        "moved to Frankfurt",
    )
    host = next(h for h in r.hosts if h.host_id == B)
    assert dict(host.attributes) == {"country": "DE", "zone": "a"}
    # a tag says nothing of trust: B stays untrusted from its verdict at minute 3 on
    assert segments(r, B)[-1] == ("untrusted", 3, 12, 10, ("workload",))
    assert r.summary.admissions == 1 and r.summary.locations == 3


def test_the_policy_versions_applied_in_the_period() -> None:
    r = policy_report()
    assert [(v.index, v.time, v.version, v.digest, v.by, v.reason) for v in r.policy_versions] == [
        (7, iso(at(0)), 2, D2, "bob", "pin the root filesystem")  # version 1 is before it
    ]
    assert r.summary.policy_versions == 1
    r = policy_report(since=None)
    assert [(v.version, v.by, v.reason) for v in r.policy_versions] == [
        (1, "alice", None),
        (2, "bob", "pin the root filesystem"),
    ]
    assert r.period.by_event["policy_version"] == 2


def test_the_workload_filter_keeps_its_launches_moves_and_their_violations() -> None:
    r = policy_report(workload=WEB)
    assert [x.index for x in r.launches] == [8, 9, 11, 14]
    assert [m.index for m in r.moves] == [9, 11, 14]
    # its launches' violations, and the verdicts of the hosts that ran it; not shop/api's
    assert [(v.index, v.kind) for v in r.violations] == [
        (10, ViolationKind.UNTRUSTED_VERDICT),
        (11, ViolationKind.TAMPERED_MOVE),
        (14, ViolationKind.DISALLOWED_MOVE),
    ]
    assert len(r.policy_versions) == 1  # about no host: kept
    assert (r.summary.non_compliant_launches, r.summary.moves, r.summary.violations) == (2, 3, 3)
    r = policy_report(workload=API)
    assert [x.index for x in r.launches] == [13] and r.moves == ()
    assert [(v.index, v.kind) for v in r.violations] == [
        (10, ViolationKind.UNTRUSTED_VERDICT),  # B ran shop/api too
        (13, ViolationKind.NON_COMPLIANT_LAUNCH),
    ]
    assert [x.index for x in r.admissions] == [12] and [h.host_id for h in r.hosts] == [B]


@pytest.mark.parametrize(
    ("compliant", "move", "kind", "moved"),
    [
        (True, "tampered", ViolationKind.TAMPERED_MOVE, True),  # the move decides
        (None, "disallowed", ViolationKind.DISALLOWED_MOVE, True),
        (False, "same_host", ViolationKind.NON_COMPLIANT_LAUNCH, False),  # a restart
        (False, "teleported", ViolationKind.NON_COMPLIANT_LAUNCH, False),  # no move we know
        (False, 3, ViolationKind.NON_COMPLIANT_LAUNCH, False),
        (True, None, None, False),
        ("no", "verified", None, True),
    ],
)
def test_an_entry_is_never_counted_twice(
    compliant: object, move: object, kind: ViolationKind | None, moved: bool
) -> None:
    detail = appraised("c1", "shop/web-1", WEB, compliant=True, move=None)
    detail.update(compliant=compliant, move=move)
    log = Log(entries_of([(1, EventType.LAUNCHED, A, detail)]))
    r = build_report(
        verify_bundle(log.bundle()), parameters=Parameters(), source=Source(bundle="b")
    )
    assert [v.kind for v in r.violations] == ([] if kind is None else [kind])
    assert r.summary.non_compliant_launches == r.summary.violations == (kind is not None)
    assert len(r.moves) == r.summary.moves == moved
    (row,) = r.launches
    assert row.compliant is (compliant if isinstance(compliant, bool) else None)


def test_the_policy_report_reads_back_and_its_csv_and_html_hold_its_figures() -> None:
    r = policy_report(validity=600.0)
    raw = render_json(r)
    assert report_from_json(raw) == r
    data = json.loads(raw)
    assert data["moves"][0]["move"] == "verified" and data["launches"][0]["move"] == "same_host"
    assert data["violations"][1]["kind"] == "tampered_move"
    for row in rows(r):
        assert set(row) <= set(COLUMNS), set(row) - set(COLUMNS)
    table = csv_rows(render(r, "csv"))
    summary = {row["name"]: int(row["value"]) for row in table if row["kind"] == "summary"}
    assert summary == data["summary"]
    launches = [row for row in table if row["kind"] == "launch"]
    for row, launch_json in zip(launches, data["launches"], strict=True):
        assert {k: row[k] for k in launch_json} == {k: text(v) for k, v in launch_json.items()}
    moves = [row for row in table if row["kind"] == "move"]
    expected = []
    for m in data["moves"]:
        plain = {k: text(v) for k, v in m.items() if k != "reasons"}
        for why in m["reasons"] or [{}]:
            expected.append({**plain, **{k: text(why.get(k)) for k in ("check", "got")}})
    assert [{k: row[k] for k in e} for row, e in zip(moves, expected, strict=True)] == expected
    assert len(moves) == len(expected) == 3  # the verified move has no reason: one empty row
    versions = [
        (row["index"], row["version"], row["digest"], row["by"], row["reason"])
        for row in table
        if row["kind"] == "policy_version"
    ]
    assert versions == [("7", "2", D2, "bob", "pin the root filesystem")]
    violations = [
        (row["index"], row["event"], row["workload"], row["action"])
        for row in table
        if row["kind"] == "violation"
    ]
    assert violations == [
        (str(v["index"]), v["kind"], text(v["workload"]), text(v["action"]))
        for v in data["violations"]
    ]
    (tagged,) = [row for row in table if row["kind"] == "admission"]
    assert (tagged["event"], tagged["attributes"]) == ("host_tagged", '{"country":"DE","zone":"a"}')
    page = page_of(render(r, "html").decode())
    assert {k: int(v) for k, v in page.figures.items()} == data["summary"]
    assert [(x["data-index"], x["data-move"]) for x in page.tables["moves"]] == [
        (str(m["index"]), m["move"]) for m in data["moves"]
    ]
    assert [x["data-version"] for x in page.tables["policy_versions"]] == ["2"]
    assert [x["data-index"] for x in page.tables["violations"]] == [
        str(v["index"]) for v in data["violations"]
    ]
    assert page.charts == ["trust", "workloads", "violations", "moves"]


def test_the_charts_count_moves_and_the_new_violations_by_kind() -> None:
    html = render(policy_report(), "html").decode()
    parser = Elements()
    parser.feed(html)
    marks = Counter(a.get("data-kind") for tag, a in parser.tags if tag == "rect")
    assert marks["verified"] == marks["tampered"] == marks["disallowed"] == 1
    assert marks["tampered_move"] == marks["disallowed_move"] == 1
    assert marks["non_compliant_launch"] == marks["untrusted_verdict"] == 1
    shown = "".join(parser.text)
    assert (
        "tampered (1)" in shown and "verified (1)" in shown and "non_compliant_launch (1)" in shown
    )
    assert "not in the bundle" in shown  # the disallowed move's origin
