"""What a cell knows about itself and its neighbours.

One :class:`CellState` for this cell and one per configured parent and child:
their capabilities, capacities, and when we last heard from them. Times come
from the injected clock (seconds), so mute detection is testable.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cellsd.errors import CellNotFound

Capabilities = dict[str, set[str]]


class NeighbourConfig(Protocol):
    """What the state manager needs of a configured neighbour."""

    @property
    def name(self) -> str: ...
    @property
    def is_parent(self) -> bool: ...
    @property
    def weight_offset(self) -> float: ...
    @property
    def weight_scale(self) -> float: ...
    @property
    def endpoint(self) -> str | None: ...


@attrs.define
class CellState:
    """One cell as this cell sees it."""

    name: str
    is_me: bool = False
    is_parent: bool = False
    capabilities: Capabilities = attrs.field(factory=dict)
    capacities: dict[str, Any] = attrs.field(factory=dict)
    #: Clock seconds of the last capabilities/capacities update; None: never.
    last_seen: float | None = None
    weight_offset: float = 0.0
    weight_scale: float = 1.0
    endpoint: str | None = None

    def update_capabilities(self, capabilities: Mapping[str, Iterable[str]], now: float) -> None:
        self.capabilities = {k: set(v) for k, v in capabilities.items()}
        self.last_seen = now

    def update_capacities(self, capacities: Mapping[str, Any], now: float) -> None:
        self.capacities = copy.deepcopy(dict(capacities))
        self.last_seen = now

    @property
    def db_info(self) -> dict[str, Any]:
        """The neighbour's configuration record (empty for this cell)."""
        if self.is_me:
            return {}
        return {
            "is_parent": self.is_parent,
            "weight_offset": self.weight_offset,
            "weight_scale": self.weight_scale,
            "endpoint": self.endpoint,
        }


