"""Alembic migrations, driven from code: no alembic.ini, any working directory.

``upgrade_to_head(target)`` is what ``farthing issuer init`` (and ``open_store(...,
create=True)``) run. The script directory ships inside the package
(``farthing/store/migrations``), located from this file, so it works from a checkout and
from an installed wheel alike.

A new revision, after changing ``_schema.py``::

    from farthing.store._migrate import make_revision
    make_revision("/tmp/scratch.sqlite", "what changed")   # autogenerate against a scratch db
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine

from farthing.store._engine import make_engines, target_url

__all__ = [
    "alembic_config",
    "current_revision",
    "head_revision",
    "make_revision",
    "upgrade_engine",
    "upgrade_to_head",
]

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: URL) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates '%': escape it (percent-encoded passwords).
    rendered = url.render_as_string(hide_password=False).replace("%", "%%")
    config.set_main_option("sqlalchemy.url", rendered)
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    if head is None:
        raise RuntimeError("the store ships no migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_engine(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest revision (idempotent)."""
    config = alembic_config(engine.url)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def upgrade_to_head(target: str) -> None:
    """Create or upgrade the store at ``target`` (a path or a postgresql:// DSN)."""
    engines = make_engines(target_url(target))
    try:
        upgrade_engine(engines.write)
    finally:
        engines.dispose()


def make_revision(scratch_target: str, message: str) -> None:
    """Autogenerate a new revision by diffing ``_schema.metadata`` against a scratch db."""
    upgrade_to_head(scratch_target)
    engines = make_engines(target_url(scratch_target))
    try:
        config = alembic_config(engines.write.url)
        with engines.write.connect() as connection:
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)
    finally:
        engines.dispose()
