"""Assemble one cell's daemon: ``make_service(settings, reactor)``.

The service tree (a MultiService) holds the links to the neighbours, the
local RPC listener and the periodic state pushes. Collaborators are built
here and passed down; nothing below this module imports a reactor.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.application import service
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from cellsd.compute.resources import DEFAULT_FLAVORS
from cellsd.compute.simulated import SimulatedCompute
from cellsd.config import Settings
from cellsd.context import get_admin_context
from cellsd.links.neighbours import NeighbourLinks
from cellsd.links.tls import load_tls
from cellsd.messaging.methods import install_cell_methods
from cellsd.messaging.outbox import Outbox
from cellsd.messaging.runner import MessageRunner
from cellsd.messaging.sync import anti_entropy
from cellsd.ops.reload import Reloader
from cellsd.rpc.amp_transport import RPCServerFactory
from cellsd.rpc.amqp_server import AMQPServer
from cellsd.rpc.manager import CellsManager
from cellsd.scheduler.capacity import StoreCapacitySource
from cellsd.scheduler.journal import BuildJournal, resume_builds
from cellsd.scheduler.propagation import StatePropagator
from cellsd.scheduler.scheduler import CellsScheduler
from cellsd.state import CellStateManager
from cellsd.store import CellStore


@attrs.define
class Cell:
    """The parts of a running cell, for the CLI, tests and the manhole."""

    settings: Settings
    state: CellStateManager
    runner: MessageRunner
    manager: CellsManager
    links: NeighbourLinks
    #: The cell's database, and its compute layer when it has hosts.
    store: CellStore | None = None
    compute: SimulatedCompute | None = None
    #: Pushes our capabilities and capacities up (coalesced).
    propagator: StatePropagator | None = None
    #: The builds this cell accepted and has not placed yet (in its store).
    builds: BuildJournal | None = None


class Listener(service.Service):
    """Listens on an endpoint while running; ``listening`` fires with the
    port (or fails, so that a daemon that cannot listen exits)."""

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Factory, name: str) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.setName(name)
        self.listening: Deferred[IListeningPort] = Deferred()
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()

        def listening(port: IListeningPort) -> IListeningPort:
            self._port = port
            self.log.info("{name} listening on {address}", name=self.name, address=port.getHost())
            return port

        self.endpoint.listen(self.factory).addCallback(listening).chainDeferred(self.listening)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        return None


class StatePusher(service.Service):
    """Every ``interval`` seconds: pushes this cell's capabilities and
    capacities to its parents, and asks the children it has a link to but
    no news from (mute ones) to announce theirs. (The push when a parent's
    link comes up is :func:`_exchange_state`; pushes after a child's report
    are coalesced by the propagator.)"""

    log = Logger()

    def __init__(
        self, runner: MessageRunner, clock: Any, interval: float, propagator: StatePropagator
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.interval = interval
        self.propagator = propagator
        self._loop: task.LoopingCall | None = None

    def push(self) -> Deferred[None]:
        d = self.propagator.push_now()
        d.addErrback(lambda f: self.log.failure("pushing state to parents failed", f))
        asked = self.propagator.ask_silent_children()
        asked.addErrback(lambda f: self.log.failure("asking children to announce failed", f))
        return d

    def startService(self) -> None:
        super().startService()
        loop = self._loop = task.LoopingCall(self.push)
        loop.clock = self.clock
        loop.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("state push loop stopped", f)
        )

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.propagator.cancel()
        super().stopService()


def _exchange_state(
    runner: MessageRunner, propagator: StatePropagator
) -> Callable[[str, bool], object]:
    """When the link to a parent comes up, tell it our state at once
    (behaviour §5.6 does this only at start; per link, a restarted parent
    or child is current within one round trip). Only the child side acts:
    its link counts as up once the parent has verified it, so the push
    cannot race the parent's checks, and the parent needs no request."""

    def on_link_up(name: str, is_parent: bool) -> object:
        parent = runner.state.get_parent_cell(name) if is_parent else None
        if parent is None:
            return None
        return propagator.push_now([parent])

    return on_link_up


