"""What a cell knows about itself and its neighbours.

One :class:`CellState` for this cell and one per configured parent and child:
their capabilities, capacities, and when we last heard from them. Times come
from the injected clock (seconds), so mute detection is testable.

Two departures from Liberty (behaviour §8.5): a child's advertised capacity
is decremented by what this cell has handed it since its last report (#29,
see :meth:`CellStateManager.claim_capacity`), and a mute child's stale
capacities leave the aggregate sent upward as its capabilities do (#36).
Own capacities come from a ``capacity_source``, which may answer with a
Deferred (cellsd.scheduler.capacity reads them from the cell's store).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

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
    #: RAM and disk (MB) handed to this cell since its last capacity report.
    claimed_ram_mb: float = 0.0
    claimed_disk_mb: float = 0.0

    def update_capabilities(self, capabilities: Mapping[str, Iterable[str]], now: float) -> None:
        self.capabilities = {k: set(v) for k, v in capabilities.items()}
        self.last_seen = now

    def update_capacities(self, capacities: Mapping[str, Any], now: float) -> None:
        self.capacities = copy.deepcopy(dict(capacities))
        self.claimed_ram_mb = self.claimed_disk_mb = 0.0
        self.last_seen = now

    def effective_capacities(self) -> dict[str, Any]:
        """The last report less what was handed to the cell since (a copy)."""
        return apply_claims(self.capacities, self.claimed_ram_mb, self.claimed_disk_mb)

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


def apply_claims(capacities: Mapping[str, Any], ram_mb: float, disk_mb: float) -> dict[str, Any]:
    """A copy of behaviour §5.4 capacities with ``ram_mb`` and ``disk_mb``
    taken: each total drops by the amount, each slot of size s by
    ceil(amount / s) units (never below 0). Summing claims before dividing
    keeps the estimate within one unit per slot however many builds."""
    out = copy.deepcopy(dict(capacities))
    for key, taken in (("ram_free", ram_mb), ("disk_free", disk_mb)):
        part = out.get(key)
        if not taken or not isinstance(part, dict):
            continue
        total = part.get("total_mb")
        if isinstance(total, int | float) and not isinstance(total, bool):
            part["total_mb"] = total - taken
        units = part.get("units_by_mb")
        if isinstance(units, dict):
            for slot, count in units.items():
                size = _slot_size(slot)
                if size > 0 and isinstance(count, int | float) and not isinstance(count, bool):
                    units[slot] = max(0, int(count) - math.ceil(taken / size))
    return out


def _slot_size(slot: Any) -> int:
    try:
        return int(slot)
    except (TypeError, ValueError):
        return 0


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
        capacity_source: Callable[[], Any] | None = None,
    ) -> None:
        self.clock = clock
        self.mute_child_interval = mute_child_interval
        self._capacity_source = capacity_source
        #: Refreshes started and the newest applied: an older answer that
        #: arrives late never replaces a newer one.
        self._refreshes = self._applied = 0
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

    def refresh_my_capacities(self) -> Deferred[None]:
        """Recompute this cell's own capacities from its capacity source.

        A source answering at once updates them before this returns; one
        answering with a Deferred (or a coroutine) updates them when it
        fires. Either way the returned Deferred fires once they are applied
        (a failing source is logged and the old figures kept)."""
        if self._capacity_source is None:
            return defer.succeed(None)
        self._refreshes += 1
        number = self._refreshes
        try:
            result = self._capacity_source()
        except Exception:
            self.log.failure("computing our capacities failed")
            return defer.succeed(None)
        if isinstance(result, Deferred) or inspect.iscoroutine(result):
            d: Deferred[Any] = (
                result if isinstance(result, Deferred) else Deferred.fromCoroutine(result)
            )
            return d.addCallbacks(self._apply_mine, self._source_failed, callbackArgs=(number,))
        self._apply_mine(result, number)
        return defer.succeed(None)

    def _apply_mine(self, capacities: Mapping[str, Any], number: int) -> None:
        if number > self._applied:
            self._applied = number
            self.my_cell_state.update_capacities(capacities, self.clock.seconds())

    def _source_failed(self, failure: Failure) -> None:
        self.log.failure("computing our capacities failed", failure)

    def set_capacity_source(self, source: Callable[[], Any] | None) -> None:
        """Where own capacities come from from now on (see refresh)."""
        self._capacity_source = source

    def claim_capacity(self, cell_name: str, ram_mb: float, disk_mb: float) -> None:
        """Optimistically take what is being handed to child ``cell_name``
        off its advertised capacities, until its next report (§8.5 #29).
        Negative amounts give a claim back (never below nothing)."""
        child = self.child_cells.get(cell_name)
        if child is not None:
            child.claimed_ram_mb = max(0.0, child.claimed_ram_mb + ram_mb)
            child.claimed_disk_mb = max(0.0, child.claimed_disk_mb + disk_mb)

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
        """Own capacities plus every child's that is not mute, less what was
        handed to each since its report. (Liberty also added the stale
        figures of mute children, whose capabilities it left out: §8.5 #36.)"""
        total = copy.deepcopy(self.my_cell_state.capacities)
        if include_children:
            for child in self.child_cells.values():
                if not self.is_mute(child):
                    add_capacities(total, child.effective_capacities())
        return total

    def get_capacities(self, cell_name: str | None = None) -> dict[str, Any]:
        """The aggregate (no name or our own), or a child's last report less
        what was handed to it since; CellNotFound for any other name."""
        if not cell_name or cell_name == self.my_name:
            return self.get_our_capacities()
        child = self.child_cells.get(cell_name)
        if child is None:
            raise CellNotFound(cell_name=cell_name)
        return child.effective_capacities()

    def get_cell_info_for_neighbors(self) -> list[dict[str, Any]]:
        """Children first, then parents (behaviour §5.5): name, capabilities,
        config, where the neighbour is reached (``rpc_host``/``rpc_port``
        from a parent's endpoint; None for children, who dial us), and
        whether a child is mute and how long ago it was heard from."""
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
                    **endpoint_address(cell.endpoint),
                    "mute": (not cell.is_parent) and self.is_mute(cell),
                    "last_seen_age": self.last_seen_age(cell),
                }
            )
        return out


def endpoint_address(endpoint: str | None) -> dict[str, Any]:
    """``username``, ``rpc_host`` and ``rpc_port`` of a client endpoint
    string (``tcp:HOST:PORT``, ``tls:HOST:PORT``, ``unix:PATH``) or a URL
    (``amqp://user@host:port/``); None where it has no such part."""
    out: dict[str, Any] = {"username": None, "rpc_host": None, "rpc_port": None}
    if not endpoint:
        return out
    if "://" in endpoint:
        url = urlsplit(endpoint)
        try:
            port = url.port
        except ValueError:
            port = None
        out.update(username=url.username, rpc_host=url.hostname, rpc_port=port)
        return out
    kind, _, rest = endpoint.partition(":")
    parts = [p for p in rest.split(":") if p]
    positional = [p for p in parts if "=" not in p]
    named = dict(p.split("=", 1) for p in parts if "=" in p)
    if kind == "unix":
        out["rpc_host"] = positional[0] if positional else named.get("path")
        return out
    host = positional[0] if positional else named.get("host")
    port_text = positional[1] if len(positional) > 1 else named.get("port")
    out["rpc_host"] = host
    out["rpc_port"] = int(port_text) if port_text and port_text.isdigit() else None
    return out
