"""Precompiled statements run on a transaction's own driver connection.

The bank's online HLL verification is a handful of one-row statements per purchase, many
purchases per group commit. Through SQLAlchemy's ``Connection.execute`` each costs a cache
key, a compiled-cache lookup, event dispatch and result set-up (bench.bank: ~150 us of CPU
a statement, ~9 statements per verification, against ~20 us in the driver). So, as the
vendor's fast lane (:mod:`farthing.store._fastlane`) does outside any transaction, these
statements are compiled once per dialect, by SQLAlchemy from Core constructs (no SQL is
written by hand), and executed on the DBAPI connection *inside* the caller's transaction:
they commit or roll back with it. The drivers keep them prepared (sqlite3's statement
cache; psycopg prepares a statement after a few executions).

Driver errors are raw here; the store's :func:`~farthing.store._errors.map_db_errors`
around every transaction maps them as it maps SQLAlchemy's.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Dialect

from farthing.store._fastlane import FastStatement, execute

__all__ = ["Compiled", "fetch_one", "rowcount"]

S = TypeVar("S")


class Compiled(Generic[S]):
    """A set of statements (``build(dialect)``), compiled once per dialect."""

    def __init__(self, build: Callable[[Dialect], S]) -> None:
        self._build = build
        self._by_dialect: weakref.WeakKeyDictionary[Dialect, S] = weakref.WeakKeyDictionary()

    def get(self, dialect: Dialect) -> S:
        found = self._by_dialect.get(dialect)
        if found is None:
            found = self._by_dialect[dialect] = self._build(dialect)
        return found


def rowcount(conn: Connection, statement: FastStatement, params: Mapping[str, object]) -> int:
    """Execute a write in ``conn``'s transaction; the number of rows it changed."""
    count: int = execute(conn.connection, statement, params, fetch=False)
    return count


def fetch_one(
    conn: Connection, statement: FastStatement, params: Mapping[str, object]
) -> dict[str, Any] | None:
    """Execute a statement in ``conn``'s transaction; its first row as a column -> value
    dict (e.g. an INSERT's RETURNING), or None."""
    row: dict[str, Any] | None = execute(conn.connection, statement, params, fetch=True)
    return row
