"""A host's trust status as the API reports it, to an operator or to the host itself: its
stored verdict, its admission (a host not admitted is untrusted, that first), staleness, and
the host's view without the operator's golden values (docs/attestation.md §6)."""

from __future__ import annotations

from trusthook.attest.verdict import Reason
from trusthook.common.clock import iso_from_timestamp
from trusthook.errors import AdmissionError
from trusthook.server import api
from trusthook.server.records import HostRecord
from trusthook.server.trust import for_host

NOT_ATTESTED = Reason(check="not_attested", message="the host has not attested since enrollment")


def status_of(host: HostRecord, now: float, *, operator: bool) -> api.HostStatus:
    """``host``'s trust status at ``now``, as an operator (``operator``) or the host itself
    may read it. Not admitted (pending again, revoked, rejected): untrusted, that first."""
    trusted, reasons, since = host.trusted, host.reasons, host.since
    if not host.admitted:
        refusal = not_admitted(host)
        reasons = (
            Reason(check=refusal.check, message=refusal.message),
            *(() if trusted else reasons),
        )
        if trusted and host.admission is not None:
            since = host.admission.decided_at
        trusted = False
    elif trusted and host.valid_until is not None and host.valid_until < now:
        trusted, since = False, host.valid_until
        reasons = (
            Reason(
                check="stale",
                message="no passing attestation in time; the last one was at"
                f" {iso_from_timestamp(host.last_attestation or host.since)}",
                expected=f"a new attestation before {iso_from_timestamp(host.valid_until)}",
                got="none",
            ),
        )
    shown = reasons if operator else tuple(for_host(r) for r in reasons)
    return api.HostStatus(
        host_id=host.host_id,
        hostname=host.hostname,
        group=host.group,
        trusted=trusted,
        reasons=[api.ReasonBody.of(r) for r in shown],
        since=iso_from_timestamp(since),
        valid_until=iso_from_timestamp(host.valid_until) if trusted and host.valid_until else None,
        last_attestation=iso_from_timestamp(host.last_attestation)
        if host.last_attestation
        else None,
        enrolled_at=iso_from_timestamp(host.enrolled_at),
        verified_recnum=host.state.verified_recnum,
    )


def not_admitted(host: HostRecord) -> AdmissionError:
    """Why ``host``, which is not admitted, is refused."""
    if host.admission is None:
        return AdmissionError(
            "admission",
            f"host {host.host_id} has no admission record; an operator admits it with"
            " 'trusthook server hosts admit', then it enrolls again",
        )
    return host.admission.refusal(enrolled=True)
