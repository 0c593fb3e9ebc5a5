"""What the server does for each request, transport-free: enroll, issue nonces, appraise
evidence, report host trust. The HTTP layer (``app``) maps its errors to status codes."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography import x509

from trusthook.attest.appraise import Evidence, Expectations, appraise
from trusthook.attest.attributes import NvCertification, attributes_tag, verify_attributes
from trusthook.attest.bindkey import verify_bind_key
from trusthook.attest.identity import AttestationKey, check_ak_public
from trusthook.attest.quote import verify_quote
from trusthook.attest.requestkey import check_request_signature
from trusthook.attest.verdict import Reason
from trusthook.common.clock import iso_from_timestamp
from trusthook.common.digest import sha256_of
from trusthook.common.eventlog import parse_record
from trusthook.errors import (
    AttestationError,
    AuthError,
    ConfigError,
    ConflictError,
    EventLogError,
    NotFoundError,
    RequestError,
)
from trusthook.image.envelope import associated_data, seal
from trusthook.server import api, kubernetes, release, workloads
from trusthook.server.ca import CertificateAuthority
from trusthook.server.config import ServerConfig
from trusthook.server.enrollment import Enroller
from trusthook.server.imagekeys import load_keys
from trusthook.server.policy import Policies, place_of, violations
from trusthook.server.records import AppraisedLaunch, HostRecord
from trusthook.server.status import not_admitted, status_of
from trusthook.server.store import Store
from trusthook.server.trust import HELD_CHECKS, Epoch, carry_hold, epoch_of

log = logging.getLogger(__name__)
NONCE_BYTES = 32
_PCR_INDEX = re.compile(r"[0-9]{1,2}")  # ASCII digits: str.isdigit() takes "²", int() not
OPERATOR_PREFIX = "operator:"
_SAVE_ATTEMPTS = 5


@lru_cache(maxsize=16384)  # a fleet's AKs: parsing and checking one costs ~0.1 ms
def attestation_key(ak_public: bytes) -> AttestationKey:
    """The host's AK, checked once and then remembered (per AK public area)."""
    return check_ak_public(ak_public)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRequest:
    """A host's request as it arrived, for checking its request-key signature: the method,
    the path, the body bytes exactly as sent and the signature header (None: absent)."""

    method: str
    path: str
    body: bytes
    signature: str | None


SHOWN_LAUNCHES = 200  # GET /v1/hosts/{id}/launches: the latest this many


