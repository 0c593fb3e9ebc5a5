"""How an audit-log append's rows reach the database (``auditlog.append`` decides what they
are): set the log's one head row to the append's, on the condition that it still holds the
head the append was built on, and write the history rows, the entries and the completed
subtrees, or nothing if the head has moved on. Where that head comes from is the caller's:
the row locked and read first (``lock``), or the head this process's last append left, so
that an append is one statement when no other process appended in between.

With the server's drivers the statements go through the DBAPI cursor of the transaction's own
connection: SQLAlchemy Core's work per statement and per row cost more than the rows (0.2 ms
of CPU on SQLite for an attestation with 10 launches). psycopg: the write is one
data-modifying statement (one round trip) whose arrays go in binary (in text, psycopg quotes
every element with a regular expression: 1 ms for 10 launches); sqlite3: an update and three
executemany, each compiled once (its statement cache). Any other driver: the same writes
through Core. The cursor is ``driversql``'s: the driver's errors are raised as SQLAlchemy's,
so the store handles both paths alike. bench/audit/append.py measures.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, update

from trusthook.errors import AuditLogError
from trusthook.server import driversql
from trusthook.server.schema import audit, audit_head, audit_log, audit_nodes

HEAD_ID = 1  # the id of the one audit_head row

_SQLITE_LOCK = (  # an update that changes nothing: it locks the row (SQLite: the database)
    "UPDATE audit_head SET size = size WHERE id = ?"
    " RETURNING size, frontier, checkpoint_size, checkpoint_at"
)
_SQLITE_SET_HEAD = (
    "UPDATE audit_head SET size = ?, root = ?, frontier = ?, checkpoint_size = ?,"
    " checkpoint_at = ?"
    " WHERE id = ? AND size = ? AND frontier = ? AND checkpoint_size = ? AND checkpoint_at = ?"
)
_SQLITE_HISTORY = "INSERT INTO audit (at, host_id, event, detail) VALUES (?, ?, ?, ?)"
_SQLITE_ENTRY = "INSERT INTO audit_log (idx, at, entry) VALUES (?, ?, ?)"
_SQLITE_NODE = "INSERT INTO audit_nodes (level, position, hash) VALUES (?, ?, ?)"
_PSYCOPG_LOCK = _SQLITE_LOCK.replace("?", "%s")
_PSYCOPG_WRITE = """
    WITH head AS (
        UPDATE audit_head
        SET size = %(size)s, root = %(root)b, frontier = %(frontier)b,
            checkpoint_size = %(checkpoint_size)s, checkpoint_at = %(checkpoint_at)s
        WHERE id = %(head)s AND size = %(was_size)s AND frontier = %(was_frontier)b
            AND checkpoint_size = %(was_checkpoint_size)s
            AND checkpoint_at = %(was_checkpoint_at)s
        RETURNING 1
    ), history AS (
        INSERT INTO audit (at, host_id, event, detail)
        SELECT %(at)s, h, e, d
        FROM unnest(%(h_host)b::text[], %(h_event)b::text[], %(h_detail)b::text[]) AS t(h, e, d)
        WHERE EXISTS (SELECT FROM head)
    ), entries AS (
        INSERT INTO audit_log (idx, at, entry)
        SELECT i, %(at)s, e FROM unnest(%(e_idx)b::bigint[], %(e_entry)b::bytea[]) AS t(i, e)
        WHERE EXISTS (SELECT FROM head)
    ), nodes AS (
        INSERT INTO audit_nodes (level, position, hash)
        SELECT l, p, h
        FROM unnest(%(n_level)b::integer[], %(n_position)b::bigint[], %(n_hash)b::bytea[])
            AS t(l, p, h)
        WHERE EXISTS (SELECT FROM head)
    )
    SELECT count(*) FROM head
"""
_LOCK = (
    update(audit_head)
    .where(audit_head.c.id == HEAD_ID)
    .values(size=audit_head.c.size)
    .returning(
        audit_head.c.size,
        audit_head.c.frontier,
        audit_head.c.checkpoint_size,
        audit_head.c.checkpoint_at,
    )
)
_INSERT_HISTORY = insert(audit)
_INSERT_ENTRY = insert(audit_log)
_INSERT_NODES = insert(audit_nodes)


@dataclass(frozen=True, slots=True)
class HeadState:
    """What the head row holds: the log's size, its frontier (packed hashes, ``Frontier``'s)
    and the last checkpoint's size and time; an append is built on one."""

    size: int
    frontier: bytes
    checkpoint_size: int
    checkpoint_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Writes:
    """What an append writes: its rows and the head it leaves."""

    now: float
    history: Sequence[tuple[str, str, str]]  # the history rows: host id, event, detail JSON
    first: int  # the first entry's index
    leaves: Sequence[bytes]  # the entries' canonical bytes
    nodes: Sequence[tuple[int, int, bytes]]  # the completed subtrees: level, position, hash
    root: bytes
    after: HeadState


