"""Schema migrations, shipped inside the package and applied by the broker at start.

The Alembic scripts live in broker/store/migrations/versions and are written by hand,
each frozen in time (they never import the ORM). `upgrade(engine)` brings any database,
empty or older, to the head revision and does nothing on an up-to-date one. On PostgreSQL
an advisory lock makes replicas that start together migrate one after another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from .failures import store_errors

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "keyferry_schema_version"
ADVISORY_LOCK = 0x6B66_5F73_746F_7265  # "kf_store"; any constant unique to keyferry


# Runs after the migrations, in their transaction (and lock), given the revision before.
AfterUpgrade = Callable[[Connection, str | None], None]


def upgrade(engine: Engine, then: AfterUpgrade | None = None) -> None:
    """Migrate the store's database to the newest schema; safe to call on every start.
    `then` runs in the same transaction, given the revision the database had before."""
    with store_errors("schema migration"), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})")
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        before = context.get_current_revision()
        config = _config(connection)
        command.upgrade(config, "head")
        if then is not None:
            then(connection, before)


def current_revision(engine: Engine) -> str | None:
    with store_errors("reading the schema revision"), engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config(None)).get_current_head()
    assert head is not None  # noqa: S101 (the package always ships at least one revision)
    return head


def _config(connection: Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    return config
