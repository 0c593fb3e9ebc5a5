"""How an audit-log append's rows reach the database (``auditlog.append`` decides what they
are): advance the log's one head row, returning the old frontier, then write the history
rows, the entries, the completed subtrees and the new head.

That is two statements whatever the number of events. With the server's drivers they go
through the DBAPI cursor of the transaction's own connection: SQLAlchemy Core's work per
statement and per row cost more than the rows (0.2 ms of CPU on SQLite for an attestation with
10 launches). psycopg: the write is one data-modifying statement (one round trip) whose arrays
go in binary (in text, psycopg quotes every element with a regular expression: 1 ms for 10
launches); sqlite3: three executemany and an update, each compiled once (its statement cache).
Any other driver: the same writes through Core. The driver's errors are raised as
SQLAlchemy's (IntegrityError, OperationalError, ...), as Core raises them, so the store handles
both paths alike. bench/audit/append.py measures.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy.exc import DBAPIError

from trusthook.errors import AuditLogError
from trusthook.server.schema import audit, audit_head, audit_log, audit_nodes

HEAD_ID = 1  # the id of the one audit_head row

_SQLITE_ADVANCE = (
    "UPDATE audit_head SET size = size + ? WHERE id = ?"
    " RETURNING size, frontier, checkpoint_size, checkpoint_at"
)
_SQLITE_HISTORY = "INSERT INTO audit (at, host_id, event, detail) VALUES (?, ?, ?, ?)"
_SQLITE_ENTRY = "INSERT INTO audit_log (idx, at, entry) VALUES (?, ?, ?)"
_SQLITE_NODE = "INSERT INTO audit_nodes (level, position, hash) VALUES (?, ?, ?)"
_SQLITE_SET_HEAD = (
    "UPDATE audit_head SET root = ?, frontier = ?, checkpoint_size = ?, checkpoint_at = ?"
    " WHERE id = ?"
)
_PSYCOPG_ADVANCE = _SQLITE_ADVANCE.replace("?", "%s")
_PSYCOPG_WRITE = """
    WITH history AS (
        INSERT INTO audit (at, host_id, event, detail)
        SELECT %(at)s, h, e, d
        FROM unnest(%(h_host)b::text[], %(h_event)b::text[], %(h_detail)b::text[]) AS t(h, e, d)
    ), entries AS (
        INSERT INTO audit_log (idx, at, entry)
        SELECT i, %(at)s, e FROM unnest(%(e_idx)b::bigint[], %(e_entry)b::bytea[]) AS t(i, e)
    ), nodes AS (
        INSERT INTO audit_nodes (level, position, hash)
        SELECT l, p, h
        FROM unnest(%(n_level)b::integer[], %(n_position)b::bigint[], %(n_hash)b::bytea[])
            AS t(l, p, h)
    )
    UPDATE audit_head
    SET root = %(root)b, frontier = %(frontier)b, checkpoint_size = %(checkpoint_size)s,
        checkpoint_at = %(checkpoint_at)s
    WHERE id = %(head)s
"""
_ADVANCE = (
    update(audit_head)
    .where(audit_head.c.id == HEAD_ID)
    .values(size=audit_head.c.size + bindparam("count"))
    .returning(
        audit_head.c.size,
        audit_head.c.frontier,
        audit_head.c.checkpoint_size,
        audit_head.c.checkpoint_at,
    )
)
_SET_HEAD = update(audit_head).where(audit_head.c.id == HEAD_ID)
_INSERT_HISTORY = insert(audit)
_INSERT_ENTRY = insert(audit_log)
_INSERT_NODES = insert(audit_nodes)
_RAW_DRIVERS = ("pysqlite", "psycopg")


@dataclass(frozen=True, slots=True, kw_only=True)
class Writes:
    """What an append writes once it has advanced the head."""

    now: float
    history: Sequence[tuple[str, str, str]]  # the history rows: host id, event, detail JSON
    first: int  # the first entry's index
    leaves: Sequence[bytes]  # the entries' canonical bytes
    nodes: Sequence[tuple[int, int, bytes]]  # the completed subtrees: level, position, hash
    head: tuple[bytes, bytes, int, float]  # root, frontier, checkpoint size and time


class Writer:
    """The two statements of one append, in ``conn``'s transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._driver = conn.dialect.driver
        self._raw = _Raw(conn) if self._driver in _RAW_DRIVERS else None

    def advance(self, count: int) -> tuple[int, bytes, int, float]:
        """Add ``count`` to the log's size (locking the head row until the transaction ends);
        the new size, the old frontier (packed hashes) and the last checkpoint's size and
        time."""
        row: Sequence[Any]
        if self._raw is None:
            row = tuple(self._conn.execute(_ADVANCE, {"count": count}).one())
        else:
            sql = _SQLITE_ADVANCE if self._driver == "pysqlite" else _PSYCOPG_ADVANCE
            row = self._raw.one(sql, (count, HEAD_ID))
        size, packed, checkpoint_size, checkpoint_at = row
        return int(size), bytes(packed), int(checkpoint_size), float(checkpoint_at)

    def write(self, w: Writes) -> None:
        if self._raw is None:
            _write_core(self._conn, w)
        elif self._driver == "pysqlite":
            _write_sqlite(self._raw, w)
        else:
            _write_psycopg(self._raw, w)

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()


