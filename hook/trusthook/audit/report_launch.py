"""A compliance report's launches (docs/reports.md, "Launches and workloads", "Compliance and
moves"): each of an entry's ``launches`` as a launch row, with its appraisal against the
policy manifest; the one violation it is when it is not compliant; the move it is in its
identity's lineage; and the launches grouped by workload and location. Pure, standard library
only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trusthook.audit.entry import AuditEntry, EventType
from trusthook.audit.report_model import (
    MOVES,
    Launch,
    Move,
    MoveKind,
    Reason,
    Violation,
    ViolationKind,
    Workload,
    WorkloadLocation,
)
from trusthook.audit.report_trust import (
    HostHistory,
    detail_bool,
    detail_int,
    detail_text,
    reasons_of,
)

_MOVE_KINDS: Mapping[str, MoveKind] = {m.value: m for m in MoveKind}
# A move the server judged tampered or disallowed is a violation of its own kind; every other
# launch that is not compliant is a non-compliant launch (one entry, one violation).
_MOVE_VIOLATIONS: Mapping[MoveKind, ViolationKind] = {
    MoveKind.TAMPERED: ViolationKind.TAMPERED_MOVE,
    MoveKind.DISALLOWED: ViolationKind.DISALLOWED_MOVE,
}
LocationKey = tuple[bool, str, tuple[tuple[str, str], ...]]


def move_of(value: object) -> MoveKind | None:
    """A ``move`` member: one of the moves of docs/policy.md §7, else None."""
    return _MOVE_KINDS.get(value) if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class LaunchSeen:
    """One member of an entry's ``launches`` (docs/audit.md §2), in the entry it is in."""

    index: int  # the entry's
    time: str
    trusted: bool  # the verdict of the appraisal that verified it
    detail: Mapping[str, Any]  # the member


def launches_in(entry: AuditEntry) -> list[LaunchSeen]:
    """The launches an ``attested`` or ``launched`` entry holds, in their order."""
    if entry.event is not EventType.ATTESTED and entry.event is not EventType.LAUNCHED:
        return []
    trusted = entry.detail["trusted"] is True
    return [
        LaunchSeen(entry.index, entry.time, trusted, launch)
        for launch in entry.detail.get("launches", ())
    ]


def launch_row(seen: LaunchSeen, host: HostHistory, workload: str) -> Launch:
    """A launch of ``host`` (as it was before its entry) as a launch row."""
    detail = seen.detail
    location = host.location()
    return Launch(
        index=seen.index,
        time=seen.time,
        host_id=host.host_id,
        hostname=host.hostname,
        workload=workload,
        image=detail_text(detail, "image"),
        image_digest=detail_text(detail, "image_digest"),
        container=detail["container"],
        rootfs_digest=detail["rootfs_digest"],
        config_digest=detail["config_digest"],
        launch_profile=detail["launch_profile"],
        recnum=detail["recnum"],
        stage=detail_text(detail, "stage"),
        host_time=detail_text(detail, "host_time"),
        boot_id=detail_text(detail, "boot_id"),
        trusted=seen.trusted,
        group=location.group,
        attributes=location.attributes,
        encrypted=detail_bool(detail, "encrypted"),
        identity=detail_text(detail, "identity"),
        compliant=detail_bool(detail, "compliant"),
        policy_version=detail_int(detail, "policy_version"),
        action=detail_text(detail, "action"),
        move=move_of(detail.get("move")),
    )


def launch_reasons(seen: LaunchSeen) -> tuple[Reason, ...]:
    """Why a launch is not compliant: its ``violations``."""
    return reasons_of(seen.detail.get("violations"))


def non_compliant(launch: Launch) -> bool:
    """Whether ``launch`` is a violation: its ``compliant`` is false, or it is a tampered or
    disallowed move (which the server writes only with ``compliant`` false)."""
    return launch.compliant is False or launch.move in _MOVE_VIOLATIONS


def launch_violation(launch: Launch, reasons: tuple[Reason, ...]) -> Violation | None:
    """The violation ``launch`` is (None: it is none)."""
    if not non_compliant(launch):
        return None
    kind = ViolationKind.NON_COMPLIANT_LAUNCH
    if launch.move is not None:
        kind = _MOVE_VIOLATIONS.get(launch.move, kind)
    return Violation(
        index=launch.index,
        time=launch.time,
        host_id=launch.host_id,
        hostname=launch.hostname,
        kind=kind,
        reasons=reasons,
        path=None,
        workload=launch.workload,
        action=launch.action,
    )


@dataclass(frozen=True, slots=True)
class OriginLaunch:
    """The launch that created an identity: its host and entry."""

    host_id: str
    index: int


class Lineages:
    """The first ``origin`` launch of each identity among the entries walked so far (the
    server keeps one per identity, docs/policy.md §7)."""

    def __init__(self) -> None:
        self._origins: dict[str, OriginLaunch] = {}

    def note(self, seen: LaunchSeen, host_id: str) -> None:
        identity = detail_text(seen.detail, "identity")
        if identity is not None and move_of(seen.detail.get("move")) is MoveKind.ORIGIN:
            self._origins.setdefault(identity, OriginLaunch(host_id, seen.index))

    def origin(self, identity: str | None) -> OriginLaunch | None:
        return None if identity is None else self._origins.get(identity)


def move_row(
    launch: Launch,
    reasons: tuple[Reason, ...],
    origin: OriginLaunch | None,
    from_hostname: str | None,
) -> Move | None:
    """The move ``launch`` is (None: not a move to another host)."""
    if launch.move is None or launch.move not in MOVES:
        return None
    return Move(
        index=launch.index,
        time=launch.time,
        identity=launch.identity,
        workload=launch.workload,
        host_id=launch.host_id,
        hostname=launch.hostname,
        group=launch.group,
        attributes=launch.attributes,
        from_host_id=None if origin is None else origin.host_id,
        from_hostname=None if origin is None else from_hostname,
        origin=None if origin is None else origin.index,
        move=launch.move,
        reasons=reasons,
    )


def location_key(group: str | None, attributes: Mapping[str, str]) -> LocationKey:
    """Locations in order: no group first, then by group, then by attributes."""
    return (group is not None, group or "", tuple(sorted(attributes.items())))


def _counts(runs: list[Launch]) -> tuple[int, int]:
    return (
        sum(1 for r in runs if r.trusted is not True),
        sum(1 for r in runs if non_compliant(r)),
    )


def workloads(launches: Iterable[Launch]) -> tuple[Workload, ...]:
    """The launches by workload, then by location."""
    by_workload: dict[str, list[Launch]] = {}
    for launch in launches:
        by_workload.setdefault(launch.workload, []).append(launch)
    out = []
    for name in sorted(by_workload):
        runs = by_workload[name]
        places: dict[LocationKey, list[Launch]] = {}
        for launch in runs:
            places.setdefault(location_key(launch.group, launch.attributes), []).append(launch)
        untrusted, bad = _counts(runs)
        locations = []
        for _, here in sorted(places.items()):
            here_untrusted, here_bad = _counts(here)
            locations.append(
                WorkloadLocation(
                    group=here[0].group,
                    attributes=dict(here[0].attributes),
                    launches=len(here),
                    untrusted_launches=here_untrusted,
                    non_compliant_launches=here_bad,
                    hosts=len({r.host_id for r in here}),
                )
            )
        out.append(
            Workload(
                workload=name,
                launches=len(runs),
                untrusted_launches=untrusted,
                non_compliant_launches=bad,
                hosts=tuple(sorted({r.host_id for r in runs})),
                locations=tuple(locations),
            )
        )
    return tuple(out)
