"""What ``trusthook server hosts`` does: an operator's decisions on admission records and host
trust, made on the server's database with the server's configuration. No HTTP route changes
an admission: deciding needs what the server's configuration opens (its database).

Each decision is read, checked against the record's state, and written by a conditional UPDATE
of the version it was checked on, audited in the same transaction; a record another operator
or a host changed in between is a ConflictError (run the command again).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509

from trusthook.attest.appraise import HostState
from trusthook.attest.verdict import Reason
from trusthook.common.clock import iso_from_timestamp
from trusthook.errors import ConflictError, NotFoundError, UsageError
from trusthook.server.admission import Admission, AdmissionState, check_text, ek_sha256_of
from trusthook.server.config import ServerConfig
from trusthook.server.records import AuditEvent, HostRecord
from trusthook.server.store import Store

_HEX = re.compile(r"[0-9a-f]{8,64}")
SHOWN_EVENTS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Who decides, why, and when (a POSIX time)."""

    by: str
    reason: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HostView:
    """What an operator sees of one EK: its admission record, its enrollment if it has one,
    and the latest audit events."""

    admission: Admission
    host: HostRecord | None
    events: tuple[AuditEvent, ...] = ()


class HostAdmin:
    """The operator's side of admission, over one store."""

    def __init__(self, config: ServerConfig, store: Store) -> None:
        self._config = config
        self._store = store

    # reading

    def resolve(self, ref: str) -> Admission:
        """The record whose EK hash is ``ref`` or starts with it (at least 8 hex digits)."""
        prefix = ref.strip().lower()
        if not _HEX.fullmatch(prefix):
            raise UsageError(
                f"host: got {ref[:80]!r}, expected its EK hash (64 hex digits) or the first 8 or"
                " more of them"
            )
        found = self._store.find_admissions(prefix)
        if not found:
            raise NotFoundError(
                f"no host whose EK hash starts with {prefix}; see 'trusthook server hosts list'"
            )
        if len(found) > 1:
            raise UsageError(f"host: {prefix} names more than one host; give more hex digits")
        return found[0]

    def view(self, ref: str) -> HostView:
        admission = self.resolve(ref)
        return HostView(
            admission=admission,
            host=self._store.get_host(admission.ek_sha256),
            events=tuple(self._store.audit_events(admission.ek_sha256, SHOWN_EVENTS)),
        )

    def views(self, state: AdmissionState | None = None) -> list[HostView]:
        hosts = {h.host_id: h for h in self._store.list_hosts()}
        return [
            HostView(admission=a, host=hosts.get(a.ek_sha256))
            for a in self._store.list_admissions(state)
        ]

    # deciding

    def admit(
        self,
        *,
        ek_sha256: str,
        group: str,
        attributes: Mapping[str, str],
        decision: Decision,
        certificate: x509.Certificate | None = None,
    ) -> Admission:
        """Pre-register an EK into ``group``, or admit again one that is pending, rejected or
        revoked; a host already admitted must be revoked first (its group changes only with
        a new enrollment)."""
        self._check_group(group)
        if certificate is not None and ek_sha256_of(certificate) != ek_sha256:
            raise UsageError("the EK certificate's key is not the EK named")
        existing = self._store.get_admission(ek_sha256)
        if existing is None:
            admission = Admission(
                ek_sha256=ek_sha256,
                state=AdmissionState.ADMITTED,
                group=group,
                attributes=dict(attributes),
                ek_cert_serial=None
                if certificate is None
                else format(certificate.serial_number, "x"),
                ek_cert_issuer=None if certificate is None else certificate.issuer.rfc4514_string(),
                hostname=None,
                note=None,
                requested_at=None,
                decided_by=decision.by,
                decided_at=decision.now,
                reason=decision.reason,
                reenroll_grant=False,
                version=0,
            )
            if not self._store.add_admission(
                admission, event="admitted", detail=_detail(admission), now=decision.now
            ):
                raise ConflictError(f"host {ek_sha256} was recorded meanwhile; run this again")
            return admission
        if existing.state is AdmissionState.ADMITTED:
            raise ConflictError(
                f"host {ek_sha256} is already admitted to group {existing.group} (since"
                f" {iso_from_timestamp(existing.decided_at)}); to move it to another group,"
                " revoke it, admit it again, and let it enroll again"
            )
        return self._admitted(existing, group, attributes, decision, "admitted")

    def approve(
        self, ref: str, *, group: str, attributes: Mapping[str, str], decision: Decision
    ) -> Admission:
        """Admit a pending host into ``group``."""
        self._check_group(group)
        admission = self._in(self.resolve(ref), AdmissionState.PENDING, "approve")
        return self._admitted(admission, group, attributes, decision, "approved")

    def tag(
        self,
        ref: str,
        *,
        attributes: Mapping[str, str],
        remove: Sequence[str],
        decision: Decision,
    ) -> Admission:
        """Set ``attributes`` and remove the keys ``remove`` of an admitted host's attributes
        (its location and tags, docs/policy.md §4), audited. The host's next appraisals and
        releases use them."""
        admission = self._in(self.resolve(ref), AdmissionState.ADMITTED, "tag")
        for key in remove:
            if key not in admission.attributes:
                raise UsageError(f"--remove {key}: the host has no attribute {key!r}")
            if key in attributes:
                raise UsageError(f"--remove {key}: the same command also sets it")
        merged = {
            k: v for k, v in {**admission.attributes, **attributes}.items() if k not in remove
        }
        if merged == dict(admission.attributes):
            raise ConflictError(f"host {admission.ek_sha256} already has exactly these attributes")
        tagged = replace(
            admission,
            attributes=merged,
            decided_by=decision.by,
            decided_at=decision.now,
            reason=decision.reason,
            version=admission.version + 1,
        )
        if not self._store.change_admission(
            tagged, event="tagged", detail=_detail(tagged), now=decision.now
        ):
            raise ConflictError(
                f"host {admission.ek_sha256} changed meanwhile; see 'trusthook server hosts show"
                f" {admission.ek_sha256[:16]}' and run this again"
            )
        return tagged

    def reject(self, ref: str, *, decision: Decision) -> Admission:
        """Refuse a pending host: its enrollments are refused until an operator admits it."""
        admission = self._in(self.resolve(ref), AdmissionState.PENDING, "reject")
        return self._decide(
            admission,
            AdmissionState.REJECTED,
            group=admission.group,
            attributes={},
            decision=decision,
        )

    def revoke(self, ref: str, *, decision: Decision) -> Admission:
        """Revoke a host: its client certificate is refused from now on, its status untrusted
        (``revoked``), its releases refused; only ``admit`` and a new enrollment bring it back."""
        admission = self._in(
            self.resolve(ref), AdmissionState.ADMITTED, "revoke", AdmissionState.PENDING
        )
        return self._decide(
            admission,
            AdmissionState.REVOKED,
            group=admission.group,
            attributes={},
            decision=decision,
            revoke=True,
        )

    def clear(self, ref: str, *, decision: Decision) -> HostRecord:
        """Clear what holds a host untrusted (a failed ``event_log`` or ``clock`` check): the
        server forgets the TPM epoch it verified, and the host's next attestation sets a new
        baseline, its current boot's log replayed from the first record to the quoted PCR."""
        admission = self.resolve(ref)
        host = self._store.get_host(admission.ek_sha256)
        if host is None:
            raise NotFoundError(f"host {admission.ek_sha256} is not enrolled: nothing to clear")
        note = Reason(
            check="not_attested",
            message=f"an operator cleared the host at {iso_from_timestamp(decision.now)}"
            f" ({decision.reason}); it has not attested since",
        )
        cleared = replace(
            host,
            state=HostState(),
            held=None,
            trusted=False,
            reasons=(note,),
            since=decision.now,
            valid_until=None,
            version=host.version + 1,
        )
        detail = {
            "by": decision.by,
            "reason": decision.reason,
            "cleared": [r.to_json() for r in host.reasons],
            "held": None if host.held is None else host.held.to_json(),
            "verified_recnum": host.state.verified_recnum,
        }
        if not self._store.clear_host(host, cleared, detail=detail, now=decision.now):
            raise ConflictError(f"host {host.host_id} attested meanwhile; run this again")
        return cleared

    def _admitted(
        self,
        admission: Admission,
        group: str,
        attributes: Mapping[str, str],
        decision: Decision,
        event: str,
    ) -> Admission:
        merged = {**admission.attributes, **attributes}
        return self._decide(
            admission,
            AdmissionState.ADMITTED,
            group=group,
            attributes=merged,
            decision=decision,
            event=event,
        )

    def _decide(
        self,
        admission: Admission,
        state: AdmissionState,
        *,
        group: str | None,
        attributes: Mapping[str, str],
        decision: Decision,
        event: str | None = None,
        revoke: bool = False,
    ) -> Admission:
        enrolled = self._store.get_host(admission.ek_sha256) is not None
        decided = replace(
            admission,
            state=state,
            group=group,
            attributes=dict(attributes) or admission.attributes,
            decided_by=decision.by,
            decided_at=decision.now,
            reason=decision.reason,
            # an operator admitting an enrolled host lets its next re-enrollment through
            reenroll_grant=state is AdmissionState.ADMITTED and enrolled,
            version=admission.version + 1,
        )
        if not self._store.change_admission(
            decided,
            event=event or state.value,
            detail=_detail(decided),
            now=decision.now,
            revoke_certificate=revoke,
        ):
            raise ConflictError(
                f"host {admission.ek_sha256} changed meanwhile; see 'trusthook server hosts show"
                f" {admission.ek_sha256[:16]}' and run this again"
            )
        return decided

    def _in(
        self, admission: Admission, state: AdmissionState, verb: str, *more: AdmissionState
    ) -> Admission:
        if admission.state is state or admission.state in more:
            return admission
        allowed = " or ".join(s.value for s in (state, *more))
        raise ConflictError(
            f"cannot {verb} host {admission.ek_sha256}: got state {admission.state.value},"
            f" expected {allowed}"
        )

    def _check_group(self, group: str) -> None:
        if group not in self._config.groups:
            raise UsageError(
                f"--group: got {group!r}, expected a configured group {sorted(self._config.groups)}"
            )


def decision(by: str, reason: str, now: float, *, required: bool) -> Decision:
    """A Decision, its reason checked (``required``: it may not be empty)."""
    return Decision(by=by, reason=check_text(reason, "--reason", empty=not required), now=now)


def _detail(admission: Admission) -> dict[str, Any]:
    return {
        "by": admission.decided_by,
        "reason": admission.reason,
        "group": admission.group,
        "attributes": dict(admission.attributes),
    }
