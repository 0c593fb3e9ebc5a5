"""The server's records as the store reads and writes them: hosts (with their admission
record), pending enrollments, operator certificates, audit events, policy versions and
launches. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from trusthook.attest.appraise import HostState
from trusthook.attest.verdict import Reason
from trusthook.common.eventlog import Record
from trusthook.policy.appraise import Compliance
from trusthook.policy.lineage import Move
from trusthook.server.admission import Admission, AdmissionState
from trusthook.server.trust import Hold


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRecord:
    """An enrolled host as stored: identity, the verified state of its TPM epoch, its trust
    status and hold, and (read with it) its admission record."""

    host_id: str
    hostname: str
    ek_public: bytes
    ak_public: bytes
    request_key: bytes  # uncompressed SEC1 P-256 point of the TPM request key (requestkey.py)
    cert_serial: str  # of the one client certificate accepted; "": none (revoked)
    enrolled_at: float
    state: HostState
    trusted: bool
    reasons: tuple[Reason, ...]
    since: float
    valid_until: float | None
    last_attestation: float | None
    held: Hold | None
    admission: Admission | None
    version: int

    @property
    def group(self) -> str:
        """The host group its admission record assigns."""
        return (self.admission.group if self.admission else None) or ""

    @property
    def admitted(self) -> bool:
        return self.admission is not None and self.admission.state is AdmissionState.ADMITTED

    def with_verdict(
        self,
        *,
        state: HostState | None,
        reasons: tuple[Reason, ...],
        held: Hold | None,
        now: float,
        valid_until: float | None,
    ) -> HostRecord:
        """The host after an appraisal at ``now``; ``since`` moves when trust changes."""
        trusted = not reasons
        changed = trusted != self.trusted or self.last_attestation is None
        return replace(
            self,
            state=state if state is not None else self.state,
            trusted=trusted,
            reasons=reasons,
            since=now if changed else self.since,
            valid_until=valid_until,
            last_attestation=now,
            held=held,
            version=self.version + 1,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingEnrollment:
    host_id: str
    request: dict[str, Any]
    secret_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorCert:
    """An operator certificate the server issued: only these are accepted, until revoked."""

    serial: str
    name: str
    issued_at: float
    expires_at: float
    issued_by: str
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoked_reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    at: float
    host_id: str
    event: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyVersion:
    """One applied version of the policy manifest: its text as the officer wrote it."""

    version: int
    digest: str
    source: str
    applied_at: float
    applied_by: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AppraisedLaunch:
    """A launch an appraisal verified, and its compliance with the policy version then in
    force (None, None: no policy had been applied)."""

    record: Record
    compliance: Compliance | None = None
    policy_version: int | None = None
    move: Move | None = None  # its place in its identity's lineage (None: none)


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRow:
    """One launch as stored (the ``launches`` table)."""

    host_id: str
    boot_id: str
    recnum: int
    container: str
    identity: str | None
    workload: str | None
    image: str | None
    image_digest: str | None
    rootfs_digest: str
    launch_profile: str
    encrypted: bool | None
    compliant: bool | None
    reasons: tuple[Reason, ...]
    policy_version: int | None
    move: Move | None
    at: float