class ServerService:
    """Enrollment, attestation and trust status over one store."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        store: Store,
        ca: CertificateAuthority,
        ek_roots: Sequence[x509.Certificate],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._enroller = Enroller(config=config, store=store, ca=ca, ek_roots=ek_roots, clock=clock)
        self._policies = Policies(store)
        for warning in release.rule_warnings(config.releases):
            log.warning("[[release]] %s", warning)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def clock(self) -> Callable[[], datetime]:
        return self._clock

    @property
    def policies(self) -> Policies:
        """The policy versions, cached: shared by every decision that reads them."""
        return self._policies

    # enrollment (enrollment.py)

    def begin_enrollment(self, req: api.EnrollmentRequest) -> api.EnrollmentChallenge:
        return self._enroller.begin(req)

    def finish_enrollment(
        self, enrollment_id: str, req: api.ActivationRequest
    ) -> api.EnrollmentResult:
        return self._enroller.finish(enrollment_id, req)

    # identity

    def authenticate(self, certificate: x509.Certificate | None) -> HostRecord | None:
        """The enrolled, admitted host presenting ``certificate``, or None for an operator
        whose certificate the server recorded issuing and has not revoked; AuthError or
        AdmissionError for anyone else. The TLS layer has already checked that our CA
        issued it."""
        if certificate is None:
            raise AuthError("this request needs the client certificate issued at enrollment")
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        serial = format(certificate.serial_number, "x")
        if name.startswith(OPERATOR_PREFIX):
            self._check_operator(name.removeprefix(OPERATOR_PREFIX), serial)
            return None
        host = self._store.get_host(name)
        if host is None:
            raise AuthError(f"client certificate names host {name[:16]!r}, which is not enrolled")
        if not host.admitted:
            raise not_admitted(host)
        if not host.cert_serial:
            raise AuthError(
                "client certificate was revoked with this host; once an operator admits the"
                " host again, enroll again (--reenroll)"
            )
        if host.cert_serial != serial:
            raise AuthError(
                "client certificate was replaced by a later enrollment of this host; enroll again"
            )
        return host

    def _check_operator(self, name: str, serial: str) -> None:
        record = self._store.get_operator_cert(serial)
        if record is None or record.name != name:
            raise AuthError(
                f"operator certificate {serial} (CN {OPERATOR_PREFIX}{name[:64]}) is not one this"
                " server recorded issuing; issue one with 'trusthook server operator-cert issue"
                " NAME'"
            )
        if record.revoked_at is not None:
            raise AuthError(
                f"operator certificate {serial} ({name}) was revoked at"
                f" {iso_from_timestamp(record.revoked_at)}; issue a new one"
            )

    # attestation

    def issue_nonce(self, host: HostRecord, audit_size: int | None = None) -> api.NonceResponse:
        """A nonce for ``host``; with ``audit_size``, the audit log's checkpoint and the
        consistency proof to it from that size (None without a log key)."""
        now = self._clock().timestamp()
        nonce = secrets.token_bytes(NONCE_BYTES)
        expires = now + self._config.nonce_ttl
        watched = self._store.issue_nonce(
            host_id=host.host_id, nonce=nonce, expires=expires, now=now, watch=audit_size
        )
        audit = None
        if watched is not None:
            note, proof = watched
            audit = api.AuditWatch(checkpoint=note, consistency=[api.b64(h) for h in proof])
        return api.NonceResponse(
            nonce=api.b64(nonce),
            expires_at=iso_from_timestamp(expires),
            pcrs=list(self._expectations(host).pcrs),
            verified_boot_id=host.state.boot_id,
            verified_recnum=host.state.verified_recnum,
            attributes_tag=api.b64(_attributes_tag(host)),
            audit=audit,
        )

    def check_signed(self, host: HostRecord, signed: SignedRequest) -> None:
        """Return if the host's TPM request key signed this request; AttestationError
        ("request_signature"), audited, otherwise: the client certificate's key is a file, and
        alone it does not speak for the host (docs/attestation.md §10)."""
        try:
            check_request_signature(
                host.request_key,
                method=signed.method,
                path=signed.path,
                body=signed.body,
                header=signed.signature,
            )
        except AttestationError as e:
            self._store.record_event(
                host_id=host.host_id,
                event_name="request_refused",
                detail={"path": signed.path, "check": e.check, "message": e.message},
                now=self._clock().timestamp(),
            )
            log.warning(
                "host %s: %s %s refused: %s",
                host.host_id[:16],
                signed.method,
                signed.path,
                e.message,
            )
            raise

    def attest(
        self, host: HostRecord, req: api.AttestationRequest, signed: SignedRequest
    ) -> api.HostStatus:
        """Appraise signed evidence; the host's new status."""
        self.check_signed(host, signed)
        return self._attest(host, req)

    def _attest(self, host: HostRecord, req: api.AttestationRequest) -> api.HostStatus:
        evidence = evidence_of(req)
        nonce = api.field_bytes(req.nonce, "nonce")
        now = self._clock().timestamp()
        refused = self._store.spend_nonce(host_id=host.host_id, nonce=nonce, now=now)
        for _ in range(_SAVE_ATTEMPTS):
            reasons: tuple[Reason, ...]
            epoch = epoch_of(host.state)
            launches: Sequence[AppraisedLaunch] = ()
            if refused is not None:
                reasons, state = (refused,), None
            else:
                appraisal = appraise(
                    key=attestation_key(host.ak_public),
                    nonce=nonce,
                    evidence=evidence,
                    expect=self._expectations(host),
                    state=host.state,
                )
                reasons, state = appraisal.reasons, appraisal.state
                bound = None if state is None else _check_attributes(host, nonce, req)
                if bound is not None:  # checked once the quote and the log verified
                    reasons += (bound,)
                if any(r.check in HELD_CHECKS for r in reasons):
                    epoch = self._quoted_epoch(host, nonce, evidence) or epoch
                if state is not None:  # the log continues the verified one: these are new
                    launches = self._policies.appraise(evidence.events, host)
                    untrusting = violations(launches)
                    if untrusting:  # held like a log failure, in the epoch just verified
                        reasons, epoch = reasons + untrusting, epoch_of(state)
            reasons, held = carry_hold(
                reasons=reasons, state=state, epoch=epoch, hold=host.held, now=now
            )
            valid_until = None if reasons else now + self._config.validity
            updated = host.with_verdict(
                state=state, reasons=reasons, held=held, now=now, valid_until=valid_until
            )
            if self._store.save_verdict(host, updated, launches):
                level = logging.INFO if not reasons else logging.WARNING
                log.log(level, "host %s: %s", host.host_id[:16], _summary(reasons))
                break
            reloaded = self._store.get_host(host.host_id)  # another attestation came first
            if reloaded is None:
                raise NotFoundError("the host was removed during its attestation")
            host = reloaded
        else:
            raise ConflictError("too many concurrent attestations of this host; retry")
        return self.status(updated, operator=False)

    def _quoted_epoch(self, host: HostRecord, nonce: bytes, evidence: Evidence) -> Epoch | None:
        """The TPM epoch of the evidence's quote, if it verifies: where a hold starts."""
        try:
            quote = verify_quote(
                key=attestation_key(host.ak_public),
                attest=evidence.attest,
                signature=evidence.signature,
                nonce=nonce,
                pcrs=self._expectations(host).pcrs,
                pcr_values=evidence.pcr_values,
            )
        except AttestationError:
            return None
        return (quote.clock.reset_count, quote.clock.restart_count)

    # key release

    def release(
        self, host: HostRecord, req: api.ReleaseRequest, signed: SignedRequest
    ) -> api.ReleaseResponse:
        """Appraise the signed evidence, then release the image's layer keys sealed to the
        host's TPM if its launch record and the release policy allow it. Every decision is
        audited."""
        self.check_signed(host, signed)
        manifest = api.field_bytes(req.manifest, "manifest")
        image = sha256_of(manifest)
        nonce = api.field_bytes(req.attestation.nonce, "attestation.nonce")
        status = self._attest(host, req.attestation)
        current = self._store.get_host(host.host_id)  # the admission as it is now
        try:
            if current is None or not current.admitted:
                refusal = not_admitted(current or host)
                raise AttestationError(refusal.check, refusal.message)
            if not status.trusted:
                raise AttestationError(
                    "untrusted",
                    "the host is not trusted: "
                    + "; ".join(f"{r.check}: {r.message}" for r in status.reasons),
                )
            launch = release.find_launch(
                evidence_of(req.attestation).events, req.launch_recnum, image
            )
            rule = release.check_policy(self._config.releases, image, current.group, launch)
            policy_version = self._policies.check_release(launch, current)
            bind_key = verify_bind_key(
                ak=attestation_key(host.ak_public),
                public=api.field_bytes(req.release_key.public, "release_key.public"),
                attest=api.field_bytes(req.release_key.attest, "release_key.attest"),
                signature=api.field_bytes(req.release_key.signature, "release_key.signature"),
                nonce=nonce,
            )
            layers = release.unwrap_layers(manifest, load_keys(self._config.image_key_dir))
        except AttestationError as e:
            reason = Reason.of(e)  # expected/got for operators only: the host gets the message
            self._audit(host, "release_refused", image, **reason.to_json())
            log.warning("host %s: release of %s refused: %s", host.host_id[:16], image, reason)
            raise
        sealed = seal(
            bind_key, layers, associated_data(host_id=host.host_id, image=image, nonce=nonce)
        )
        self._audit(
            host,
            "released",
            image,
            layers=len(layers),
            container=launch.container_id,
            rule=rule.name,
            launch_profile=launch.launch_profile_digest,
            policy_version=policy_version,
        )
        log.info("host %s: released %d layer keys of %s", host.host_id[:16], len(layers), image)
        return api.ReleaseResponse(image=image, sealed_keys=sealed)

    def _audit(self, host: HostRecord, event: str, image: str, **detail: object) -> None:
        self._store.record_event(
            host_id=host.host_id,
            event_name=event,
            detail={"image": image, **detail},
            now=self._clock().timestamp(),
        )

    def _expectations(self, host: HostRecord) -> Expectations:
        try:
            return self._config.expectations(host.group)
        except ConfigError as e:
            raise ConflictError(f"host {host.hostname}: {e}") from e

    # trust status

    def status(self, host: HostRecord, *, operator: bool) -> api.HostStatus:
        return status_of(host, self._clock().timestamp(), operator=operator)

    def host_status(self, caller: HostRecord | None, host_id: str) -> api.HostStatus:
        if caller is not None and caller.host_id != host_id:
            raise AuthError("a host may read only its own status; use an operator certificate")
        host = self._store.get_host(host_id)
        if host is None:
            raise NotFoundError(f"no enrolled host {host_id[:64]!r}")
        return self.status(host, operator=caller is None)

    # launches and workloads (server/workloads.py, docs/policy.md §5)

    def host_launches(self, caller: HostRecord | None, host_id: str) -> api.LaunchList:
        """A host's latest launches with their compliance (a host: only its own)."""
        if caller is not None and caller.host_id != host_id:
            raise AuthError("a host may read only its own launches; use an operator certificate")
        host = self._store.get_host(host_id)
        if host is None:
            raise NotFoundError(f"no enrolled host {host_id[:64]!r}")
        rows = self._store.host_launches(host_id, SHOWN_LAUNCHES)
        names = {host.host_id: host.hostname}
        return api.LaunchList(launches=[workloads.launch_body(r, names) for r in rows])

    def workloads(self, caller: HostRecord | None) -> api.WorkloadList:
        _operator_only(caller, "workloads")
        return workloads.workload_list(self._store, self._policies.in_force())

    def workload(self, caller: HostRecord | None, name: str) -> api.WorkloadDetail:
        _operator_only(caller, "workloads")
        return workloads.workload_detail(self._store, self._policies.in_force(), name)

    # Kubernetes (server/kubernetes.py, docs/kubernetes.md): operators' certificates only

    def kubernetes_filter(self, caller: HostRecord | None, args: Any) -> dict[str, Any]:
        _operator_only(caller, "the scheduler extender")
        pod, names, by_names = kubernetes.extender_nodes(args)
        placement = self._placement(pod, names)
        return kubernetes.filter_result(placement, by_names, args.get("Nodes"))

    def kubernetes_prioritize(self, caller: HostRecord | None, args: Any) -> list[dict[str, Any]]:
        _operator_only(caller, "the scheduler extender")
        pod, names, _ = kubernetes.extender_nodes(args)
        return kubernetes.priorities(self._placement(pod, names), names)

    def kubernetes_review(self, caller: HostRecord | None, review: Any) -> dict[str, Any]:
        _operator_only(caller, "the admission webhook")
        pod = kubernetes.review_pod_object(review)
        refusal = ""
        if pod is not None:
            policy = self._policies.in_force()
            manifest = None if policy is None else policy.manifest
            refusal = kubernetes.review_pod(manifest, pod, self._node_hosts(None))
        if refusal:
            log.info("admission webhook refused pod: %s", refusal)
        return kubernetes.admission_response(review, refusal)

    def _placement(self, pod: kubernetes.Pod, names: Sequence[str]) -> kubernetes.Placement:
        policy = self._policies.in_force()
        manifest = None if policy is None else policy.manifest
        return kubernetes.place(manifest, pod, self._node_hosts(names))

    def _node_hosts(self, names: Sequence[str] | None) -> list[kubernetes.NodeHost]:
        """The enrolled, admitted hosts by node name (``names`` None: every such host)."""
        now = self._now()
        hosts = []
        for host in self._store.list_hosts():
            if not host.admitted or host.admission is None:
                continue
            status = status_of(host, now, operator=True)
            node = host.admission.attributes.get(kubernetes.NODE_ATTRIBUTE) or host.hostname
            why = "; ".join(f"{r.check}: {r.message}" for r in status.reasons)
            hosts.append((node, status.trusted, place_of(host), why))
        wanted = [h[0] for h in hosts] if names is None else names
        return kubernetes.node_hosts(wanted, hosts)

    # the audit log (server/auditlog.py)

    def audit_checkpoint(self) -> api.AuditCheckpoint:
        """For hosts and operators: a host keeps it and checks the next against it."""
        return api.AuditCheckpoint(checkpoint=self._store.audit_checkpoint(self._now()))

    def audit_consistency(self, old: int, new: int) -> api.AuditProof:
        return api.AuditProof(hashes=[api.b64(h) for h in self._store.audit_consistency(old, new)])

    def audit_entries(self, caller: HostRecord | None, start: int, end: int) -> api.AuditEntries:
        _operator_only(caller, "audit entries")
        return api.AuditEntries(
            entries=[e.to_json() for e in self._store.audit_entries(start, end)]
        )

    def audit_inclusion(self, caller: HostRecord | None, index: int, size: int) -> api.AuditProof:
        _operator_only(caller, "audit inclusion proofs")
        return api.AuditProof(hashes=[api.b64(h) for h in self._store.audit_inclusion(index, size)])

    def _now(self) -> float:
        return self._clock().timestamp()

    def list_hosts(self, caller: HostRecord | None) -> api.HostList:
        hosts = [caller] if caller is not None else self._store.list_hosts()
        return api.HostList(hosts=[self.status(h, operator=caller is None) for h in hosts])

    def audit_report(
        self,
        caller: HostRecord | None,
        *,
        since: str | None,
        until: str | None,
        workload: str | None,
        form: str,
    ) -> tuple[bytes, str]:
        """For operators: the compliance report of [since, until) in ``form`` (html, json,
        csv) and its media type, computed as ``trusthook report --config`` does, from the
        period's entries exported and verified now with the log's key (docs/reports.md)."""
        # Only this route needs the report code: not loaded with the server.
        from trusthook.audit.note import VerifierKey  # noqa: PLC0415
        from trusthook.audit.report import (  # noqa: PLC0415
            MEDIA_TYPES,
            Parameters,
            Source,
            build_report,
            period_time,
            render,
        )
        from trusthook.audit.verify import verify_bundle  # noqa: PLC0415
        from trusthook.errors import AuditVerificationError  # noqa: PLC0415

        _operator_only(caller, "audit reports")
        try:
            start = None if since is None else period_time(since, "since")
            end = None if until is None else period_time(until, "until")
        except ValueError as e:
            raise RequestError(str(e)) from None
        if start is not None and end is not None and end <= start:
            raise RequestError(f"until: got {end}, expected a time after since {start}")
        bundle = self._store.audit_export(
            since=None if start is None else datetime.fromisoformat(start).timestamp(),
            until=None if end is None else datetime.fromisoformat(end).timestamp(),
            from_size=None,
            now=self._now(),
        )
        try:
            verified = verify_bundle(bundle, key=VerifierKey.parse(self._store.audit_key()))
        except AuditVerificationError as e:
            log.error("audit report: the log in the database does not verify: %s", e)
            raise ConflictError(f"the audit log in the database does not verify: {e}") from e
        parameters = Parameters(
            since=start, until=end, workload=workload, validity=self._config.validity
        )
        source = Source(bundle="bundle.json", export_config="/etc/trusthook/server.toml")
        report = build_report(verified, parameters=parameters, source=source)
        return render(report, form), MEDIA_TYPES[form]


