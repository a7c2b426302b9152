"""CellsScheduler: where a ``build_instances`` goes from this cell (§6).

At each cell the build reaches: the candidates are the children (mute ones
included) and this cell when it has no children or hosts of its own
(§6.2); the configured filters narrow them, the weighers order them, and
the cells are tried best first (§6.6):

* **this cell** builds the instances on its simulated compute, if its hosts
  have room for all of them now (checked and built under one lock, so
  concurrent builds never overfill a host); otherwise it declines;
* **a child** is handed the build as a request that waits for its answer
  (request/ack, §8.5 #30): the child runs this same scheduler and answers
  once the instances are placed somewhere below it, or fails when it cannot
  place them, and then the next cell is tried. The capacities the child
  advertised are decremented by what it is handed as it is sent (given
  back if it declines), until its next report (§8.5 #29), so a burst of
  concurrent builds spreads instead of piling onto the cell that looked
  best a minute ago.

The cell where scheduling started (the one whose build nobody waits for:
the API cell, from its CellsManager) retries an attempt that found no cell,
``[scheduler] retries`` times, ``retry_delay`` seconds apart on the injected
clock (never blocking). When the build cannot be placed, or the request
itself is refused (a bad or forbidden hint: not retried), every instance
goes to ERROR with an instance fault saying why: written directly when this
cell is the top, else sent up with ``instance_update_at_top`` and
``instance_fault_create_at_top`` (§8.5 #31; Liberty relied on a local save
and told nobody).

A build the owner accepted through its journal
(:mod:`cellsd.scheduler.journal`) is durable: the cell about to be asked is
recorded before each hand-off (or build here), and the record is dropped
once the build is placed or failed; a build resumed after a restart asks
its recorded cell first. So that such a repeat builds nothing twice, a
cell answers a build whose instances its compute already holds as placed
here without building again, and a cell handed the same build (by id)
again while it is placing it, or soon after, gives the first answer.
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from cellsd.compute.resources import CPU_ALLOCATION_RATIO, RAM_ALLOCATION_RATIO, HostState, Need
from cellsd.context import RequestContext
from cellsd.errors import (
    CellsError,
    InstanceExists,
    InstanceNotFound,
    InvalidArguments,
    InvalidSchedulerHint,
    NoCellsAvailable,
    NotAvailableHere,
    SchedulerHintForbidden,
)
from cellsd.interfaces import ICellScheduler, ICellStore, IComputeAPI
from cellsd.messaging.message import Message
from cellsd.messaging.routing import DOWN
from cellsd.objects import Flavor, Instance, InstanceFault
from cellsd.scheduler.journal import BuildJournal, ReceivedHandOffs, build_id_of
from cellsd.scheduler.plugins import make_filters, make_weighers
from cellsd.scheduler.propagation import StatePropagator
from cellsd.scheduler.request import ROUTING_PATH, SchedulingRequest, make_request, uuid_of
from cellsd.scheduler.settings import SchedulerSettings
from cellsd.scheduler.weights import weigh_cells
from cellsd.state import CellState

if TYPE_CHECKING:
    from cellsd.messaging.runner import MessageRunner

#: Errors in the request itself: no other cell and no retry would help.
REQUEST_ERRORS = (InvalidSchedulerHint, SchedulerHintForbidden, InvalidArguments)

#: More than any host holds of a flavor that needs nothing.
_UNBOUNDED = 10**9


def host_room(host: HostState, need: Need) -> int:
    """How many more instances needing ``need`` fit on ``host`` now."""
    if host.disabled:
        return 0
    limits = []
    for have, used, want in (
        (host.memory_mb * RAM_ALLOCATION_RATIO, host.memory_mb_used, need.memory_mb),
        (host.disk_gb, host.disk_gb_used, need.disk_gb),
        (host.vcpus * CPU_ALLOCATION_RATIO, host.vcpus_used, need.vcpus),
    ):
        if want > 0:
            limits.append(math.floor((have - used) / want))
    return max(0, min(limits)) if limits else _UNBOUNDED


def room_for(compute: IComputeAPI, flavor: Flavor | None) -> int:
    """How many instances of ``flavor`` the compute's hosts take now."""
    hosts: Mapping[str, HostState] | None = getattr(compute, "hosts", None)
    if hosts is None:
        return 1 if compute.can_host(flavor) else 0
    need = Need.of(flavor)
    return sum(host_room(h, need) for h in hosts.values())


