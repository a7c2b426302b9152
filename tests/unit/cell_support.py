"""Helpers for the tests of the compute layer and of the seed's messages
(this module holds no tests itself).

A :class:`TreeCase` runs a small tree of cells in memory, each with its own
store (SQLite files, or PostgreSQL databases with :class:`PostgresTree`),
leaves with simulated hosts, and time from a task.Clock. Store work runs on
the real reactor's threads, so the tests are asynchronous.
"""

from __future__ import annotations

import atexit
import datetime
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from cellsd.config import HostSettings
from cellsd.context import RequestContext
from cellsd.objects import Flavor, Instance
from cellsd.scheduler.settings import SchedulerSettings
from cellsd.store import migrate
from cellsd.store.engine import make_engine
from cellsd.store.schema import metadata
from cellsd.testing import MemoryTree, leaf_hosts
from tests.services import create_postgres_database, require_postgres

T = TypeVar("T")

#: top has two children; c1 has a grandchild. Leaves (g1, c2) have hosts.
SMALL_TREE: Mapping[str, Sequence[str]] = {"top": ["c1", "c2"], "c1": ["g1"]}
PATHS = {"top": "top", "c1": "top!c1", "c2": "top!c2", "g1": "top!c1!g1"}

TINY = Flavor(id=1, flavorid="1", name="m1.tiny", memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0)
SMALL = Flavor(
    id=2, flavorid="2", name="m1.small", memory_mb=2048, vcpus=1, root_gb=20, ephemeral_gb=0
)
HUGE = Flavor(id=9, flavorid="9", name="huge", memory_mb=10**6, vcpus=1, root_gb=1, ephemeral_gb=0)


def ctxt(**kw: Any) -> RequestContext:
    """A fresh context (so a fresh request id) per call."""
    values: dict[str, Any] = {"user_id": "u1", "project_id": "p1", "is_admin": True}
    values.update(kw)
    return RequestContext(**values)


def new_instance(uuid: str | None = None, flavor: Flavor = TINY, **kw: Any) -> Instance:
    values: dict[str, Any] = {
        "user_id": "u1",
        "project_id": "p1",
        "display_name": "vm",
        "image_ref": "img-1",
        "flavor": flavor,
        "metadata": {"owner": "api"},
    }
    if uuid:
        values["uuid"] = uuid
    values.update(kw)
    return Instance(**values)


def build_kwargs(*instances: Instance, flavor: Flavor = TINY, **hints: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"instance_type": flavor}
    if hints:
        props["scheduler_hints"] = hints
    return {"instances": list(instances), "image": {"id": "img-1"}, "filter_properties": props}


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class TreeCase(TestCase):
    """A fresh tree per test (``tree_shape``, hosts on the leaves)."""

    tree_shape: ClassVar[Mapping[str, Sequence[str]]] = SMALL_TREE
    hosts: ClassVar[Sequence[HostSettings] | None] = None
    compute_options: ClassVar[dict[str, Any]] = {"heartbeat_interval": 3600.0}
    #: No scheduling retries: a build that finds no cell fails at once.
    scheduler_settings: ClassVar[SchedulerSettings] = SchedulerSettings(retries=0)
    timeout = 30

    def store_url(self, name: str) -> str:
        return f"sqlite:///{self.mktemp()}-{name}.db"

    def prepare(self) -> Deferred[None] | None:
        """Called before the tree starts (PostgreSQL empties its databases)."""
        return None

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits on it
        return Deferred.fromCoroutine(self._set_up())

    async def _set_up(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # a plausible "now" for the clock's datetimes
        hosts = (
            leaf_hosts(self.tree_shape, self.hosts) if self.hosts else leaf_hosts(self.tree_shape)
        )
        self.tree = MemoryTree(
            self.clock,
            self.tree_shape,
            store_url=self.store_url,
            reactor=reactor,
            hosts=hosts,
            compute_options=self.compute_options,
            scheduler_settings=self.scheduler_settings,
        )
        self.stores = self.tree.stores
        self.computes = self.tree.computes
        await _maybe(self.prepare())
        await self.tree.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(self._stop_tree()))
        # Every cell learns its children's capacities, as on link-up.
        for name in self.tree.runners:
            self.tree[name].state.refresh_my_capacities()
        for name in sorted(self.tree.runners, key=lambda n: -PATHS.get(n, str(n)).count("!")):
            await self.tree[name].tell_parents_our_capacities(ctxt())

    async def _stop_tree(self) -> None:
        """Let the casts a test left behind finish, then stop the tree."""
        try:
            await self.settle(timeout=5.0)
        finally:
            await self.tree.stop()

    async def settle(self, timeout: float = 10.0) -> None:
        """Until no message is being executed in the tree and every compute
        is idle (the casts the actions caused applied too)."""
        await self.tree.settled().addTimeout(timeout, reactor)

    async def eventually(self, check: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
        """``check()`` until it stops raising AssertionError."""
        deadline = reactor.seconds() + timeout
        while True:
            try:
                return await check()
            except AssertionError:
                if reactor.seconds() > deadline:
                    raise
                await sleep(0.01)

    async def build(self, where: str = "g1", flavor: Flavor = TINY, **kw: Any) -> Any:
        """An instance built in cell ``where`` from the top (targeted there),
        settled: active at its owner and copied at the top."""
        inst = new_instance(str(uuidlib.uuid4()), flavor=flavor, **kw)
        await self.tree["top"].build_instances(
            ctxt(), "top", build_kwargs(inst, flavor=flavor, target_cell=PATHS[where])
        )
        await self.settle()
        return await self.top_copy(str(inst.uuid))

    async def top_copy(self, uuid: str, read_deleted: str = "no") -> Any:
        found: Instance = await self.stores["top"].instance_get_by_uuid(uuid, read_deleted)
        return found

    async def owner_copy(self, where: str, uuid: str, read_deleted: str = "no") -> Any:
        found: Instance = await self.stores[where].instance_get_by_uuid(uuid, read_deleted)
        return found


async def _maybe(d: Any) -> None:
    if isinstance(d, Deferred):
        await d


class PostgresTree(TreeCase):
    """The same tree with one PostgreSQL database per cell, made once per
    class and emptied before each test."""

    _urls: ClassVar[dict[str, str] | None] = None
    _drops: ClassVar[list[Callable[[], None]]] = []

    @classmethod
    def _databases(cls) -> dict[str, str]:
        if cls._urls is None:
            require_postgres()
            urls = {}
            for name in sorted({n for p, k in cls.tree_shape.items() for n in [p, *k]}):
                url, drop = create_postgres_database()
                urls[name] = url
                cls._drops.append(drop)
            cls._urls = urls
            atexit.register(cls._drop_all)
        return cls._urls

    @classmethod
    def _drop_all(cls) -> None:
        drops, cls._drops, cls._urls = cls._drops, [], None
        for drop in drops:
            drop()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._drop_all()

    def store_url(self, name: str) -> str:
        return self._databases()[name]

    _migrated: ClassVar[set[str]] = set()

    def prepare(self) -> Deferred[None]:
        """Migrate each database (once) and empty it, on a thread: no SQL
        runs on the reactor thread. Deleting rows is much faster than
        TRUNCATE on tables this small."""
        urls = list(self._databases().values())
        migrated = self._migrated

        def empty() -> None:
            for url in urls:
                if url not in migrated:
                    migrate(url)
                    migrated.add(url)
                engine = make_engine(url)
                try:
                    with engine.begin() as conn:
                        for table in reversed(metadata.sorted_tables):
                            conn.execute(table.delete())
                finally:
                    engine.dispose()

        return threads.deferToThread(empty)


def utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)
