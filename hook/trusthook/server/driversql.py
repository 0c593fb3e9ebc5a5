"""Statements through the DBAPI cursor of a transaction's own connection, for the hot paths
where SQLAlchemy Core's execution costs more than the statement: on this project's VM ~25 µs
per statement and ~1.5 µs per result column (a host's row, 35 columns: 96 µs through Core,
13 µs through the cursor). The server's drivers only (``DRIVERS``); any other takes Core's
path. The driver's errors are raised as SQLAlchemy's (IntegrityError, OperationalError, ...),
as Core raises them, so callers handle both paths alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ClauseElement, Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler

DRIVERS = ("pysqlite", "psycopg")


@dataclass(frozen=True, slots=True)
class Statement:
    """A Core statement compiled once for a dialect: its SQL in the driver's paramstyle and,
    for a positional one, the order of its bind parameters."""

    sql: str
    positions: tuple[str, ...] | None  # None: the driver takes the parameters by name

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        if self.positions is None:
            return values
        return tuple(values[name] for name in self.positions)


def compiled(statement: ClauseElement, dialect: Dialect) -> Statement | None:
    """``statement`` for the driver's cursor, or None if the dialect's driver is not one of
    ``DRIVERS``."""
    if dialect.driver not in DRIVERS:
        return None
    done = statement.compile(dialect=dialect)
    if not isinstance(done, SQLCompiler):  # DDL: not a statement of these paths
        return None
    positions = tuple(done.positiontup or ()) if dialect.positional else None
    return Statement(str(done), positions)


class Cursor:
    """The DBAPI cursor of ``conn``'s connection, in its transaction."""

    def __init__(self, conn: Connection) -> None:
        self._dialect = conn.dialect
        self._cursor = conn.connection.cursor()

    def run(self, statement: str, params: Sequence[Any] | Mapping[str, Any]) -> None:
        try:
            self._cursor.execute(statement, params)
        except self._dialect.loaded_dbapi.Error as e:
            raise self._wrapped(statement, e) from e

    def first(
        self, statement: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> Sequence[Any] | None:
        self.run(statement, params)
        row: Sequence[Any] | None = self._cursor.fetchone()
        return row

    def count(self, statement: str, params: Sequence[Any]) -> int:
        """The number of rows ``statement`` changed."""
        self.run(statement, params)
        return int(self._cursor.rowcount)

    def many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._cursor.executemany(statement, rows)
        except self._dialect.loaded_dbapi.Error as e:
            raise self._wrapped(statement, e) from e

    def names(self) -> list[str]:
        """The columns of the last statement's result, by name."""
        return [column[0] for column in self._cursor.description]

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


def first_mapping(
    conn: Connection, statement: Statement, values: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The first row of ``statement`` with ``values``, by column name; None if it has none."""
    cursor = Cursor(conn)
    try:
        row = cursor.first(statement.sql, statement.parameters(values))
        return None if row is None else dict(zip(cursor.names(), row, strict=True))
    finally:
        cursor.close()
