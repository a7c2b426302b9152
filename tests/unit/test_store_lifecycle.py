"""The cell store's lifecycle: migrations at start, threads, URLs."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from twisted.internet.defer import inlineCallbacks
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from cellsd.errors import StoreUnavailable
from cellsd.interfaces import ICellStore
from cellsd.objects import Instance
from cellsd.store import CellStore, migrate, normalize_url
from cellsd.store.engine import current_revision, head_revision, make_engine
from cellsd.store.schema import metadata
from tests.unit.test_store_support import PostgresBackend, SQLiteBackend, StoreCase, reactor


def _inspect(url: str) -> tuple[str | None, set[str], list[Any]]:
    """Revision, tables and schema differences of the database at ``url``
    (blocking; run it in a thread)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return (
                current_revision(conn),
                set(sa.inspect(conn).get_table_names()),
                compare_metadata(context, metadata),
            )
    finally:
        engine.dispose()


class LifecycleTests(StoreCase):
    @inlineCallbacks
    def test_migrations_applied_at_start_on_an_empty_database(self) -> Any:
        """start() on an empty database creates every table at the newest
        revision, and the result matches schema.py exactly."""
        from twisted.internet.threads import deferToThread

        url = self.fresh_url()
        store = self.make_store(url)
        yield store.start()
        revision, tables, diffs = yield deferToThread(_inspect, url)
        self.assertEqual(revision, head_revision())
        self.assertTrue(set(metadata.tables) <= tables)
        self.assertEqual(diffs, [])

    @inlineCallbacks
    def test_restart_is_idempotent_and_keeps_data(self) -> Any:
        """A second start on a migrated database changes nothing and sees the
        rows the first one wrote; migrate() again is a no-op too."""
        from twisted.internet.threads import deferToThread

        url = self.fresh_url()
        first = self.make_store(url)
        yield first.start()
        created = yield first.instance_create(Instance(project_id="p"))
        yield first.stop()
        yield deferToThread(migrate, url)
        second = self.make_store(url)
        yield second.start()
        again = yield second.instance_get_by_uuid(created.uuid)
        self.assertEqual(again, created)
        revision, _, _ = yield deferToThread(_inspect, url)
        self.assertEqual(revision, head_revision())

    def test_provides_the_interface(self) -> None:
        """CellStore provides every method of ICellStore with its signature."""
        self.assertTrue(verifyObject(ICellStore, self.store))

    @inlineCallbacks
    def test_sql_never_runs_on_the_reactor_thread(self) -> Any:
        """Every statement (start's migrations included) executes on a pool
        thread: a listener on the engine records the executing thread."""
        seen: list[threading.Thread] = []

        def record(*args: Any) -> None:
            seen.append(threading.current_thread())

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
        self.addCleanup(sa.event.remove, sa.engine.Engine, "before_cursor_execute", record)
        store = self.make_store()
        yield store.start()
        yield store.instance_create(Instance(project_id="p"))
        yield store.instance_get_all_by_filters({"project_id": "p"})
        self.assertTrue(seen)
        for thread in seen:
            self.assertIsNot(thread, threading.main_thread())

    @inlineCallbacks
    def test_stop_leaves_no_thread_behind(self) -> Any:
        """stop() joins the store's own pool threads."""
        before = set(threading.enumerate())
        store = CellStore(reactor, self.store_url())
        yield store.start()
        yield store.instance_create(Instance(project_id="p"))
        self.assertTrue(set(threading.enumerate()) - before)
        yield store.stop()
        self.assertEqual(set(threading.enumerate()) - before, set())

    @inlineCallbacks
    def test_a_shared_pool_is_not_stopped(self) -> Any:
        """A thread pool handed in is used, started if needed, and left
        running at stop() for its owner."""
        pool = ThreadPool(minthreads=0, maxthreads=2, name="shared")
        self.addCleanup(pool.stop)
        store = CellStore(reactor, self.store_url(), threadpool=pool)
        yield store.start()
        yield store.instance_create(Instance(project_id="p"))
        yield store.stop()
        self.assertTrue(pool.started)

    @inlineCallbacks
    def test_calls_before_start_fail(self) -> Any:
        """A store that is not started fails calls (StoreUnavailable saying
        so) instead of blocking."""
        store = CellStore(reactor, self.store_url())
        with self.assertRaises(StoreUnavailable) as caught:
            yield store.instance_get_by_uuid("u")
        self.assertIn("not open", str(caught.exception))

    @inlineCallbacks
    def test_calls_while_opening_wait_for_it(self) -> Any:
        """A call made while the store is opening (a restarted cell already
        taking connections) runs once it is open, instead of failing."""
        store = self.make_store()
        opened = store.start()
        early = store.instance_get_all_by_filters({})
        yield opened
        self.assertEqual((yield early), [])

    @inlineCallbacks
    def test_calls_after_stop_fail(self) -> Any:
        store = self.make_store()
        yield store.start()
        yield store.stop()
        with self.assertRaises(StoreUnavailable):
            yield store.instance_get_all_by_filters({})


class SQLiteLifecycleTests(SQLiteBackend, LifecycleTests, TestCase):
    pass


class PostgresLifecycleTests(PostgresBackend, LifecycleTests, TestCase):
    pass


class URLTests(SynchronousTestCase):
    def test_postgres_urls_use_psycopg3(self) -> None:
        """postgresql:// and postgres:// are rewritten to psycopg 3."""
        for url in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"):
            self.assertEqual(normalize_url(url).drivername, "postgresql+psycopg")

    def test_other_databases_are_refused(self) -> None:
        """Only SQLite and PostgreSQL are supported."""
        with self.assertRaises(ValueError):
            normalize_url("mysql://u@h/db")

    def test_sqlite_pragmas(self) -> None:
        """SQLite runs with foreign keys on and a write-ahead log."""
        path = self.mktemp() + ".db"
        engine = make_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as conn:
                self.assertEqual(conn.exec_driver_sql("PRAGMA foreign_keys").scalar(), 1)
                self.assertEqual(conn.exec_driver_sql("PRAGMA journal_mode").scalar(), "wal")
        finally:
            engine.dispose()
