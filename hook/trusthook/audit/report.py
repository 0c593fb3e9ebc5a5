"""Compliance reports: what a verified audit bundle says happened in a period — which workloads
ran on which hosts, in which locations, whether each host was trusted at the time, whether each
launch complied with the policy manifest and which moved, the violations, key releases and
refusals, admissions, policy versions (docs/reports.md).

``build_report`` takes a ``VerifiedBundle`` (what ``verify_bundle`` returned), never raw
entries, so every figure comes from entries that were verified against a signed checkpoint
and an auditor recomputes it offline from the same bundle. The model is frozen dataclasses;
``report_json`` (the reference form), ``report_csv`` and ``report_html`` render it. Pure: no
I/O, no clock (the report holds no time but the log's).

Entries are attacker-influenced (a host names itself, an image reference comes from the
host's log): nothing here interprets them beyond picking members of the expected type.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from trusthook.audit.entry import AuditEntry, EventType, SubjectKind
from trusthook.audit.report_csv import render_csv
from trusthook.audit.report_html import render_html
from trusthook.audit.report_json import render_json
from trusthook.audit.report_launch import (
    LaunchSeen,
    Lineages,
    launch_reasons,
    launch_row,
    launch_violation,
    launches_in,
    location_key,
    move_row,
    non_compliant,
    workloads,
)
from trusthook.audit.report_model import (
    FORMAT,
    LAUNCH_VIOLATIONS,
    Admission,
    CheckpointInfo,
    Launch,
    Move,
    MoveKind,
    OperatorAction,
    Parameters,
    Period,
    PolicyVersion,
    Reason,
    Release,
    Report,
    ReportHost,
    Summary,
    TrustState,
    Verification,
    Violation,
    ViolationKind,
    Workload,
)
from trusthook.audit.report_trust import (
    ADMISSIONS,
    HostHistory,
    attributes_of,
    detail_int,
    detail_text,
    reason_of,
    when,
    workload_of,
)
from trusthook.audit.verify import KeyAnchor, VerifiedBundle
from trusthook.common import b64
from trusthook.common.clock import iso
from trusthook.errors import AuditLogError

__all__ = [
    "FORMAT",
    "MEDIA_TYPES",
    "Parameters",
    "Report",
    "Source",
    "build_report",
    "period_time",
    "render",
]


def period_time(text: str, what: str) -> str:
    """``text``, an RFC 3339 time with its offset, in the entries' form (UTC, microseconds,
    ``Z``); ValueError with one line ("--since: got ..., expected ...") otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what}: got {text[:40]!r}, expected an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what}: got {text[:40]!r}, expected a time with its UTC offset")
    return iso(moment)


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Where the report's bundle is, for the commands the report names: ``bundle`` its file
    name as the auditor has it; ``trusted_checkpoint`` the file the verification was anchored
    on; ``export_config``: the bundle is still to be exported with this server config (the
    server's route, which hands out no bundle)."""

    bundle: str
    trusted_checkpoint: str | None = None
    export_config: str | None = None


@dataclass(slots=True)
class _Rows:
    launches: list[Launch] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    admissions: list[Admission] = field(default_factory=list)
    policy_versions: list[PolicyVersion] = field(default_factory=list)
    operator_actions: list[OperatorAction] = field(default_factory=list)


class _Builder:
    """Walks the bundle's entries in log order: every entry before ``until`` moves the hosts'
    state; those in [since, until) also make the report's rows."""

    def __init__(self, start: datetime, validity: timedelta | None) -> None:
        self.start = start
        self.validity = validity
        self.hosts: dict[str, HostHistory] = {}
        self.rows = _Rows()
        self.by_container: dict[tuple[str, str], str] = {}  # (host, container) -> workload
        self.by_digest: dict[str, str] = {}  # image digest -> workload of its first launch
        self.lineages = Lineages()

    def host(self, host_id: str) -> HostHistory:
        found = self.hosts.get(host_id)
        if found is None:
            found = self.hosts[host_id] = HostHistory(host_id, self.start, self.validity)
        return found

    def entry(self, entry: AuditEntry, in_period: bool) -> None:
        at = when(entry.time)
        if entry.subject.kind is not SubjectKind.HOST:
            if in_period:
                self._other(entry)
            return
        host = self.host(entry.subject.id)
        if in_period:
            host.seen = True
            self._row(entry, host)  # with the host as it was before this entry
        for launch in launches_in(entry):  # each in turn: one may move what another created
            if in_period:
                self._launch(launch, host)
            else:
                self._remember(launch, host.host_id)
            self.lineages.note(launch, host.host_id)
        host.apply(entry, at)

    def _remember(self, launch: LaunchSeen, host_id: str) -> str:
        workload = workload_of(launch.detail)
        self.by_container[(host_id, launch.detail["container"])] = workload
        digest = detail_text(launch.detail, "image_digest")
        if digest is not None:
            self.by_digest.setdefault(digest, workload)
        return workload

    def _release_workload(self, entry: AuditEntry, host_id: str | None) -> str:
        detail = entry.detail
        container = detail_text(detail, "container")
        if host_id is not None and container is not None:
            found = self.by_container.get((host_id, container))
            if found is not None:
                return found
        image: str = detail["image"]
        if image in self.by_digest:
            return self.by_digest[image]
        return entry.subject.id if entry.subject.kind is SubjectKind.WORKLOAD else image

    def _other(self, entry: AuditEntry) -> None:
        if entry.event in (EventType.RELEASED, EventType.RELEASE_REFUSED):
            self._release(entry, None, None)
        elif entry.event is EventType.POLICY_VERSION:
            detail = entry.detail
            self.rows.policy_versions.append(
                PolicyVersion(
                    index=entry.index,
                    time=entry.time,
                    version=detail["version"],
                    digest=detail["digest"],
                    by=detail_text(detail, "by") or entry.subject.id,
                    reason=detail_text(detail, "reason"),
                )
            )
        elif entry.event is EventType.OPERATOR_ACTION:
            detail = entry.detail
            self.rows.operator_actions.append(
                OperatorAction(
                    index=entry.index,
                    time=entry.time,
                    operator=entry.subject.id,
                    action=detail["action"],
                    serial=detail_text(detail, "serial"),
                    by=detail_text(detail, "by"),
                )
            )

    def _release(self, entry: AuditEntry, host_id: str | None, host: HostHistory | None) -> None:
        detail = entry.detail
        refused = entry.event is EventType.RELEASE_REFUSED
        self.rows.releases.append(
            Release(
                index=entry.index,
                time=entry.time,
                host_id=host_id,
                hostname=None if host is None else host.hostname,
                workload=self._release_workload(entry, host_id),
                image=detail["image"],
                released=not refused,
                container=detail_text(detail, "container"),
                rule=detail_text(detail, "rule"),
                layers=detail_int(detail, "layers"),
                launch_profile=detail_text(detail, "launch_profile"),
                policy_version=detail_int(detail, "policy_version"),
                reason=reason_of(detail) if refused else None,
            )
        )

    def _row(self, entry: AuditEntry, host: HostHistory) -> None:
        detail, event = entry.detail, entry.event
        common: dict[str, Any] = {
            "index": entry.index,
            "time": entry.time,
            "host_id": host.host_id,
            "hostname": host.hostname,
        }
        if event is EventType.ATTESTED and detail["trusted"] is not True:
            reasons = tuple(reason_of(r) for r in detail["reasons"])
            self._violation(common, ViolationKind.UNTRUSTED_VERDICT, reasons, None)
        elif event in (EventType.REQUEST_REFUSED, EventType.ENROLLMENT_REFUSED):
            kind = (
                ViolationKind.REQUEST_REFUSED
                if event is EventType.REQUEST_REFUSED
                else ViolationKind.ENROLLMENT_REFUSED
            )
            self._violation(common, kind, (reason_of(detail),), detail_text(detail, "path"))
        elif event in (EventType.RELEASED, EventType.RELEASE_REFUSED):
            self._release(entry, host.host_id, host)
        elif event in ADMISSIONS:
            auto = detail.get("auto")
            common["hostname"] = detail_text(detail, "hostname") or host.hostname
            self.rows.admissions.append(
                Admission(
                    **common,
                    event=event.value,
                    group=detail_text(detail, "group"),
                    attributes=attributes_of(detail.get("attributes")),
                    by=detail_text(detail, "by"),
                    reason=detail_text(detail, "reason"),
                    auto=auto if isinstance(auto, bool) else None,
                )
            )

    def _launch(self, seen: LaunchSeen, host: HostHistory) -> None:
        """A launch row, and the violation and the move it is, if it is one."""
        launch = launch_row(seen, host, self._remember(seen, host.host_id))
        self.rows.launches.append(launch)
        reasons = launch_reasons(seen)
        violation = launch_violation(launch, reasons)
        if violation is not None:
            self.rows.violations.append(violation)
        origin = self.lineages.origin(launch.identity)
        from_host = None if origin is None else self.hosts.get(origin.host_id)
        move = move_row(launch, reasons, origin, None if from_host is None else from_host.hostname)
        if move is not None:
            self.rows.moves.append(move)

    def _violation(
        self,
        common: dict[str, Any],
        kind: ViolationKind,
        reasons: tuple[Reason, ...],
        path: str | None,
    ) -> None:
        self.rows.violations.append(
            Violation(**common, kind=kind, reasons=reasons, path=path, workload=None, action=None)
        )


def build_report(verified: VerifiedBundle, *, parameters: Parameters, source: Source) -> Report:
    """The report of ``verified``'s entries in [parameters.since, parameters.until)."""
    since = None if parameters.since is None else when(parameters.since)
    until = None if parameters.until is None else when(parameters.until)
    entries = verified.entries
    times = [when(e.time) for e in entries]
    inside = [(since is None or t >= since) and (until is None or t < until) for t in times]
    chosen = [t for t, keep in zip(times, inside, strict=True) if keep]
    start = since or (min(chosen) if chosen else None)
    end = until or (max(chosen) if chosen else None)
    if start is None or end is None:
        raise AuditLogError(
            "the bundle holds no audit entries in the period; give --since and --until"
        )
    if end < start:
        raise AuditLogError(f"the period ends ({iso(end)}) before it starts ({iso(start)})")
    validity = None if parameters.validity is None else timedelta(seconds=parameters.validity)
    builder = _Builder(start, validity)
    for entry, at, keep in zip(entries, times, inside, strict=True):
        if until is None or at < until:
            builder.entry(entry, keep)
    in_period = [e for e, keep in zip(entries, inside, strict=True) if keep]
    rows = _filtered(builder, parameters.workload)
    launched = Counter(r.host_id for r in rows.launches)
    violated = Counter(r.host_id for r in rows.violations)
    kept = None if parameters.workload is None else _ran(rows)
    hosts = tuple(
        ReportHost(
            host_id=h.host_id,
            hostname=h.hostname,
            group=h.group,
            attributes=dict(h.attributes),
            trust=h.segments(end),
            launches=launched[h.host_id],
            violations=violated[h.host_id],
        )
        for h in sorted(builder.hosts.values(), key=lambda h: h.host_id)
        if h.seen and (kept is None or h.host_id in kept)
    )
    by_workload = workloads(rows.launches)
    newest = max(times) if times else None
    return Report(
        format=FORMAT,
        parameters=parameters,
        period=Period(
            start=iso(start),
            end=iso(end),
            entries=len(in_period),
            by_event=dict(sorted(Counter(e.event.value for e in in_period).items())),
            earlier_entries=sum(1 for t in times if since is not None and t < since),
            later_entries=sum(1 for t in times if until is not None and t >= until),
        ),
        checkpoint=_checkpoint(verified, newest),
        verification=_verification(verified, parameters, source),
        summary=_summary(hosts, rows, by_workload),
        hosts=hosts,
        launches=tuple(rows.launches),
        workloads=by_workload,
        moves=tuple(rows.moves),
        violations=tuple(rows.violations),
        releases=tuple(rows.releases),
        admissions=tuple(rows.admissions),
        policy_versions=tuple(rows.policy_versions),
        operator_actions=tuple(rows.operator_actions),
    )


def _filtered(builder: _Builder, workload: str | None) -> _Rows:
    """With ``workload``: its launches, moves and releases, the violations of its launches,
    and the other violations and the admissions of the hosts that ran it; policy versions and
    operator actions stay (they concern no host)."""
    rows = builder.rows
    if workload is None:
        return rows
    launches = [r for r in rows.launches if r.workload == workload]
    releases = [r for r in rows.releases if r.workload == workload]
    ran = _ran(_Rows(launches=launches, releases=releases))
    return _Rows(
        launches=launches,
        moves=[r for r in rows.moves if r.workload == workload],
        violations=[
            r
            for r in rows.violations
            if (r.workload == workload if r.kind in LAUNCH_VIOLATIONS else r.host_id in ran)
        ],
        releases=releases,
        admissions=[r for r in rows.admissions if r.host_id in ran],
        policy_versions=rows.policy_versions,
        operator_actions=rows.operator_actions,
    )


def _ran(rows: _Rows) -> set[str]:
    """The hosts with a launch or a release among ``rows``."""
    return {r.host_id for r in rows.launches} | {
        r.host_id for r in rows.releases if r.host_id is not None
    }


def _summary(
    hosts: tuple[ReportHost, ...], rows: _Rows, workloads: tuple[Workload, ...]
) -> Summary:
    kinds = Counter(v.kind for v in rows.violations)
    moves = Counter(m.move for m in rows.moves)
    bad = (TrustState.UNTRUSTED, TrustState.STALE)
    return Summary(
        hosts=len(hosts),
        hosts_always_trusted=sum(
            1 for h in hosts if h.trust and all(s.state is TrustState.TRUSTED for s in h.trust)
        ),
        hosts_ever_untrusted=sum(1 for h in hosts if any(s.state in bad for s in h.trust)),
        launches=len(rows.launches),
        untrusted_launches=sum(1 for r in rows.launches if r.trusted is not True),
        non_compliant_launches=sum(1 for r in rows.launches if non_compliant(r)),
        workloads=len(workloads),
        locations=len({location_key(r.group, r.attributes) for r in rows.launches}),
        moves=len(rows.moves),
        tampered_moves=moves[MoveKind.TAMPERED],
        disallowed_moves=moves[MoveKind.DISALLOWED],
        violations=len(rows.violations),
        untrusted_verdicts=kinds[ViolationKind.UNTRUSTED_VERDICT],
        refused_requests=kinds[ViolationKind.REQUEST_REFUSED],
        refused_enrollments=kinds[ViolationKind.ENROLLMENT_REFUSED],
        releases=sum(1 for r in rows.releases if r.released),
        release_refusals=sum(1 for r in rows.releases if not r.released),
        admissions=len(rows.admissions),
        policy_versions=len(rows.policy_versions),
        operator_actions=len(rows.operator_actions),
    )


_ANCHORS: Mapping[KeyAnchor, str] = {
    KeyAnchor.PINNED: "pinned",
    KeyAnchor.TRUSTED_CHECKPOINT: "trusted_checkpoint",
    KeyAnchor.TRUSTED_BUNDLE: "trusted_bundle",
    KeyAnchor.BUNDLE: "bundle",
}


def _checkpoint(verified: VerifiedBundle, newest: datetime | None) -> CheckpointInfo:
    checkpoint = verified.checkpoint
    return CheckpointInfo(
        origin=checkpoint.origin,
        size=checkpoint.size,
        root=b64.encode(checkpoint.root),
        key=verified.key.encode(),
        key_anchor=_ANCHORS[verified.anchor],
        extends=None if verified.extends is None else verified.extends.size,
        newest_entry=None if newest is None else iso(newest),
        selection=verified.selection.describe(most=8),
        bundle_entries=len(verified.entries),
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _verification(verified: VerifiedBundle, parameters: Parameters, source: Source) -> Verification:
    q = shlex.quote
    anchor: list[str] = []
    if verified.anchor is KeyAnchor.PINNED:
        anchor += ["--key", q(verified.key.encode())]
    if source.trusted_checkpoint is not None and verified.extends is not None:
        anchor += ["--trusted-checkpoint", q(source.trusted_checkpoint)]
    bundle = q(source.bundle)
    period: list[str] = []
    for flag, value in (("--since", parameters.since), ("--until", parameters.until)):
        if value is not None:
            period += [flag, q(value)]
    commands = []
    if source.export_config is not None:
        commands.append(
            " ".join(["trusthook audit export --config", q(source.export_config), *period, bundle])
        )
    commands.append(" ".join(["trusthook audit verify", bundle, *anchor]))
    recompute = ["trusthook report --bundle", bundle, *anchor, *period]
    if parameters.workload is not None:
        recompute += ["--workload", q(parameters.workload)]
    if parameters.validity is not None:
        recompute += ["--validity", _number(parameters.validity)]
    commands.append(" ".join([*recompute, "--format json recomputed.json"]))
    return Verification(
        bundle=source.bundle,
        commands=tuple(commands),
        key_vouched=verified.anchor is not KeyAnchor.BUNDLE,
    )


MEDIA_TYPES: Mapping[str, str] = {
    "html": "text/html; charset=utf-8",
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
}


def render(report: Report, form: str) -> bytes:
    """The report as ``form``: html, json or csv (``MEDIA_TYPES``)."""
    if form == "json":
        return render_json(report)
    if form == "csv":
        return render_csv(report)
    if form == "html":
        return render_html(report)
    raise AuditLogError(f"report format got {form[:16]!r}, expected html, json or csv")
