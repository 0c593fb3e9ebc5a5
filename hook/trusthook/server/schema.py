"""The server's database schema (SQLAlchemy Core tables) and the mapping between rows and
records. ``Store.create_schema`` makes the tables; there is no migration."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    select,
)

from trusthook.attest.appraise import HostState
from trusthook.attest.verdict import Reason
from trusthook.policy.lineage import Move, Origin
from trusthook.server.admission import Admission, AdmissionState
from trusthook.server.records import AppraisedLaunch, HostRecord, LaunchRow
from trusthook.server.trust import Hold

metadata = MetaData()

hosts = Table(
    "hosts",
    metadata,
    Column("host_id", String(64), primary_key=True),  # the EK's SHA-256: its admission
    Column("hostname", String(255), nullable=False),
    Column("ek_public", LargeBinary, nullable=False),
    Column("ak_public", LargeBinary, nullable=False),
    Column("request_key", LargeBinary, nullable=False),  # SEC1 point of the TPM request key
    Column("cert_serial", String(40), nullable=False),
    Column("enrolled_at", Float, nullable=False),
    Column("reset_count", Integer),
    Column("restart_count", Integer),
    Column("boot_id", String(64)),
    Column("tpm_clock", BigInteger),  # clockInfo.clock (ms) of the last verified quote
    Column("verified_recnum", Integer, nullable=False),
    Column("verified_pcr", LargeBinary, nullable=False),
    Column("trusted", Boolean, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("since", Float, nullable=False),
    Column("valid_until", Float),
    Column("last_attestation", Float),
    Column("held", Text),  # a Hold, JSON; NULL: none
    Column("version", Integer, nullable=False),
)
admissions = Table(
    "admissions",
    metadata,
    Column("ek_sha256", String(64), primary_key=True),
    Column("state", String(16), nullable=False, index=True),
    Column("host_group", String(64)),
    Column("attributes", Text, nullable=False),  # JSON object of strings
    Column("ek_cert_serial", String(128)),
    Column("ek_cert_issuer", Text),
    Column("hostname", String(255)),
    Column("note", Text),
    Column("requested_at", Float),
    Column("decided_by", String(255), nullable=False),
    Column("decided_at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("reenroll_grant", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
)
operator_certs = Table(
    "operator_certs",
    metadata,
    Column("serial", String(40), primary_key=True),  # hex, as the certificate carries it
    Column("name", String(64), nullable=False, index=True),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("issued_by", String(255), nullable=False),
    Column("revoked_at", Float),
    Column("revoked_by", String(255)),
    Column("revoked_reason", Text),
)
enrollments = Table(
    "enrollments",
    metadata,
    Column("enrollment_id", String(64), primary_key=True),
    Column("host_id", String(64), nullable=False),
    Column("request", Text, nullable=False),  # the validated request, JSON
    Column("secret_hash", LargeBinary, nullable=False),
    Column("expires", Float, nullable=False, index=True),
)
nonces = Table(
    "nonces",
    metadata,
    Column("nonce_hash", LargeBinary(32), primary_key=True),
    Column("host_id", String(64), nullable=False),
    Column("expires", Float, nullable=False, index=True),
    Column("used", Boolean, nullable=False),
)
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("host_id", String(64), nullable=False, index=True),
    Column("event", String(32), nullable=False),
    Column("detail", Text, nullable=False),
)

# The audit log (server/auditlog.py, docs/audit.md §9): entry i is leaf i of the Merkle tree.
audit_log = Table(
    "audit_log",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False, index=True),  # the entry's time, for export by time
    Column("entry", LargeBinary, nullable=False),  # the entry's canonical JSON: the leaf
)
# Every full subtree the log has completed, by (level, position); never changed.
audit_nodes = Table(
    "audit_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)
# One row (id 1): the log's size, root and frontier (the hashes of full_subtrees(0, size),
# concatenated: what the next append needs), and the last checkpoint's size and time. Updating
# it first serializes appends (the index is the size), on PostgreSQL across server processes.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("frontier", LargeBinary, nullable=False),
    Column("checkpoint_size", BigInteger, nullable=False),  # -1: none yet
    Column("checkpoint_at", Float, nullable=False),
)
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
    Column("note", Text, nullable=False),  # the signed note
)

# The workload policy manifest's versions (docs/policy.md §7): the officer's text verbatim, the
# digest of what it means, who applied it and when. The highest version is the policy in force.
policy_versions = Table(
    "policy_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("digest", String(71), nullable=False),
    Column("source", Text, nullable=False),
    Column("applied_at", Float, nullable=False),
    Column("applied_by", Text, nullable=False),
    Column("reason", Text, nullable=False),
)

# Every launch an appraisal verified, with its compliance with the policy in force then
# (docs/policy.md §5): what GET /v1/hosts/{id}/launches and /v1/workloads read.
launches = Table(
    "launches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host_id", String(64), nullable=False, index=True),
    Column("boot_id", Text, nullable=False),
    Column("recnum", Integer, nullable=False),
    Column("container", Text, nullable=False),
    Column("identity", Text, nullable=True),
    Column("workload", Text, nullable=True, index=True),  # None: no workload, or no policy
    Column("image", Text, nullable=True),
    Column("image_digest", Text, nullable=True),
    Column("rootfs_digest", Text, nullable=False),
    Column("launch_profile", Text, nullable=False),
    Column("encrypted", Boolean, nullable=True),
    Column("compliant", Boolean, nullable=True),  # None: no policy was in force
    Column("reasons", Text, nullable=False),  # JSON list of reasons
    Column("policy_version", Integer, nullable=True),
    Column("move", Text, nullable=True),  # policy.lineage.Move; None: no lineage
    Column("at", Float, nullable=False),
)
# Each workload identity's creation (docs/policy.md §7): its first compliant launch.
lineages = Table(
    "lineages",
    metadata,
    Column("identity", Text, primary_key=True),
    Column("workload", Text, nullable=False, index=True),
    Column("host_id", String(64), nullable=False),
    Column("image_digest", Text, nullable=True),
    Column("rootfs_digest", Text, nullable=False),
    Column("launch_profile", Text, nullable=False),
    Column("at", Float, nullable=False),
)


def reasons_json(reasons: tuple[Reason, ...]) -> str:
    return json.dumps([r.to_json() for r in reasons])


def admission_of(values: Any, prefix: str = "") -> Admission:
    def get(name: str) -> Any:
        return values[prefix + name]

    return Admission(
        ek_sha256=get("ek_sha256"),
        state=AdmissionState(get("state")),
        group=get("host_group"),
        attributes=json.loads(get("attributes")),
        ek_cert_serial=get("ek_cert_serial"),
        ek_cert_issuer=get("ek_cert_issuer"),
        hostname=get("hostname"),
        note=get("note"),
        requested_at=get("requested_at"),
        decided_by=get("decided_by"),
        decided_at=get("decided_at"),
        reason=get("reason"),
        reenroll_grant=bool(get("reenroll_grant")),
        version=get("version"),
    )


def admission_values(admission: Admission) -> dict[str, Any]:
    return {
        "ek_sha256": admission.ek_sha256,
        "state": admission.state.value,
        "host_group": admission.group,
        "attributes": json.dumps(dict(admission.attributes), sort_keys=True),
        "ek_cert_serial": admission.ek_cert_serial,
        "ek_cert_issuer": admission.ek_cert_issuer,
        "hostname": admission.hostname,
        "note": admission.note,
        "requested_at": admission.requested_at,
        "decided_by": admission.decided_by,
        "decided_at": admission.decided_at,
        "reason": admission.reason,
        "reenroll_grant": admission.reenroll_grant,
        "version": admission.version,
    }


_JOINED = "admission_"
HOSTS = select(hosts, *(c.label(_JOINED + c.name) for c in admissions.c)).select_from(
    hosts.outerjoin(admissions, admissions.c.ek_sha256 == hosts.c.host_id)
)


def host_of(values: Mapping[Any, Any]) -> HostRecord:
    """The host in ``values``, a row of HOSTS by column name (SQLite's booleans are 0 or 1)."""
    held = values["held"]
    return HostRecord(
        host_id=values["host_id"],
        hostname=values["hostname"],
        ek_public=bytes(values["ek_public"]),
        ak_public=bytes(values["ak_public"]),
        request_key=bytes(values["request_key"]),
        cert_serial=values["cert_serial"],
        enrolled_at=values["enrolled_at"],
        state=HostState(
            reset_count=values["reset_count"],
            restart_count=values["restart_count"],
            boot_id=values["boot_id"],
            clock=values["tpm_clock"],
            verified_recnum=values["verified_recnum"],
            verified_pcr=bytes(values["verified_pcr"]),
        ),
        trusted=bool(values["trusted"]),
        reasons=tuple(Reason.from_json(r) for r in json.loads(values["reasons"])),
        since=values["since"],
        valid_until=values["valid_until"],
        last_attestation=values["last_attestation"],
        held=None if held is None else Hold.from_json(json.loads(held)),
        admission=None if values[_JOINED + "ek_sha256"] is None else admission_of(values, _JOINED),
        version=values["version"],
    )


def host_values(record: HostRecord) -> dict[str, Any]:
    return {
        "host_id": record.host_id,
        "hostname": record.hostname,
        "ek_public": record.ek_public,
        "ak_public": record.ak_public,
        "request_key": record.request_key,
        "cert_serial": record.cert_serial,
        "enrolled_at": record.enrolled_at,
        **verdict_values(record),
    }


def verdict_values(record: HostRecord) -> dict[str, Any]:
    """The columns an attestation's verdict changes: the verified state, the trust, the hold
    and the version."""
    state = record.state
    return {
        "reset_count": state.reset_count,
        "restart_count": state.restart_count,
        "boot_id": state.boot_id,
        "tpm_clock": state.clock,
        "verified_recnum": state.verified_recnum,
        "verified_pcr": state.verified_pcr,
        "trusted": record.trusted,
        "reasons": reasons_json(record.reasons),
        "since": record.since,
        "valid_until": record.valid_until,
        "last_attestation": record.last_attestation,
        "held": None if record.held is None else json.dumps(record.held.to_json()),
        "version": record.version,
    }


def launch_row(host_id: str, launch: AppraisedLaunch, at: float) -> dict[str, Any]:
    event, compliance = launch.record.event, launch.compliance
    return {
        "host_id": host_id,
        "boot_id": event.boot_id,
        "recnum": launch.record.recnum,
        "container": event.container_id,
        "identity": None if compliance is None else compliance.identity,
        "workload": None if compliance is None else compliance.workload,
        "image": event.image_reference,
        "image_digest": event.image_digest,
        "rootfs_digest": event.rootfs_digest,
        "launch_profile": event.launch_profile_digest,
        "encrypted": event.encrypted,
        "compliant": None if compliance is None else compliance.compliant,
        "reasons": reasons_json(() if compliance is None else compliance.reasons),
        "policy_version": launch.policy_version,
        "move": None if launch.move is None else launch.move.value,
        "at": at,
    }


def origin_row(launch: AppraisedLaunch, host_id: str, at: float) -> dict[str, Any] | None:
    """The ``lineages`` row of a launch that created its identity (None: it did not)."""
    event, compliance = launch.record.event, launch.compliance
    if launch.move is not Move.ORIGIN or compliance is None:
        return None
    if compliance.identity is None or compliance.workload is None:
        return None
    return {
        "identity": compliance.identity,
        "workload": compliance.workload,
        "host_id": host_id,
        "image_digest": event.image_digest,
        "rootfs_digest": event.rootfs_digest,
        "launch_profile": event.launch_profile_digest,
        "at": at,
    }


def origin_of(row: Any) -> Origin:
    return Origin(**row._mapping)


def launch_row_of(row: Any) -> LaunchRow:
    values = dict(row._mapping)
    values.pop("id")
    values["reasons"] = tuple(Reason.from_json(r) for r in json.loads(values["reasons"]))
    values["move"] = None if values["move"] is None else Move(values["move"])
    return LaunchRow(**values)
