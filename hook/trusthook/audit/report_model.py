"""The compliance report's model: frozen dataclasses, one per row kind, whose members are the
JSON report's members by the same names (docs/reports.md, "JSON"). ``trusthook.audit.report``
computes it from a verified bundle; ``report_json``, ``report_csv`` and ``report_html`` render
it. Pure, standard library only.

Times are the entries' form (``trusthook.common.clock.iso``: UTC, microseconds, ``Z``);
``attributes`` are a host's admission attributes (``key=value``, sorted by key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

FORMAT = "trusthook-report/v2"
UNKNOWN_IMAGE = "unknown image"


class TrustState(StrEnum):
    """A host's trust during one segment of the period (docs/reports.md, "Trust over time")."""

    TRUSTED = "trusted"  # its last verdict was trusted (and, with a validity, is not older)
    UNTRUSTED = "untrusted"  # an untrusted verdict, or enrolled/cleared/pending/rejected/revoked
    STALE = "stale"  # its trusted verdict is older than the validity the report was given
    UNKNOWN = "unknown"  # the bundle says nothing about it yet


class ViolationKind(StrEnum):
    UNTRUSTED_VERDICT = "untrusted_verdict"  # an `attested` entry with trusted false
    REQUEST_REFUSED = "request_refused"  # a request without its request-key signature
    ENROLLMENT_REFUSED = "enrollment_refused"  # a refused credential or request key
    # a launch that is not compliant (docs/reports.md, "Compliance and moves"):
    # a tampered or disallowed move is its own kind, every other one is a non-compliant launch
    NON_COMPLIANT_LAUNCH = "non_compliant_launch"
    TAMPERED_MOVE = "tampered_move"
    DISALLOWED_MOVE = "disallowed_move"


LAUNCH_VIOLATIONS = frozenset(
    {
        ViolationKind.NON_COMPLIANT_LAUNCH,
        ViolationKind.TAMPERED_MOVE,
        ViolationKind.DISALLOWED_MOVE,
    }
)


class MoveKind(StrEnum):
    """A launch in its identity's lineage (docs/policy.md §7)."""

    ORIGIN = "origin"  # it created the identity
    SAME_HOST = "same_host"  # again on the host that created it (a restart)
    VERIFIED = "verified"  # on another host, as created, compliant there
    TAMPERED = "tampered"  # on another host, with another image, root filesystem or profile
    DISALLOWED = "disallowed"  # on another host where the workload's rules fail


