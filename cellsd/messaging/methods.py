"""The work a message does when it reaches a cell.

Each public method here implements one method of ITargetedMessageMethods or
IBroadcastMessageMethods; the runner refuses any name the interfaces do not
declare. A method receives the message first and its keyword arguments after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from cellsd.interfaces import (
    IBroadcastMessageMethods,
    ICellScheduler,
    ICellStore,
    IComputeAPI,
    ITargetedMessageMethods,
)
from cellsd.messaging.message import Message
from cellsd.messaging.methods_broadcast import BroadcastCellWork
from cellsd.messaging.methods_targeted import TargetedCellWork
from cellsd.messaging.runner import MessageRunner
from cellsd.scheduler.propagation import StatePropagator
from cellsd.scheduler.scheduler import CellsScheduler
from cellsd.scheduler.settings import SchedulerSettings


def _ping(runner: MessageRunner, message: Message, detail: bool) -> dict[str, Any]:
    answer = {
        "cell": message.routing_path,
        "name": runner.my_name,
        "hop_count": message.hop_count,
        "is_top": runner.state.is_top(),
        "children": sorted(c.name for c in runner.state.get_child_cells()),
    }
    if detail:
        # Only when asked: a plain ping is what round trips are timed with.
        answer["status"] = _status(runner)
    return answer


def _status(runner: MessageRunner) -> dict[str, Any]:
    """What the status page and ``cellsctl capacities`` show of a cell: its
    own and aggregated capacities, and how it sees each child (link, its
    health and why, mute, last seen, capacities), for the page of any cell
    above."""
    state = runner.state
    link_states = getattr(runner.links, "link_states", None)
    links = link_states()["children"] if link_states is not None else {}
    children = {}
    for child in state.get_child_cells():
        link = links.get(child.name, {})
        children[child.name] = {
            "link_up": link.get("up"),
            "reconnects": link.get("reconnects"),
            "refused": link.get("refused"),
            "health": link.get("state"),
            "health_reason": link.get("reason"),
            "mute": state.is_mute(child),
            "last_seen_age": state.last_seen_age(child),
            "capacities": state.get_capacities(child.name),
        }
    return {
        "capacities": state.get_my_state().capacities,
        "aggregate": state.get_our_capacities(),
        "children": children,
    }


@implementer(ITargetedMessageMethods)
class TargetedMessageMethods(TargetedCellWork):
    """Targeted message methods: the state messages of behaviour §5 here,
    the seed's operations (§3.2) in TargetedCellWork. The cell's store,
    compute layer and cells scheduler are its collaborators (None: the
    messages that need one answer NotAvailableHere). With a propagator,
    reports and announces ask it for a (coalesced) push upward instead of
    pushing at once, as Liberty did for every single report."""

    def __init__(
        self,
        runner: MessageRunner,
        store: ICellStore | None = None,
        compute: IComputeAPI | None = None,
        scheduler: ICellScheduler | None = None,
        propagator: StatePropagator | None = None,
    ) -> None:
        self.runner = runner
        self.state = runner.state
        self.store = store
        self.compute = compute
        self.scheduler = scheduler
        self.propagator = propagator

    def ping(self, message: Message, detail: bool = False) -> dict[str, Any]:
        return _ping(self.runner, message, detail)

    def update_capabilities(
        self,
        message: Message,
        cell_name: str,
        capabilities: Mapping[str, Iterable[str]],
    ) -> Deferred[None] | None:
        if not self.state.update_cell_capabilities(cell_name, capabilities):
            return None
        if self.propagator is not None:
            self.propagator.request()
            return None
        # Pass the news on so it reaches the top within one hop each.
        return self.runner.tell_parents_our_capabilities(message.ctxt)

    def update_capacities(
        self, message: Message, cell_name: str, capacities: Mapping[str, Any]
    ) -> Deferred[None] | None:
        if not self.state.update_cell_capacities(cell_name, capacities):
            return None
        if self.propagator is not None:
            self.propagator.request()
            return None
        return self.runner.tell_parents_our_capacities(message.ctxt)

    def announce_capabilities(self, message: Message) -> Deferred[None] | None:
        if self.propagator is not None:
            self.propagator.request()
            return None
        return self.runner.tell_parents_our_capabilities(message.ctxt)

    def announce_capacities(self, message: Message) -> Deferred[None] | None:
        if self.propagator is not None:
            self.propagator.request()
            return None
        d = self.state.refresh_my_capacities()
        return d.addCallback(lambda _: self.runner.tell_parents_our_capacities(message.ctxt))


@implementer(IBroadcastMessageMethods)
class BroadcastMessageMethods(BroadcastCellWork):
    """Broadcast message methods (the seed's in BroadcastCellWork, §3.3)."""

    def __init__(
        self,
        runner: MessageRunner,
        store: ICellStore | None = None,
        compute: IComputeAPI | None = None,
    ) -> None:
        self.runner = runner
        self.store = store
        self.compute = compute

    def ping(self, message: Message, detail: bool = False) -> dict[str, Any]:
        return _ping(self.runner, message, detail)


def install_cell_methods(
    runner: MessageRunner,
    store: ICellStore | None = None,
    compute: IComputeAPI | None = None,
    scheduler: ICellScheduler | None = None,
    propagator: StatePropagator | None = None,
    scheduler_settings: SchedulerSettings | None = None,
) -> None:
    """Give ``runner`` the methods of a cell with these collaborators. A
    cell with a store gets a CellsScheduler (cellsd.scheduler) with
    ``scheduler_settings`` unless ``scheduler`` is given; with a
    ``propagator``, state pushes upward are coalesced."""
    if scheduler is None and store is not None:
        scheduler = CellsScheduler(runner, store, compute, scheduler_settings, propagator)
    runner.install_methods(
        TargetedMessageMethods(runner, store, compute, scheduler, propagator),
        BroadcastMessageMethods(runner, store, compute),
    )
