"""The machinery every part of the cell store shares.

All SQL runs in a Twisted thread pool, never on the reactor thread: a public
store method hands a function of a :class:`~sqlalchemy.engine.Connection` to
:meth:`StoreCore._run`, which runs it in one transaction on a pool thread and
returns a Deferred of its result.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cellsd.errors import StoreUnavailable
from cellsd.objects.base import OBJECT, CellsObject, parse_datetime
from cellsd.store.engine import is_sqlite, make_engine, migrate_connection, normalize_url

P = ParamSpec("P")
T = TypeVar("T")
ObjT = TypeVar("ObjT", bound=CellsObject)

#: Never copied from an object into a row: row ids are local to each cell's
#: database, and soft deletion has its own methods.
NEVER_WRITTEN = frozenset({"id", "deleted", "deleted_at"})


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def as_datetime(value: Any) -> datetime.datetime | None:
    return parse_datetime(value)


def live(table: sa.Table) -> sa.ColumnElement[bool]:
    return table.c.deleted == 0


def soft_delete_values(table: sa.Table, now: datetime.datetime) -> dict[str, Any]:
    """``deleted`` takes the row's own id, so unique keys can be reused."""
    return {"deleted": table.c.id, "deleted_at": now, "updated_at": now}


def to_obj(cls: type[ObjT], row: RowMapping | Mapping[str, Any]) -> ObjT:
    return cls.from_dict({str(k): v for k, v in row.items()})


def row_values(
    obj: CellsObject | Mapping[str, Any],
    table: sa.Table,
    exclude: Iterable[str] = (),
) -> dict[str, Any]:
    """Column values from an object's set fields (or a plain dict's keys)
    that are columns of ``table``; nested objects become plain dicts."""
    skip = NEVER_WRITTEN | set(exclude)
    if isinstance(obj, CellsObject):
        fields = type(obj).obj_field_names()
        kinds = {a.name: a.metadata.get("kind") for a in type(obj)._fields()}
        items = [(n, getattr(obj, n)) for n in obj.obj_set_fields() if n in fields]
    else:
        kinds = {}
        items = list(obj.items())
    values: dict[str, Any] = {}
    for name, value in items:
        if name in skip or name not in table.c:
            continue
        if isinstance(value, CellsObject):
            value = value.to_dict(include_unset=True)
        elif kinds.get(name) == OBJECT and isinstance(value, Mapping):
            value = dict(value)
        values[name] = value
    return values


class StoreCore:
    """Engine, thread pool and transactions of a cell store.

    ``threadpool`` may be shared with other users; the store then starts it
    if it is not running but never stops it. Without one the store makes its
    own, with a single thread for SQLite (which allows one writer anyway).
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        url: str,
        threadpool: ThreadPool | None = None,
    ) -> None:
        self._reactor = reactor
        self.url = normalize_url(url)
        self._sqlite = is_sqlite(self.url)
        self._own_pool = threadpool is None
        if threadpool is None:
            maxthreads = 1 if self._sqlite else 8
            threadpool = ThreadPool(minthreads=0, maxthreads=maxthreads, name="cellsd-store")
        self._pool = threadpool
        # SQLite shares one connection between threads: one transaction at a
        # time. PostgreSQL connections come one per thread from the pool.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self._sqlite else contextlib.nullcontext()
        )
        self.engine: Engine | None = None
        #: Calls made while the store opens wait here (a cell takes
        #: connections while its store is being opened and migrated).
        self._opening: list[Deferred[None]] | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start the pool, connect, and apply pending migrations."""
        if not self._pool.started:
            self._pool.start()
        self._opening = self._opening if self._opening is not None else []
        d = deferToThreadPool(self._reactor, self._pool, self._start)

        def opened(result: Any) -> Any:
            waiters, self._opening = self._opening or [], None
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(StoreUnavailable(reason=f"it failed to open: {result.value}"))
                else:
                    w.callback(None)
            return result

        return d.addBoth(opened)

    def _start(self) -> None:
        engine = make_engine(self.url, pool_size=max(self._pool.max, 1))
        try:
            with self._lock, engine.begin() as conn:
                migrate_connection(conn)
        except BaseException:
            engine.dispose()
            raise
        self.engine = engine

    def stop(self) -> Deferred[None]:
        """Close every connection, then stop (and join) our thread pool."""
        if not self._pool.started:
            self._dispose()
            return succeed(None)
        d = deferToThreadPool(self._reactor, self._pool, self._dispose)

        def stop_pool(result: T) -> T:
            if self._own_pool and self._pool.started:
                self._pool.stop()
            return result

        d.addBoth(stop_pool)
        return d

    def _dispose(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.dispose()

    # -- running SQL -------------------------------------------------------------

    def _run(
        self,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Run ``fn(connection, *args, **kwargs)`` in one transaction on a
        pool thread."""

        def work(conn: Connection) -> T:
            return fn(conn, *args, **kwargs)

        return self._submit(work, False)

    def _run_retrying(
        self,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Like :meth:`_run`, but a unique-key conflict (another worker
        inserted the same row first) reruns the whole transaction once; for
        upserts, whose second run then finds the row."""

        def work(conn: Connection) -> T:
            return fn(conn, *args, **kwargs)

        return self._submit(work, True)

    def _submit(self, work: Callable[[Connection], T], retry: bool) -> Deferred[T]:
        if self.engine is None:
            if self._opening is not None:
                waiter: Deferred[None] = Deferred()
                self._opening.append(waiter)
                return waiter.addCallback(lambda _: self._submit(work, retry))
            return fail(StoreUnavailable(reason="it is not open (stopped, or never started)"))
        return deferToThreadPool(self._reactor, self._pool, self._transaction, work, retry)

    def _transaction(self, work: Callable[[Connection], T], retry: bool) -> T:
        engine = self.engine
        if engine is None:
            raise StoreUnavailable(reason="it was stopped")
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                with self._lock, engine.begin() as conn:
                    return work(conn)
            except IntegrityError:
                if attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")


def insert_row(conn: Connection, table: sa.Table, values: Mapping[str, Any]) -> int:
    """Insert one row and return its id."""
    result = conn.execute(sa.insert(table).values(dict(values)))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def live_row(
    conn: Connection, table: sa.Table, *where: sa.ColumnElement[bool]
) -> RowMapping | None:
    """The live (not soft-deleted) row of ``table`` matching every condition."""
    return conn.execute(sa.select(table).where(*where, live(table))).mappings().first()


def get_row(conn: Connection, table: sa.Table, row_id: Any) -> RowMapping | None:
    return conn.execute(sa.select(table).where(table.c.id == row_id)).mappings().first()


def read_deleted_filter(table: sa.Table, read_deleted: str) -> list[sa.ColumnElement[bool]]:
    """Conditions for Nova's ``read_deleted`` ("no", "yes" or "only")."""
    if read_deleted == "no":
        return [table.c.deleted == 0]
    if read_deleted == "only":
        return [table.c.deleted != 0]
    if read_deleted == "yes":
        return []
    raise ValueError(f"read_deleted must be no, yes or only, not {read_deleted!r}")