# the launches that are moves to another host: the report's `moves`
MOVES = (MoveKind.VERIFIED, MoveKind.TAMPERED, MoveKind.DISALLOWED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """Where a host is, as far as the log says: its group and admission attributes."""

    group: str | None
    attributes: Mapping[str, str]

    def label(self) -> str:
        return location_label(self.group, self.attributes)


def location_label(group: str | None, attributes: Mapping[str, str]) -> str:
    """For people: ``lab · country=DE region=eu-1``; ``no group``, ``no attributes``."""
    pairs = " ".join(f"{k}={v}" for k, v in sorted(attributes.items())) or "no attributes"
    return f"{group if group is not None else 'no group'} · {pairs}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Parameters:
    """What the report was asked: the period [since, until) (None: open), the workload it is
    restricted to, and the validity of a trusted verdict in seconds (None: until the next)."""

    since: str | None = None
    until: str | None = None
    workload: str | None = None
    validity: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """The timeline's bounds (``since``/``until``, else the first and last entry of the
    period), how many of the bundle's entries fall in it, by event type, and how many lie
    before it (they set the hosts' state at its start) and after it (ignored)."""

    start: str
    end: str
    entries: int
    by_event: Mapping[str, int]
    earlier_entries: int
    later_entries: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointInfo:
    """The signed checkpoint the report was computed from and why its key was believed."""

    origin: str
    size: int
    root: str  # base64
    key: str  # the log's verifier key
    key_anchor: str  # pinned | trusted_checkpoint | trusted_bundle | bundle
    extends: int | None  # the trusted checkpoint's tree size it was proven to extend
    newest_entry: str | None  # the newest entry time the bundle holds (checkpoints hold none)
    selection: str  # the bundle's indices, e.g. "120..341"
    bundle_entries: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """How to check the report: the bundle's file name and the commands, in order (export,
    if the bundle is still to be made; verify; recompute this report as JSON)."""

    bundle: str
    commands: tuple[str, ...]
    key_vouched: bool  # False: nothing outside the bundle vouches for its key


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    hosts: int
    hosts_always_trusted: int
    hosts_ever_untrusted: int  # an untrusted or stale segment
    launches: int
    untrusted_launches: int  # launches whose appraisal was not trusted
    non_compliant_launches: int  # launches the policy manifest judged not compliant
    workloads: int
    locations: int  # distinct (group, attributes) that launches ran in
    moves: int  # launches on another host than their identity's origin
    tampered_moves: int
    disallowed_moves: int
    violations: int
    untrusted_verdicts: int
    refused_requests: int
    refused_enrollments: int
    releases: int
    release_refusals: int
    admissions: int
    policy_versions: int
    operator_actions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """From ``start`` to ``end`` the host was ``state``, since entry ``entry`` (None: the
    period's start) with ``checks`` (why it was not trusted)."""

    state: TrustState
    start: str
    end: str
    entry: int | None
    checks: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportHost:
    host_id: str
    hostname: str | None
    group: str | None  # at the end of the period
    attributes: Mapping[str, str]
    trust: tuple[Segment, ...]
    launches: int
    violations: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """A ``launched`` entry: a container start an appraisal verified, where it ran."""

    index: int
    time: str
    host_id: str
    hostname: str | None
    workload: str
    image: str | None
    image_digest: str | None
    container: str
    rootfs_digest: str
    config_digest: str
    launch_profile: str
    recnum: int
    stage: str | None
    host_time: str | None  # the host's own clock: not believed, shown
    boot_id: str | None
    trusted: bool | None  # the verdict of the appraisal that verified it
    group: str | None  # the host's, when it launched
    attributes: Mapping[str, str]
    encrypted: bool | None  # its root was decrypted from an encrypted image
    # its appraisal against the policy manifest (None: no policy, or not in the entry)
    identity: str | None
    compliant: bool | None
    policy_version: int | None
    action: str | None  # what non-compliance does: audit or untrust
    move: MoveKind | None  # in its identity's lineage


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadLocation:
    group: str | None
    attributes: Mapping[str, str]
    launches: int
    untrusted_launches: int
    non_compliant_launches: int
    hosts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    workload: str
    launches: int
    untrusted_launches: int
    non_compliant_launches: int
    hosts: tuple[str, ...]
    locations: tuple[WorkloadLocation, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reason:
    check: str
    message: str
    expected: str | None
    got: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    index: int
    time: str
    host_id: str
    hostname: str | None
    kind: ViolationKind
    reasons: tuple[Reason, ...]
    path: str | None  # a refused request's path
    workload: str | None  # a launch's (LAUNCH_VIOLATIONS), else None
    action: str | None  # a launch's: what its non-compliance did (audit or untrust)


@dataclass(frozen=True, slots=True, kw_only=True)
class Move:
    """A launch of an identity on another host than the one that created it."""

    index: int
    time: str
    identity: str | None
    workload: str
    host_id: str  # where it was launched
    hostname: str | None
    group: str | None  # that host's, when it launched
    attributes: Mapping[str, str]
    from_host_id: str | None  # the host of the identity's origin launch (None: not in the bundle)
    from_hostname: str | None
    origin: int | None  # the index of that origin launch
    move: MoveKind
    reasons: tuple[Reason, ...]  # why it is tampered or disallowed


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """A ``released`` or ``release_refused`` entry."""

    index: int
    time: str
    host_id: str | None  # None: the entry's subject is a workload
    hostname: str | None
    workload: str
    image: str  # the manifest digest
    released: bool
    container: str | None
    rule: str | None
    layers: int | None
    launch_profile: str | None
    policy_version: int | None  # the policy version that allowed it
    reason: Reason | None  # why it was refused


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """An admission decision (``host_*``) or an enrollment."""

    index: int
    time: str
    host_id: str
    hostname: str | None
    event: str
    group: str | None
    attributes: Mapping[str, str]
    by: str | None
    reason: str | None
    auto: bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyVersion:
    """A ``policy_version`` entry: a version of the policy manifest applied."""

    index: int
    time: str
    version: int
    digest: str
    by: str | None
    reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorAction:
    index: int
    time: str
    operator: str
    action: str
    serial: str | None
    by: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    format: str
    parameters: Parameters
    period: Period
    checkpoint: CheckpointInfo
    verification: Verification
    summary: Summary
    hosts: tuple[ReportHost, ...]
    launches: tuple[Launch, ...]
    workloads: tuple[Workload, ...]
    moves: tuple[Move, ...]
    violations: tuple[Violation, ...]
    releases: tuple[Release, ...]
    admissions: tuple[Admission, ...]
    policy_versions: tuple[PolicyVersion, ...]
    operator_actions: tuple[OperatorAction, ...]
