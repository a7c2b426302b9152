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

from cellsd.interfaces import IBroadcastMessageMethods, ITargetedMessageMethods
from cellsd.messaging.message import Message
from cellsd.messaging.runner import MessageRunner


def _ping(runner: MessageRunner, message: Message) -> dict[str, Any]:
    return {
        "cell": message.routing_path,
        "name": runner.my_name,
        "hop_count": message.hop_count,
        "is_top": runner.state.is_top(),
        "children": sorted(c.name for c in runner.state.get_child_cells()),
    }


@implementer(ITargetedMessageMethods)
class TargetedMessageMethods:
    """Targeted message methods: the state messages of behaviour §5."""

    def __init__(self, runner: MessageRunner) -> None:
        self.runner = runner
        self.state = runner.state

    def ping(self, message: Message) -> dict[str, Any]:
        return _ping(self.runner, message)

    def update_capabilities(
        self,
        message: Message,
        cell_name: str,
        capabilities: Mapping[str, Iterable[str]],
    ) -> Deferred[None] | None:
        if not self.state.update_cell_capabilities(cell_name, capabilities):
            return None
        # Pass the news on so it reaches the top within one hop each.
        return self.runner.tell_parents_our_capabilities(message.ctxt)

    def update_capacities(
        self, message: Message, cell_name: str, capacities: Mapping[str, Any]
    ) -> Deferred[None] | None:
        if not self.state.update_cell_capacities(cell_name, capacities):
            return None
        return self.runner.tell_parents_our_capacities(message.ctxt)

    def announce_capabilities(self, message: Message) -> Deferred[None]:
        return self.runner.tell_parents_our_capabilities(message.ctxt)

    def announce_capacities(self, message: Message) -> Deferred[None]:
        self.state.refresh_my_capacities()
        return self.runner.tell_parents_our_capacities(message.ctxt)


@implementer(IBroadcastMessageMethods)
class BroadcastMessageMethods:
    """Broadcast message methods."""

    def __init__(self, runner: MessageRunner) -> None:
        self.runner = runner

    def ping(self, message: Message) -> dict[str, Any]:
        return _ping(self.runner, message)
