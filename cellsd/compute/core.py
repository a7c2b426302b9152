"""The machinery of the simulated compute: state changes, reports upward,
instance actions and events, background work, and timing.

Every change of an instance is one conditional write to the cell's store
(``instance_update`` with the expected states), which bumps the instance's
generation, followed by an ``instance_update_at_top`` report carrying the
whole instance (behaviour §8.4 #23: never only the changed fields). An
action first checks and sets its task_state in one such write, so two
actions racing for an instance cannot both start; the rest of the action
runs in the background, one step per ``step_delay`` seconds of the injected
clock (0: no waiting, but every intermediate task_state is still written).
"""

from __future__ import annotations

import contextlib
import datetime
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cellsd.compute import states as st
from cellsd.compute.resources import DEFAULT_FLAVORS, Claims, HostState, Need
from cellsd.context import RequestContext
from cellsd.errors import (
    CellsError,
    InstanceInvalidState,
    InstanceNotFound,
    NoValidHost,
    UnexpectedTaskStateError,
    UnexpectedVMStateError,
)
from cellsd.interfaces import ICellStore
from cellsd.objects import Flavor, Instance, InstanceAction, InstanceActionEvent, InstanceFault


class HostConfig(Protocol):
    """A ``[[compute.hosts]]`` entry (cellsd.config.HostSettings)."""

    @property
    def name(self) -> str: ...
    @property
    def vcpus(self) -> int: ...
    @property
    def memory_mb(self) -> int: ...
    @property
    def disk_gb(self) -> int: ...


class UpwardReports(Protocol):
    """How the compute tells the top about changes: the MessageRunner's
    ``*_at_top`` methods (a no-op in a cell without parents)."""

    def instance_update_at_top(self, ctxt: RequestContext, instance: Instance) -> Any: ...
    def instance_destroy_at_top(self, ctxt: RequestContext, instance: Instance) -> Any: ...
    def instance_fault_create_at_top(self, ctxt: RequestContext, instance_fault: Any) -> Any: ...
    def bdm_update_or_create_at_top(
        self, ctxt: RequestContext, bdm: Any, create: bool | None = None
    ) -> Any: ...
    def consoleauth_delete_tokens(self, ctxt: RequestContext, instance_uuid: str) -> Any: ...


class Superseded(Exception):
    """Another action took the instance over (a delete) or it is gone: the
    background work of the earlier action stops quietly."""


def flavor_of(value: Any) -> Flavor | None:
    if value is None or isinstance(value, Flavor):
        return value
    return Flavor.from_dict(value)


