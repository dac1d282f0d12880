"""Alembic environment for the farthing store (run by Alembic for each command).

The configuration is built in code by :mod:`farthing.store._migrate`, which hands over an
open connection in ``config.attributes["connection"]``; without one (the ``alembic`` CLI
pointed at this directory), the engine is built from ``sqlalchemy.url`` exactly as the
store builds it, with the same SQLite pragmas and BEGIN IMMEDIATE.

The whole upgrade runs in one transaction on both databases (SQLite's DDL is
transactional once pysqlite stops managing transactions), so a failed migration leaves
the previous schema intact.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, make_url

from farthing.store._engine import make_engines
from farthing.store._schema import metadata

__all__: list[str] = []


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transactional_ddl=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise ValueError("set sqlalchemy.url or pass a connection")
    engines = make_engines(make_url(url))
    try:
        with engines.write.connect() as fresh:
            _run(fresh)
    finally:
        engines.dispose()


def run_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
