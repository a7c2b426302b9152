"""Engines for the cell store, and schema migrations with Alembic's API.

No alembic.ini is needed: :func:`alembic_config` builds the configuration in
code, and the ``env.py`` next to the revisions runs on the connection handed
to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: Held (per transaction) while migrating PostgreSQL, so that several
#: workers starting together on one database migrate it once.
_PG_MIGRATION_LOCK = 0x63656C6C  # "cell"


def normalize_url(url: str) -> URL:
    """Parse a store URL; PostgreSQL always goes through psycopg 3."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported store URL {parsed.render_as_string()!r}")
    return parsed


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def make_engine(url: str | URL, pool_size: int = 5) -> Engine:
    """An engine configured for the store.

    SQLite: one shared connection (the store serialises its use), usable from
    any thread, write-ahead log, foreign keys enforced. PostgreSQL: a pool of
    ``pool_size`` connections, one per store thread.
    """
    parsed = normalize_url(url) if isinstance(url, str) else url
    if is_sqlite(parsed):
        engine = sa.create_engine(
            parsed,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        in_memory = parsed.database in (None, "", ":memory:")

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            if not in_memory:
                # With a write-ahead log, NORMAL syncs at checkpoints rather
                # than at every commit: a crash of cellsd loses nothing, a
                # power cut at most the last transactions.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(parsed, pool_size=pool_size, max_overflow=0, pool_pre_ping=True)


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def migrate_connection(connection: Connection) -> None:
    """Upgrade the database behind ``connection`` (in a transaction) to the
    newest revision; a database already there is left alone."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    if current_revision(connection) == head_revision():
        return
    command.upgrade(alembic_config(connection), "head")


def migrate(url: str | URL | Engine) -> None:
    """Apply every pending migration to the database at ``url`` (blocking)."""
    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        with engine.begin() as connection:
            migrate_connection(connection)
    finally:
        if engine is not url:
            engine.dispose()