@contextmanager
def writer(conn: Connection) -> Iterator[Writer]:
    w = Writer(conn)
    try:
        yield w
    finally:
        w.close()


def _history_rows(w: Writes) -> list[tuple[float, str, str, str]]:
    return [(w.now, host_id, event, detail) for host_id, event, detail in w.history]


def _write_sqlite(raw: _Raw, w: Writes) -> None:
    raw.many(_SQLITE_HISTORY, _history_rows(w))
    raw.many(_SQLITE_ENTRY, [(w.first + i, w.now, leaf) for i, leaf in enumerate(w.leaves)])
    raw.many(_SQLITE_NODE, w.nodes)
    raw.run(_SQLITE_SET_HEAD, (*w.head, HEAD_ID))


def _write_psycopg(raw: _Raw, w: Writes) -> None:
    root, frontier, checkpoint_size, checkpoint_at = w.head
    raw.run(
        _PSYCOPG_WRITE,
        {
            "at": w.now,
            "h_host": [host_id for host_id, _, _ in w.history],
            "h_event": [event for _, event, _ in w.history],
            "h_detail": [detail for _, _, detail in w.history],
            "e_idx": list(range(w.first, w.first + len(w.leaves))),
            "e_entry": w.leaves,
            "n_level": [level for level, _, _ in w.nodes],
            "n_position": [position for _, position, _ in w.nodes],
            "n_hash": [h for _, _, h in w.nodes],
            "root": root,
            "frontier": frontier,
            "checkpoint_size": checkpoint_size,
            "checkpoint_at": checkpoint_at,
            "head": HEAD_ID,
        },
    )


def _write_core(conn: Connection, w: Writes) -> None:
    """The writes through SQLAlchemy Core, for drivers without a path of their own."""
    conn.execute(
        _INSERT_HISTORY,
        [
            {"at": at, "host_id": host_id, "event": event, "detail": detail}
            for at, host_id, event, detail in _history_rows(w)
        ],
    )
    conn.execute(
        _INSERT_ENTRY,
        [{"idx": w.first + i, "at": w.now, "entry": leaf} for i, leaf in enumerate(w.leaves)],
    )
    conn.execute(
        _INSERT_NODES,
        [{"level": level, "position": p, "hash": h} for level, p, h in w.nodes],
    )
    root, frontier, checkpoint_size, checkpoint_at = w.head
    conn.execute(
        _SET_HEAD,
        {
            "root": root,
            "frontier": frontier,
            "checkpoint_size": checkpoint_size,
            "checkpoint_at": checkpoint_at,
        },
    )


class _Raw:
    """The DBAPI cursor of ``conn``'s connection, in its transaction; the driver's errors
    raised as SQLAlchemy's (IntegrityError, OperationalError, ...), as Core raises them."""

    def __init__(self, conn: Connection) -> None:
        self._dialect = conn.dialect
        self._cursor = conn.connection.cursor()

    def run(self, statement: str, params: Sequence[Any] | Mapping[str, Any]) -> None:
        try:
            self._cursor.execute(statement, params)
        except self._dialect.loaded_dbapi.Error as e:
            raise self._wrapped(statement, e) from e

    def one(self, statement: str, params: Sequence[Any]) -> Sequence[Any]:
        self.run(statement, params)
        row: Sequence[Any] | None = self._cursor.fetchone()
        if row is None:
            raise AuditLogError("the audit log has no head row; run 'trusthook server init'")
        return row

    def many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._cursor.executemany(statement, rows)
        except self._dialect.loaded_dbapi.Error as e:
            raise self._wrapped(statement, e) from e

    def _wrapped(self, statement: str, error: Exception) -> BaseException:
        wrapped = DBAPIError.instance(
            statement,
            None,
            error,
            self._dialect.loaded_dbapi.Error,
            hide_parameters=True,
            dialect=self._dialect,
        )
        return wrapped if isinstance(wrapped, BaseException) else error

    def close(self) -> None:
        self._cursor.close()
