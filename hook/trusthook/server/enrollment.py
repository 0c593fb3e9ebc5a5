"""Enrollment: the EK certificate chain, EK and AK checked, a credential only the host's TPM
can activate, and then the admission record decides (docs/attestation.md §3): an unknown EK is
queued for an operator (or auto-admitted), a host a check refused waits for one before it
re-enrolls, and a re-enrolled host keeps everything verified about it."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from trusthook.attest.appraise import HostState
from trusthook.attest.identity import (
    check_ak_public,
    check_ek_public,
    make_credential,
    verify_ek_certificate,
)
from trusthook.attest.requestkey import verify_request_key
from trusthook.common.clock import iso_from_timestamp
from trusthook.errors import (
    AttestationError,
    ConflictError,
    EnrollmentError,
    NotFoundError,
    RequestError,
)
from trusthook.server import api
from trusthook.server.admission import AUTO_ADMIT, HOST, Admission, AdmissionState, ek_sha256_of
from trusthook.server.ca import CertificateAuthority, pem
from trusthook.server.config import ServerConfig
from trusthook.server.records import HostRecord
from trusthook.server.status import NOT_ATTESTED
from trusthook.server.store import Store

log = logging.getLogger(__name__)
CERT_LIFETIME = timedelta(days=365)
_SAVE_ATTEMPTS = 5


class Enroller:
    """Enrollment over one store."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        store: Store,
        ca: CertificateAuthority,
        ek_roots: Sequence[x509.Certificate],
        clock: Callable[[], datetime],
    ) -> None:
        self._config = config
        self._store = store
        self._ca = ca
        self._ek_roots = tuple(ek_roots)
        self._clock = clock

    def begin(self, req: api.EnrollmentRequest) -> api.EnrollmentChallenge:
        now = self._clock()
        der = api.field_bytes(req.ek_certificate, "ek_certificate")
        ek_public = api.field_bytes(req.ek_public, "ek_public")
        ak_public = api.field_bytes(req.ak_public, "ak_public")
        certificate = verify_ek_certificate(der, self._ek_roots, now, self._config.ek_ca_anchors)
        ek = check_ek_public(ek_public, certificate)
        ak = check_ak_public(ak_public)
        _check_csr(req.csr)
        host_id = ek_sha256_of(certificate)
        existing = self._store.get_host(host_id)
        if existing is not None and not req.reenroll:
            raise ConflictError(
                f"host {host_id[:16]}… ({existing.hostname}) is already enrolled since"
                f" {iso_from_timestamp(existing.enrolled_at)}; enroll again explicitly"
                " (--reenroll) to replace its keys"
            )
        secret = secrets.token_bytes(32)
        blob, encrypted = make_credential(ek, secret, ak.name)
        enrollment_id = secrets.token_hex(16)
        expires = now.timestamp() + self._config.enrollment_ttl
        self._store.add_enrollment(
            enrollment_id=enrollment_id,
            host_id=host_id,
            request=req.model_dump(),
            secret_hash=hashlib.sha256(secret).digest(),
            expires=expires,
            now=now.timestamp(),
        )
        log.info("enrollment %s started for host %s (%s)", enrollment_id, host_id, req.hostname)
        return api.EnrollmentChallenge(
            enrollment_id=enrollment_id,
            host_id=host_id,
            credential_blob=api.b64(blob),
            encrypted_secret=api.b64(encrypted),
            expires_at=iso_from_timestamp(expires),
        )

    def finish(self, enrollment_id: str, req: api.ActivationRequest) -> api.EnrollmentResult:
        """Check the credential answer, then enroll the host under its admission record: an
        unknown EK is queued for an operator (or auto-admitted), and a host a check refused
        waits for one before it re-enrolls. Its verified history survives re-enrollment."""
        now = self._clock()
        secret = api.field_bytes(req.secret, "secret")
        pending = self._store.take_enrollment(enrollment_id, now.timestamp())
        if pending is None:
            raise NotFoundError(
                f"enrollment {enrollment_id[:32]!r} is unknown, expired or already answered;"
                " start the enrollment again"
            )
        if not hmac.compare_digest(hashlib.sha256(secret).digest(), pending.secret_hash):
            self._store.record_event(
                host_id=pending.host_id,
                event_name="enrollment_refused",
                detail={"check": "credential", "message": "wrong credential activation answer"},
                now=now.timestamp(),
            )
            raise EnrollmentError(
                "credential activation: the answer is not the secret the server sealed to the"
                " EK; the AK and the EK are not in the same TPM"
            )
        request = api.EnrollmentRequest(**pending.request)
        request_key = self._request_key(enrollment_id, pending.host_id, request, req, now)
        ek_certificate = x509.load_der_x509_certificate(
            api.field_bytes(request.ek_certificate, "ek_certificate")
        )
        certificate = self._ca.issue_client_certificate(
            request.csr.encode(), pending.host_id, now, CERT_LIFETIME
        )
        for _ in range(_SAVE_ATTEMPTS):
            existing = self._store.get_host(pending.host_id)
            if existing is not None and not request.reenroll:
                raise ConflictError(f"host {pending.host_id[:16]}… was enrolled meanwhile")
            admission = self._admission_for(pending.host_id, request, ek_certificate, existing)
            if admission is None:
                continue  # the record changed meanwhile: decide again on what is stored now
            record = _enrolled(
                pending.host_id,
                request,
                request_key=request_key,
                certificate=certificate,
                existing=existing,
                now=now.timestamp(),
            )
            noted = replace(
                admission,
                ek_cert_serial=admission.ek_cert_serial
                or format(ek_certificate.serial_number, "x"),
                ek_cert_issuer=admission.ek_cert_issuer or ek_certificate.issuer.rfc4514_string(),
                hostname=request.hostname,
                reenroll_grant=False,  # spent by this re-enrollment, if it was granted
                version=admission.version + 1,
            )
            detail = {
                "hostname": request.hostname,
                "group": admission.group,
                "granted": admission.reenroll_grant,
            }
            if self._store.enroll_host(
                record, admission=noted, existing=existing, detail=detail, now=now.timestamp()
            ):
                group = noted.group or ""
                break
        else:
            raise ConflictError("too many concurrent changes of this host's admission; retry")
        log.info(
            "host %s (%s) %s in group %s",
            pending.host_id,
            request.hostname,
            "enrolled" if existing is None else "re-enrolled",
            group,
        )
        return api.EnrollmentResult(
            host_id=pending.host_id,
            group=group,
            certificate=_pem_text(certificate),
            ca_certificate=_pem_text(self._ca.certificate),
            audit_key=self._store.audit_key(),
        )

    def _request_key(
        self,
        enrollment_id: str,
        host_id: str,
        request: api.EnrollmentRequest,
        activation: api.ActivationRequest,
        now: datetime,
    ) -> bytes:
        """The request key's point once the AK (now proven to share the EK's TPM) certified
        it for this enrollment; EnrollmentError, audited, otherwise."""
        key = activation.request_key
        try:
            return verify_request_key(
                ak=check_ak_public(api.field_bytes(request.ak_public, "ak_public")),
                public=api.field_bytes(key.public, "request_key.public"),
                attest=api.field_bytes(key.attest, "request_key.attest"),
                signature=api.field_bytes(key.signature, "request_key.signature"),
                enrollment_id=enrollment_id,
            )
        except AttestationError as e:
            self._store.record_event(
                host_id=host_id,
                event_name="enrollment_refused",
                detail={"check": e.check, "message": e.message},
                now=now.timestamp(),
            )
            raise EnrollmentError(f"request key: {e.message}") from None

    def _admission_for(
        self,
        host_id: str,
        request: api.EnrollmentRequest,
        ek_certificate: x509.Certificate,
        existing: HostRecord | None,
    ) -> Admission | None:
        """The admitted record this enrollment may go ahead under; None if the record changed
        while this decided (decide again); AdmissionError if it may not go ahead. Queues an
        unknown EK for an operator (auto_admit: admits it) and puts a host a check refused
        back in the queue, each audited."""
        now = self._clock().timestamp()
        admission = self._store.get_admission(host_id)
        note = request.note or None
        if admission is None:
            auto = self._config.auto_admit
            queued = Admission(
                ek_sha256=host_id,
                state=AdmissionState.ADMITTED if auto else AdmissionState.PENDING,
                group=auto,
                attributes={},
                ek_cert_serial=format(ek_certificate.serial_number, "x"),
                ek_cert_issuer=ek_certificate.issuer.rfc4514_string(),
                decided_by=AUTO_ADMIT if auto else HOST,
                decided_at=now,
                reason="[admission] auto_admit" if auto else "enrollment of an unknown EK",
                reenroll_grant=False,
                version=0,
                hostname=request.hostname,
                note=note,
                requested_at=now,
            )
            event = "auto_admitted" if auto else "pending"
            detail = {"group": auto, "hostname": request.hostname, "note": request.note}
            if not self._store.add_admission(queued, event=event, detail=detail, now=now):
                return None  # another enrollment of this EK recorded it first
            if not auto:
                log.info("host %s (%s) awaits approval", host_id, request.hostname)
                raise queued.refusal(enrolled=existing is not None)
            log.warning(
                "host %s (%s) auto-admitted to group %r: [admission] auto_admit is on, no"
                " operator decided",
                host_id,
                request.hostname,
                auto,
            )
            return queued
        if admission.state is AdmissionState.PENDING:
            self._store.change_admission(
                replace(
                    admission,
                    hostname=request.hostname,
                    note=note,
                    requested_at=now,
                    version=admission.version + 1,
                ),
                event=None,
                detail={},
                now=now,
            )
            raise admission.refusal(enrolled=existing is not None)
        if admission.state is not AdmissionState.ADMITTED:
            raise admission.refusal(enrolled=existing is not None)
        if existing is None or admission.reenroll_grant or not _refused_by_a_check(existing):
            return admission
        checks = ", ".join(sorted({r.check for r in existing.reasons}))
        queued = replace(
            admission,
            state=AdmissionState.PENDING,
            decided_by=HOST,
            decided_at=now,
            reason=f"re-enrollment of a host a check refused ({checks})",
            version=admission.version + 1,
            hostname=request.hostname,
            note=note,
            requested_at=now,
        )
        detail = {"hostname": request.hostname, "note": request.note, "untrusted": checks}
        if self._store.change_admission(queued, event="pending", detail=detail, now=now):
            log.warning("host %s (%s): re-enrollment awaits approval", host_id, request.hostname)
            raise queued.refusal(enrolled=True)
        return None


