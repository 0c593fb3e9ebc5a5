"""The server's storage, through SQLAlchemy Core: SQLite by default, PostgreSQL at scale.

Several server processes may share one PostgreSQL database, so every decision that must happen
once is a conditional write checked by its row count: a nonce is spent by the one UPDATE that
finds it unspent, a host's state moves on only from the version that was appraised, an
enrollment is taken by the one DELETE that finds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from trusthook.attest.appraise import HostState
from trusthook.attest.verdict import Reason
from trusthook.errors import StorageError

log = logging.getLogger(__name__)
metadata = MetaData()

hosts = Table(
    "hosts",
    metadata,
    Column("host_id", String(64), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("host_group", String(64), nullable=False),
    Column("ek_public", LargeBinary, nullable=False),
    Column("ak_public", LargeBinary, nullable=False),
    Column("cert_serial", String(40), nullable=False),
    Column("enrolled_at", Float, nullable=False),
    Column("reset_count", Integer),
    Column("restart_count", Integer),
    Column("boot_id", String(64)),
    Column("verified_recnum", Integer, nullable=False),
    Column("verified_pcr", LargeBinary, nullable=False),
    Column("trusted", Boolean, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("since", Float, nullable=False),
    Column("valid_until", Float),
    Column("last_attestation", Float),
    Column("version", Integer, nullable=False),
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


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRecord:
    """A host as stored: identity, the verified state of its TPM epoch, its trust status."""

    host_id: str
    hostname: str
    group: str
    ek_public: bytes
    ak_public: bytes
    cert_serial: str
    enrolled_at: float
    state: HostState
    trusted: bool
    reasons: tuple[Reason, ...]
    since: float
    valid_until: float | None
    last_attestation: float | None
    version: int

    def with_verdict(
        self,
        *,
        state: HostState | None,
        reasons: tuple[Reason, ...],
        now: float,
        valid_until: float | None,
    ) -> HostRecord:
        """The host after an appraisal at ``now``; ``since`` moves when trust changes."""
        trusted = not reasons
        changed = trusted != self.trusted or self.last_attestation is None
        return replace(
            self,
            state=state if state is not None else self.state,
            trusted=trusted,
            reasons=reasons,
            since=now if changed else self.since,
            valid_until=valid_until,
            last_attestation=now,
            version=self.version + 1,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingEnrollment:
    host_id: str
    request: dict[str, Any]
    secret_hash: bytes


def _host(row: Any) -> HostRecord:
    return HostRecord(
        host_id=row.host_id,
        hostname=row.hostname,
        group=row.host_group,
        ek_public=bytes(row.ek_public),
        ak_public=bytes(row.ak_public),
        cert_serial=row.cert_serial,
        enrolled_at=row.enrolled_at,
        state=HostState(
            reset_count=row.reset_count,
            restart_count=row.restart_count,
            boot_id=row.boot_id,
            verified_recnum=row.verified_recnum,
            verified_pcr=bytes(row.verified_pcr),
        ),
        trusted=row.trusted,
        reasons=tuple(Reason.from_json(r) for r in json.loads(row.reasons)),
        since=row.since,
        valid_until=row.valid_until,
        last_attestation=row.last_attestation,
        version=row.version,
    )


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

    def __init__(self, url: str) -> None:
        try:
            if url.startswith("sqlite"):
                self._engine: Engine = create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 10}
                )
                event.listen(self._engine, "connect", _sqlite_pragmas)
            else:
                self._engine = create_engine(url, pool_pre_ping=True, pool_size=8)
        except (SQLAlchemyError, ImportError, ValueError) as e:
            raise StorageError(f"cannot use database {self.safe_url(url)}: {e}") from e
        self._url = url

    @staticmethod
    def safe_url(url: str) -> str:
        """The URL without a password, for messages."""
        scheme, sep, rest = url.partition("://")
        creds, at, host = rest.rpartition("@")
        return f"{scheme}{sep}{creds.split(':')[0]}@{host}" if at else url

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as e:
            first = (str(getattr(e, "orig", None) or e).splitlines() or ["unknown error"])[0]
            raise StorageError(f"database {self.safe_url(self._url)} failed: {first}") from e

    def create_schema(self) -> None:
        with self._tx() as conn:
            metadata.create_all(conn)

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

    def put_host(self, record: HostRecord, *, reenroll: bool) -> bool:
        """Store a newly enrolled host; with ``reenroll``, replace an existing one.

        Returns False when the host exists and ``reenroll`` is not set.
        """
        values = {
            "host_id": record.host_id,
            "hostname": record.hostname,
            "host_group": record.group,
            "ek_public": record.ek_public,
            "ak_public": record.ak_public,
            "cert_serial": record.cert_serial,
            "enrolled_at": record.enrolled_at,
            "reset_count": None,
            "restart_count": None,
            "boot_id": None,
            "verified_recnum": -1,
            "verified_pcr": bytes(32),
            "trusted": False,
            "reasons": json.dumps([r.to_json() for r in record.reasons]),
            "since": record.since,
            "valid_until": None,
            "last_attestation": None,
        }
        try:
            with self._tx() as conn:
                exists = conn.execute(
                    select(hosts.c.version).where(hosts.c.host_id == record.host_id)
                ).first()
                if exists is None:
                    conn.execute(insert(hosts).values(**values, version=0))
                elif not reenroll:
                    return False
                else:
                    conn.execute(
                        update(hosts)
                        .where(hosts.c.host_id == record.host_id)
                        .values(**values, version=exists.version + 1)
                    )
        except IntegrityError:
            return reenroll and self.put_host(record, reenroll=True)
        return True

    def get_host(self, host_id: str) -> HostRecord | None:
        with self._tx() as conn:
            row = conn.execute(select(hosts).where(hosts.c.host_id == host_id)).first()
        return None if row is None else _host(row)

    def list_hosts(self) -> list[HostRecord]:
        with self._tx() as conn:
            rows = conn.execute(select(hosts).order_by(hosts.c.hostname, hosts.c.host_id)).all()
        return [_host(r) for r in rows]

    # attestation

    def issue_nonce(self, *, host_id: str, nonce: bytes, expires: float, now: float) -> None:
        with self._tx() as conn:
            conn.execute(delete(nonces).where(nonces.c.expires < now))
            conn.execute(
                insert(nonces).values(
                    nonce_hash=nonce_hash(nonce), host_id=host_id, expires=expires, used=False
                )
            )

    def spend_nonce(self, *, host_id: str, nonce: bytes, now: float) -> Reason | None:
        """Spend ``nonce`` for ``host_id``; None if it was valid, else why not."""
        digest = nonce_hash(nonce)
        with self._tx() as conn:
            row = conn.execute(select(nonces).where(nonces.c.nonce_hash == digest)).first()
            if row is None:
                return Reason(
                    check="nonce", message="the nonce was not issued by this server or expired"
                )
            if row.host_id != host_id:
                return Reason(check="nonce", message="the nonce was issued to another host")
            spent = conn.execute(
                update(nonces)
                .where(nonces.c.nonce_hash == digest, nonces.c.used.is_(False))
                .values(used=True)
            )
            if spent.rowcount != 1:
                return Reason(check="nonce", message="the nonce was already used (a replay)")
            if row.expires < now:
                return Reason(
                    check="nonce",
                    message="the nonce expired before the evidence arrived",
                    expected=f"before {row.expires:.3f}",
                    got=f"{now:.3f}",
                )
        return None

    def save_verdict(self, old: HostRecord, new: HostRecord) -> bool:
        """Store ``new`` (``old.with_verdict(...)``) if the host is still at ``old.version``;
        False if another attestation came first."""
        state = new.state
        with self._tx() as conn:
            moved = conn.execute(
                update(hosts)
                .where(hosts.c.host_id == old.host_id, hosts.c.version == old.version)
                .values(
                    trusted=new.trusted,
                    reasons=json.dumps([r.to_json() for r in new.reasons]),
                    since=new.since,
                    valid_until=new.valid_until,
                    last_attestation=new.last_attestation,
                    version=new.version,
                    reset_count=state.reset_count,
                    restart_count=state.restart_count,
                    boot_id=state.boot_id,
                    verified_recnum=state.verified_recnum,
                    verified_pcr=state.verified_pcr,
                )
            )
            if moved.rowcount != 1:
                return False
            conn.execute(
                insert(audit).values(
                    at=new.last_attestation,
                    host_id=old.host_id,
                    event="attested" if new.trusted else "refused",
                    detail=json.dumps({"reasons": [r.to_json() for r in new.reasons]}),
                )
            )
        return True

    def record_event(
        self, *, host_id: str, event_name: str, detail: dict[str, Any], now: float
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(audit).values(
                    at=now, host_id=host_id, event=event_name, detail=json.dumps(detail)
                )
            )