def _text(error: BaseException) -> str:
    """An error's message without the remote traceback a rebuilt one adds."""
    if isinstance(error, CellsError):
        return error.message
    return str(error) or type(error).__name__


@implementer(ICellScheduler)
class CellsScheduler:
    """The cells scheduler of one cell (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        runner: MessageRunner,
        store: ICellStore | None = None,
        compute: IComputeAPI | None = None,
        settings: SchedulerSettings | None = None,
        propagator: StatePropagator | None = None,
        clock: IReactorTime | None = None,
        journal: BuildJournal | None = None,
        dedupe_window: float = 300.0,
    ) -> None:
        self.runner = runner
        self.store = store
        self.compute = compute
        self.settings = settings or SchedulerSettings()
        self.filters = make_filters(self.settings)
        self.weighers = make_weighers(self.settings)
        self.propagator = propagator
        self.clock: IReactorTime = clock or runner.clock
        self._build_lock = DeferredLock()
        #: The builds this cell owns, in its store (None: not durable).
        self.journal = journal
        self.handoffs = ReceivedHandOffs(self.clock, dedupe_window)
        #: What happened to the builds that reached this cell.
        self.stats: dict[str, int] = {
            "built_here": 0,
            "handed_off": 0,
            "declined": 0,
            "retries": 0,
            "failed": 0,
            "already_here": 0,
        }

    @property
    def state(self) -> Any:
        return self.runner.state

    # -- ICellScheduler -----------------------------------------------------------

    def build_instances(
        self, message: Message, build_inst_kwargs: Mapping[str, Any]
    ) -> Deferred[dict[str, Any] | None]:
        """Place the build. A build handed over by a parent (which waits for
        the answer) fires with where it went, or fails when this subtree
        cannot take it. Any other build is seen through here: retried, and
        its instances put in ERROR when it cannot be placed."""
        return Deferred.fromCoroutine(self._build(message, dict(build_inst_kwargs)))

    async def _build(self, message: Message, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        ctxt, path = message.ctxt, self._path_of(message, kwargs)
        if message.need_response:
            return await self._handed(ctxt, path, kwargs)
        build_id = build_id_of(kwargs)
        owned = build_id if self.journal is not None and self.journal.owns(build_id) else None
        try:
            request = make_request(ctxt, path, self.state, kwargs)
        except CellsError as e:
            await self._fail(ctxt, kwargs.get("instances") or [], e)
            await self._forget(owned)
            return None
        # A build resumed after a restart asks where it last went first.
        prefer = self.journal.resume_route(owned) if self.journal and owned else None
        attempts = max(0, self.settings.retries) + 1
        error: BaseException = NoCellsAvailable()
        for number in range(1, attempts + 1):
            try:
                placed = await self.attempt(request, owned, prefer)
            except NoCellsAvailable as e:
                error, prefer = e, None
                if number < attempts:
                    self.stats["retries"] += 1
                    self.log.info(
                        "attempt {n} of {total} for {uuids} found no cell: {why}",
                        n=number,
                        total=attempts,
                        uuids=request.instance_uuids,
                        why=_text(e),
                    )
                    await task.deferLater(self.clock, self.settings.retry_delay, lambda: None)
            except Exception as e:
                error = e
                break
            else:
                await self._forget(owned)
                return placed
        await self._fail(ctxt, list(request.instances), error)
        await self._forget(owned)
        return None

    async def _handed(self, ctxt: RequestContext, path: str, kwargs: dict[str, Any]) -> Any:
        """A build a parent handed over: placed once per build id, however
        often it arrives (see ReceivedHandOffs)."""
        request = make_request(ctxt, path, self.state, kwargs)
        build_id = build_id_of(kwargs)
        if build_id is None:
            return await self.attempt(request)
        return await self.handoffs.place_once(build_id, lambda: self.attempt(request))

    async def _forget(self, build_id: str | None) -> None:
        """The owned build is placed or failed for good: out of the journal."""
        if build_id is None or self.journal is None:
            return
        try:
            await self.journal.done(build_id)
        except Exception:
            self.log.failure("forgetting build {id} failed (resumed at restart)", id=build_id)

    def _path_of(self, message: Message, kwargs: Mapping[str, Any]) -> str:
        """This cell's path from where scheduling started: as the parent
        that handed the build over says, else the message's own path."""
        props = kwargs.get("filter_properties") or {}
        me = self.runner.my_name
        given = props.get(ROUTING_PATH) if isinstance(props, Mapping) else None
        if isinstance(given, str) and (given == me or given.endswith("!" + me)):
            return given
        return message.routing_path

    # -- one attempt ---------------------------------------------------------------

    def candidates(self) -> list[CellState]:
        """Every child, then this cell if it has no children or capacity."""
        every = self.state.get_child_cells()
        children = [c for c in every if self.link_usable(c)]
        me = self.state.get_my_state()
        return [*children, me] if (not every or me.capacities) else children

    def link_usable(self, cell: CellState) -> bool:
        """False for a child whose link health is down or disabled
        (cellsd.links.health); links without health checks allow all."""
        usable = getattr(self.runner.links, "usable", None)
        return usable is None or bool(usable(cell.name, cell.is_parent))

    async def attempt(
        self, request: SchedulingRequest, build_id: str | None = None, prefer: str | None = None
    ) -> dict[str, Any]:
        """Filter, weigh, and try the cells best first; where the build
        went, or NoCellsAvailable saying why each cell declined.

        ``build_id``: a build this cell owns in its journal, whose route is
        recorded before each cell is asked. ``prefer``: the route to ask
        first, before filtering and weighing (a build resumed after a
        restart, which may already be there)."""
        if self.compute is not None:
            await self.state.refresh_my_capacities()
        reasons: list[str] = []
        tried = None
        if prefer is not None:
            tried = self._cell_at(request, prefer)
            if tried is not None:
                placed = await self._try(tried, request, build_id, reasons)
                if placed is not None:
                    return placed
        cells = self.candidates()
        for f in self.filters:
            cells = list(f.filter_all(cells, request))
            if not cells:
                raise NoCellsAvailable(
                    f"No cell at {request.routing_path} passes the {f.name} filter.",
                    filter=f.name,
                )
        for weighed in weigh_cells(cells, self.weighers, request):
            if weighed.cell is tried:
                continue
            placed = await self._try(weighed.cell, request, build_id, reasons)
            if placed is not None:
                return placed
        self.stats["declined"] += 1
        raise NoCellsAvailable(
            "No cell could take the instances: " + "; ".join(reasons), reasons=reasons
        )

    def _cell_at(self, request: SchedulingRequest, route: str) -> CellState | None:
        """The child (or this cell) at ``route``, if it is still one."""
        for cell in [*self.state.get_child_cells(), self.state.get_my_state()]:
            if request.route_of(cell) == route:
                return cell
        return None

    async def _try(
        self,
        cell: CellState,
        request: SchedulingRequest,
        build_id: str | None,
        reasons: list[str],
    ) -> dict[str, Any] | None:
        """Ask one cell; where the build went, or None (why, in
        ``reasons``) when it declined. Request errors are raised."""
        route = request.route_of(cell)
        try:
            if cell.is_me:
                await self._record_route(build_id, route)
                return await self._build_here(request)
            return await self._hand_off(cell, request, build_id)
        except REQUEST_ERRORS:
            raise
        except CellsError as e:
            reasons.append(f"{route}: {_text(e)}")
            self.log.info(
                "{cell} declined {uuids}: {why}",
                cell=route,
                uuids=request.instance_uuids,
                why=_text(e),
            )
            return None

    async def _already_here(self, request: SchedulingRequest) -> set[str]:
        """The uuids of the request's instances this cell's compute built
        already (a build that reaches it again is answered, not redone);
        instances recorded without a cell (the API's own records at the
        top) do not count."""
        if self.store is None:
            return set()
        found = await self.store.instance_get_all_by_filters({"uuid": request.instance_uuids})
        return {str(i.uuid) for i in found if i.cell_name}

    async def _build_here(self, request: SchedulingRequest) -> dict[str, Any]:
        compute = self.compute
        if compute is None:
            raise NotAvailableHere(cell_name=request.routing_path, what="compute hosts")
        flavor, count = request.flavor, request.num_instances
        await self._build_lock.acquire()
        try:
            here = await self._already_here(request)
            if here and here >= set(request.instance_uuids):
                self.stats["already_here"] += 1
                self.log.info(
                    "{uuids} are built here already: answered, not built again",
                    uuids=request.instance_uuids,
                )
                return {"cell": request.routing_path, "instance_uuids": request.instance_uuids}
            count -= len(here)
            refresh = getattr(compute, "refresh_disabled", None)
            if refresh is not None:
                await refresh()
            room = room_for(compute, flavor)
            if room < count:
                name = flavor.name if flavor is not None else "the flavor"
                raise NoCellsAvailable(
                    f"no room on the hosts of {request.routing_path} for {count} x {name} "
                    f"(room for {room})"
                )
            rest = {k: v for k, v in request.build_kwargs.items() if k != "instances"}
            await compute.build_instances(request.ctxt, list(request.instances), **rest)
        finally:
            self._build_lock.release()
        self.stats["built_here"] += 1
        if self.propagator is not None:
            self.propagator.request()
        self.log.info(
            "building {uuids} at {cell}", uuids=request.instance_uuids, cell=request.routing_path
        )
        return {"cell": request.routing_path, "instance_uuids": request.instance_uuids}

    async def _record_route(self, build_id: str | None, route: str) -> None:
        """An owned build is about to be placed at ``route``: recorded, so
        that after a restart it asks there first."""
        if build_id is not None and self.journal is not None:
            await self.journal.route(build_id, route)

    async def _hand_off(
        self, cell: CellState, request: SchedulingRequest, build_id: str | None = None
    ) -> dict[str, Any]:
        route = request.route_of(cell)
        forwarded = dict(request.build_kwargs)
        props = dict(forwarded.get("filter_properties") or {})
        props[ROUTING_PATH] = route
        forwarded["filter_properties"] = props
        # Claimed before the child answers (and before the route is stored),
        # so that the builds weighed while this one is on its way see the
        # child as it will be.
        ram_mb, disk_mb = request.needs()
        self.state.claim_capacity(cell.name, ram_mb, disk_mb)
        try:
            await self._record_route(build_id, route)
            response = await self.runner.send_targeted(
                request.ctxt,
                f"{self.runner.my_name}!{cell.name}",
                "build_instances",
                {"build_inst_kwargs": forwarded},
                DOWN,
                need_response=True,
            )
            assert response is not None
            placed = response.value_or_raise()
        except BaseException:
            self.state.claim_capacity(cell.name, -ram_mb, -disk_mb)
            raise
        self.stats["handed_off"] += 1
        return placed if isinstance(placed, dict) else {"cell": route}

    # -- failure ---------------------------------------------------------------------

    async def _fail(
        self, ctxt: RequestContext, instances: Sequence[Any], error: BaseException
    ) -> None:
        """Every instance to ERROR with a fault saying why (§8.5 #31)."""
        self.stats["failed"] += 1
        why = _text(error)
        self.log.warn(
            "build of {uuids} failed: {why}", uuids=[uuid_of(i) for i in instances], why=why
        )
        code = getattr(error, "code", 500)
        details = "".join(traceback.format_exception_only(type(error), error))[:4096]
        for proto in instances:
            uuid = uuid_of(proto)
            if not uuid:
                continue
            fault = InstanceFault(
                instance_uuid=uuid,
                code=code if isinstance(code, int) else 500,
                message=why[:255],
                details=details,
                host=None,
            )
            try:
                await self._mark_error(ctxt, proto, uuid, fault)
            except Exception:
                self.log.failure("marking {uuid} ERROR failed", uuid=uuid)

    async def _mark_error(
        self, ctxt: RequestContext, proto: Any, uuid: str, fault: InstanceFault
    ) -> None:
        error: dict[str, Any] = {"vm_state": "error", "task_state": None}
        if self.state.is_top():
            if self.store is None:
                self.log.warn("no store at the top: {uuid} not marked ERROR", uuid=uuid)
                return
            try:
                await self.store.instance_update(uuid, error)
            except InstanceNotFound:
                # The API did not record it first: record it as it failed.
                record = proto.obj_clone() if isinstance(proto, Instance) else Instance(uuid=uuid)
                for name, value in error.items():
                    setattr(record, name, value)
                with contextlib.suppress(InstanceExists):
                    await self.store.instance_create(record, 0)
            await self.store.instance_fault_create(fault)
            return
        self.runner.instance_update_at_top(
            ctxt, Instance(uuid=uuid, vm_state="error", task_state=None)
        )
        self.runner.instance_fault_create_at_top(ctxt, fault.to_dict())
        if self.store is not None:
            with contextlib.suppress(InstanceNotFound):
                await self.store.instance_update(uuid, error)
