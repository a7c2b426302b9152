"""What the filters and weighers of one build see (behaviour §6.1).

A :class:`SchedulingRequest` is made once per build at each cell, and is
read-only: its scheduler hints are a frozen copy, so no filter can change
what a retry or a child sees (Liberty popped ``target_cell`` from the very
dict it forwarded: §8.5 #32).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from cellsd.compute.core import flavor_of
from cellsd.context import RequestContext
from cellsd.errors import InvalidArguments
from cellsd.objects import Flavor, Instance
from cellsd.state import CellState, CellStateManager

#: The key of filter_properties carrying the path, from the cell where
#: scheduling started, of the cell a build is handed to (Liberty's filter
#: properties held the same ``routing_path``).
ROUTING_PATH = "routing_path"


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings as MappingProxyType, lists as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(freeze(v) for v in value)
    return value


def uuid_of(instance: Any) -> str | None:
    if isinstance(instance, Instance):
        return None if instance.uuid is None else str(instance.uuid)
    if isinstance(instance, Mapping):
        uuid = instance.get("uuid")
        return None if uuid is None else str(uuid)
    return None


@attrs.frozen(eq=False)
class SchedulingRequest:
    """One build as the filters and weighers of one cell see it."""

    ctxt: RequestContext
    #: This cell's path from the cell where scheduling started.
    routing_path: str
    state: CellStateManager
    instances: tuple[Any, ...]
    flavor: Flavor | None
    image: Mapping[str, Any]
    hints: Mapping[str, Any]
    #: The build's keyword arguments as received (never changed here).
    build_kwargs: Mapping[str, Any]

    @property
    def num_instances(self) -> int:
        return len(self.instances)

    @property
    def instance_uuids(self) -> list[str]:
        return [u for u in (uuid_of(i) for i in self.instances) if u]

    def route_of(self, cell: CellState) -> str:
        """A candidate's path from where scheduling started."""
        return self.routing_path if cell.is_me else f"{self.routing_path}!{cell.name}"

    def capacities_of(self, cell: CellState) -> dict[str, Any]:
        """A candidate's capacities: our own, or a child's as last reported
        less what was handed to it since."""
        if cell.is_me:
            return copy.deepcopy(cell.capacities)
        return cell.effective_capacities()

    def image_properties(self) -> Mapping[str, Any]:
        props = self.image.get("properties")
        return props if isinstance(props, Mapping) else {}

    def needs(self) -> tuple[int, int]:
        """RAM and disk (MB) the whole request takes."""
        f = self.flavor
        if f is None:
            return 0, 0
        ram = int(f.memory_mb or 0) * self.num_instances
        disk = (int(f.root_gb or 0) + int(f.ephemeral_gb or 0)) * 1024 * self.num_instances
        return ram, disk


def make_request(
    ctxt: RequestContext,
    routing_path: str,
    state: CellStateManager,
    build_kwargs: Mapping[str, Any],
) -> SchedulingRequest:
    """Check a build's keyword arguments and describe it; InvalidArguments
    for a build without instances."""
    instances: Sequence[Any] = build_kwargs.get("instances") or []
    if not instances:
        raise InvalidArguments(method_name="build_instances", reason="no instances to build")
    props = build_kwargs.get("filter_properties") or {}
    if not isinstance(props, Mapping):
        raise InvalidArguments(
            method_name="build_instances", reason="filter_properties must be a mapping"
        )
    first = instances[0]
    flavor = flavor_of(props.get("instance_type"))
    if flavor is None:
        own = first.flavor if isinstance(first, Instance) else dict(first).get("flavor")
        flavor = flavor_of(own)
    image = build_kwargs.get("image") or {}
    hints = props.get("scheduler_hints") or {}
    if not isinstance(hints, Mapping):
        raise InvalidArguments(
            method_name="build_instances", reason="scheduler_hints must be a mapping"
        )
    return SchedulingRequest(
        ctxt=ctxt,
        routing_path=routing_path,
        state=state,
        instances=tuple(instances),
        flavor=flavor,
        image=freeze(image if isinstance(image, Mapping) else {}),
        hints=freeze(hints),
        build_kwargs=build_kwargs,
    )
