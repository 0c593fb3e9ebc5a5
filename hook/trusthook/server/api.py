"""The HTTP API's bodies (docs/attestation.md, docs/openapi.json). Validation of shapes only;
what the values mean is checked by the service."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trusthook.attest.verdict import Reason
from trusthook.errors import RequestError

MAX_EVENTS = 10_000
_ONE_LINE = r"^[^\x00-\x1f\x7f-\x9f]*$"  # no control characters: operators' terminals show it


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollmentRequest(_Body):
    """A host asks to enroll. It names no group: the operator's admission record of its EK
    assigns one (docs/attestation.md §3)."""

    hostname: str = Field(min_length=1, max_length=255, pattern=_ONE_LINE)
    note: str = Field(
        default="",
        max_length=500,
        pattern=_ONE_LINE,
        description="a note to the operator who approves the host (trusthook server hosts"
        " pending shows it); it decides nothing",
    )
    ek_certificate: str = Field(description="DER, base64", max_length=16384)
    ek_public: str = Field(description="marshaled TPM2B_PUBLIC of the EK, base64", max_length=4096)
    ak_public: str = Field(description="marshaled TPM2B_PUBLIC of the AK, base64", max_length=4096)
    csr: str = Field(description="PEM certificate signing request for mTLS", max_length=16384)
    reenroll: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_group(cls, data: Any) -> Any:
        if isinstance(data, dict) and "group" in data:
            raise ValueError(
                "got a 'group', expected none: the operator assigns a host's group (trusthook"
                " server hosts admit|approve --group); a wish for the operator goes in 'note'"
            )
        return data


class EnrollmentChallenge(_Body):
    enrollment_id: str
    host_id: str
    credential_blob: str = Field(description="marshaled TPM2B_ID_OBJECT, base64")
    encrypted_secret: str = Field(description="marshaled TPM2B_ENCRYPTED_SECRET, base64")
    expires_at: str


class CertifiedKey(_Body):
    public: str = Field(description="marshaled TPM2B_PUBLIC of the key, base64", max_length=4096)
    attest: str = Field(
        description="TPMS_ATTEST of TPM2_Certify by the AK, base64", max_length=4096
    )
    signature: str = Field(description="marshaled TPMT_SIGNATURE, base64", max_length=4096)


class ActivationRequest(_Body):
    secret: str = Field(description="the activated credential, base64", max_length=128)
    request_key: CertifiedKey = Field(
        description="the TPM request key the host signs its requests with, certified by the AK"
        " with qualifying data SHA-256('trusthook request key' NUL enrollment_id)"
    )


class EnrollmentResult(_Body):
    host_id: str
    group: str = Field(description="the host group the operator's admission record assigns")
    certificate: str = Field(description="the host's client certificate, PEM")
    ca_certificate: str = Field(description="the server CA's certificate, PEM")
    audit_key: str = Field(
        default="",
        description="the verifier key of the server's audit log (docs/audit.md §4): the host"
        " checks every later checkpoint against the last it saw; empty: none",
    )


class AuditWatch(_Body):
    checkpoint: str = Field(
        description="the last checkpoint the log signed (C2SP signed note, docs/audit.md §5)"
    )
    consistency: list[str] = Field(
        description="the RFC 9162 consistency proof from tree size audit_size to the"
        " checkpoint's, base64 hashes; empty when audit_size is 0 or not below that size"
    )


class NonceResponse(_Body):
    nonce: str = Field(description="32 random bytes, base64")
    expires_at: str
    pcrs: list[int] = Field(description="the PCRs to quote, ascending")
    verified_boot_id: str | None = Field(description="boot of the last verified record")
    verified_recnum: int = Field(description="last verified record of that boot; -1: none")
    attributes_tag: str = Field(
        description="the 68 bytes the host attribute NV index must hold, base64"
        " (docs/attestation.md §12)"
    )
    audit: AuditWatch | None = Field(
        default=None,
        description="asked for with audit_size: the audit log's checkpoint and the consistency"
        " proof to it from the host's last (docs/audit.md, Hosts watch the log); null: not"
        " asked for, or no log key",
    )


class QuoteBody(_Body):
    attest: str = Field(description="TPMS_ATTEST as the TPM signed it, base64", max_length=4096)
    signature: str = Field(description="marshaled TPMT_SIGNATURE, base64", max_length=4096)


class AttestationRequest(_Body):
    nonce: str = Field(max_length=128)
    quote: QuoteBody
    pcrs: dict[str, str] = Field(description="PCR index to SHA-256 value (hex)")
    boot_id: str = Field(min_length=1, max_length=64)
    events: list[dict[str, Any]] = Field(
        description="event-log records after the last verified one", max_length=MAX_EVENTS
    )
    attributes: QuoteBody | None = Field(
        default=None,
        description="TPM2_NV_Certify of the host attribute index by the AK with the nonce;"
        " without it the host is not trusted",
    )


class ReleaseRequest(_Body):
    attestation: AttestationRequest = Field(
        description="fresh evidence whose events include this container's launch record"
    )
    launch_recnum: int = Field(description="the record number of the launch event", ge=0)
    manifest: str = Field(
        description="the encrypted image's manifest, base64; its digest is the image",
        max_length=1 << 20,
    )
    release_key: CertifiedKey


class ReleaseResponse(_Body):
    image: str = Field(description="the manifest digest the keys are for")
    sealed_keys: dict[str, str] = Field(
        description="encrypted_seed, iv, ciphertext (docs/images.md, key release)"
    )


class ReasonBody(_Body):
    check: str
    message: str
    expected: str | None = None
    got: str | None = None

    @classmethod
    def of(cls, reason: Reason) -> ReasonBody:
        return cls(**reason.to_json())


class HostStatus(_Body):
    host_id: str
    hostname: str
    group: str
    trusted: bool
    reasons: list[ReasonBody]
    since: str = Field(description="when the host became trusted or untrusted")
    valid_until: str | None = Field(description="trusted until, unless it attests again")
    last_attestation: str | None
    enrolled_at: str
    verified_recnum: int


class HostList(_Body):
    hosts: list[HostStatus]


class LaunchBody(_Body):
    """One launch a verified appraisal saw, and its compliance with the policy in force then
    (docs/policy.md §5)."""

    host_id: str
    hostname: str
    boot_id: str
    recnum: int
    container: str
    identity: str | None = Field(description="the workload identity its annotations gave")
    workload: str | None = Field(description="the manifest's workload it is; null: none")
    image: str | None
    image_digest: str | None
    rootfs_digest: str
    launch_profile: str
    encrypted: bool | None
    compliant: bool | None = Field(description="null: no policy had been applied")
    reasons: list[ReasonBody] = Field(description="why it is not compliant")
    policy_version: int | None
    move: str | None = Field(
        description="its place in its identity's lineage: origin, same_host, verified,"
        " tampered, disallowed (docs/policy.md §7); null: none"
    )
    at: str = Field(description="when the server verified it")


class LaunchList(_Body):
    launches: list[LaunchBody] = Field(description="newest first")


class WorkloadSummary(_Body):
    name: str
    in_policy: bool = Field(description="whether the policy in force names this workload")
    instances: int
    non_compliant: int
    hosts: list[str] = Field(description="the host ids it was launched on, first launch first")
    first_seen: str | None
    last_seen: str | None


class WorkloadList(_Body):
    policy_version: int | None
    workloads: list[WorkloadSummary]


class LineageBody(_Body):
    """How one identity of the workload was created: its first compliant launch."""

    identity: str
    host_id: str
    hostname: str
    image_digest: str | None
    rootfs_digest: str
    launch_profile: str
    created_at: str
    moves: dict[str, int] = Field(description="its later launches by kind (docs/policy.md §7)")


class WorkloadDetail(_Body):
    summary: WorkloadSummary
    lineages: list[LineageBody]
    policy: dict[str, Any] | None = Field(
        description="the workload as the policy in force defines it (docs/policy.md §2)"
    )
    instances: list[LaunchBody] = Field(description="oldest first")


class AuditCheckpoint(_Body):
    checkpoint: str = Field(
        description="the signed checkpoint of the whole log (C2SP signed note, docs/audit.md §5)"
    )


class AuditEntries(_Body):
    entries: list[dict[str, Any]] = Field(description="the entries, ascending (docs/audit.md §2)")


class AuditProof(_Body):
    hashes: list[str] = Field(description="the proof's hashes, base64, in RFC 9162 order")


class ErrorDetail(_Body):
    check: str
    message: str


class ErrorResponse(_Body):
    error: ErrorDetail


def b64decode(value: str, what: str) -> bytes:
    """Strict base64; ValueError naming ``what`` otherwise."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def field_bytes(value: str, what: str) -> bytes:
    """A base64 request member's bytes; RequestError (400) naming it otherwise."""
    try:
        return b64decode(value, what)
    except ValueError as e:
        raise RequestError(str(e)) from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