def add_capacities(total: dict[str, Any], more: Mapping[str, Any]) -> None:
    """Add ``more`` into ``total`` key by key, numbers at the leaves."""
    for key, value in more.items():
        if isinstance(value, Mapping):
            sub = total.setdefault(key, {})
            if isinstance(sub, dict):
                add_capacities(sub, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            current = total.get(key, 0)
            # A child whose report has another shape than ours is skipped
            # there, as a dict meeting a number is above.
            if isinstance(current, int | float) and not isinstance(current, bool):
                total[key] = current + value


class CellStateManager:
    """This cell and its neighbours; capability and capacity bookkeeping."""

    log = Logger()

    def __init__(
        self,
        my_name: str,
        neighbours: Iterable[NeighbourConfig],
        clock: IReactorTime,
        capabilities: Mapping[str, Iterable[str]] | None = None,
        mute_child_interval: float = 300.0,
        capacity_source: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.clock = clock
        self.mute_child_interval = mute_child_interval
        self._capacity_source = capacity_source
        self.my_cell_state = CellState(my_name, is_me=True)
        self.my_cell_state.update_capabilities(capabilities or {}, clock.seconds())
        self.parent_cells: dict[str, CellState] = {}
        self.child_cells: dict[str, CellState] = {}
        self.set_neighbours(neighbours)

    @property
    def my_name(self) -> str:
        return self.my_cell_state.name

    def set_neighbours(self, neighbours: Iterable[NeighbourConfig]) -> None:
        """Apply a (re)loaded neighbour list; known neighbours keep their state."""
        parents: dict[str, CellState] = {}
        children: dict[str, CellState] = {}
        for n in neighbours:
            side, old_side = (
                (parents, self.parent_cells)
                if n.is_parent
                else (
                    children,
                    self.child_cells,
                )
            )
            state = old_side.get(n.name) or CellState(n.name, is_parent=n.is_parent)
            state.weight_offset = n.weight_offset
            state.weight_scale = n.weight_scale
            state.endpoint = n.endpoint
            side[n.name] = state
        self.parent_cells, self.child_cells = parents, children

    # -- lookups ---------------------------------------------------------------

    def get_my_state(self) -> CellState:
        return self.my_cell_state

    def get_child_cells(self) -> list[CellState]:
        return list(self.child_cells.values())

    def get_parent_cells(self) -> list[CellState]:
        return list(self.parent_cells.values())

    def get_child_cell(self, name: str) -> CellState | None:
        return self.child_cells.get(name)

    def get_parent_cell(self, name: str) -> CellState | None:
        return self.parent_cells.get(name)

    def is_top(self) -> bool:
        return not self.parent_cells

    def _neighbour(self, name: str) -> CellState | None:
        return self.child_cells.get(name) or self.parent_cells.get(name)

    # -- updates from neighbours ----------------------------------------------

    def update_cell_capabilities(
        self, cell_name: str, capabilities: Mapping[str, Iterable[str]]
    ) -> bool:
        cell = self._neighbour(cell_name)
        if cell is None:
            self.log.error(
                "Unknown cell {cell_name} sent us capabilities; ignored",
                cell_name=cell_name,
            )
            return False
        cell.update_capabilities(capabilities, self.clock.seconds())
        return True

    def update_cell_capacities(self, cell_name: str, capacities: Mapping[str, Any]) -> bool:
        cell = self._neighbour(cell_name)
        if cell is None:
            self.log.error(
                "Unknown cell {cell_name} sent us capacities; ignored",
                cell_name=cell_name,
            )
            return False
        cell.update_capacities(capacities, self.clock.seconds())
        return True

    def refresh_my_capacities(self) -> None:
        """Recompute this cell's own capacities from its capacity source."""
        if self._capacity_source is not None:
            self.my_cell_state.update_capacities(self._capacity_source(), self.clock.seconds())

    # -- mute children -----------------------------------------------------------

    def is_mute(self, cell: CellState) -> bool:
        """A child not heard from within mute_child_interval (or ever)."""
        if cell.is_me:
            return False
        if cell.last_seen is None:
            return True
        return self.clock.seconds() - cell.last_seen > self.mute_child_interval

    def last_seen_age(self, cell: CellState) -> float | None:
        if cell.last_seen is None:
            return None
        return self.clock.seconds() - cell.last_seen

    # -- aggregates ----------------------------------------------------------------

    def get_our_capabilities(self, include_children: bool = True) -> Capabilities:
        """Own capabilities unioned with every child that is not mute."""
        caps = {k: set(v) for k, v in self.my_cell_state.capabilities.items()}
        if include_children:
            for child in self.child_cells.values():
                if self.is_mute(child):
                    continue
                for key, values in child.capabilities.items():
                    caps.setdefault(key, set()).update(values)
        return caps

    def get_our_capacities(self, include_children: bool = True) -> dict[str, Any]:
        """Own capacities plus every child's (mute ones included)."""
        total = copy.deepcopy(self.my_cell_state.capacities)
        if include_children:
            for child in self.child_cells.values():
                add_capacities(total, child.capacities)
        return total

    def get_capacities(self, cell_name: str | None = None) -> dict[str, Any]:
        if not cell_name or cell_name == self.my_name:
            return self.get_our_capacities()
        child = self.child_cells.get(cell_name)
        if child is None:
            raise CellNotFound(cell_name=cell_name)
        return copy.deepcopy(child.capacities)

    def get_cell_info_for_neighbors(self) -> list[dict[str, Any]]:
        """Children first, then parents: name, capabilities and config."""
        out = []
        for cell in [*self.child_cells.values(), *self.parent_cells.values()]:
            out.append(
                {
                    "name": cell.name,
                    "capabilities": {k: sorted(v) for k, v in cell.capabilities.items()},
                    "is_parent": cell.is_parent,
                    "weight_offset": cell.weight_offset,
                    "weight_scale": cell.weight_scale,
                    "endpoint": cell.endpoint,
                    "mute": (not cell.is_parent) and self.is_mute(cell),
                    "last_seen_age": self.last_seen_age(cell),
                }
            )
        return out
