"""What the server does for each request, transport-free: enroll, issue nonces, appraise
evidence, report host trust. The HTTP layer (``app``) maps its errors to status codes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from trusthook.attest.appraise import Evidence, Expectations, HostState, appraise
from trusthook.attest.bindkey import verify_bind_key
from trusthook.attest.identity import (
    AttestationKey,
    check_ak_public,
    check_ek_public,
    make_credential,
    verify_ek_certificate,
)
from trusthook.attest.verdict import Reason
from trusthook.common.clock import iso_from_timestamp
from trusthook.common.digest import sha256_of
from trusthook.common.eventlog import parse_record
from trusthook.errors import (
    AttestationError,
    AuthError,
    ConfigError,
    ConflictError,
    EnrollmentError,
    EventLogError,
    NotFoundError,
    RequestError,
)
from trusthook.image.envelope import associated_data, seal
from trusthook.server import api, release
from trusthook.server.ca import CertificateAuthority
from trusthook.server.config import ServerConfig
from trusthook.server.imagekeys import load_keys
from trusthook.server.store import HostRecord, Store

log = logging.getLogger(__name__)
NONCE_BYTES = 32
CERT_LIFETIME = timedelta(days=365)
OPERATOR_PREFIX = "operator:"
_SAVE_ATTEMPTS = 5


def host_id_of(certificate: x509.Certificate) -> str:
    """A host is named by its EK: SHA-256 of the EK certificate's SubjectPublicKeyInfo."""
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@lru_cache(maxsize=4096)
def _attestation_key(ak_public: bytes) -> AttestationKey:
    return check_ak_public(ak_public)


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
        self._ca = ca
        self._ek_roots = tuple(ek_roots)
        self._clock = clock

    # enrollment

    def begin_enrollment(self, req: api.EnrollmentRequest) -> api.EnrollmentChallenge:
        now = self._clock()
        if req.group not in self._config.groups:
            raise RequestError(
                f"unknown host group {req.group!r}; the server has {sorted(self._config.groups)}"
            )
        der = _decode(req.ek_certificate, "ek_certificate")
        ek_public = _decode(req.ek_public, "ek_public")
        ak_public = _decode(req.ak_public, "ak_public")
        certificate = verify_ek_certificate(der, self._ek_roots, now)
        ek = check_ek_public(ek_public, certificate)
        ak = check_ak_public(ak_public)
        _check_csr(req.csr)
        host_id = host_id_of(certificate)
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

    def finish_enrollment(
        self, enrollment_id: str, req: api.ActivationRequest
    ) -> api.EnrollmentResult:
        now = self._clock()
        secret = _decode(req.secret, "secret")
        pending = self._store.take_enrollment(enrollment_id, now.timestamp())
        if pending is None:
            raise NotFoundError(
                f"enrollment {enrollment_id[:32]!r} is unknown, expired or already answered;"
                " start the enrollment again"
            )
        if not hmac.compare_digest(hashlib.sha256(secret).digest(), pending.secret_hash):
            self._store.record_event(
                host_id=pending.host_id,
                event_name="enrollment-refused",
                detail={"reason": "wrong credential activation answer"},
                now=now.timestamp(),
            )
            raise EnrollmentError(
                "credential activation: the answer is not the secret the server sealed to the"
                " EK; the AK and the EK are not in the same TPM"
            )
        original = api.EnrollmentRequest(**pending.request)
        certificate = self._ca.issue_client_certificate(
            original.csr.encode(), pending.host_id, now, CERT_LIFETIME
        )
        record = HostRecord(
            host_id=pending.host_id,
            hostname=original.hostname,
            group=original.group,
            ek_public=_decode(original.ek_public, "ek_public"),
            ak_public=_decode(original.ak_public, "ak_public"),
            cert_serial=format(certificate.serial_number, "x"),
            enrolled_at=now.timestamp(),
            state=HostState(),
            trusted=False,
            reasons=(_NOT_ATTESTED,),
            since=now.timestamp(),
            valid_until=None,
            last_attestation=None,
            version=0,
        )
        if not self._store.put_host(record, reenroll=original.reenroll):
            raise ConflictError(f"host {pending.host_id[:16]}… was enrolled meanwhile")
        self._store.record_event(
            host_id=pending.host_id,
            event_name="reenrolled" if original.reenroll else "enrolled",
            detail={"hostname": original.hostname, "group": original.group},
            now=now.timestamp(),
        )
        log.info("host %s (%s) enrolled", pending.host_id, original.hostname)
        return api.EnrollmentResult(
            host_id=pending.host_id,
            certificate=_pem(certificate),
            ca_certificate=_pem(self._ca.certificate),
        )

    # identity

    def authenticate(self, certificate: x509.Certificate | None) -> HostRecord | None:
        """The enrolled host presenting ``certificate``, or None for an operator; AuthError
        for anyone else. The TLS layer has already checked that our CA issued it."""
        if certificate is None:
            raise AuthError("this request needs the client certificate issued at enrollment")
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        if name.startswith(OPERATOR_PREFIX):
            return None
        host = self._store.get_host(name)
        if host is None:
            raise AuthError(f"client certificate names host {name[:16]!r}, which is not enrolled")
        if host.cert_serial != format(certificate.serial_number, "x"):
            raise AuthError(
                "client certificate was replaced by a later enrollment of this host; enroll again"
            )
        return host

    # attestation

    def issue_nonce(self, host: HostRecord) -> api.NonceResponse:
        now = self._clock().timestamp()
        nonce = secrets.token_bytes(NONCE_BYTES)
        expires = now + self._config.nonce_ttl
        self._store.issue_nonce(host_id=host.host_id, nonce=nonce, expires=expires, now=now)
        return api.NonceResponse(
            nonce=api.b64(nonce),
            expires_at=iso_from_timestamp(expires),
            pcrs=list(self._expectations(host).pcrs),
            verified_boot_id=host.state.boot_id,
            verified_recnum=host.state.verified_recnum,
        )

    def attest(self, host: HostRecord, req: api.AttestationRequest) -> api.HostStatus:
        evidence = _evidence(req)
        nonce = _decode(req.nonce, "nonce")
        now = self._clock().timestamp()
        refused = self._store.spend_nonce(host_id=host.host_id, nonce=nonce, now=now)
        for _ in range(_SAVE_ATTEMPTS):
            reasons: tuple[Reason, ...]
            if refused is not None:
                reasons, state = (refused,), None
            else:
                appraisal = appraise(
                    key=_attestation_key(host.ak_public),
                    nonce=nonce,
                    evidence=evidence,
                    expect=self._expectations(host),
                    state=host.state,
                )
                reasons, state = appraisal.reasons, appraisal.state
            valid_until = None if reasons else now + self._config.validity
            updated = host.with_verdict(
                state=state, reasons=reasons, now=now, valid_until=valid_until
            )
            if self._store.save_verdict(host, updated):
                level = logging.INFO if not reasons else logging.WARNING
                log.log(level, "host %s: %s", host.host_id[:16], _summary(reasons))
                break
            reloaded = self._store.get_host(host.host_id)  # another attestation came first
            if reloaded is None:
                raise NotFoundError("the host was removed during its attestation")
            host = reloaded
        else:
            raise ConflictError("too many concurrent attestations of this host; retry")
        return self.status(updated)

    # key release

    def release(self, host: HostRecord, req: api.ReleaseRequest) -> api.ReleaseResponse:
        """Appraise the evidence, then release the image's layer keys sealed to the host's TPM
        if its launch record and the release policy allow it. Every decision is audited."""
        manifest = _decode(req.manifest, "manifest")
        image = sha256_of(manifest)
        nonce = _decode(req.attestation.nonce, "attestation.nonce")
        status = self.attest(host, req.attestation)
        try:
            if not status.trusted:
                raise AttestationError(
                    "untrusted",
                    "the host is not trusted: "
                    + "; ".join(f"{r.check}: {r.message}" for r in status.reasons),
                )
            launch = release.find_launch(
                _evidence(req.attestation).events, req.launch_recnum, image
            )
            release.check_policy(self._config.releases, image, host.group, launch)
            bind_key = verify_bind_key(
                ak=_attestation_key(host.ak_public),
                public=_decode(req.release_key.public, "release_key.public"),
                attest=_decode(req.release_key.attest, "release_key.attest"),
                signature=_decode(req.release_key.signature, "release_key.signature"),
                nonce=nonce,
            )
            layers = release.unwrap_layers(manifest, load_keys(self._config.image_key_dir))
        except AttestationError as e:
            self._audit(host, "release_refused", image, check=e.check, message=e.message)
            log.warning("host %s: release of %s refused: %s", host.host_id[:16], image, e)
            raise
        sealed = seal(
            bind_key, layers, associated_data(host_id=host.host_id, image=image, nonce=nonce)
        )
        self._audit(host, "released", image, layers=len(layers), container=launch.container_id)
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

    def status(self, host: HostRecord) -> api.HostStatus:
        now = self._clock().timestamp()
        trusted, reasons, since = host.trusted, host.reasons, host.since
        if trusted and host.valid_until is not None and host.valid_until < now:
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
        return api.HostStatus(
            host_id=host.host_id,
            hostname=host.hostname,
            group=host.group,
            trusted=trusted,
            reasons=[api.ReasonBody.of(r) for r in reasons],
            since=iso_from_timestamp(since),
            valid_until=iso_from_timestamp(host.valid_until)
            if trusted and host.valid_until
            else None,
            last_attestation=iso_from_timestamp(host.last_attestation)
            if host.last_attestation
            else None,
            enrolled_at=iso_from_timestamp(host.enrolled_at),
            verified_recnum=host.state.verified_recnum,
        )

    def host_status(self, caller: HostRecord | None, host_id: str) -> api.HostStatus:
        if caller is not None and caller.host_id != host_id:
            raise AuthError("a host may read only its own status; use an operator certificate")
        host = self._store.get_host(host_id)
        if host is None:
            raise NotFoundError(f"no enrolled host {host_id[:64]!r}")
        return self.status(host)

    def list_hosts(self, caller: HostRecord | None) -> api.HostList:
        hosts = [caller] if caller is not None else self._store.list_hosts()
        return api.HostList(hosts=[self.status(h) for h in hosts])


_NOT_ATTESTED = Reason(check="not_attested", message="the host has not attested since enrollment")


def _decode(value: str, what: str) -> bytes:
    try:
        return api.b64decode(value, what)
    except ValueError as e:
        raise RequestError(str(e)) from None


def _check_csr(pem: str) -> None:
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as e:
        raise RequestError(f"csr is not a PEM certificate signing request ({e})") from None
    if not csr.is_signature_valid:
        raise RequestError("csr's signature does not verify")


def _evidence(req: api.AttestationRequest) -> Evidence:
    values: dict[int, bytes] = {}
    for key, text in req.pcrs.items():
        if not key.isdigit() or not 0 <= int(key) <= 23:
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
        attest=_decode(req.quote.attest, "quote.attest"),
        signature=_decode(req.quote.signature, "quote.signature"),
        pcr_values=values,
        boot_id=req.boot_id,
        events=events,
    )


def _summary(reasons: tuple[Reason, ...]) -> str:
    return "trusted" if not reasons else "untrusted: " + "; ".join(map(str, reasons))


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode("ascii")