def build_cell(settings: Settings, reactor: Any) -> Cell:
    """Build a cell's collaborators without starting anything."""
    neighbours = [*settings.parents, *settings.children]
    state = CellStateManager(
        settings.cell.name,
        neighbours,
        reactor,
        capabilities=settings.cell.capabilities,
        mute_child_interval=settings.cells.mute_child_interval,
    )
    material = load_tls(settings.tls.ca, settings.tls.cert, settings.tls.key)
    links = NeighbourLinks(reactor, settings, material)
    runner = MessageRunner(
        state,
        links,
        reactor,
        max_hop_count=settings.cells.max_hop_count,
        call_timeout=settings.cells.call_timeout,
        dedupe_window=settings.cells.dedupe_window,
    )
    store = CellStore(reactor, settings.store.url)
    # Must-deliver messages up to the top go through the store (issue 7).
    runner.outbox = Outbox(
        store,
        state,
        links,
        reactor,
        limit=settings.cells.outbox_limit,
        window=settings.cells.outbox_window,
        send_timeout=settings.cells.call_timeout,
        retention=settings.cells.received_retention,
    )
    compute: SimulatedCompute | None = None
    if settings.compute.hosts:
        compute = SimulatedCompute(
            store,
            runner,
            reactor,
            settings.compute.hosts,
            settings.cell.name,
            reserve_percent=settings.cells.reserve_percent,
        )
    # Own capacities from the compute nodes and services in the store
    # (behaviour §5.4; hosts whose service is down left out).
    state.set_capacity_source(
        StoreCapacitySource(
            store,
            reactor,
            compute.flavors if compute is not None else DEFAULT_FLAVORS,
            settings.cells.reserve_percent,
            compute.service_down_time if compute is not None else 60.0,
        )
    )
    propagator = StatePropagator(runner, reactor, settings.cells.coalesce_window)
    # Builds accepted here are in the store until placed (issue 7), bounded
    # as the outbox is.
    builds = BuildJournal(store, settings.cell.name, limit=settings.cells.outbox_limit)
    scheduler = CellsScheduler(
        runner,
        store,
        compute,
        settings.scheduler,
        propagator,
        journal=builds,
        dedupe_window=settings.cells.dedupe_window,
    )
    install_cell_methods(runner, store, compute, scheduler, propagator)
    links.receiver = runner
    links.link_up_observers.append(_exchange_state(runner, propagator))
    manager = CellsManager(runner, state, reactor, store=store, builds=builds)
    return Cell(settings, state, runner, manager, links, store, compute, propagator, builds)


class StoreService(service.Service):
    """Opens the cell's store (migrating it) and then starts its compute
    layer; on stop, the compute first, then the store. A cell whose store
    cannot be opened cannot work: the failure is logged and the reactor
    stopped. ``ready`` fires once both are up."""

    log = Logger()

    def __init__(
        self,
        store: CellStore,
        compute: SimulatedCompute | None,
        reactor: Any,
        outbox: Outbox | None = None,
    ) -> None:
        self.store = store
        self.compute = compute
        self.outbox = outbox
        self.reactor = reactor
        self.setName("store")
        self.ready: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        if self.compute is not None:
            # Requests may arrive while the store opens: hold builds and
            # actions until the compute has cleared interrupted tasks.
            self.compute.expect_startup()
        d = self.store.start()
        if self.outbox is not None:
            outbox = self.outbox
            d.addCallback(lambda _: Deferred.fromCoroutine(outbox.start()))
        if self.compute is not None:
            compute = self.compute
            d.addCallback(lambda _: compute.startup())

        def failed(f: Failure) -> Failure:
            self.log.failure("cannot open the cell store; stopping", f)
            if self.compute is not None:
                self.compute.startup_finished()  # what waits fails on the store
            if self.reactor.running:
                self.reactor.stop()
            return f

        d.addCallbacks(lambda _: None, failed).chainDeferred(self.ready)
        self.ready.addErrback(lambda _: None)

    async def _stop(self) -> None:
        if self.compute is not None:
            await self.compute.shutdown()
        if self.outbox is not None:
            # What is queued stays in the store for the next start.
            self.outbox.stop()
            await self.outbox.when_idle()
        await self.store.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


class HealService(service.Service):
    """Anti-entropy of a cell with parents (:mod:`cellsd.messaging.sync`):
    every ``interval`` seconds, and at once when a link to a parent comes up
    (:meth:`link_up`, a link-up observer), the cell compares per-project
    digests of its instances with the top's copies and reports only the
    instances that differ, so a lost update is healed within one period
    (Liberty healed one instance a minute: behaviour §4.4). Workers sharing
    the store take turns on the timer through a lease: one heals per
    period; a reconnect runs the exchange in the worker whose link came up,
    lease or not (a repeated report is harmless)."""

    log = Logger()
    LEASE = "heal-instances"

    def __init__(
        self,
        runner: MessageRunner,
        store: CellStore,
        clock: Any,
        interval: float,
        ready: Deferred[None] | None = None,
    ) -> None:
        """``ready`` fires once the store is started: a link that comes
        up before it waits for it."""
        self.runner = runner
        self.store = store
        self.clock = clock
        self.interval = interval
        self.ready = ready
        self.holder = f"{runner.my_name}:{uuid.uuid4()}"
        self._loop: task.LoopingCall | None = None

    async def heal_once(self, lease: bool = True) -> int:
        """One run: how many instances were reported (0 at the top, or
        when another worker holds the lease and ``lease`` is asked for)."""
        if self.runner.state.is_top():
            return 0
        if lease and not await self.store.try_lease(self.LEASE, self.holder, self.interval * 1.5):
            return 0
        count = await anti_entropy(self.runner, self.store, get_admin_context())
        self.log.debug("anti-entropy: {count} instances reported up", count=count)
        return count

    def link_up(self, neighbour: str, is_parent: bool) -> Deferred[int] | None:
        """Link-up observer: after a (re)connect to a parent, heal at once
        (once the store is started)."""
        if not is_parent:
            return None
        d = Deferred.fromCoroutine(self._heal_when_ready())
        d.addErrback(lambda f: self.log.failure("anti-entropy after reconnect failed", f))
        return d

    async def _heal_when_ready(self) -> int:
        if self.ready is not None and not self.ready.called:
            waiter: Deferred[None] = Deferred()

            def go(result: object) -> object:
                waiter.callback(None)
                return result

            self.ready.addBoth(go)
            await waiter
        return await self.heal_once(lease=False)

    def _run(self) -> Deferred[int]:
        d = Deferred.fromCoroutine(self.heal_once())
        d.addErrback(lambda f: self.log.failure("healing instances failed", f))
        return d

    def startService(self) -> None:
        super().startService()
        loop = self._loop = task.LoopingCall(self._run)
        loop.clock = self.clock
        loop.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("heal loop stopped", f)
        )

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        super().stopService()


