"""The cells scheduler's filters (behaviour §6.3), with the §8.5 fixes.

Each is an :class:`~cellsd.interfaces.ICellFilter` built from the
``[scheduler]`` settings. They run in the configured order (target_cell
first by default, so no filter can empty the list before a forced route is
taken: §8.5 #33) and never change the request.

* ``target_cell`` (hint: a full path from the cell where scheduling
  started). Checked against ``[scheduler] policy`` (admin only by default)
  and refused with a clear error when not allowed, instead of being dropped
  silently. The path must be this cell or lie below it, and its next step
  must be one of our children: otherwise InvalidSchedulerHint names what is
  wrong. Unlike Liberty the hint is not popped and the build is not sent
  from inside the filter: the candidates narrow to the child on the route
  (or to this cell), the build is handed over with the hint unchanged, and
  the child applies the same filter again (§8.5 #32).
* ``different_cell`` (hint: one path or a list): candidates whose route is
  listed are removed; re-applied at every level.
* ``image_properties``: an image's ``hypervisor_version_requires`` (e.g.
  ``>6.0, <=6.3``) against each candidate's ``prominent_hypervisor_version``
  capability. A cell's capability is the set of versions of its whole
  subtree: the cell passes when any of them satisfies the predicate (or all,
  with ``image_version_match = "all"``), not an arbitrary one (§8.5 #34). A
  cell reporting no version passes.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from cellsd.errors import InvalidArguments, InvalidSchedulerHint, SchedulerHintForbidden
from cellsd.interfaces import ICellFilter
from cellsd.scheduler.request import SchedulingRequest
from cellsd.scheduler.settings import SchedulerSettings
from cellsd.state import CellState

log = Logger()


def check_policy(request: SchedulingRequest, hint: str, rule: str) -> None:
    """SchedulerHintForbidden unless ``rule`` lets this context use ``hint``."""
    if rule == "admin" and not request.ctxt.is_admin:
        raise SchedulerHintForbidden(
            hint=hint, reason="only administrators may use it ([scheduler] policy)"
        )


@implementer(ICellFilter)
class TargetCellFilter:
    """The build goes to the cell the ``target_cell`` hint names."""

    name = "target_cell"

    def __init__(self, settings: SchedulerSettings | None = None) -> None:
        self.rule = (settings or SchedulerSettings()).policy_for(self.name)

    def filter_all(self, cells: Sequence[CellState], request: SchedulingRequest) -> list[CellState]:
        target = request.hints.get(self.name)
        if target is None:
            return list(cells)
        check_policy(request, self.name, self.rule)
        here = request.routing_path
        if not isinstance(target, str) or any(not part for part in target.split("!")):
            raise InvalidSchedulerHint(
                hint=self.name,
                value=target,
                reason="it must be a cell path such as api-cell!child-cell1",
            )
        if target == here:
            return [request.state.get_my_state()]
        if not target.startswith(here + "!"):
            raise InvalidSchedulerHint(
                hint=self.name, value=target, reason=f"it is neither {here} nor a cell below it"
            )
        step = target[len(here) + 1 :].split("!", 1)[0]
        if request.state.get_child_cell(step) is None:
            raise InvalidSchedulerHint(
                hint=self.name, value=target, reason=f"{here} has no child cell {step!r}"
            )
        return [c for c in cells if not c.is_me and c.name == step]


def _paths(hint: str, value: Any) -> set[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or not all(isinstance(v, str) and v for v in items):
        raise InvalidSchedulerHint(
            hint=hint, value=value, reason="it must be a cell path or a list of cell paths"
        )
    return set(items)


@implementer(ICellFilter)
class DifferentCellFilter:
    """No build in the cells the ``different_cell`` hint lists."""

    name = "different_cell"

    def __init__(self, settings: SchedulerSettings | None = None) -> None:
        self.rule = (settings or SchedulerSettings()).policy_for(self.name)

    def filter_all(self, cells: Sequence[CellState], request: SchedulingRequest) -> list[CellState]:
        value = request.hints.get(self.name)
        if value is None:
            return list(cells)
        check_policy(request, self.name, self.rule)
        avoid = _paths(self.name, value)
        return [c for c in cells if request.route_of(c) not in avoid]


# -- version predicates ----------------------------------------------------------

Version = tuple[int, ...]
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
}
_VERSION = re.compile(r"^\d+(\.\d+)*$")
_CLAUSE = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")


def parse_version(text: str) -> Version:
    """A strict dotted version (``6``, ``6.2``, ``6.2.1``); ValueError."""
    text = str(text).strip()
    if not _VERSION.match(text):
        raise ValueError(f"{text!r} is not a dotted version such as 6.2")
    return tuple(int(p) for p in text.split("."))


def parse_predicate(text: str) -> list[tuple[Callable[[Any, Any], bool], Version]]:
    """``>6.0, <=6.3`` as (comparison, version) pairs; ValueError."""
    clauses = []
    for part in str(text).split(","):
        m = _CLAUSE.match(part)
        if m is None:
            raise ValueError(f"{part.strip()!r} is not a comparison such as >=6.0")
        clauses.append((_OPERATORS[m.group(1)], parse_version(m.group(2))))
    return clauses


def _padded(a: Version, b: Version) -> tuple[Version, Version]:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)), b + (0,) * (n - len(b))


def satisfies(version: Version, predicate: Sequence[tuple[Any, Version]]) -> bool:
    """Every clause holds (6.0 and 6.0.0 are equal)."""
    return all(op(*_padded(version, wanted)) for op, wanted in predicate)


@implementer(ICellFilter)
class ImagePropertiesFilter:
    """Cells whose hypervisor versions satisfy the image's requirement."""

    name = "image_properties"
    PROPERTY = "hypervisor_version_requires"
    CAPABILITY = "prominent_hypervisor_version"

    def __init__(self, settings: SchedulerSettings | None = None) -> None:
        self.match_all = (settings or SchedulerSettings()).image_version_match == "all"

    def filter_all(self, cells: Sequence[CellState], request: SchedulingRequest) -> list[CellState]:
        wanted = request.image_properties().get(self.PROPERTY)
        if not wanted:
            return list(cells)
        try:
            predicate = parse_predicate(wanted)
        except ValueError as e:
            raise InvalidArguments(
                method_name="build_instances", reason=f"image property {self.PROPERTY}: {e}"
            ) from None
        return [c for c in cells if self._passes(c, predicate)]

    def _passes(self, cell: CellState, predicate: Sequence[tuple[Any, Version]]) -> bool:
        reported = cell.capabilities.get(self.CAPABILITY) or set()
        if not reported:
            return True
        results = []
        for text in sorted(reported):
            try:
                results.append(satisfies(parse_version(text), predicate))
            except ValueError:
                log.warn(
                    "cell {cell} reports {capability} {value!r}, not a version",
                    cell=cell.name,
                    capability=self.CAPABILITY,
                    value=text,
                )
                results.append(False)
        return all(results) if self.match_all else any(results)


#: The filters ``[scheduler] filters`` may name without a dotted path.
BUILTIN_FILTERS: dict[str, type[Any]] = {
    f.name: f for f in (TargetCellFilter, DifferentCellFilter, ImagePropertiesFilter)
}
