"""The agent's side of remote attestation: enroll this host, then attest on an interval.

Files under ``<state_dir>/attest/`` (directory 0700):
- ``client.key`` (0600) and ``client.crt``: the mTLS identity the server issued at enrollment;
- ``server-ca.pem``: the CA the server's certificate must chain to;
- ``enrollment.json``: server URL, host id, hostname, and the group the server assigned;
- ``status.json``: the last attempt, its outcome, and the server's verdict with its reasons;
- ``audit-checkpoint.note``: the last checkpoint of the server's audit log this host verified
  (docs/audit.md §9): each later one must be consistent with it, or the host reports that the
  server rewrote or forked its log;
- ``attributes-tag``: the host attribute tag (docs/attestation.md §12) last written into the
  TPM's attribute index: the index is written again only when the server issues another tag
  (the operator changed the host's group or attributes), when the index is gone, or after an
  enrollment; an index rewritten behind the agent stays rewritten, and the server says so.
Every file is written to a temporary name, fsync'd and renamed: a crash leaves the old one.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trusthook.agent.metrics import AgentMetrics
from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.agent.writer import MeasuredLog
from trusthook.attest.requestkey import enrollment_qualifying
from trusthook.audit import Checkpoint, VerifierKey, open_checkpoint, verify_consistency
from trusthook.common.clock import iso, utc_now
from trusthook.common.eventlog import LaunchEvent
from trusthook.common.files import write_atomic
from trusthook.common.jsonread import Message, Source
from trusthook.common.messages import (
    ActivationRequest,
    AttestationRequest,
    AuditWatchAnswer,
    Enrollment,
    EnrollmentChallenge,
    EnrollmentRequest,
    EnrollmentResult,
    EnrollParams,
    EnrollResult,
    HostStatus,
    LastAttempt,
    NonceResponse,
    ReleaseRequest,
    ReleaseResponse,
    StatusResult,
)
from trusthook.common.protocol import OP_ATTEST
from trusthook.errors import (
    AuditLogError,
    AuditVerificationError,
    ConfigError,
    ServerRefusedError,
    ServerUnavailableError,
    StateError,
    TPMError,
    TrusthookError,
)
from trusthook.image.envelope import associated_data, open_sealed

log = logging.getLogger(__name__)
RETRY_FIRST = 1.0  # seconds before the first retry of an unreachable server; doubles each time
M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class AuditWatch:
    """One check of the server's audit log: the size it was consistent at, or why not."""

    size: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class _Kept:
    """The server's audit log key and the last checkpoint of it this host kept (None: none)."""

    key: VerifierKey
    checkpoint: Checkpoint | None

    @property
    def size(self) -> int:
        return 0 if self.checkpoint is None else self.checkpoint.size


