"""Test doubles shipped with cellsd, for our tests and for users' tests.

:class:`MemoryTree` runs a whole tree of cells in one process: one
MessageRunner per cell, joined by in-memory links that carry the same bytes
real links carry, with time from the given clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime

from cellsd.links.memory import MemoryNetwork
from cellsd.messaging.methods import BroadcastMessageMethods, TargetedMessageMethods
from cellsd.messaging.runner import MessageRunner
from cellsd.state import CellStateManager


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
    ) -> None:
        self.clock = clock
        self.network = MemoryNetwork(clock)
        self.runners: dict[str, MessageRunner] = {}
        parents_of: dict[str, list[str]] = {}
        names: list[str] = []
        for parent, kids in children_of.items():
            names.extend(n for n in [parent, *kids] if n not in names)
            for kid in kids:
                parents_of.setdefault(kid, []).append(parent)
        for name in names:
            neighbours = [Neighbour(p, True) for p in parents_of.get(name, [])]
            neighbours += [Neighbour(c, False) for c in children_of.get(name, [])]
            state = CellStateManager(name, neighbours, clock, capabilities={"name": [name]})
            runner = MessageRunner(
                state,
                self.network.links_for(name),
                clock,
                max_hop_count=max_hop_count,
                call_timeout=call_timeout,
            )
            runner.install_methods(TargetedMessageMethods(runner), BroadcastMessageMethods(runner))
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
