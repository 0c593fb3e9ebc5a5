"""What the audit log has said about one host, entry by entry: its name, group and admission
attributes (its location), and its trust over time (docs/reports.md, "Trust over time"); and
how a report reads the free-form members of an entry's ``detail``. Pure, standard library
only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from trusthook.audit.entry import AuditEntry, EventType
from trusthook.audit.report_model import UNKNOWN_IMAGE, Location, Reason, Segment, TrustState
from trusthook.common.clock import iso
from trusthook.common.jcs import canonicalize

ADMISSIONS = frozenset(
    {
        EventType.HOST_ADMITTED,
        EventType.HOST_PENDING,
        EventType.HOST_APPROVED,
        EventType.HOST_REJECTED,
        EventType.HOST_REVOKED,
        EventType.HOST_CLEARED,
        EventType.HOST_TAGGED,  # the operator changed its attributes: its location
        EventType.ENROLLED,
    }
)
# The events that make a host untrusted, and the check they stand for; an `attested` entry
# sets its trust by its verdict, every other event leaves it as it was.
_UNTRUSTING: Mapping[EventType, str] = {
    EventType.ENROLLED: "not_attested",
    EventType.HOST_CLEARED: "not_attested",
    EventType.HOST_PENDING: "pending",
    EventType.HOST_REJECTED: "rejected",
    EventType.HOST_REVOKED: "revoked",
}


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def detail_text(detail: Mapping[str, Any], name: str) -> str | None:
    value = detail.get(name)
    return value if isinstance(value, str) else None


def detail_int(detail: Mapping[str, Any], name: str) -> int | None:
    value = detail.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def detail_bool(detail: Mapping[str, Any], name: str) -> bool | None:
    value = detail.get(name)
    return value if isinstance(value, bool) else None


def as_text(value: object) -> str:
    """A value of a free-form detail member as text: a string itself, anything else its
    canonical JSON."""
    return value if isinstance(value, str) else canonicalize(value).decode()


def attributes_of(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): as_text(v) for k, v in sorted(value.items())}


def reason_of(value: object) -> Reason:
    if not isinstance(value, dict):
        return Reason(check=as_text(value), message="", expected=None, got=None)
    check, message = value.get("check"), value.get("message")
    expected, got = value.get("expected"), value.get("got")
    return Reason(
        check=as_text(check) if check is not None else "",
        message=as_text(message) if message is not None else "",
        expected=None if expected is None else as_text(expected),
        got=None if got is None else as_text(got),
    )


def reasons_of(value: object) -> tuple[Reason, ...]:
    """The reasons of an array member (not an array: none)."""
    return tuple(reason_of(r) for r in value) if isinstance(value, list) else ()


def workload_of(detail: Mapping[str, Any]) -> str:
    """A launch's workload: the policy manifest's name for it if the entry carries one, else
    its image reference, else its image digest, else "unknown image"."""
    return (
        detail_text(detail, "workload")
        or detail_text(detail, "image")
        or detail_text(detail, "image_digest")
        or UNKNOWN_IMAGE
    )


@dataclass(slots=True)
class Point:
    """A change of a host's trust: from ``at`` on, ``state`` (because of entry ``entry``)."""

    at: datetime
    state: TrustState
    entry: int | None
    checks: tuple[str, ...]


@dataclass(slots=True)
class HostHistory:
    """What the log has said about one host so far."""

    host_id: str
    start: datetime
    validity: timedelta | None
    hostname: str | None = None
    group: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    seen: bool = False  # an entry of the period names it
    expires: datetime | None = None  # when its trusted verdict goes stale
    points: list[Point] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.points.append(Point(self.start, TrustState.UNKNOWN, None, ()))

    def location(self) -> Location:
        return Location(group=self.group, attributes=dict(self.attributes))

    def _change(
        self, at: datetime, state: TrustState, entry: int | None, checks: tuple[str, ...]
    ) -> None:
        at = max(at, self.points[-1].at)  # log order; a clock that went back changes nothing
        self.points.append(Point(at, state, entry, checks))

    def expire(self, before: datetime) -> None:
        """The trusted verdict went stale before ``before`` (its validity ran out)."""
        if self.expires is not None and self.expires < before:
            last = self.points[-1]
            self._change(self.expires, TrustState.STALE, last.entry, ("stale",))
            self.expires = None

    def apply(self, entry: AuditEntry, at: datetime) -> None:
        detail = entry.detail
        self.expire(at)
        if entry.event is EventType.ATTESTED:
            if detail["trusted"] is True:
                self._change(at, TrustState.TRUSTED, entry.index, ())
                self.expires = None if self.validity is None else at + self.validity
            else:
                checks = tuple(reason_of(r).check for r in detail["reasons"])
                self._change(at, TrustState.UNTRUSTED, entry.index, checks)
                self.expires = None
        elif entry.event in _UNTRUSTING:
            self._change(at, TrustState.UNTRUSTED, entry.index, (_UNTRUSTING[entry.event],))
            self.expires = None
        if entry.event in (EventType.HOST_PENDING, EventType.ENROLLED):
            self.hostname = detail_text(detail, "hostname") or self.hostname
        if entry.event in ADMISSIONS:
            self.group = detail_text(detail, "group") or self.group
            if isinstance(detail.get("attributes"), dict):
                self.attributes = attributes_of(detail["attributes"])

    def segments(self, end: datetime) -> tuple[Segment, ...]:
        """The trust timeline from the period's start to ``end``: neighbours differ, and no
        segment is empty but a last one that starts at ``end`` (an open period ends at its
        newest entry: what that entry decided is the state at the end)."""
        self.expire(end)
        out: list[Segment] = []
        for point, after in zip(self.points, [*self.points[1:], None], strict=True):
            stop = min(end, after.at if after is not None else end)
            begin = max(point.at, self.start)
            if stop < begin or (stop == begin and (after is not None or begin != end)):
                continue
            if out and (out[-1].state, out[-1].checks) == (point.state, point.checks):
                out[-1] = Segment(
                    state=point.state,
                    start=out[-1].start,
                    end=iso(stop),
                    entry=out[-1].entry,
                    checks=point.checks,
                )
                continue
            out.append(
                Segment(
                    state=point.state,
                    start=iso(begin),
                    end=iso(stop),
                    entry=point.entry,
                    checks=point.checks,
                )
            )
        return tuple(out)
