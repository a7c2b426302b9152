"""Backends for the cell store tests (this module holds no tests itself).

Every store test mixin runs once on SQLite (a temporary file per test) and
once on PostgreSQL (one fresh database per test class, emptied between tests,
dropped at the end).
"""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING, Any, ClassVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorFromThreads

from cellsd.store import CellStore
from cellsd.store.schema import metadata
from tests.services import create_postgres_database, require_postgres

__all__ = ["PostgresBackend", "SQLiteBackend", "StoreCase", "reactor"]

#: The global reactor, typed as what the store needs of it.
reactor = cast(IReactorFromThreads, _reactor)

if TYPE_CHECKING:
    # The mixins are combined with trial's TestCase in every concrete class.
    from twisted.trial.unittest import TestCase as _Base
else:
    _Base = object


class StoreCase(_Base):
    """Gives each test ``self.store``, started on a fresh database, and
    checks that no SQL ran on the reactor (main) thread during the test."""

    store: CellStore
    sql_on_main_thread: list[str]

    # Provided by the backend mixin.
    def fresh_url(self) -> str:
        """An empty database of the test's own."""
        raise NotImplementedError

    def store_url(self) -> str:
        """A migrated or empty database for this test (possibly shared by the
        test class and emptied between tests)."""
        return self.fresh_url()

    def make_store(self, url: str | None = None, **kw: Any) -> CellStore:
        """A store (not started) that is stopped after the test."""
        store = CellStore(reactor, url or self.store_url(), **kw)
        self.addCleanup(store.stop)
        return store

    def _watch_threads(self) -> None:
        self.sql_on_main_thread = []

        def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if threading.current_thread() is threading.main_thread():
                self.sql_on_main_thread.append(statement)

        sa.event.listen(Engine, "before_cursor_execute", before_execute)

        def unwatch() -> None:
            sa.event.remove(Engine, "before_cursor_execute", before_execute)
            if self.sql_on_main_thread:
                raise AssertionError(f"SQL on the reactor thread: {self.sql_on_main_thread}")

        self.addCleanup(unwatch)

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]  # trial waits on the Deferred
        self._watch_threads()
        self.store = self.make_store()
        yield self.store.start()
        yield self.prepare_store()

    def prepare_store(self) -> Deferred[None] | None:
        return None


class SQLiteBackend(_Base):
    backend = "sqlite"

    def fresh_url(self) -> str:
        path = self.mktemp()
        return f"sqlite:///{path}.db"


class PostgresBackend(_Base):
    backend = "postgresql"
    _url: ClassVar[str | None] = None
    _drop: ClassVar[Any] = None

    @classmethod
    def _class_database(cls) -> str:
        """The class's database, made at its first test (skips or fails, as
        require_postgres says, when PostgreSQL is not there)."""
        if cls._url is None:
            require_postgres()
            cls._url, cls._drop = create_postgres_database()
            # tearDownClass drops it under pytest; trial has no class hooks.
            atexit.register(cls._drop_class_database)
        return cls._url

    @classmethod
    def _drop_class_database(cls) -> None:
        drop, cls._drop, cls._url = cls._drop, None, None
        if drop is not None:
            drop()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._drop_class_database()

    def fresh_url(self) -> str:
        """A database of its own, dropped after the test."""
        url, drop = create_postgres_database()
        self.addCleanup(drop)
        return url

    def store_url(self) -> str:
        return self._class_database()

    def prepare_store(self) -> Deferred[None]:
        """Empty every table of the class's shared database."""
        names = ", ".join(t.name for t in metadata.sorted_tables)

        def truncate(conn: Any) -> None:
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))

        store: CellStore = self.store  # type: ignore[attr-defined]
        return store._run(truncate)