def _read_state(path: Path, kind: type[M], hint: str) -> M | None:
    """The message in state file ``path``, None if there is none; StateError ending in
    ``hint`` if it cannot be read or is malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}; {hint}") from e
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise StateError(f"{path} is not valid JSON ({e}); {hint}") from None
    source = Source(owner="the", where=f" in {path}", error=StateError, hint=hint)
    return kind.from_json(data, source=source)


class Attester:
    """Enrollment and attestation for one host; thread-safe (one exchange at a time).

    With ``keep_alive`` (the default) it holds one connection to the server across exchanges
    (serverclient.py: a connection the server closed meanwhile is replaced, never a failure):
    each periodic attestation then costs the server no TLS handshake. Without it, each
    exchange opens its own connection and closes it."""

    def __init__(
        self,
        *,
        log: MeasuredLog,
        state_dir: Path,
        boot_id: str,
        interval: float,
        metrics: AgentMetrics | None = None,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = utc_now,
        keep_alive: bool = True,
    ) -> None:
        self._metrics = metrics if metrics is not None else AgentMetrics()
        self._log = log
        self._dir = state_dir / "attest"
        self._boot_id = boot_id
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keep_alive = keep_alive
        self._held: tuple[Enrollment, ServerClient] | None = None  # under _lock

    # files

    @property
    def _files(self) -> dict[str, Path]:
        return {
            name: self._dir / name
            for name in (
                "client.key",
                "client.crt",
                "server-ca.pem",
                "enrollment.json",
                "status.json",
                "audit-checkpoint.note",
                "attributes-tag",
            )
        }

    def enrollment(self) -> Enrollment | None:
        return _read_state(self._files["enrollment.json"], Enrollment, "remove it and enroll again")

    def _last_attempt(self) -> LastAttempt | None:
        return _read_state(
            self._files["status.json"], LastAttempt, "'trusthook attest' replaces it"
        )

    def client(self, enrollment: Enrollment) -> ServerClient:
        """An mTLS client to the server of ``enrollment`` that signs requests with the TPM
        request key (``post(..., signed=True)``); the caller closes it."""
        files = self._files
        context = tls_context(files["server-ca.pem"], files["client.crt"], files["client.key"])
        return ServerClient(
            enrollment.server, context, timeout=self._timeout, signer=self._sign_request
        )

    @contextmanager
    def _connected(self, enrollment: Enrollment) -> Iterator[ServerClient]:
        """The client of an exchange (under ``_lock``): the held one while ``enrollment``
        is the one it was opened for, else a new one, held after the exchange with
        ``keep_alive`` and closed without."""
        held = self._held
        if held is not None and held[0] != enrollment:
            held[1].close()
            held = self._held = None
        client = held[1] if held is not None else self.client(enrollment)
        try:
            yield client
        finally:
            if self._keep_alive:
                self._held = (enrollment, client)
            else:
                client.close()

    def close(self) -> None:
        """Close the connection held to the server, if any."""
        with self._lock:
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self._held is not None:
            self._held[1].close()
            self._held = None

    def _sign_request(self, digest: bytes) -> bytes:
        with self._log.exclusive_tpm() as tpm:
            return tpm.sign_request(digest)

    # enrollment

    def enroll(self, params: EnrollParams) -> EnrollResult:
        """Enroll with ``params.server``: EK certificate and AK out, credential activated,
        client certificate in. Files change only when the server has accepted the host."""
        with self._lock:
            current = self.enrollment()
            if current is not None and not params.reenroll:
                raise ConfigError(
                    f"this host is already enrolled with {current.server} as"
                    f" {current.host_id[:16]}…; enroll again explicitly (--reenroll)"
                )
            try:
                ca_pem = params.server_ca.read_bytes()
            except OSError as e:
                raise ConfigError(f"cannot read server CA {params.server_ca}: {e.strerror}") from e
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, params.hostname)])
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(name)
                .sign(key, hashes.SHA256())
            )
            with self._log.exclusive_tpm() as tpm:
                request = EnrollmentRequest(
                    hostname=params.hostname,
                    note=params.note,
                    ek_certificate=tpm.ek_certificate(),
                    ek_public=tpm.ek_public(),
                    ak_public=tpm.ak_public(),
                    csr=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                    reenroll=params.reenroll,
                )
            context = tls_context(params.server_ca)
            with ServerClient(params.server, context, timeout=self._timeout) as client:
                challenge = EnrollmentChallenge.from_json(
                    client.post("/v1/enrollments", request.to_json())
                )
                with self._log.exclusive_tpm() as tpm:
                    secret = tpm.activate_credential(
                        challenge.credential_blob, challenge.encrypted_secret
                    )
                    public, attest, signature = tpm.certify_request_key(
                        enrollment_qualifying(challenge.enrollment_id)
                    )
                activation = ActivationRequest(
                    secret=secret, key_public=public, key_attest=attest, key_signature=signature
                )
                result = EnrollmentResult.from_json(
                    client.post(
                        f"/v1/enrollments/{challenge.enrollment_id}/activation",
                        activation.to_json(),
                    )
                )
            self._drop_connection()  # it presents the certificate being replaced
            self._save_identity(key, result.certificate.encode(), ca_pem)
            self._files["audit-checkpoint.note"].unlink(missing_ok=True)  # another server's?
            self._files["attributes-tag"].unlink(missing_ok=True)  # written again at attesting
            enrollment = Enrollment(
                server=params.server,
                host_id=result.host_id,
                hostname=params.hostname,
                group=result.group,  # the server's: the operator assigns it
                audit_key=result.audit_key,
            )
            write_atomic(
                self._files["enrollment.json"], json.dumps(enrollment.to_json()).encode(), 0o644
            )
            log.info("enrolled with %s as host %s", params.server, result.host_id)
            return EnrollResult(
                host_id=result.host_id, server=params.server, reenrolled=current is not None
            )

    def _save_identity(self, key: ec.EllipticCurvePrivateKey, cert: bytes, ca: bytes) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = self._files
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(files["client.key"], key_pem, 0o600)
        write_atomic(files["client.crt"], cert, 0o644)
        write_atomic(files["server-ca.pem"], ca, 0o644)

    # attestation

    def attest(self) -> HostStatus:
        """Attest once now; returns the server's verdict on this host."""
        with self._lock:
            enrollment = self.enrollment()
            if enrollment is None:
                raise ConfigError("this host is not enrolled; run 'trusthook enroll --server URL'")
            started = iso(self._clock())
            try:
                verdict, audit = self._exchange(enrollment)
            except TrusthookError as e:
                self._metrics.attest_failed(e)
                self._save_attempt(started, None, str(e))
                raise
            self._metrics.attested(verdict, None if audit is None else audit.error is not None)
            self._save_attempt(started, verdict, None, audit)
            return verdict

    def release(self, manifest: bytes, image: str, launch: LaunchEvent) -> dict[str, bytes]:
        """Record ``launch``, then ask the server for the image's layer keys with fresh evidence
        that includes that record; the keys come back sealed to this TPM and are opened here.

        Holding the exchange lock from the record to the answer keeps the record among the
        evidence's new records (no periodic attestation can verify it in between)."""
        try:
            keys = self._release(manifest, image, launch)
        except ServerRefusedError:
            self._metrics.release("refused")
            raise
        except TrusthookError:
            self._metrics.release("failed")
            raise
        self._metrics.release("released")
        return keys

    def _release(self, manifest: bytes, image: str, launch: LaunchEvent) -> dict[str, bytes]:
        with self._lock:
            enrollment = self.enrollment()
            if enrollment is None:
                raise ConfigError(
                    "encrypted images need an enrolled host: run 'trusthook enroll --server URL'"
                )
            record = self._log.append(launch)
            with self._connected(enrollment) as client:
                evidence, _ = self._evidence(client)
                with self._log.exclusive_tpm() as tpm:
                    public, attest, signature = tpm.certify_bind_key(evidence.nonce)
                request = ReleaseRequest(
                    attestation=evidence,
                    launch_recnum=record.recnum,
                    manifest=manifest,
                    key_public=public,
                    key_attest=attest,
                    key_signature=signature,
                )
                answer = ReleaseResponse.from_json(
                    client.post("/v1/releases", request.to_json(), signed=True)
                )
            if answer.image != image:
                raise ServerRefusedError(
                    f"attestation server released the keys of image {answer.image},"
                    f" expected {image}"
                )
            aad = associated_data(host_id=enrollment.host_id, image=image, nonce=evidence.nonce)
            with self._log.exclusive_tpm() as tpm:
                return open_sealed(answer.sealed_keys, tpm.unseal_release, aad)

    def _exchange(self, enrollment: Enrollment) -> tuple[HostStatus, AuditWatch | None]:
        kept = self._kept_checkpoint(enrollment)
        # the size the server proves its log's consistency from (0: none kept, or unreadable)
        audit_size = None if kept is None else kept.size if isinstance(kept, _Kept) else 0
        with self._connected(enrollment) as client:
            evidence, challenge = self._evidence(client, audit_size)
            verdict = HostStatus.from_json(
                client.post("/v1/attestations", evidence.to_json(), signed=True)
            )
        return verdict, None if kept is None else self._watch_log(kept, challenge.audit)

    def _kept_checkpoint(self, enrollment: Enrollment) -> _Kept | Exception | None:
        """The log key and the audit checkpoint this host kept, read once per attestation, or
        why they cannot be read (``_watch_log`` reports it); None if the server has no log
        key."""
        if not enrollment.audit_key:
            return None
        path = self._files["audit-checkpoint.note"]
        try:
            key = VerifierKey.parse(enrollment.audit_key)
            old = open_checkpoint(path.read_bytes(), key).checkpoint if path.exists() else None
        except (AuditLogError, AuditVerificationError, OSError) as e:
            return e
        return _Kept(key=key, checkpoint=old)

    def _watch_log(
        self, kept: _Kept | Exception, answer: AuditWatchAnswer | None
    ) -> AuditWatch | None:
        """Check the audit checkpoint that came with the nonce against the one kept (the
        consistency proof that came with it) and keep it if it extends that one; None if the
        server sent none or the check could not be made. A rewritten or forked log is
        reported, never accepted: the old checkpoint stays, so every later attestation reports
        it again."""
        try:
            if isinstance(kept, Exception):
                raise kept
            if answer is None:
                raise AuditLogError("the server's nonce answer holds no audit checkpoint")
            note = answer.checkpoint
            new = open_checkpoint(note, kept.key).checkpoint
            old = kept.checkpoint
            if old is not None and old != new:
                if new.size < old.size:
                    raise AuditVerificationError(
                        f"its size went back from {old.size} to {new.size}"
                    )
                verify_consistency(
                    old_size=old.size,
                    new_size=new.size,
                    old_root=old.root,
                    new_root=new.root,
                    proof=answer.consistency,
                )
        except AuditVerificationError as e:
            message = f"the attestation server's audit log was rewritten or forked: {e}"
            log.error("%s", message)
            return AuditWatch(size=None, error=message)
        except (AuditLogError, OSError) as e:
            log.warning("could not check the attestation server's audit log: %s", e)
            return None
        write_atomic(self._files["audit-checkpoint.note"], note.encode(), 0o644)
        return AuditWatch(size=new.size, error=None)

    def _evidence(
        self, client: ServerClient, audit_size: int | None = None
    ) -> tuple[AttestationRequest, NonceResponse]:
        """The evidence answering a fresh nonce from the server, and the nonce's answer (with
        ``audit_size``: holding the audit log's checkpoint and the proof from that size)."""
        # retry: a nonce is harmless to ask for twice (an unused one expires)
        path = "/v1/nonces" if audit_size is None else f"/v1/nonces?audit_size={audit_size}"
        challenge = NonceResponse.from_json(client.post(path, retry=True))
        after = challenge.verified_recnum
        if challenge.verified_boot_id != self._boot_id:
            after = -1  # a new boot for the server: send the whole log of this one
        attributes_attest, attributes_signature = self._certify_attributes(challenge)
        quote, records = self._log.evidence(challenge.pcrs, challenge.nonce, after)
        evidence = AttestationRequest(
            nonce=challenge.nonce,
            quote_attest=quote.attest,
            quote_signature=quote.signature,
            pcrs=quote.pcr_values,
            boot_id=self._boot_id,
            events=tuple(records),
            attributes_attest=attributes_attest,
            attributes_signature=attributes_signature,
        )
        return evidence, challenge

    def _certify_attributes(self, challenge: NonceResponse) -> tuple[bytes, bytes]:
        """A TPM2_NV_Certify, with the challenge's nonce, of the host attribute index, after
        writing into it the tag the server issued if that tag is new to this host or the index
        does not hold a tag."""
        path = self._files["attributes-tag"]
        written = path.read_bytes() if path.exists() else None
        with self._log.exclusive_tpm() as tpm:
            if written != challenge.attributes_tag or tpm.read_attributes() is None:
                tpm.write_attributes(challenge.attributes_tag)
                write_atomic(path, challenge.attributes_tag, 0o644)
                log.info("wrote the host attribute tag the server issued into the TPM")
            return tpm.certify_attributes(challenge.nonce)

    def status(self) -> StatusResult:
        """The enrollment and the outcome of the last attempt, from this host's point of view."""
        return StatusResult(enrollment=self.enrollment(), attempt=self._last_attempt())

    def _save_attempt(
        self,
        started: str,
        verdict: HostStatus | None,
        error: str | None,
        audit: AuditWatch | None = None,
    ) -> None:
        """Record an attempt; a failed one keeps the last verdict, and one that did not check
        the audit log keeps the last check."""
        previous = None
        if verdict is None or audit is None:
            try:
                previous = self._last_attempt()
            except StateError:
                previous = None  # replaced below
        if verdict is None and previous is not None:
            verdict = previous.last_verdict
        if audit is None and previous is not None:
            audit = AuditWatch(size=previous.audit_size, error=previous.audit_error)
        attempt = LastAttempt(
            last_attempt=started,
            error=error,
            last_verdict=verdict,
            audit_size=None if audit is None else audit.size,
            audit_error=None if audit is None else audit.error,
        )
        write_atomic(
            self._files["status.json"], json.dumps(attempt.to_json(), indent=2).encode(), 0o644
        )

    # the loop

    def run(self, stop: threading.Event) -> None:
        """Attest every interval until ``stop``; an unreachable server is retried sooner, with
        exponential backoff and jitter, never later than the interval."""
        delay, failures = 0.0, 0
        while not stop.wait(delay):
            try:
                if self.enrollment() is None:
                    delay = self._interval
                    continue
                verdict = self.attest()
            except ServerUnavailableError as e:
                failures += 1
                delay = min(self._interval, RETRY_FIRST * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                log.warning("attestation failed, retrying in %.1fs: %s", delay, e)
                continue
            except TrusthookError as e:
                if isinstance(e, TPMError):  # a request's are counted by the service
                    self._metrics.tpm_error(OP_ATTEST)
                log.error("attestation failed: %s", e)
                failures, delay = 0, self._interval
                continue
            failures, delay = 0, self._interval
            if not verdict.trusted:
                reasons = "; ".join(str(r) for r in verdict.reasons)
                log.warning("server says this host is untrusted: %s", reasons)