class ComputeCore:
    """State, timing and bookkeeping shared by every compute action."""

    log = Logger()

    def __init__(
        self,
        store: ICellStore,
        reporter: UpwardReports,
        clock: IReactorTime,
        hosts: Sequence[HostConfig],
        cell_name: str,
        step_delay: float = 0.0,
        flavors: Sequence[Flavor] = DEFAULT_FLAVORS,
        reserve_percent: float = 10.0,
        heartbeat_interval: float = 10.0,
        service_down_time: float = 60.0,
    ) -> None:
        self.store = store
        self.reporter = reporter
        self.clock = clock
        self.cell_name = cell_name
        #: Seconds each simulated step takes (a clean shutdown takes two).
        self.step_delay = step_delay
        self.flavors = tuple(flavors)
        self.reserve_percent = reserve_percent
        self.heartbeat_interval = heartbeat_interval
        self.service_down_time = service_down_time
        self.hosts: dict[str, HostState] = {
            h.name: HostState(h.name, h.vcpus, h.memory_mb, h.disk_gb) for h in hosts
        }
        self.claims = Claims(self.hosts)
        self._busy: set[Deferred[Any]] = set()
        self._idle: list[Deferred[None]] = []
        self._node_lock = defer.DeferredLock()
        #: Actions that arrive while startup() runs wait here: startup ends
        #: tasks a restart interrupted, and must not take a new build or
        #: action for one of them (None: no startup under way).
        self._startup_waiters: list[Deferred[None]] | None = None

    # -- start-up ------------------------------------------------------------------

    def expect_startup(self) -> None:
        """From now until startup() has finished, hold new builds and
        actions (a cell takes requests while its store and compute start)."""
        if self._startup_waiters is None:
            self._startup_waiters = []

    def startup_finished(self) -> None:
        waiters, self._startup_waiters = self._startup_waiters or [], None
        for w in waiters:
            w.callback(None)

    async def until_started(self) -> None:
        if self._startup_waiters is not None:
            waiter: Deferred[None] = Deferred()
            self._startup_waiters.append(waiter)
            await waiter

    # -- time -------------------------------------------------------------------

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)

    async def sleep(self, steps: float = 1.0) -> None:
        delay = self.step_delay * steps
        if delay > 0:
            await task.deferLater(self.clock, delay, lambda: None)

    # -- background work -----------------------------------------------------------

    def spawn(self, work: Awaitable[Any]) -> Deferred[Any]:
        """Run ``work`` on its own; settled() waits for it."""

        async def run() -> Any:
            try:
                return await work
            except defer.CancelledError:
                self.log.info("background compute work cancelled")
                return None
            except Exception:
                self.log.failure("background compute work failed")
                return None

        d = Deferred.fromCoroutine(run())
        self._busy.add(d)

        def done(result: Any) -> Any:
            self._busy.discard(d)
            if not self._busy:
                waiters, self._idle = self._idle, []
                for w in waiters:
                    if not w.called:  # a waiter that gave up was cancelled
                        w.callback(None)
            return result

        d.addBoth(done)
        return d

    def settled(self) -> Deferred[None]:
        if not self._busy:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    # -- reports upward ----------------------------------------------------------------

    def _log_report(self, d: Any, what: str) -> None:
        if isinstance(d, Deferred):
            d.addErrback(lambda f: self.log.failure("reporting {what} up failed", f, what=what))

    def report(self, ctxt: RequestContext, instance: Instance) -> None:
        self._log_report(self.reporter.instance_update_at_top(ctxt, instance), "an update")

    def report_destroy(self, ctxt: RequestContext, instance: Instance) -> None:
        self._log_report(self.reporter.instance_destroy_at_top(ctxt, instance), "a destroy")
        self._log_report(
            self.reporter.consoleauth_delete_tokens(ctxt, str(instance.uuid)), "console tokens"
        )

    # -- state changes -------------------------------------------------------------------

    async def save(
        self,
        ctxt: RequestContext,
        instance_uuid: str,
        values: Mapping[str, Any],
        expected_task_state: Any = None,
    ) -> Instance:
        """Write, bump the generation, report up. With ``expected_task_state``
        the write happens only if the task is still ours (else Superseded)."""
        try:
            inst = await self.store.instance_update(
                instance_uuid, dict(values), expected_task_state=expected_task_state
            )
        except (InstanceNotFound, UnexpectedTaskStateError) as e:
            raise Superseded(str(e)) from e
        self.report(ctxt, inst)
        return inst

    async def begin(
        self,
        ctxt: RequestContext,
        instance: Instance,
        action: st.Action,
        values: Mapping[str, Any] | None = None,
    ) -> Instance:
        """Check the instance's states for ``action`` and set its task, in
        one conditional write; InstanceInvalidState if they do not fit."""
        await self.until_started()
        uuid = str(instance.uuid)
        if action.task_state is None:
            # Actions that change no state: check against a fresh read.
            current = await self.store.instance_get_by_uuid(uuid)
            if action.vm_states is not None and current.vm_state not in action.vm_states:
                raise self.invalid(current, "vm_state", current.vm_state, action.method)
            if not current.host:
                raise self.invalid(current, "host", None, action.method)
            return current
        changes = {"task_state": action.task_state, **(values or {})}
        try:
            inst = await self.store.instance_update(
                uuid,
                changes,
                expected_vm_state=None if action.vm_states is None else list(action.vm_states),
                expected_task_state=(
                    None if action.task_states is None else list(action.task_states)
                ),
            )
        except UnexpectedVMStateError as e:
            raise self.invalid(instance, "vm_state", e.kwargs.get("actual"), action.method) from e
        except UnexpectedTaskStateError as e:
            raise self.invalid(instance, "task_state", e.kwargs.get("actual"), action.method) from e
        self.report(ctxt, inst)
        return inst

    @staticmethod
    def invalid(instance: Instance, attr: str, state: Any, method: str) -> InstanceInvalidState:
        return InstanceInvalidState(
            instance_uuid=instance.uuid, attr=attr, state=state, method=method
        )

    async def steps(self, ctxt: RequestContext, inst: Instance, action: st.Action) -> Instance:
        """Walk the action's intermediate task states, one step each."""
        current = action.task_state
        for step in action.steps:
            await self.sleep()
            inst = await self.save(ctxt, str(inst.uuid), {"task_state": step}, [current])
            current = step
        await self.sleep()
        return inst

    # -- instance actions and events ---------------------------------------------------

    async def record_start(self, ctxt: RequestContext, inst: Instance, action: str) -> int:
        """Record the action (per request id) and its compute event."""
        recorded = await self.store.action_start(
            InstanceAction(
                action=action,
                instance_uuid=inst.uuid,
                request_id=ctxt.request_id,
                user_id=ctxt.user_id,
                project_id=ctxt.project_id,
            )
        )
        assert recorded.id is not None
        await self.store.action_event_start(
            InstanceActionEvent(
                event=f"compute_{action}", action_id=recorded.id, host=inst.host or None
            )
        )
        return recorded.id

    async def record_finish(
        self,
        ctxt: RequestContext,
        inst: Instance,
        action_id: int,
        action: str,
        error: BaseException | None = None,
        details: str | None = None,
    ) -> None:
        try:
            await self.store.action_event_finish(
                action_id,
                f"compute_{action}",
                "Error" if error is not None else "Success",
                traceback="".join(traceback.format_exception(error)) if error else None,
                details=details,
            )
            await self.store.action_finish(
                str(inst.uuid), ctxt.request_id, str(error) if error else None
            )
        except defer.CancelledError:
            raise
        except Exception:
            self.log.failure("recording the end of {action} failed", Failure(), action=action)

    async def run_action(
        self,
        ctxt: RequestContext,
        inst: Instance,
        action: st.Action,
        work: Callable[[], Awaitable[str | None]],
    ) -> Deferred[Any]:
        """Record ``action`` and run ``work`` (returning event details) in
        the background; a failure marks the instance ERROR with a fault."""
        action_id = await self.record_start(ctxt, inst, action.record_as)

        async def background() -> None:
            try:
                details = await work()
            except defer.CancelledError:
                raise  # shutting down: leave the instance as it is
            except Superseded as e:
                self.log.info(
                    "{action} of {uuid} stopped: {why}", action=action.method, uuid=inst.uuid, why=e
                )
                await self.record_finish(ctxt, inst, action_id, action.record_as, e)
            except Exception as e:
                if isinstance(e, CellsError):
                    self.log.warn(
                        "{action} of {uuid} failed: {error}",
                        action=action.method,
                        uuid=inst.uuid,
                        error=e,
                    )
                else:
                    self.log.failure(
                        "{action} of {uuid} failed", action=action.method, uuid=inst.uuid
                    )
                await self.fail(ctxt, inst, e)
                await self.record_finish(ctxt, inst, action_id, action.record_as, e)
            else:
                await self.record_finish(ctxt, inst, action_id, action.record_as, None, details)

        return self.spawn(background())

    async def fail(self, ctxt: RequestContext, inst: Instance, error: BaseException) -> None:
        """Record a fault (here and at the top) and put the instance in ERROR."""
        uuid = str(inst.uuid)
        code = getattr(error, "code", 500)
        fault = await self.store.instance_fault_create(
            InstanceFault(
                instance_uuid=uuid,
                code=code if isinstance(code, int) else 500,
                message=str(error)[:255] or type(error).__name__,
                details="".join(traceback.format_exception(error))[:4096],
                host=inst.host,
            )
        )
        self._log_report(
            self.reporter.instance_fault_create_at_top(ctxt, fault.to_dict()), "a fault"
        )
        with contextlib.suppress(Superseded):
            await self.save(ctxt, uuid, {"vm_state": st.ERROR, "task_state": None})

    # -- hosts and claims -------------------------------------------------------------------

    async def refresh_disabled(self) -> None:
        """Learn which of our hosts' compute services are disabled."""
        disabled = {s.host for s in await self.store.service_get_all(disabled=True)}
        for host in self.hosts.values():
            host.disabled = host.name in disabled

    def pick_host(self, need: Need, exclude: Sequence[str | None] = ()) -> str | None:
        """First fit: the first enabled host, in configuration order, with
        room for ``need``."""
        for host in self.hosts.values():
            if host.name not in exclude and host.fits(need):
                return host.name
        return None

    def claim_or_fail(self, uuid: str, kind: str, host: str | None, need: Need) -> str:
        if host is None or not self.claims.claim(uuid, kind, host, need):
            raise NoValidHost(reason="No host of this cell has room for the flavor.")
        return host

    async def write_nodes(self) -> None:
        """Write every host's usage to its compute node, one writer at a time."""

        async def write() -> None:
            for host in self.hosts.values():
                if host.node_id is not None:
                    await self.store.compute_node_update(host.node_id, host.node_values())

        await self._node_lock.run(lambda: Deferred.fromCoroutine(write()))