class CellService(service.MultiService):
    """The top of one cell's service tree; ``.cell`` holds its parts."""

    def __init__(self, cell: Cell) -> None:
        super().__init__()
        self.cell = cell
        self.setName(f"cellsd-{cell.settings.cell.name}")
        #: cellsd.ops.metrics.CellMetrics when [metrics] is enabled.
        self.metrics: Any = None
        #: Reloads the configuration (SIGHUP, the manhole's reload()).
        self.reloader = Reloader(cell)


def freeze_startup_objects() -> None:
    """Move everything allocated so far (modules, classes, the service
    tree) out of the garbage collector's reach. They live as long as the
    process, and without this every full collection walks ~100k of them:
    18-21% of a busy relay's time went to the collector (bench/README.md)."""
    gc.collect()
    gc.freeze()


def _resume_builds(_: object, cell: Cell, reactor: Any) -> None:
    """Start resuming the cell's pending builds (not waited for)."""
    assert cell.builds is not None
    grace = cell.settings.cells.health_down_after
    d = Deferred.fromCoroutine(resume_builds(cell.builds, cell.runner, reactor, grace))
    d.addErrback(lambda f: Logger().failure("resuming pending builds failed", f))


def make_service(settings: Settings, reactor: Any) -> CellService:
    """The whole service tree of one cell."""
    cell = build_cell(settings, reactor)
    settings.cell.state_dir.mkdir(parents=True, exist_ok=True)
    top = CellService(cell)
    assert cell.store is not None
    stored = StoreService(cell.store, cell.compute, reactor, cell.runner.outbox)
    stored.setServiceParent(top)
    propagator = cell.propagator
    assert propagator is not None
    # Once the hosts are registered, our parents hear our capacities.
    stored.ready.addCallback(lambda _: propagator.request())
    # Builds accepted before a restart are scheduled again once the store is
    # open (each waits a while for its children's links; start-up does not).
    if cell.builds is not None:
        stored.ready.addCallback(_resume_builds, cell, reactor)
    cell.links.setServiceParent(top)
    Listener(
        serverFromString(reactor, settings.api.listen),
        RPCServerFactory(cell.manager, settings.cells.max_message_bytes),
        "api",
    ).setServiceParent(top)
    StatePusher(cell.runner, reactor, settings.cells.update_interval, propagator).setServiceParent(
        top
    )
    heal = HealService(
        cell.runner, cell.store, reactor, settings.cells.update_interval, stored.ready
    )
    heal.setServiceParent(top)
    cell.links.link_up_observers.append(heal.link_up)
    if (amqp := settings.api.amqp) is not None:
        server = AMQPServer(
            reactor, amqp, cell.state.my_name, cell.manager, spec=settings.api.amqp_spec
        )
        server.setServiceParent(top)
    _add_operating(top, settings, reactor)
    return top


def _add_operating(top: CellService, settings: Settings, reactor: Any) -> None:
    """Message tracing, and the metrics/status page and the manhole when
    enabled (cellsd.ops, imported only then)."""
    cell = top.cell
    if settings.log.trace_messages:
        cell.runner.message_log_level = LogLevel.info
    elif settings.log.level == "debug":
        cell.runner.message_log_level = LogLevel.debug
    if settings.metrics.enabled:
        from cellsd.ops.metrics import CellMetrics
        from cellsd.ops.web import make_site

        metrics = top.metrics = CellMetrics(cell, settings.metrics.failures_kept)
        metrics.install(cell.runner, getattr(cell, "store", None), reactor)
        # Site's generic parameters do not line up with Factory's in the stubs.
        site = cast(Factory, make_site(cell, metrics, reactor))
        web = Listener(serverFromString(reactor, settings.metrics.listen), site, "metrics")
        web.setServiceParent(top)
    if settings.manhole.enabled:
        from cellsd.ops.manhole import make_factory

        keys, listen = settings.manhole.authorized_keys, settings.manhole.listen
        assert keys is not None and listen is not None  # config checks both
        factory = make_factory(top, keys, settings.cell.state_dir)
        Listener(serverFromString(reactor, listen), factory, "manhole").setServiceParent(top)