def _operator_only(caller: HostRecord | None, what: str) -> None:
    """Entries name every host and carry operators' golden values: not for hosts."""
    if caller is not None:
        raise AuthError(f"{what} are for operators; hosts read checkpoints and consistency proofs")


def _attributes_tag(host: HostRecord) -> bytes:
    """The tag the host's attribute index must hold: its group and attributes as admitted."""
    return attributes_tag(host.host_id, host.group, place_of(host).attributes)


def _check_attributes(host: HostRecord, nonce: bytes, req: api.AttestationRequest) -> Reason | None:
    """None if the evidence certifies the host attribute index holding the host's tag; the
    ``attributes`` reason otherwise."""
    body = req.attributes
    certification = (
        None
        if body is None
        else NvCertification(
            attest=api.field_bytes(body.attest, "attributes.attest"),
            signature=api.field_bytes(body.signature, "attributes.signature"),
        )
    )
    try:
        verify_attributes(
            ak=attestation_key(host.ak_public),
            nonce=nonce,
            certification=certification,
            expected=_attributes_tag(host),
        )
    except AttestationError as e:
        return Reason.of(e)
    return None


def evidence_of(req: api.AttestationRequest) -> Evidence:
    """The evidence an attestation request carries, decoded and parsed; RequestError if it
    is malformed."""
    values: dict[int, bytes] = {}
    for key, text in req.pcrs.items():
        if not _PCR_INDEX.fullmatch(key) or not 0 <= int(key) <= 23:
            raise RequestError(f"pcrs: key {key[:8]!r} is not a PCR index 0..23")
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise RequestError(f"pcrs.{key}: not hexadecimal") from None
        if len(value) != 32:
            raise RequestError(f"pcrs.{key}: {len(value)} bytes, expected 32")
        values[int(key)] = value
    try:
        events = [parse_record(r, f"events[{i}]") for i, r in enumerate(req.events)]
    except EventLogError as e:
        raise RequestError(str(e)) from None
    return Evidence(
        attest=api.field_bytes(req.quote.attest, "quote.attest"),
        signature=api.field_bytes(req.quote.signature, "quote.signature"),
        pcr_values=values,
        boot_id=req.boot_id,
        events=events,
    )


def _summary(reasons: tuple[Reason, ...]) -> str:
    return "trusted" if not reasons else "untrusted: " + "; ".join(map(str, reasons))