class Writer:
    """The statements of one append, in ``conn``'s transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._driver = conn.dialect.driver
        self._raw = driversql.Cursor(conn) if self._driver in driversql.DRIVERS else None

    def lock(self) -> HeadState:
        """The head, its row locked until the transaction ends (an update that changes
        nothing: other appends wait for this one)."""
        row: Sequence[Any]
        if self._raw is None:
            row = tuple(self._conn.execute(_LOCK).one())
        else:
            sql = _SQLITE_LOCK if self._driver == "pysqlite" else _PSYCOPG_LOCK
            row = _head_row(self._raw, sql, (HEAD_ID,))
        size, packed, checkpoint_size, checkpoint_at = row
        return HeadState(int(size), bytes(packed), int(checkpoint_size), float(checkpoint_at))

    def write(self, before: HeadState, w: Writes) -> bool:
        """Set the head to ``w.after`` and write ``w``'s rows if the head is ``before``;
        False, with nothing written, if it is not (another append came first)."""
        if self._raw is None:
            return _write_core(self._conn, before, w)
        if self._driver == "pysqlite":
            return _write_sqlite(self._raw, before, w)
        return _write_psycopg(self._raw, before, w)

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


def _head_row(
    raw: driversql.Cursor, sql: str, params: Sequence[Any] | Mapping[str, Any]
) -> Sequence[Any]:
    row = raw.first(sql, params)
    if row is None:
        raise AuditLogError("the audit log has no head row; run 'trusthook server init'")
    return row


def _head_values(w: Writes) -> tuple[int, bytes, bytes, int, float]:
    after = w.after
    return after.size, w.root, after.frontier, after.checkpoint_size, after.checkpoint_at


def _write_sqlite(raw: driversql.Cursor, before: HeadState, w: Writes) -> bool:
    was = (before.size, before.frontier, before.checkpoint_size, before.checkpoint_at)
    if raw.count(_SQLITE_SET_HEAD, (*_head_values(w), HEAD_ID, *was)) != 1:
        return False
    raw.many(_SQLITE_HISTORY, _history_rows(w))
    raw.many(_SQLITE_ENTRY, [(w.first + i, w.now, leaf) for i, leaf in enumerate(w.leaves)])
    raw.many(_SQLITE_NODE, w.nodes)
    return True


def _write_psycopg(raw: driversql.Cursor, before: HeadState, w: Writes) -> bool:
    size, root, frontier, checkpoint_size, checkpoint_at = _head_values(w)
    row = _head_row(
        raw,
        _PSYCOPG_WRITE,
        {
            "size": size,
            "root": root,
            "frontier": frontier,
            "checkpoint_size": checkpoint_size,
            "checkpoint_at": checkpoint_at,
            "head": HEAD_ID,
            "was_size": before.size,
            "was_frontier": before.frontier,
            "was_checkpoint_size": before.checkpoint_size,
            "was_checkpoint_at": before.checkpoint_at,
            "at": w.now,
            "h_host": [host_id for host_id, _, _ in w.history],
            "h_event": [event for _, event, _ in w.history],
            "h_detail": [detail for _, _, detail in w.history],
            "e_idx": list(range(w.first, w.first + len(w.leaves))),
            "e_entry": w.leaves,
            "n_level": [level for level, _, _ in w.nodes],
            "n_position": [position for _, position, _ in w.nodes],
            "n_hash": [h for _, _, h in w.nodes],
        },
    )
    return int(row[0]) == 1


def _write_core(conn: Connection, before: HeadState, w: Writes) -> bool:
    """The writes through SQLAlchemy Core, for drivers without a path of their own."""
    size, root, frontier, checkpoint_size, checkpoint_at = _head_values(w)
    moved = conn.execute(
        update(audit_head)
        .where(
            audit_head.c.id == HEAD_ID,
            audit_head.c.size == before.size,
            audit_head.c.frontier == before.frontier,
            audit_head.c.checkpoint_size == before.checkpoint_size,
            audit_head.c.checkpoint_at == before.checkpoint_at,
        )
        .values(
            size=size,
            root=root,
            frontier=frontier,
            checkpoint_size=checkpoint_size,
            checkpoint_at=checkpoint_at,
        )
    )
    if moved.rowcount != 1:
        return False
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
    if w.nodes:
        conn.execute(
            _INSERT_NODES,
            [{"level": level, "position": p, "hash": h} for level, p, h in w.nodes],
        )
    return True
