"""The messages that cross a process boundary on the agent's side (docs/api.md,
docs/attestation.md): the CLI's requests to the agent and the agent's results, the attestation
server's answers as the agent reads them and the agent's requests to it, and the agent's state
files. The server's own models are ``trusthook.server.api``; these mirror its fields.

Each message the agent or the CLI reads has ``from_json``, which refuses anything but its shape
with one line naming the member ("… got X, expected Y"), and ``to_json``. Who sent it (a
``Source``) decides the error class: the attestation server ``ServerRefusedError``, the agent
``AgentRefusedError``, a client of the agent ``RequestError``, a state file ``StateError``.
What trusthook writes and reads itself is strict about unknown members; the server's answers
are not, so that a newer server may add members. The requests to the server have ``to_json``
only: the agent never reads them, the server parses them with its own models.

Pure, and standard library only: the CLI's cheap commands import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from trusthook.common import b64
from trusthook.common.eventlog import PCR_SIZE, Record, parse_record
from trusthook.common.jsonread import (
    FROM_AGENT,
    FROM_SERVER,
    TO_AGENT,
    Fields,
    Message,
    parse_message,
    show,
)
from trusthook.errors import EventLogError

# the attestation server's answers (trusthook.server.api)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollmentChallenge(Message):
    """POST /v1/enrollments: the credential the TPM must activate."""

    NOUN = "enrollment challenge"
    SOURCE = FROM_SERVER
    STRICT = False

    enrollment_id: str  # goes into the activation's URL path: letters and digits only
    host_id: str
    credential_blob: bytes
    encrypted_secret: bytes
    expires_at: str

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        enrollment_id = fields.text("enrollment_id")
        if not (enrollment_id.isascii() and enrollment_id.isalnum()):
            raise fields.refuse("enrollment_id", show(enrollment_id), "letters and digits")
        return cls(
            enrollment_id=enrollment_id,
            host_id=fields.text("host_id"),
            credential_blob=fields.base64("credential_blob"),
            encrypted_secret=fields.base64("encrypted_secret"),
            expires_at=fields.text("expires_at"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "enrollment_id": self.enrollment_id,
            "host_id": self.host_id,
            "credential_blob": b64.encode(self.credential_blob),
            "encrypted_secret": b64.encode(self.encrypted_secret),
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollmentResult(Message):
    """POST /v1/enrollments/{id}/activation: the host's client certificate."""

    NOUN = "enrollment result"
    SOURCE = FROM_SERVER
    STRICT = False

    host_id: str
    group: str  # the operator's admission record assigns it
    certificate: str  # PEM
    ca_certificate: str  # PEM
    audit_key: str = ""  # the audit log's verifier key; "": the server has none

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(
            host_id=fields.text("host_id"),
            group=fields.text("group"),
            certificate=fields.text("certificate"),
            ca_certificate=fields.text("ca_certificate"),
            audit_key=fields.text("audit_key") if fields.has("audit_key") else "",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "group": self.group,
            "certificate": self.certificate,
            "ca_certificate": self.ca_certificate,
            "audit_key": self.audit_key,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class NonceResponse(Message):
    """POST /v1/nonces: the nonce, the PCRs to quote and the last record the server verified."""

    NOUN = "nonce answer"
    SOURCE = FROM_SERVER
    STRICT = False

    nonce: bytes
    expires_at: str
    pcrs: tuple[int, ...]
    verified_boot_id: str | None
    verified_recnum: int  # -1: none
    attributes_tag: bytes  # what the host attribute index must hold (attest.attributes)
    audit: AuditWatchAnswer | None = None  # asked for with ?audit_size=N; None: no log key

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        def pcr(item: object, at: str) -> int:
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= 23:
                raise fields.refuse_at(at, show(item), "a PCR index 0..23")
            return item

        return cls(
            nonce=fields.base64("nonce"),
            expires_at=fields.text("expires_at"),
            pcrs=fields.array("pcrs", pcr, "an array of PCR indices 0..23"),
            verified_boot_id=fields.optional_text("verified_boot_id"),
            verified_recnum=fields.integer("verified_recnum"),
            attributes_tag=fields.base64("attributes_tag"),
            audit=fields.optional_nested("audit", AuditWatchAnswer)
            if fields.has("audit")
            else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "nonce": b64.encode(self.nonce),
            "expires_at": self.expires_at,
            "pcrs": list(self.pcrs),
            "verified_boot_id": self.verified_boot_id,
            "verified_recnum": self.verified_recnum,
            "attributes_tag": b64.encode(self.attributes_tag),
            "audit": None if self.audit is None else self.audit.to_json(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasonBody(Message):
    """One failed check in a verdict; ``expected`` and ``got`` where they apply."""

    NOUN = "verdict reason"
    SOURCE = FROM_SERVER
    STRICT = False

    check: str
    message: str
    expected: str | None = None
    got: str | None = None

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(
            check=fields.text("check"),
            message=fields.text("message"),
            expected=fields.optional_text("expected") if fields.has("expected") else None,
            got=fields.optional_text("got") if fields.has("got") else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "message": self.message,
            "expected": self.expected,
            "got": self.got,
        }

    def __str__(self) -> str:
        text = f"{self.check}: {self.message}"
        if self.expected is not None or self.got is not None:
            text += f" (expected {self.expected}, got {self.got})"
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatus(Message):
    """The server's verdict on a host: POST /v1/attestations, GET /v1/hosts/{id}; also the
    agent's attest result, and the last verdict in its status."""

    NOUN = "host status"
    SOURCE = FROM_SERVER
    STRICT = False

    host_id: str
    hostname: str
    group: str
    trusted: bool
    reasons: tuple[ReasonBody, ...]
    since: str
    valid_until: str | None
    last_attestation: str | None
    enrolled_at: str
    verified_recnum: int

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        def reason(item: object, at: str) -> ReasonBody:
            return parse_message(ReasonBody, item, fields.noun, fields.source, at)

        return cls(
            host_id=fields.text("host_id"),
            hostname=fields.text("hostname"),
            group=fields.text("group"),
            trusted=fields.flag("trusted"),
            reasons=fields.array("reasons", reason, "an array of reasons"),
            since=fields.text("since"),
            valid_until=fields.optional_text("valid_until"),
            last_attestation=fields.optional_text("last_attestation"),
            enrolled_at=fields.text("enrolled_at"),
            verified_recnum=fields.integer("verified_recnum"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "hostname": self.hostname,
            "group": self.group,
            "trusted": self.trusted,
            "reasons": [r.to_json() for r in self.reasons],
            "since": self.since,
            "valid_until": self.valid_until,
            "last_attestation": self.last_attestation,
            "enrolled_at": self.enrolled_at,
            "verified_recnum": self.verified_recnum,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseResponse(Message):
    """POST /v1/releases: an image's layer keys, sealed to this host's TPM."""

    NOUN = "release answer"
    SOURCE = FROM_SERVER
    STRICT = False

    image: str
    sealed_keys: dict[str, str]  # encrypted_seed, iv, ciphertext (docs/images.md)

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(image=fields.text("image"), sealed_keys=fields.text_map("sealed_keys"))

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "sealed_keys": dict(self.sealed_keys)}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditCheckpointAnswer(Message):
    """GET /v1/audit/checkpoint: the signed checkpoint of the server's audit log."""

    NOUN = "audit checkpoint answer"
    SOURCE = FROM_SERVER
    STRICT = False

    checkpoint: str  # a C2SP signed note (docs/audit.md §5)

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(checkpoint=fields.text("checkpoint", empty=False))

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditProofAnswer(Message):
    """GET /v1/audit/consistency (or inclusion): the proof's hashes, in RFC 9162 order."""

    NOUN = "audit proof answer"
    SOURCE = FROM_SERVER
    STRICT = False

    hashes: tuple[bytes, ...]

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(hashes=_hashes(fields, "hashes"))

    def to_json(self) -> dict[str, Any]:
        return {"hashes": [b64.encode(h) for h in self.hashes]}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditWatchAnswer(Message):
    """A nonce answer's ``audit`` (POST /v1/nonces?audit_size=N): the last checkpoint the log
    signed and the RFC 9162 consistency proof to it from tree size N (empty for N = 0 or N at
    least the checkpoint's size)."""

    NOUN = "nonce answer"
    SOURCE = FROM_SERVER
    STRICT = False

    checkpoint: str  # a C2SP signed note (docs/audit.md §5)
    consistency: tuple[bytes, ...]

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(
            checkpoint=fields.text("checkpoint", empty=False),
            consistency=_hashes(fields, "consistency"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "consistency": [b64.encode(h) for h in self.consistency],
        }


def _hashes(fields: Fields, key: str) -> tuple[bytes, ...]:
    """Member ``key``: an array of base64 SHA-256 hashes."""
    expected = "a base64 SHA-256 hash"

    def digest(item: object, at: str) -> bytes:
        try:
            raw = b64.decode(item, at, ValueError)
        except ValueError:
            raise fields.refuse_at(at, show(item), expected) from None
        if len(raw) != 32:
            raise fields.refuse_at(at, f"{len(raw)} bytes", expected)
        return raw

    return fields.array(key, digest, "an array of base64 hashes")


# the agent's requests to the server: written, never read, by the agent


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollmentRequest:
    """POST /v1/enrollments. It names no group: the operator assigns it."""

    hostname: str
    note: str  # for the operator who approves the host; may be empty
    ek_certificate: bytes  # DER
    ek_public: bytes  # marshaled TPM2B_PUBLIC
    ak_public: bytes  # marshaled TPM2B_PUBLIC
    csr: str  # PEM
    reenroll: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "note": self.note,
            "ek_certificate": b64.encode(self.ek_certificate),
            "ek_public": b64.encode(self.ek_public),
            "ak_public": b64.encode(self.ak_public),
            "csr": self.csr,
            "reenroll": self.reenroll,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationRequest:
    """POST /v1/enrollments/{id}/activation: the activated credential, and the request key with
    the AK's certification of it for this enrollment."""

    secret: bytes
    key_public: bytes  # marshaled TPM2B_PUBLIC of the request key
    key_attest: bytes  # TPMS_ATTEST of TPM2_Certify by the AK
    key_signature: bytes  # marshaled TPMT_SIGNATURE

    def to_json(self) -> dict[str, Any]:
        return {
            "secret": b64.encode(self.secret),
            "request_key": {
                "public": b64.encode(self.key_public),
                "attest": b64.encode(self.key_attest),
                "signature": b64.encode(self.key_signature),
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationRequest:
    """POST /v1/attestations: a quote answering the nonce and the records since the last
    verified one."""

    nonce: bytes
    quote_attest: bytes  # TPMS_ATTEST as the TPM signed it
    quote_signature: bytes  # marshaled TPMT_SIGNATURE
    pcrs: dict[int, bytes]
    boot_id: str
    events: tuple[Record, ...]
    attributes_attest: bytes  # TPMS_ATTEST of TPM2_NV_Certify of the host attribute index
    attributes_signature: bytes  # marshaled TPMT_SIGNATURE

    def to_json(self) -> dict[str, Any]:
        return {
            "nonce": b64.encode(self.nonce),
            "quote": {
                "attest": b64.encode(self.quote_attest),
                "signature": b64.encode(self.quote_signature),
            },
            "pcrs": {str(i): v.hex() for i, v in self.pcrs.items()},
            "boot_id": self.boot_id,
            "events": [r.to_json() for r in self.events],
            "attributes": {
                "attest": b64.encode(self.attributes_attest),
                "signature": b64.encode(self.attributes_signature),
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRequest:
    """POST /v1/releases: fresh evidence including the launch record, and a release key the AK
    certified."""

    attestation: AttestationRequest
    launch_recnum: int
    manifest: bytes
    key_public: bytes  # marshaled TPM2B_PUBLIC
    key_attest: bytes  # TPMS_ATTEST of TPM2_Certify by the AK
    key_signature: bytes  # marshaled TPMT_SIGNATURE

    def to_json(self) -> dict[str, Any]:
        return {
            "attestation": self.attestation.to_json(),
            "launch_recnum": self.launch_recnum,
            "manifest": b64.encode(self.manifest),
            "release_key": {
                "public": b64.encode(self.key_public),
                "attest": b64.encode(self.key_attest),
                "signature": b64.encode(self.key_signature),
            },
        }


# the CLI's requests to the agent, the agent's results and state files (docs/api.md §3.3)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollParams(Message):
    """The ``enroll`` request's params: checked before the TPM or the network is touched."""

    NOUN = "enroll request"
    SOURCE = TO_AGENT

    server: str  # https:// URL, checked when the agent connects
    server_ca: Path  # absolute
    hostname: str
    note: str  # for the operator (``--note``); may be empty
    reenroll: bool

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        params = cls(
            server=fields.text("server", empty=False),
            server_ca=Path(fields.text("server_ca", empty=False)),
            hostname=fields.text("hostname", empty=False),
            note=fields.text("note"),
            reenroll=fields.flag("reenroll"),
        )
        if not params.server_ca.is_absolute():
            raise fields.refuse("server_ca", show(str(params.server_ca)), "an absolute path")
        return params

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "server_ca": str(self.server_ca),
            "hostname": self.hostname,
            "note": self.note,
            "reenroll": self.reenroll,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollResult(Message):
    """The ``enroll`` result."""

    NOUN = "enroll result"
    SOURCE = FROM_AGENT

    host_id: str
    server: str
    reenrolled: bool

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(
            host_id=fields.text("host_id"),
            server=fields.text("server"),
            reenrolled=fields.flag("reenrolled"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "server": self.server, "reenrolled": self.reenrolled}


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrollment(Message):
    """Whom this host is enrolled with, as whom: ``enrollment.json``, and in the status."""

    NOUN = "enrollment"
    SOURCE = FROM_AGENT

    server: str
    host_id: str
    hostname: str
    group: str
    audit_key: str = ""  # the server's audit-log key, from the enrollment; "": none

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(
            server=fields.text("server"),
            host_id=fields.text("host_id"),
            hostname=fields.text("hostname"),
            group=fields.text("group"),
            audit_key=fields.text("audit_key") if fields.has("audit_key") else "",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "host_id": self.host_id,
            "hostname": self.hostname,
            "group": self.group,
            "audit_key": self.audit_key,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LastAttempt(Message):
    """When the agent last attested, its error if it failed, and the last verdict it got
    (possibly from an earlier attempt): ``status.json``, and in the status."""

    NOUN = "last attempt"
    SOURCE = FROM_AGENT

    last_attempt: str
    error: str | None
    last_verdict: HostStatus | None  # absent from the JSON until there is one
    # the server's audit log as this host last checked it: the tree size it is consistent at,
    # or why it is not (a rewritten or forked log); absent: not checked
    audit_size: int | None = None
    audit_error: str | None = None

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        last_attempt = fields.text("last_attempt")
        has_verdict = fields.has("last_verdict")
        return cls(
            last_attempt=last_attempt,
            last_verdict=fields.nested("last_verdict", HostStatus) if has_verdict else None,
            error=fields.optional_text("error"),
            audit_size=fields.integer("audit_size") if fields.has("audit_size") else None,
            audit_error=fields.optional_text("audit_error") if fields.has("audit_error") else None,
        )

    def to_json(self) -> dict[str, Any]:
        verdict = {} if self.last_verdict is None else {"last_verdict": self.last_verdict.to_json()}
        audit: dict[str, Any] = {}
        if self.audit_size is not None:
            audit["audit_size"] = self.audit_size
        if self.audit_error is not None:
            audit["audit_error"] = self.audit_error
        return {"last_attempt": self.last_attempt, **verdict, "error": self.error, **audit}


_COUNT = range(1 << 63)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentHealth(Message):
    """The agent process's own health, read (psutil) when ``status`` is asked: the ``agent``
    member of the status."""

    NOUN = "agent health"
    SOURCE = FROM_AGENT

    pid: int
    started_at: str
    rss_bytes: int  # resident memory
    cpu_ms: int  # user + system CPU time since it started
    open_fds: int
    threads: int

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(
            pid=fields.integer("pid", _COUNT),
            started_at=fields.text("started_at"),
            rss_bytes=fields.integer("rss_bytes", _COUNT),
            cpu_ms=fields.integer("cpu_ms", _COUNT),
            open_fds=fields.integer("open_fds", _COUNT),
            threads=fields.integer("threads", _COUNT),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "rss_bytes": self.rss_bytes,
            "cpu_ms": self.cpu_ms,
            "open_fds": self.open_fds,
            "threads": self.threads,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusResult(Message):
    """The ``status`` result: the enrollment, once the agent has attested the last attempt's
    members alongside, and the agent's own health (absent from an agent that reports none)."""

    NOUN = "status"
    SOURCE = FROM_AGENT

    enrollment: Enrollment | None
    attempt: LastAttempt | None
    agent: AgentHealth | None = None

    @property
    def enrolled(self) -> bool:
        return self.enrollment is not None

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        enrolled = fields.flag("enrolled")
        enrollment = fields.optional_nested("enrollment", Enrollment)
        if enrolled != (enrollment is not None):
            expected = (
                "an object, as enrolled is true" if enrolled else "null, as enrolled is false"
            )
            got = "null" if enrollment is None else "an object"
            raise fields.refuse("enrollment", got, expected)
        attempt = LastAttempt._read(fields) if fields.has("last_attempt") else None
        agent = fields.nested("agent", AgentHealth) if fields.has("agent") else None
        return cls(enrollment=enrollment, attempt=attempt, agent=agent)

    def to_json(self) -> dict[str, Any]:
        return {
            "enrolled": self.enrolled,
            "enrollment": None if self.enrollment is None else self.enrollment.to_json(),
            **({} if self.attempt is None else self.attempt.to_json()),
            **({} if self.agent is None else {"agent": self.agent.to_json()}),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotResult(Message):
    """The ``snapshot`` result: the log of this boot and the PCR, read together."""

    NOUN = "snapshot"
    SOURCE = FROM_AGENT

    pcr: int
    pcr_value: bytes
    records: tuple[Record, ...]

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        def record(item: object, at: str) -> Record:
            try:
                return parse_record(item, at)
            except EventLogError as e:
                raise fields.source.refuse(fields.noun, str(e)) from None

        return cls(
            pcr=fields.integer("pcr", range(24)),
            pcr_value=fields.hex("pcr_value", PCR_SIZE),
            records=fields.array("records", record, "an array of records"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pcr": self.pcr,
            "pcr_value": self.pcr_value.hex(),
            "records": [r.to_json() for r in self.records],
        }


# the runtime shim's prepare (docs/api.md §3.4); checkpoint and restore (docs/policy.md §8): the
# agent asks the attestation server


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointParams(Message):
    """What the agent asks the server about a checkpoint (``RestoreGate.checkpoint``), from a
    ``prepare`` for one: the container to checkpoint."""

    NOUN = "checkpoint request"
    SOURCE = TO_AGENT

    container_id: str

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(container_id=fields.text("container_id", empty=False))

    def to_json(self) -> dict[str, Any]:
        return {"container_id": self.container_id}


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreParams(Message):
    """What the agent asks the server about a restore (``RestoreGate.restore``), from a
    ``prepare`` for one: the container to restore and its bundle, whose config.json the agent
    has just given its hook."""

    NOUN = "restore request"
    SOURCE = TO_AGENT

    container_id: str
    bundle: Path  # absolute

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        params = cls(
            container_id=fields.text("container_id", empty=False),
            bundle=Path(fields.text("bundle", empty=False)),
        )
        if not params.bundle.is_absolute():
            raise fields.refuse("bundle", show(str(params.bundle)), "an absolute path")
        return params

    def to_json(self) -> dict[str, Any]:
        return {"container_id": self.container_id, "bundle": str(self.bundle)}


PREPARED_COMMANDS = ("create", "run", "checkpoint", "restore")  # op prepare's commands


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareParams(Message):
    """The shim's ``prepare`` request's params (docs/api.md §3.4): the runtime subcommand it is
    about to run, its container and its bundle (absolute; null for a checkpoint)."""

    NOUN = "prepare request"
    SOURCE = TO_AGENT

    command: str
    container_id: str
    bundle: Path | None

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        command = fields.text("command")
        if command not in PREPARED_COMMANDS:
            raise fields.refuse("command", show(command), f"one of {', '.join(PREPARED_COMMANDS)}")
        bundle = fields.optional_text("bundle")
        params = cls(
            command=command,
            container_id=fields.text("container_id", empty=False),
            bundle=None if bundle is None else Path(bundle),
        )
        needs = command != "checkpoint"
        if needs and (params.bundle is None or not params.bundle.is_absolute()):
            raise fields.refuse("bundle", show(bundle), "an absolute path")
        if not needs and params.bundle is not None:
            raise fields.refuse("bundle", show(bundle), "null for a checkpoint")
        return params

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": None if self.bundle is None else str(self.bundle),
            "command": self.command,
            "container_id": self.container_id,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareResult(Message):
    """The agent's answer to ``prepare``: the tmpfs root it mounted for the container (the
    shim then runs the runtime as a child and removes the root when the container is gone), or
    None (the shim execs the runtime)."""

    NOUN = "prepare result"
    SOURCE = FROM_AGENT

    root: Path | None

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        root = fields.optional_text("root")
        return cls(root=None if root is None else Path(root))

    def to_json(self) -> dict[str, Any]:
        return {"root": None if self.root is None else str(self.root)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreDecision(Message):
    """POST /v1/checkpoints and /v1/restores: an allowed checkpoint or restore (the agent
    remembers an allowed restore for its hook). ``checkpoint_host``: for a restore, the host
    the identity's last compliant launch ran on."""

    NOUN = "checkpoint or restore decision"
    SOURCE = FROM_SERVER
    STRICT = False

    container: str
    identity: str
    workload: str
    policy_version: int
    checkpoint_host: str | None = None

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        return cls(
            container=fields.text("container"),
            identity=fields.text("identity"),
            workload=fields.text("workload"),
            policy_version=fields.integer("policy_version"),
            checkpoint_host=(
                fields.optional_text("checkpoint_host") if fields.has("checkpoint_host") else None
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "identity": self.identity,
            "workload": self.workload,
            "policy_version": self.policy_version,
            "checkpoint_host": self.checkpoint_host,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRequest:
    """POST /v1/checkpoints, signed: a fresh nonce and the container."""

    nonce: bytes
    container: str

    def to_json(self) -> dict[str, Any]:
        return {"nonce": b64.encode(self.nonce), "container": self.container}


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreRequest:
    """POST /v1/restores, signed: a fresh nonce and what the restored config.json says."""

    nonce: bytes
    container: str
    identity: dict[str, Any]  # Identity.to_content()
    image_digest: str | None
    encrypted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "nonce": b64.encode(self.nonce),
            "container": self.container,
            "identity": self.identity,
            "image_digest": self.image_digest,
            "encrypted": self.encrypted,
        }
