"""A cell's own capacities, from its compute nodes, services and flavors.

Behaviour §5.4, exactly: nodes are summed per host; hosts whose
``nova-compute`` service is missing or disabled are skipped; no host left
gives ``{}``; for every distinct flavor RAM size and disk size (root +
ephemeral, in MB) each host contributes
``floor(max(0, free - total * reserve_percent / 100) / slot)`` units.

One departure (§8.5 #36): given the time ``now``, a host whose service is
down (forced down, or not heard from within ``service_down_time`` seconds)
is skipped too. Liberty counted it, and sent builds to a dead host.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from cellsd.deferreds import async_to_deferred
from cellsd.interfaces import ICellStore
from cellsd.objects import ComputeNode, Flavor, Service
from cellsd.store.hosts import COMPUTE_BINARY


@attrs.define
class HostFigures:
    """One host's nodes, summed (MB)."""

    free_ram_mb: int = 0
    free_disk_mb: int = 0
    total_ram_mb: int = 0
    total_disk_mb: int = 0


def service_is_up(
    service: Service, now: datetime.datetime | None, service_down_time: float
) -> bool:
    """Not forced down and heard from within ``service_down_time`` seconds
    of ``now`` (with ``now`` None, liveness is not considered: Liberty)."""
    if now is None:
        return True
    if service.forced_down or service.last_seen_up is None:
        return False
    return (now - service.last_seen_up).total_seconds() <= service_down_time


def usable_hosts(
    nodes: Iterable[ComputeNode],
    services: Iterable[Service],
    now: datetime.datetime | None = None,
    service_down_time: float = 60.0,
) -> dict[str, HostFigures]:
    """Per host with an enabled (and, given ``now``, up) nova-compute
    service: its nodes' figures summed."""
    compute = {s.host: s for s in services if s.binary == COMPUTE_BINARY}
    hosts: dict[str, HostFigures] = {}
    for node in nodes:
        service = compute.get(node.host)
        if service is None or service.disabled:
            continue
        if not service_is_up(service, now, service_down_time):
            continue
        figures = hosts.setdefault(str(node.host), HostFigures())
        figures.free_ram_mb += int(node.free_ram_mb or 0)
        figures.free_disk_mb += int(node.free_disk_gb or 0) * 1024
        figures.total_ram_mb += int(node.memory_mb or 0)
        figures.total_disk_mb += int(node.local_gb or 0) * 1024
    return hosts


def slots(flavors: Iterable[Flavor]) -> tuple[list[int], list[int]]:
    """The distinct RAM sizes and disk sizes (MB) of the flavors."""
    flavors = list(flavors)
    ram = sorted({int(f.memory_mb or 0) for f in flavors})
    disk = sorted({(int(f.root_gb or 0) + int(f.ephemeral_gb or 0)) * 1024 for f in flavors})
    return ram, disk


def units(free: float, total: float, slot: int, reserve_percent: float) -> int:
    """How many ``slot``-sized pieces fit in what is free beyond the reserve."""
    if slot == 0:
        return 0
    return math.floor(max(0.0, free - total * reserve_percent / 100.0) / slot)


def compute_capacities(
    nodes: Iterable[ComputeNode],
    services: Iterable[Service],
    flavors: Iterable[Flavor],
    reserve_percent: float,
    now: datetime.datetime | None = None,
    service_down_time: float = 60.0,
) -> dict[str, Any]:
    """Behaviour §5.4 capacities (see the module docstring)."""
    hosts = list(usable_hosts(nodes, services, now, service_down_time).values())
    if not hosts:
        return {}
    ram_slots, disk_slots = slots(flavors)
    return {
        "ram_free": {
            "total_mb": sum(h.free_ram_mb for h in hosts),
            "units_by_mb": {
                str(s): sum(units(h.free_ram_mb, h.total_ram_mb, s, reserve_percent) for h in hosts)
                for s in ram_slots
            },
        },
        "disk_free": {
            "total_mb": sum(h.free_disk_mb for h in hosts),
            "units_by_mb": {
                str(s): sum(
                    units(h.free_disk_mb, h.total_disk_mb, s, reserve_percent) for h in hosts
                )
                for s in disk_slots
            },
        },
    }


class StoreCapacitySource:
    """A CellStateManager ``capacity_source``: each call reads the cell's
    compute nodes and services from its store and answers (a Deferred)
    with its capacities, hosts whose service is down left out."""

    def __init__(
        self,
        store: ICellStore,
        clock: IReactorTime,
        flavors: Sequence[Flavor],
        reserve_percent: float = 10.0,
        service_down_time: float = 60.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.flavors = tuple(flavors)
        self.reserve_percent = reserve_percent
        self.service_down_time = service_down_time

    def __call__(self) -> Deferred[dict[str, Any]]:
        return self.read()

    @async_to_deferred
    async def read(self) -> dict[str, Any]:
        if getattr(self.store, "engine", True) is None:
            return {}  # not open yet: nothing is known
        nodes = await self.store.compute_node_get_all()
        if not nodes:
            return {}
        services = await self.store.service_get_all()
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        return compute_capacities(
            nodes, services, self.flavors, self.reserve_percent, now, self.service_down_time
        )
