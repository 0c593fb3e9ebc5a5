"""The server's storage, through SQLAlchemy Core: SQLite by default, PostgreSQL at scale.

Several server processes (and the operator's ``trusthook server hosts`` commands) may share one
database, so every decision that must happen once is a conditional write checked by its row
count: a nonce is spent by the one UPDATE that finds it unspent, a host's state moves on only
from the version that was appraised, an enrollment is taken by the one DELETE that finds it, an
admission record changes only from the version the decision was made on (in the transaction
that audits it), and a re-enrollment an operator granted is spent with the enrollment it lets
through.

The schema is made by ``create_schema`` (``trusthook server init`` and at start); there is no
migration: a database made by an older server is refused, naming what it lacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from trusthook.attest.verdict import Reason
from trusthook.audit import AuditEntry, Bundle, NoteSigner
from trusthook.errors import ConfigError, ConflictError, StorageError
from trusthook.policy.lineage import Origin
from trusthook.server import auditlog, driversql
from trusthook.server.admission import Admission, AdmissionState
from trusthook.server.metrics import HostCount
from trusthook.server.records import (
    AppraisedLaunch,
    AuditEvent,
    HostRecord,
    LaunchRow,
    OperatorCert,
    PendingEnrollment,
    PolicyVersion,
)
from trusthook.server.schema import (
    HOSTS,
    admission_of,
    admission_values,
    admissions,
    audit,
    audit_head,
    enrollments,
    host_of,
    host_values,
    hosts,
    launch_row,
    launch_row_of,
    lineages,
    metadata,
    nonces,
    operator_certs,
    origin_of,
    origin_row,
    policy_versions,
    verdict_values,
)
from trusthook.server.schema import launches as launches_table

log = logging.getLogger(__name__)
T = TypeVar("T")
NONCE_PURGE_SECONDS = 60.0  # expired nonces are deleted at most this often (each process)

# The attestation path's statements, built once: building a statement and its cache key on
# each call cost SQLAlchemy ~0.12 ms a statement (a SELECT by key: 150 -> 33 µs).
_HOST_BY_ID = HOSTS.where(hosts.c.host_id == bindparam("key"))
_PURGE_NONCES = delete(nonces).where(nonces.c.expires < bindparam("now"))
_ISSUE_NONCE = insert(nonces)
_SPEND_NONCE = (
    update(nonces)
    .where(
        nonces.c.nonce_hash == bindparam("digest"),
        nonces.c.host_id == bindparam("host"),
        nonces.c.used.is_(False),
    )
    .values(used=True)
    .returning(nonces.c.expires)
)
_NONCE_BY_HASH = select(nonces).where(nonces.c.nonce_hash == bindparam("digest"))
_SAVE_VERDICT = update(hosts).where(  # the SET columns are the parameters' other names
    hosts.c.host_id == bindparam("at_host"), hosts.c.version == bindparam("at_version")
)
POOL_SIZE = 8  # PostgreSQL connections kept open; the server runs as many worker threads


class _Lost(Exception):
    """A conditional write found another version: roll the whole transaction back."""


def nonce_hash(nonce: bytes) -> bytes:
    """Nonces are stored hashed: a database reader learns nothing it could answer with."""
    return hashlib.sha256(nonce).digest()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    """All database access of the server."""

    def __init__(self, url: str, *, log_signer: NoteSigner | None = None) -> None:
        """``log_signer``: the audit log's key, to sign checkpoints with (the server's);
        without one, entries are still appended and checkpoints signed by the next store
        that has it."""
        self._log_signer = log_signer
        self._log_head = auditlog.LastHead()
        self._nonces_purged = 0.0  # when this store last deleted the expired nonces
        try:
            if url.startswith("sqlite"):
                self._engine: Engine = create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 10}
                )
                event.listen(self._engine, "connect", _sqlite_pragmas)
            else:
                self._engine = create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE)
        except (SQLAlchemyError, ImportError, ValueError) as e:
            raise StorageError(f"cannot use database {self.safe_url(url)}: {e}") from e
        self._url = url
        self._host_by_id = driversql.compiled(_HOST_BY_ID, self._engine.dialect)
        self._bound: ContextVar[Connection | None] = ContextVar("store_connection", default=None)

    @contextmanager
    def connection(self) -> Iterator[None]:
        """Run the store's calls in the block on one pooled connection (the server binds one
        per request, on the request's worker thread): each call is still its own transaction,
        with the same isolation and the same commit or rollback, but the connection is taken
        from the pool, checked (PostgreSQL: a round trip) and given back once, not per call."""
        if self._bound.get() is not None:
            yield
            return
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as e:
            raise self._failed(e) from e
        token = self._bound.set(conn)
        try:
            yield
        finally:
            self._bound.reset(token)
            conn.close()

    @staticmethod
    def safe_url(url: str) -> str:
        """The URL without a password, for messages."""
        scheme, sep, rest = url.partition("://")
        creds, at, host = rest.rpartition("@")
        return f"{scheme}{sep}{creds.split(':')[0]}@{host}" if at else url

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction: on the connection bound by ``connection()`` if there is one (and
        it is not in a transaction already), else on a connection of its own."""
        bound = self._bound.get()
        try:
            if bound is None or bound.in_transaction() or bound.invalidated:
                with self._engine.begin() as conn:
                    yield conn
            else:
                with bound.begin():
                    yield bound
        except IntegrityError:
            raise
        except SQLAlchemyError as e:
            raise self._failed(e) from e

    def _failed(self, e: SQLAlchemyError) -> StorageError:
        first = (str(getattr(e, "orig", None) or e).splitlines() or ["unknown error"])[0]
        return StorageError(f"database {self.safe_url(self._url)} failed: {first}")

    def create_schema(self) -> None:
        """Create what is missing; StorageError if a table exists without a column this
        server needs (a database made by an older server: there is no migration)."""
        with self._tx() as conn:
            metadata.create_all(conn)
            auditlog.init_head(conn)
            inspector = inspect(conn)
            for table in metadata.sorted_tables:
                have = {c["name"] for c in inspector.get_columns(table.name)}
                missing = [c.name for c in table.columns if c.name not in have]
                if missing:
                    raise StorageError(
                        f"database {self.safe_url(self._url)}: table {table.name} got no column"
                        f" {', '.join(missing)}, expected this server's schema; it was made by"
                        " an older trusthook server and there is no migration: recreate the"
                        " database, then admit and enroll the hosts again"
                    )

    def dispose(self) -> None:
        self._engine.dispose()

    # enrollment

    def add_enrollment(
        self,
        *,
        enrollment_id: str,
        host_id: str,
        request: dict[str, Any],
        secret_hash: bytes,
        expires: float,
        now: float,
    ) -> None:
        with self._tx() as conn:
            conn.execute(delete(enrollments).where(enrollments.c.expires < now))
            conn.execute(
                insert(enrollments).values(
                    enrollment_id=enrollment_id,
                    host_id=host_id,
                    request=json.dumps(request),
                    secret_hash=secret_hash,
                    expires=expires,
                )
            )

    def take_enrollment(self, enrollment_id: str, now: float) -> PendingEnrollment | None:
        """The pending enrollment, removed: each gets exactly one answer."""
        with self._tx() as conn:
            row = conn.execute(
                select(enrollments).where(enrollments.c.enrollment_id == enrollment_id)
            ).first()
            if row is None:
                return None
            taken = conn.execute(
                delete(enrollments).where(enrollments.c.enrollment_id == enrollment_id)
            )
            if taken.rowcount != 1 or row.expires < now:
                return None
            return PendingEnrollment(
                host_id=row.host_id,
                request=json.loads(row.request),
                secret_hash=bytes(row.secret_hash),
            )

    def enroll_host(
        self,
        record: HostRecord,
        *,
        admission: Admission,
        existing: HostRecord | None,
        detail: dict[str, Any],
        now: float,
    ) -> bool:
        """Store ``record`` (replacing ``existing``, or a new host) and ``admission`` (what the
        enrollment notes in it, at its version + 1), audited, in one transaction; False if the
        admission record or the host changed since they were read."""
        try:
            with self._tx() as conn:
                moved = conn.execute(
                    update(admissions)
                    .where(
                        admissions.c.ek_sha256 == admission.ek_sha256,
                        admissions.c.version == admission.version - 1,
                        admissions.c.state == AdmissionState.ADMITTED.value,
                    )
                    .values(**admission_values(admission))
                )
                if moved.rowcount != 1:
                    raise _Lost
                if existing is None:
                    conn.execute(insert(hosts).values(**host_values(record)))
                else:
                    replaced = conn.execute(
                        update(hosts)
                        .where(
                            hosts.c.host_id == record.host_id,
                            hosts.c.version == existing.version,
                        )
                        .values(**host_values(record))
                    )
                    if replaced.rowcount != 1:
                        raise _Lost
                event_name = "enrolled" if existing is None else "reenrolled"
                self._audit(conn, record.host_id, event_name, detail, now)
        except (_Lost, IntegrityError):
            return False
        return True

    def get_host(self, host_id: str) -> HostRecord | None:
        """Read on every host request (it authenticates them): through the driver's cursor."""
        with self._tx() as conn:
            values: Mapping[Any, Any] | None
            if self._host_by_id is None:
                row = conn.execute(_HOST_BY_ID, {"key": host_id}).first()
                values = None if row is None else row._mapping
            else:
                values = driversql.first_mapping(conn, self._host_by_id, {"key": host_id})
        return None if values is None else host_of(values)

    def list_hosts(self) -> list[HostRecord]:
        with self._tx() as conn:
            rows = conn.execute(HOSTS.order_by(hosts.c.hostname, hosts.c.host_id)).all()
        return [host_of(r._mapping) for r in rows]

    def clear_host(
        self, old: HostRecord, new: HostRecord, *, detail: dict[str, Any], now: float
    ) -> bool:
        """Store ``new`` (an operator's clearing of ``old``), audited, if the host is still at
        ``old.version``."""
        with self._tx() as conn:
            moved = conn.execute(
                update(hosts)
                .where(hosts.c.host_id == old.host_id, hosts.c.version == old.version)
                .values(**host_values(new))
            )
            if moved.rowcount != 1:
                return False
            self._audit(conn, old.host_id, "cleared", detail, now)
        return True

    # admission

    def get_admission(self, ek_sha256: str) -> Admission | None:
        with self._tx() as conn:
            row = conn.execute(
                select(admissions).where(admissions.c.ek_sha256 == ek_sha256)
            ).first()
        return None if row is None else admission_of(row._mapping)

    def find_admissions(self, prefix: str) -> list[Admission]:
        """At most two records whose EK hash starts with ``prefix`` (lowercase hex, checked by
        the caller: it goes into a LIKE pattern)."""
        with self._tx() as conn:
            rows = conn.execute(
                select(admissions).where(admissions.c.ek_sha256.like(prefix + "%")).limit(2)
            ).all()
        return [admission_of(r._mapping) for r in rows]

    def list_admissions(self, state: AdmissionState | None = None) -> list[Admission]:
        query = select(admissions).order_by(admissions.c.decided_at, admissions.c.ek_sha256)
        if state is not None:
            query = query.where(admissions.c.state == state.value)
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [admission_of(r._mapping) for r in rows]

    def add_admission(
        self, admission: Admission, *, event: str, detail: dict[str, Any], now: float
    ) -> bool:
        """Insert the record of an EK that has none, audited; False if it has one by now."""
        try:
            with self._tx() as conn:
                conn.execute(insert(admissions).values(**admission_values(admission)))
                self._audit(conn, admission.ek_sha256, event, detail, now)
        except IntegrityError:
            return False
        return True

    def change_admission(
        self,
        admission: Admission,
        *,
        event: str | None,
        detail: dict[str, Any],
        now: float,
        revoke_certificate: bool = False,
    ) -> bool:
        """Store ``admission`` if the record is still at its version - 1, audited as ``event``
        (None: no decision, not audited); with ``revoke_certificate`` the host's client
        certificate stops being accepted in the same transaction. False if it changed."""
        with self._tx() as conn:
            moved = conn.execute(
                update(admissions)
                .where(
                    admissions.c.ek_sha256 == admission.ek_sha256,
                    admissions.c.version == admission.version - 1,
                )
                .values(**admission_values(admission))
            )
            if moved.rowcount != 1:
                return False
            if revoke_certificate:
                conn.execute(
                    update(hosts)
                    .where(hosts.c.host_id == admission.ek_sha256)
                    .values(cert_serial="", version=hosts.c.version + 1)
                )
            if event is not None:
                self._audit(conn, admission.ek_sha256, event, detail, now)
        return True

    # operator certificates

    def add_operator_cert(self, cert: OperatorCert) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(operator_certs).values(
                    serial=cert.serial,
                    name=cert.name,
                    issued_at=cert.issued_at,
                    expires_at=cert.expires_at,
                    issued_by=cert.issued_by,
                )
            )
            detail = {"name": cert.name, "serial": cert.serial, "by": cert.issued_by}
            self._audit(conn, "", "operator_cert_issued", detail, cert.issued_at)

    def get_operator_cert(self, serial: str) -> OperatorCert | None:
        with self._tx() as conn:
            row = conn.execute(
                select(operator_certs).where(operator_certs.c.serial == serial)
            ).first()
        return None if row is None else OperatorCert(**row._mapping)

    def list_operator_certs(self) -> list[OperatorCert]:
        with self._tx() as conn:
            rows = conn.execute(select(operator_certs).order_by(operator_certs.c.issued_at)).all()
        return [OperatorCert(**r._mapping) for r in rows]

    def revoke_operator_certs(
        self, name_or_serial: str, *, by: str, reason: str, now: float
    ) -> list[OperatorCert]:
        """Revoke the unrevoked certificates with this serial or issued to this name, audited;
        the ones this call revoked (each by the one UPDATE that found it unrevoked)."""
        revoked = []
        with self._tx() as conn:
            rows = conn.execute(
                select(operator_certs).where(
                    (operator_certs.c.serial == name_or_serial.lower())
                    | (operator_certs.c.name == name_or_serial),
                    operator_certs.c.revoked_at.is_(None),
                )
            ).all()
            for row in rows:
                moved = conn.execute(
                    update(operator_certs)
                    .where(
                        operator_certs.c.serial == row.serial,
                        operator_certs.c.revoked_at.is_(None),
                    )
                    .values(revoked_at=now, revoked_by=by, revoked_reason=reason)
                )
                if moved.rowcount != 1:
                    continue
                cert = OperatorCert(**row._mapping)
                revoked.append(replace(cert, revoked_at=now, revoked_by=by, revoked_reason=reason))
                detail = {"name": cert.name, "serial": cert.serial, "by": by, "reason": reason}
                self._audit(conn, "", "operator_cert_revoked", detail, now)
        return revoked

    # attestation

    def issue_nonce(
        self, *, host_id: str, nonce: bytes, expires: float, now: float, watch: int | None = None
    ) -> tuple[str, tuple[bytes, ...]] | None:
        """Store ``nonce`` for ``host_id``. With ``watch`` (the size of the last audit
        checkpoint the host holds), in the same transaction: the last checkpoint signed and
        the consistency proof to it from that size (``auditlog.watch``); None without it or
        without the log key."""

        def issue(conn: Connection) -> tuple[str, tuple[bytes, ...]] | None:
            if now - self._nonces_purged >= NONCE_PURGE_SECONDS:  # spend_nonce refuses the
                conn.execute(_PURGE_NONCES, {"now": now})  # expired ones until they go
                self._nonces_purged = now
            try:
                conn.execute(
                    _ISSUE_NONCE,
                    {
                        "nonce_hash": nonce_hash(nonce),
                        "host_id": host_id,
                        "expires": expires,
                        "used": False,
                    },
                )
            except IntegrityError as exc:  # not the checkpoint's race: no retry
                raise StorageError(
                    "the new nonce was already issued (a repeated random nonce); nothing was"
                    " stored, ask for another"
                ) from exc
            if watch is None or self._log_signer is None:
                return None
            return auditlog.watch(conn, self._log_signer, now, watch)

        return self._signing(issue)

    def spend_nonce(self, *, host_id: str, nonce: bytes, now: float) -> Reason | None:
        """Spend ``nonce`` for ``host_id``; None if it was valid, else why not. One statement
        when it is valid: the UPDATE that finds it unspent and issued to this host spends it
        (exactly one of concurrent attempts does); only a refusal reads the row to say why."""
        digest = nonce_hash(nonce)
        with self._tx() as conn:
            spent = conn.execute(_SPEND_NONCE, {"digest": digest, "host": host_id}).first()
            if spent is None:
                row = conn.execute(_NONCE_BY_HASH, {"digest": digest}).first()
            elif spent.expires < now:
                return Reason(
                    check="nonce",
                    message="the nonce expired before the evidence arrived",
                    expected=f"before {spent.expires:.3f}",
                    got=f"{now:.3f}",
                )
            else:
                return None
        if row is None:
            return Reason(
                check="nonce", message="the nonce was not issued by this server or expired"
            )
        if row.host_id != host_id:
            return Reason(check="nonce", message="the nonce was issued to another host")
        return Reason(check="nonce", message="the nonce was already used (a replay)")

    def save_verdict(
        self, old: HostRecord, new: HostRecord, launches: Sequence[AppraisedLaunch] = ()
    ) -> bool:
        """Store ``new`` (``old.with_verdict(...)``) if the host is still at ``old.version``,
        with the audit entries of its verdict and of the ``launches`` the appraisal verified;
        False if another attestation, an enrollment or an operator came first."""
        try:
            with self._tx() as conn:
                moved = conn.execute(
                    _SAVE_VERDICT,
                    {"at_host": old.host_id, "at_version": old.version, **verdict_values(new)},
                )
                if moved.rowcount != 1:
                    return False
                detail = {"reasons": [r.to_json() for r in new.reasons]}
                events = auditlog.verdict_events(old.host_id, detail, launches, trusted=new.trusted)
                at = new.last_attestation or 0.0
                auditlog.append(conn, events, now=at, signer=self._log_signer, last=self._log_head)
                if launches:
                    conn.execute(
                        insert(launches_table), [launch_row(old.host_id, x, at) for x in launches]
                    )
                origins = [r for x in launches if (r := origin_row(x, old.host_id, at))]
                if origins:
                    conn.execute(insert(lineages), origins)
        except IntegrityError:  # another host created one of these identities first
            return False  # the caller appraises again and finds its origin
        return True

    # launches

    def host_launches(self, host_id: str, limit: int) -> list[LaunchRow]:
        """The latest ``limit`` launches of ``host_id``, newest first."""
        query = (
            select(launches_table)
            .where(launches_table.c.host_id == host_id)
            .order_by(launches_table.c.id.desc())
            .limit(limit)
        )
        with self._tx() as conn:
            return [launch_row_of(r) for r in conn.execute(query).all()]

    def seen_launches(self, host_id: str, boot_id: str, first: int) -> set[int]:
        """The record numbers from ``first`` on of ``host_id``'s boot ``boot_id`` already
        appraised (a cleared host's log is replayed from its first record)."""
        query = select(launches_table.c.recnum).where(
            launches_table.c.host_id == host_id,
            launches_table.c.boot_id == boot_id,
            launches_table.c.recnum >= first,
        )
        with self._tx() as conn:
            return {int(r.recnum) for r in conn.execute(query)}

    def lineage(self, identity: str) -> Origin | None:
        """How ``identity`` was created (None: it has no compliant launch yet)."""
        with self._tx() as conn:
            row = conn.execute(select(lineages).where(lineages.c.identity == identity)).first()
        return None if row is None else origin_of(row)

    def lineages_of(self, workload: str) -> list[Origin]:
        query = select(lineages).where(lineages.c.workload == workload).order_by(lineages.c.at)
        with self._tx() as conn:
            return [origin_of(r) for r in conn.execute(query)]

    def workload_launches(self, workload: str | None = None) -> list[LaunchRow]:
        """Every launch of ``workload`` (None: of every workload), oldest first."""
        query = select(launches_table).where(launches_table.c.workload.is_not(None))
        if workload is not None:
            query = query.where(launches_table.c.workload == workload)
        with self._tx() as conn:
            return [launch_row_of(r) for r in conn.execute(query.order_by(launches_table.c.id))]

    # the policy manifest

    def policy_head(self) -> tuple[int, str] | None:
        """The version number and digest of the policy in force (None: none applied)."""
        with self._tx() as conn:
            row = conn.execute(
                select(policy_versions.c.version, policy_versions.c.digest)
                .order_by(policy_versions.c.version.desc())
                .limit(1)
            ).first()
        return None if row is None else (int(row.version), str(row.digest))

    def apply_policy(self, *, source: str, digest: str, by: str, reason: str, now: float) -> int:
        """Store ``source`` as the next version of the policy manifest, audited; its number.
        ConflictError if the version in force already means the same (``digest``)."""
        for _ in range(2):
            try:
                with self._tx() as conn:
                    current = conn.execute(
                        select(policy_versions.c.version, policy_versions.c.digest)
                        .order_by(policy_versions.c.version.desc())
                        .limit(1)
                    ).first()
                    if current is not None and current.digest == digest:
                        raise ConflictError(
                            f"the policy in force, version {current.version}, is already"
                            f" {digest}: nothing to apply"
                        )
                    version = 1 if current is None else current.version + 1
                    conn.execute(
                        insert(policy_versions).values(
                            version=version,
                            digest=digest,
                            source=source,
                            applied_at=now,
                            applied_by=by,
                            reason=reason,
                        )
                    )
                    detail = {"version": version, "digest": digest, "by": by, "reason": reason}
                    self._audit(conn, "", "policy_applied", detail, now)
                    return int(version)
            except IntegrityError:
                continue  # another operator applied a version at the same moment: read again
        raise ConflictError("another policy version was applied at the same time; retry")

    def policy_version(self, version: int | None = None) -> PolicyVersion | None:
        """Version ``version`` of the policy manifest, or the one in force (None: none yet)."""
        query = select(policy_versions)
        if version is None:
            query = query.order_by(policy_versions.c.version.desc()).limit(1)
        else:
            query = query.where(policy_versions.c.version == version)
        with self._tx() as conn:
            row = conn.execute(query).first()
        return None if row is None else PolicyVersion(**row._mapping)

    def policy_history(self) -> list[PolicyVersion]:
        with self._tx() as conn:
            rows = conn.execute(select(policy_versions).order_by(policy_versions.c.version)).all()
        return [PolicyVersion(**r._mapping) for r in rows]

    # audit

    def record_event(
        self, *, host_id: str, event_name: str, detail: dict[str, Any], now: float
    ) -> None:
        with self._tx() as conn:
            self._audit(conn, host_id, event_name, detail, now)

    def _audit(
        self, conn: Connection, host_id: str, event_name: str, detail: dict[str, Any], now: float
    ) -> None:
        """Record an event: a row of the host's history and an entry of the audit log, in the
        transaction of the change it records."""
        events = [auditlog.Event(event_name, host_id, detail)]
        auditlog.append(conn, events, now=now, signer=self._log_signer, last=self._log_head)

    def audit_key(self) -> str:
        """The audit log's verifier key (``name+keyid+key``), or "" without the log key."""
        return "" if self._log_signer is None else self._log_signer.verifier_key.encode()

    def audit_checkpoint(self, now: float) -> str:
        """The signed checkpoint of the whole audit log (a new one if the log outgrew the
        last)."""
        return self._signing(lambda conn: auditlog.checkpoint(conn, self._log_signer, now))

    def _signing(self, read: Callable[[Connection], T]) -> T:
        """``read`` in a transaction, which may sign a checkpoint; once more (the whole
        transaction) if another server process signed the same size meanwhile."""
        for _ in range(2):
            try:
                with self._tx() as conn:
                    return read(conn)
            except IntegrityError:
                continue  # another server process signed the same size: read it
        raise StorageError("the audit checkpoint changed twice while being read; retry")

    def audit_entries(self, start: int, end: int) -> list[AuditEntry]:
        with self._tx() as conn:
            return auditlog.entries(conn, start, end)

    def audit_inclusion(self, index: int, size: int) -> tuple[bytes, ...]:
        with self._tx() as conn:
            return auditlog.inclusion(conn, index, size)

    def audit_consistency(self, old: int, new: int) -> tuple[bytes, ...]:
        with self._tx() as conn:
            return auditlog.consistency(conn, old, new)

    def audit_export(
        self, *, since: float | None, until: float | None, from_size: int | None, now: float
    ) -> Bundle:
        """The audit bundle of the entries in [since, until) under a fresh checkpoint."""
        if self._log_signer is None:
            raise ConfigError("exporting the audit log needs the log key")
        note = self.audit_checkpoint(now)
        with self._tx() as conn:
            return auditlog.export(
                conn,
                signer=self._log_signer,
                note=note,
                since=since,
                until=until,
                from_size=from_size,
            )

    def audit_events(self, host_id: str, limit: int) -> list[AuditEvent]:
        """The latest ``limit`` events of ``host_id``, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                select(audit)
                .where(audit.c.host_id == host_id)
                .order_by(audit.c.id.desc())
                .limit(limit)
            ).all()
        return [
            AuditEvent(at=r.at, host_id=r.host_id, event=r.event, detail=json.loads(r.detail))
            for r in reversed(rows)
        ]

    # metrics

    def metrics_snapshot(self, now: float) -> tuple[list[HostCount], int]:
        """What the metrics' gauges read at scrape time (server/metrics.py), in one
        transaction: the hosts counted by group and by what their trust status at ``now``
        depends on, and the audit log's size. One row per combination, not per host."""
        columns = (
            func.coalesce(admissions.c.host_group, "").label("grp"),
            case((admissions.c.state == AdmissionState.ADMITTED.value, 1), else_=0).label("adm"),
            case((hosts.c.trusted, 1), else_=0).label("tru"),
            case((hosts.c.valid_until < now, 1), else_=0).label("exp"),
            case((hosts.c.last_attestation.is_(None), 0), else_=1).label("att"),
        )
        query = (
            select(*columns, func.count().label("n"))
            .select_from(hosts.outerjoin(admissions, admissions.c.ek_sha256 == hosts.c.host_id))
            .group_by("grp", "adm", "tru", "exp", "att")  # by name: ``now`` is bound once
        )
        with self._tx() as conn:
            rows = conn.execute(query).all()
            size = conn.execute(select(audit_head.c.size)).scalar()
        counts = [
            HostCount(
                group=r.grp,
                admitted=bool(r.adm),
                trusted=bool(r.tru),
                expired=bool(r.exp),
                attested=bool(r.att),
                hosts=int(r.n),
            )
            for r in rows
        ]
        return counts, int(size or 0)
