"""The cells scheduler's weighers (behaviour §6.4), with the §8.5 fixes.

Each weigher gives every candidate a raw value. Normalization runs over the
candidates of this request only, ``(v - min) / (max - min)`` (all 0 when
they are equal): Liberty remembered min and max on the weigher across
requests, so one request's ranking depended on earlier ones (§8.5 #35). The
normalized value times the weigher's multiplier is added to the cell's
weight, and the sum is multiplied by the cell's ``weight_scale`` (1.0 for
this cell; Liberty stored the field and ignored it). Cells are then sorted
by weight, highest first; ties keep the candidate order (children as
configured, this cell last).

* ``ram_by_instance_type``: how many more instances of the requested flavor
  the cell can take (its ``ram_free.units_by_mb`` for the flavor's RAM, less
  what was handed to it since its last report); multiplier 10.0 (negative:
  stack instead of spread). A flavor whose size the cell does not count a
  slot for is estimated from its free total.
* ``mute_child``: 1.0 for a mute child (§5.7), else 0; multiplier -10000.0.
* ``weight_offset``: the neighbour's configured ``weight_offset`` (0 for
  this cell); multiplier 1.0. After normalization it ranks cells by offset
  with at most ``multiplier`` of influence: to force a default cell, give
  it the highest offset and this weigher a multiplier above the RAM
  weigher's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from cellsd.interfaces import ICellWeigher
from cellsd.scheduler.request import SchedulingRequest
from cellsd.state import CellState

log = Logger()


@implementer(ICellWeigher)
class RamByInstanceTypeWeigher:
    """Prefer the cells that can take the most instances of the flavor."""

    name = "ram_by_instance_type"
    multiplier = 10.0
    normalize = True

    def weigh(self, cell: CellState, request: SchedulingRequest) -> float:
        flavor = request.flavor
        size = int(flavor.memory_mb or 0) if flavor is not None else 0
        ram = request.capacities_of(cell).get("ram_free") or {}
        units = (ram.get("units_by_mb") or {}).get(str(size))
        if units is not None:
            return float(units)
        if size <= 0:
            return 0.0
        return float(max(0, math.floor(float(ram.get("total_mb") or 0) / size)))


@implementer(ICellWeigher)
class MuteChildWeigher:
    """Penalize children that have not reported within the mute interval."""

    name = "mute_child"
    multiplier = -10000.0
    normalize = True

    def weigh(self, cell: CellState, request: SchedulingRequest) -> float:
        if request.state.is_mute(cell):
            log.warn("cell {cell} is mute; it is weighed down", cell=cell.name)
            return 1.0
        return 0.0


@implementer(ICellWeigher)
class WeightOffsetWeigher:
    """Rank cells by the ``weight_offset`` their configuration gives them."""

    name = "weight_offset"
    multiplier = 1.0
    normalize = True

    def weigh(self, cell: CellState, request: SchedulingRequest) -> float:
        return 0.0 if cell.is_me else float(cell.weight_offset)


#: The weighers ``[scheduler] weighers`` may name without a dotted path.
BUILTIN_WEIGHERS: dict[str, type[Any]] = {
    w.name: w for w in (MuteChildWeigher, RamByInstanceTypeWeigher, WeightOffsetWeigher)
}


@attrs.frozen
class WeighedCell:
    cell: CellState
    weight: float
    #: Each weigher's contribution (multiplier x normalized value).
    parts: Mapping[str, float]


def normalize(values: Sequence[float]) -> list[float]:
    """Onto [0, 1] over these values only; all 0 when they are equal."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def weigh_cells(
    cells: Sequence[CellState],
    weighers: Sequence[tuple[Any, float]],
    request: SchedulingRequest,
) -> list[WeighedCell]:
    """The cells, best first, weighed by ``(weigher, multiplier)`` pairs.
    With one candidate or none nothing is weighed (weight 0)."""
    if len(cells) <= 1:
        return [WeighedCell(c, 0.0, {}) for c in cells]
    parts: list[dict[str, float]] = [{} for _ in cells]
    for weigher, multiplier in weighers:
        raw = [float(weigher.weigh(c, request)) for c in cells]
        values = normalize(raw) if weigher.normalize else raw
        for index, value in enumerate(values):
            parts[index][weigher.name] = multiplier * value
    weighed = [
        WeighedCell(c, (1.0 if c.is_me else c.weight_scale) * sum(p.values()), p)
        for c, p in zip(cells, parts, strict=True)
    ]
    # sorted() is stable: equal weights keep the candidate order.
    return sorted(weighed, key=lambda w: -w.weight)
