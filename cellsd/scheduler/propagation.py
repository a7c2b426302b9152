"""Capabilities and capacities on their way up the tree (behaviour §5.6).

Liberty pushed a cell's whole aggregate to its parents after *every* child
report, so a hundred children reporting together caused a hundred upward
pushes at each level. Here a report only asks for a push
(:meth:`StatePropagator.request`): the first request arms a timer of
``window`` seconds on the injected clock and every request until it fires
rides along, so a burst costs one push per window, and the top is current
within a window per level. The periodic push, the push on a parent's
link-up and the answer to a parent's ``announce_*`` go through the same
object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cellsd.context import get_admin_context
from cellsd.deferreds import async_to_deferred
from cellsd.state import CellState

if TYPE_CHECKING:
    from cellsd.messaging.runner import MessageRunner


class StatePropagator:
    """Pushes this cell's capabilities and capacities to its parents."""

    log = Logger()

    def __init__(self, runner: MessageRunner, clock: IReactorTime, window: float = 0.5) -> None:
        self.runner = runner
        self.clock = clock
        self.window = window
        #: Pushes made to the parents (each: capabilities, then capacities).
        self.pushes = 0
        #: Requests received (child reports, announces, builds here).
        self.requests = 0
        self._pending: IDelayedCall | None = None

    def request(self) -> None:
        """Push within ``window`` seconds, together with every other
        request made until then."""
        self.requests += 1
        if self._pending is not None and self._pending.active():
            return
        self._pending = self.clock.callLater(self.window, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.push_now().addErrback(lambda f: self.log.failure("pushing state up failed", f))

    def cancel(self) -> None:
        """Drop a push that is waiting (the cell is stopping)."""
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    @async_to_deferred
    async def push_now(self, parents: list[CellState] | None = None) -> None:
        """Refresh our own capacities, then tell ``parents`` (default: all)
        our capabilities and capacities."""
        runner = self.runner
        await runner.state.refresh_my_capacities()
        targets = runner.state.get_parent_cells() if parents is None else parents
        if not targets:
            return
        self.pushes += 1
        ctxt = get_admin_context()
        await defer.gatherResults(
            [
                runner.tell_parents_our_capabilities(ctxt, targets),
                runner.tell_parents_our_capacities(ctxt, targets),
            ]
        )

    def silent_children(self) -> list[CellState]:
        """Children that are mute although their link is up."""
        state, links = self.runner.state, self.runner.links
        return [
            c
            for c in state.get_child_cells()
            if state.is_mute(c) and links.link_for(c.name, False) is not None
        ]

    def ask_silent_children(self) -> Deferred[None]:
        """Ask the children we have a link to but no news from to announce
        themselves (as Liberty's middle cells asked every child at start)."""
        quiet = self.silent_children()
        if not quiet:
            return defer.succeed(None)
        ctxt = get_admin_context()
        return defer.gatherResults(
            [
                self.runner.ask_children_for_capabilities(ctxt, quiet),
                self.runner.ask_children_for_capacities(ctxt, quiet),
            ]
        ).addCallback(lambda _: None)
