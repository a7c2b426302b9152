"""Helpers for the cells scheduler's tests (this module holds no tests).

:class:`SchedulerCase` runs a tree of cells in memory, each with its own
SQLite store and a CellsScheduler, the cells it names with simulated hosts,
own capacities read from the store (as the daemon does) and coalesced
upward pushes; time is a task.Clock, store work runs on the real reactor.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from cellsd.config import HostSettings
from cellsd.context import RequestContext
from cellsd.objects import Flavor, Instance
from cellsd.scheduler.settings import SchedulerSettings
from cellsd.testing import MemoryTree

TINY = Flavor(id=1, flavorid="1", name="m1.tiny", memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0)
HUGE = Flavor(id=9, flavorid="9", name="huge", memory_mb=10**6, vcpus=1, root_gb=1, ephemeral_gb=0)
WINDOW = 0.5


def host(name: str, memory_mb: int) -> HostSettings:
    return HostSettings(name, vcpus=16, memory_mb=memory_mb, disk_gb=100)


def ctxt(**kw: Any) -> RequestContext:
    values: dict[str, Any] = {"user_id": "u1", "project_id": "p1", "is_admin": True}
    values.update(kw)
    return RequestContext(**values)


def build_kwargs(
    count: int = 1, flavor: Flavor = TINY, image: Any = None, **hints: Any
) -> dict[str, Any]:
    instances = [
        Instance(
            uuid=str(uuidlib.uuid4()),
            user_id="u1",
            project_id="p1",
            display_name="vm",
            flavor=flavor,
        )
        for _ in range(count)
    ]
    props: dict[str, Any] = {"instance_type": flavor}
    if hints:
        props["scheduler_hints"] = hints
    return {"instances": instances, "image": image or {"id": "img"}, "filter_properties": props}


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class SchedulerCase(TestCase):
    """A fresh tree per test: ``shape``; ``hosts`` per cell."""

    shape: ClassVar[Mapping[str, Sequence[str]]] = {"top": ["a", "b", "c"]}
    hosts: ClassVar[Mapping[str, Sequence[HostSettings]]] = {
        "a": [host("a1", 8192)],
        "b": [host("b1", 4096)],
        "c": [host("c1", 2048)],
    }
    settings = SchedulerSettings(retries=0, retry_delay=5.0)
    timeout = 60

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits on it
        return Deferred.fromCoroutine(self._set_up())

    async def _set_up(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tree = MemoryTree(
            self.clock,
            self.shape,
            store_url=lambda name: f"sqlite:///{self.mktemp()}-{name}.db",
            reactor=reactor,
            hosts=self.hosts,
            compute_options={"heartbeat_interval": 3600.0},
            scheduler_settings=self.settings,
            coalesce_window=WINDOW,
            capacities_from_store=True,
        )
        self.stores = self.tree.stores
        await self.tree.start()
        self.addCleanup(self.tree.stop)
        await self.report_all()

    async def report_all(self) -> None:
        """Every cell reports, deepest first, and the pushes arrive."""
        depth = {n: self.tree.path_to(n).count("!") for n in self.tree.runners}
        for name in sorted(self.tree.runners, key=lambda n: -depth[n]):
            await self.tree.propagators[name].push_now()
        self.clock.advance(WINDOW)
        await self.settle()

    async def settle(self) -> None:
        """Until no compute has work under way (a few quiet reactor turns)."""
        quiet = 0
        deadline = reactor.seconds() + 20
        while quiet < 3:
            await sleep(0.005)
            busy = any(c._busy for c in self.tree.computes.values())
            quiet = 0 if busy else quiet + 1
            if reactor.seconds() > deadline:
                raise AssertionError("the tree did not settle")

    def build(self, kwargs: dict[str, Any], at: str = "top", **ctx: Any) -> Deferred[None]:
        """Start a build at cell ``at`` as its CellsManager does; fires once
        it is placed or has failed."""
        return self.tree[at].build_instances(ctxt(**ctx), at, kwargs)

    async def run_with_clock(self, d: Deferred[Any], step: float) -> Any:
        """Await ``d``, advancing the clock ``step`` seconds while it waits."""
        for _ in range(2000):
            if d.called:
                break
            await sleep(0.01)
            self.clock.advance(step)
        return await d

    async def top_instance(self, uuid: str) -> Instance:
        found: Instance = await self.stores[self.root].instance_get_by_uuid(uuid)
        return found

    @property
    def root(self) -> str:
        return next(iter(self.shape))

    async def where(self, uuids: Sequence[str]) -> dict[str, str | None]:
        """Each instance's cell path, as the top knows it."""
        return {u: (await self.top_instance(u)).cell_name for u in uuids}

    async def hosts_used(self) -> dict[str, tuple[int, int]]:
        """Each host's (memory used, memory) from its compute node."""
        out = {}
        for name, store in self.stores.items():
            if name in self.tree.computes:
                for n in await store.compute_node_get_all():
                    out[str(n.host)] = (int(n.memory_mb_used or 0), int(n.memory_mb or 0))
        return out

    async def eventually(self, check: Any, timeout: float = 10.0) -> Any:
        """``await check()`` until it stops raising AssertionError (or
        InstanceNotFound: a report to the top still on its way)."""
        from cellsd.errors import InstanceNotFound

        deadline = reactor.seconds() + timeout
        while True:
            try:
                return await check()
            except (AssertionError, InstanceNotFound):
                if reactor.seconds() > deadline:
                    raise
                await sleep(0.01)