def _refused_by_a_check(host: HostRecord) -> bool:
    """Whether the host's last appraisal failed a check (not merely: never attested), or a
    hold keeps it untrusted: then its re-enrollment waits for an operator."""
    if host.held is not None:
        return True
    return not host.trusted and any(r.check != NOT_ATTESTED.check for r in host.reasons)


def _enrolled(
    host_id: str,
    request: api.EnrollmentRequest,
    *,
    request_key: bytes,
    certificate: x509.Certificate,
    existing: HostRecord | None,
    now: float,
) -> HostRecord:
    """The host record an enrollment stores: a new host, or ``existing`` with the new keys and
    certificate and everything it verified kept (epoch, boot, records, PCR, failed checks,
    hold); a trusted host is untrusted until the new enrollment attests."""
    new = HostRecord(
        host_id=host_id,
        hostname=request.hostname,
        ek_public=api.field_bytes(request.ek_public, "ek_public"),
        ak_public=api.field_bytes(request.ak_public, "ak_public"),
        request_key=request_key,
        cert_serial=format(certificate.serial_number, "x"),
        enrolled_at=now,
        state=HostState(),
        trusted=False,
        reasons=(NOT_ATTESTED,),
        since=now,
        valid_until=None,
        last_attestation=None,
        held=None,
        admission=None,
        version=0,
    )
    if existing is None:
        return new
    kept = replace(
        existing,
        hostname=new.hostname,
        ek_public=new.ek_public,
        ak_public=new.ak_public,
        request_key=new.request_key,
        cert_serial=new.cert_serial,
        enrolled_at=now,
        version=existing.version + 1,
    )
    if not existing.trusted:
        return kept
    return replace(kept, trusted=False, reasons=new.reasons, since=now, valid_until=None)


def _check_csr(pem: str) -> None:
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
        _ = csr.subject  # parsed only when asked: a malformed name raises here
    except (ValueError, x509.InvalidVersion) as e:  # InvalidVersion is no ValueError
        raise RequestError(f"csr is not a PEM certificate signing request ({e})") from None
    try:
        valid = csr.is_signature_valid  # reads the key: a malformed or unknown one raises
    except (ValueError, UnsupportedAlgorithm) as e:
        raise RequestError(
            f"csr's public key cannot be read ({e}); expected an EC or RSA key"
        ) from None
    if not valid:
        raise RequestError("csr's signature does not verify")


def _pem_text(certificate: x509.Certificate) -> str:
    return pem(certificate).decode("ascii")
