"""Test doubles shipped with cellsd, for our tests and for users' tests.

:class:`MemoryTree` runs a whole tree of cells in one process: one
MessageRunner per cell, joined by in-memory links that carry the same bytes
real links carry, with time from the given clock. Given store URLs and
hosts, each cell also gets a CellStore and (where it has hosts) a
SimulatedCompute, so every seed message does its real work in memory.

:func:`memory_api` gives a :class:`~cellsd.rpc.api.CellsAPI` served in
memory by a CellsManager, for testing code that talks to its cell.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from cellsd.compute.resources import DEFAULT_FLAVORS
from cellsd.compute.simulated import SimulatedCompute
from cellsd.config import HostSettings
from cellsd.context import RequestContext
from cellsd.deferreds import async_to_deferred
from cellsd.links.memory import MemoryNetwork
from cellsd.messaging.methods import install_cell_methods
from cellsd.messaging.outbox import Outbox
from cellsd.messaging.runner import MessageRunner
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.manager import CellsManager
from cellsd.rpc.memory_transport import MemoryRPCTransport
from cellsd.rpc.registry import RPC_API_VERSION, registered_version
from cellsd.scheduler.capacity import StoreCapacitySource
from cellsd.scheduler.propagation import StatePropagator
from cellsd.scheduler.scheduler import CellsScheduler
from cellsd.scheduler.settings import SchedulerSettings
from cellsd.state import CellStateManager
from cellsd.store import CellStore
from cellsd.store.engine import is_sqlite


@attrs.frozen
class Neighbour:
    """A neighbour as configuration describes it."""

    name: str
    is_parent: bool
    endpoint: str | None = None
    weight_offset: float = 0.0
    weight_scale: float = 1.0


#: api-cell with four children, two of which have grandchildren: 8 cells.
EIGHT_CELLS: Mapping[str, Sequence[str]] = {
    "api-cell": ["child-cell1", "child-cell2", "child-cell3", "child-cell4"],
    "child-cell2": ["grandchild-cell1", "grandchild-cell2"],
    "child-cell3": ["grandchild-cell3"],
}


class MemoryTree:
    """A tree of MessageRunners in memory, built from ``{parent: [children]}``."""

    def __init__(
        self,
        clock: IReactorTime,
        children_of: Mapping[str, Sequence[str]] = EIGHT_CELLS,
        max_hop_count: int = 10,
        call_timeout: float = 60.0,
        store_url: Callable[[str], str] | None = None,
        reactor: Any = None,
        hosts: Mapping[str, Sequence[Any]] | None = None,
        compute_options: Mapping[str, Any] | None = None,
        scheduler_settings: SchedulerSettings | None = None,
        coalesce_window: float | None = None,
        capacities_from_store: bool = False,
        mute_child_interval: float = 300.0,
        durable: bool = True,
        clocks: Mapping[str, IReactorTime] | None = None,
    ) -> None:
        """``store_url(name)`` gives each cell a CellStore run by ``reactor``
        (started by :meth:`start`; an SQLite file that does not exist yet is
        copied from a migrated template) and a CellsScheduler with
        ``scheduler_settings`` (``schedulers[name]``); ``hosts`` gives the
        cells it names a SimulatedCompute with those hosts (e.g.
        :func:`leaf_hosts`), with ``compute_options`` (such as
        ``step_delay``) and the tree's clock. A cell's own capacities come
        from its compute's hosts, or with ``capacities_from_store`` from the
        compute nodes and services in its store, as in the daemon. With a
        ``coalesce_window`` each cell has a StatePropagator
        (``propagators[name]``) and child reports are pushed upward
        coalesced; without, each report is passed on at once. With stores
        and ``durable`` (the default, as in the daemon) each cell sends its
        ``*_at_top`` messages through an Outbox in its store
        (``outboxes[name]``), started by :meth:`start`. ``clocks`` gives
        the cells it names a clock of their own (e.g. a
        :class:`cellsd.testing_faults.SkewedClock` of ``clock``); the
        network, and every other cell, run on ``clock``."""
        self.clock = clock
        self.reactor = reactor
        self.network = MemoryNetwork(clock)
        self.runners: dict[str, MessageRunner] = {}
        self.stores: dict[str, CellStore] = {}
        self.computes: dict[str, SimulatedCompute] = {}
        self._running: set[Deferred[Any]] = set()
        self.propagators: dict[str, StatePropagator] = {}
        self.schedulers: dict[str, CellsScheduler] = {}
        self.outboxes: dict[str, Outbox] = {}
        parents_of: dict[str, list[str]] = {}
        names: list[str] = []
        for parent, kids in children_of.items():
            names.extend(n for n in [parent, *kids] if n not in names)
            for kid in kids:
                parents_of.setdefault(kid, []).append(parent)
        for name in names:
            cell_clock = (clocks or {}).get(name, clock)
            neighbours = [Neighbour(p, True) for p in parents_of.get(name, [])]
            neighbours += [Neighbour(c, False) for c in children_of.get(name, [])]
            state = CellStateManager(
                name,
                neighbours,
                cell_clock,
                capabilities={"name": [name]},
                capacity_source=self._capacities_of(name),
                mute_child_interval=mute_child_interval,
            )
            runner = MessageRunner(
                state,
                self.network.links_for(name),
                cell_clock,
                max_hop_count=max_hop_count,
                call_timeout=call_timeout,
            )
            store = compute = None
            if store_url is not None:
                store = self.stores[name] = CellStore(reactor, store_url(name))
                if durable:
                    runner.outbox = self.outboxes[name] = Outbox(
                        store, state, runner.links, cell_clock, send_timeout=call_timeout
                    )
                if hosts and name in hosts:
                    compute = self.computes[name] = SimulatedCompute(
                        store, runner, cell_clock, hosts[name], name, **(compute_options or {})
                    )
            propagator = scheduler = None
            if coalesce_window is not None:
                propagator = StatePropagator(runner, cell_clock, coalesce_window)
                self.propagators[name] = propagator
            if store is not None:
                scheduler = self.schedulers[name] = CellsScheduler(
                    runner, store, compute, scheduler_settings, propagator
                )
                if capacities_from_store:
                    options = dict(compute_options or {})
                    state.set_capacity_source(
                        StoreCapacitySource(
                            store,
                            cell_clock,
                            options.get("flavors", DEFAULT_FLAVORS),
                            options.get("reserve_percent", 10.0),
                            options.get("service_down_time", 60.0),
                        )
                    )
            install_cell_methods(runner, store, compute, scheduler, propagator)
            self._track(runner)
            self.network.add(name, runner)
            self.runners[name] = runner
        self.parents_of = parents_of

    def __getitem__(self, name: str) -> MessageRunner:
        return self.runners[name]

    def path_to(self, name: str) -> str:
        """The absolute path from the root to ``name`` (first parent each step)."""
        parts = [name]
        while parts[0] in self.parents_of:
            parts.insert(0, self.parents_of[parts[0]][0])
        return "!".join(parts)

    def _capacities_of(self, name: str) -> Callable[[], Mapping[str, Any]]:
        def capacities() -> Mapping[str, Any]:
            compute = self.computes.get(name)
            return compute.capacities() if compute is not None else {}

        return capacities

    @async_to_deferred
    async def start(self) -> None:
        """Start every store (migrating it), then every compute layer."""
        for store in self.stores.values():
            path = store.url.database
            if is_sqlite(store.url) and path and path != ":memory:" and not os.path.exists(path):
                shutil.copyfile(await _sqlite_template(self.reactor), path)
        await defer.gatherResults([s.start() for s in self.stores.values()])
        for outbox in self.outboxes.values():
            await outbox.start()
        await defer.gatherResults([c.startup() for c in self.computes.values()])

    @async_to_deferred
    async def stop(self) -> None:
        """Stop the compute layers (waiting for their work), then the stores."""
        await defer.gatherResults([c.shutdown() for c in self.computes.values()])
        for outbox in self.outboxes.values():
            outbox.stop()
            await outbox.when_idle()
        await defer.gatherResults([s.stop() for s in self.stores.values()])

    def _track(self, runner: MessageRunner) -> None:
        """Count each message the runner executes until it has answered, so
        that settled() also waits for casts (which nobody waits for)."""
        execute = runner._execute

        def tracked(msg: Any) -> Deferred[Any]:
            d = execute(msg)
            self._running.add(d)

            def done(result: Any) -> Any:
                self._running.discard(d)
                return result

            return d.addBoth(done)

        # A test double may instrument the runner it builds.
        setattr(runner, "_execute", tracked)  # noqa: B010

    @async_to_deferred
    async def settled(self) -> None:
        """Fires when no message is being executed anywhere in the tree, no
        outbox is queuing or sending, and no compute layer has an action
        under way (time on the tree's clock
        must pass for actions with a step_delay)."""
        while True:
            pending = list(self._running)
            pending += [c.settled() for c in self.computes.values() if c._busy]
            pending += [o.when_idle() for o in self.outboxes.values() if o.busy]
            if not pending:
                return
            await defer.DeferredList(pending, consumeErrors=True)


#: The simulated hosts :func:`leaf_hosts` gives each leaf cell.
SIM_HOSTS: tuple[HostSettings, ...] = (
    HostSettings("host1", vcpus=8, memory_mb=16384, disk_gb=200),
    HostSettings("host2", vcpus=8, memory_mb=8192, disk_gb=100),
)


def leaf_hosts(
    children_of: Mapping[str, Sequence[str]], hosts: Sequence[HostSettings] = SIM_HOSTS
) -> dict[str, Sequence[HostSettings]]:
    """``hosts`` for every cell without children (MemoryTree's ``hosts``)."""
    names = {n for parent, kids in children_of.items() for n in [parent, *kids]}
    return {n: hosts for n in sorted(names) if not children_of.get(n)}


_template: Path | None = None


async def _sqlite_template(reactor: Any) -> Path:
    """An SQLite file migrated to the newest schema, made once per process
    (copying it is much faster than migrating each test's stores)."""
    global _template
    if _template is None or not _template.exists():
        directory = Path(tempfile.mkdtemp(prefix="cellsd-template-"))
        atexit.register(shutil.rmtree, directory, True)
        path = directory / "template.db"
        store = CellStore(reactor, f"sqlite:///{path}")
        await store.start()
        await store.stop()
        _template = path
    return _template


# --------------------------------------------------------------------------
# An in-memory CellsAPI


class DispatchingTarget:
    """A MemoryRPCTransport target that hands every request to
    :meth:`CellsManager.dispatch`, as the AMP and AMQP servers do: unknown
    methods and arguments fail with the server's typed errors. (The
    in-memory transport does not carry the version: each request is
    dispatched at the version that introduced its method.)"""

    def __init__(self, manager: CellsManager) -> None:
        self.manager = manager

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def handle(ctxt: RequestContext, **kwargs: Any) -> Deferred[Any]:
            version = registered_version(method) or RPC_API_VERSION
            return self.manager.dispatch(ctxt, method, version, kwargs)

        return handle


def memory_api(
    manager: CellsManager, version_cap: str | None = None, call_timeout: float = 60.0
) -> CellsAPI:
    """A CellsAPI served in memory by ``manager``.

    Requests and answers cross a JSON round trip as over a socket (objects
    travel as primitives and are rebuilt), and errors come back as their own
    class. The transport is ``api.transport``, a
    :class:`~cellsd.rpc.memory_transport.MemoryRPCTransport`: its ``sent``
    lists every request as it crossed the wire. Example::

        from twisted.internet.task import Clock
        from cellsd.context import RequestContext
        from cellsd.rpc.manager import CellsManager
        from cellsd.testing import MemoryTree, memory_api

        clock = Clock()
        runner = MemoryTree(clock)["api-cell"]
        api = memory_api(CellsManager(runner, runner.state, clock))
        d = api.ping_all(RequestContext(is_admin=True))
        # in a trial SynchronousTestCase:
        rows = self.successResultOf(d)   # one row per cell of the tree
    """
    transport = MemoryRPCTransport(DispatchingTarget(manager))
    return CellsAPI(transport, version_cap=version_cap, call_timeout=call_timeout)
