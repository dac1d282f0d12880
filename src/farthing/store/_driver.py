"""Precompiled statements run on a transaction's own driver connection.

The bank's online HLL verification is a handful of one-row statements per purchase, many
purchases per group commit. Through SQLAlchemy's ``Connection.execute`` each costs a cache
key, a compiled-cache lookup, event dispatch and result set-up (bench.bank: ~150 us of CPU
a statement, ~9 statements per verification, against ~20 us in the driver). So, as the
vendor's fast lane (:mod:`farthing.store._fastlane`) does outside any transaction, these
statements are compiled once per dialect (:class:`Compiled`), by SQLAlchemy from Core
constructs (no SQL is written by hand), and executed by a
:class:`~farthing.store._fastlane.FastBatch`: a hot batch's (the areas' ``Hot*`` classes),
or one on the DBAPI connection *inside* the caller's transaction, with which they commit
or roll back. The drivers keep them prepared (sqlite3's statement cache; psycopg prepares
a statement after a few executions).

Driver errors are raw here; the store's :func:`~farthing.store._errors.map_db_errors`
around every transaction and hot batch maps them as it maps SQLAlchemy's.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Dialect

__all__ = ["Compiled"]

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
