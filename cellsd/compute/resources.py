"""Resource accounting of simulated hosts, and the capacities a cell reports.

Each host has vCPUs, RAM and disk; an instance claims its flavor's share on
the host it runs on (and, while a resize waits for confirmation, on both
hosts). Claims are kept per instance, so releasing is idempotent. The
capacity report follows behaviour §5.4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from cellsd.objects import Flavor

#: Flavors whose sizes the capacity report counts slots for (the simulated
#: cell has no flavor table); the scheduler issue may make this configurable.
DEFAULT_FLAVORS: tuple[Flavor, ...] = (
    Flavor(id=1, flavorid="1", name="m1.tiny", memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0),
    Flavor(
        id=2, flavorid="2", name="m1.small", memory_mb=2048, vcpus=1, root_gb=20, ephemeral_gb=0
    ),
    Flavor(
        id=3, flavorid="3", name="m1.medium", memory_mb=4096, vcpus=2, root_gb=40, ephemeral_gb=0
    ),
    Flavor(
        id=4, flavorid="4", name="m1.large", memory_mb=8192, vcpus=4, root_gb=80, ephemeral_gb=0
    ),
)

#: vCPUs may be overcommitted as Nova's default allows; RAM and disk not.
CPU_ALLOCATION_RATIO = 16.0
RAM_ALLOCATION_RATIO = 1.0


@attrs.frozen
class Need:
    """What a flavor takes from a host."""

    vcpus: int
    memory_mb: int
    disk_gb: int

    @classmethod
    def of(cls, flavor: Flavor | Mapping[str, Any] | None) -> Need:
        if flavor is None:
            return cls(0, 0, 0)
        if not isinstance(flavor, Flavor):
            flavor = Flavor.from_dict(flavor)
        return cls(
            int(flavor.vcpus or 0),
            int(flavor.memory_mb or 0),
            int(flavor.root_gb or 0) + int(flavor.ephemeral_gb or 0),
        )


@attrs.define
class HostState:
    """One simulated host: its size, what is claimed, its store ids."""

    name: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    service_id: int | None = None
    node_id: int | None = None
    disabled: bool = False
    vcpus_used: int = 0
    memory_mb_used: int = 0
    disk_gb_used: int = 0
    running_vms: int = 0

    @property
    def free_ram_mb(self) -> int:
        return self.memory_mb - self.memory_mb_used

    @property
    def free_disk_gb(self) -> int:
        return self.disk_gb - self.disk_gb_used

    def fits(self, need: Need) -> bool:
        return (
            not self.disabled
            and self.memory_mb_used + need.memory_mb <= self.memory_mb * RAM_ALLOCATION_RATIO
            and self.disk_gb_used + need.disk_gb <= self.disk_gb
            and self.vcpus_used + need.vcpus <= self.vcpus * CPU_ALLOCATION_RATIO
        )

    def add(self, need: Need, sign: int) -> None:
        self.vcpus_used += sign * need.vcpus
        self.memory_mb_used += sign * need.memory_mb
        self.disk_gb_used += sign * need.disk_gb
        self.running_vms += sign

    def node_values(self) -> dict[str, Any]:
        """The compute node columns that follow from the claims."""
        return {
            "vcpus_used": self.vcpus_used,
            "memory_mb_used": self.memory_mb_used,
            "local_gb_used": self.disk_gb_used,
            "free_ram_mb": self.free_ram_mb,
            "free_disk_gb": self.free_disk_gb,
            "running_vms": self.running_vms,
            "current_workload": 0,
            "disk_available_least": self.free_disk_gb,
        }


#: A claim: (host name, what it takes).
Claim = tuple[str, Need]


class Claims:
    """Who holds what on which host; at most one claim per (instance, kind).

    ``kind`` is "instance" for where the instance runs and "resize" for the
    second host (or second share) a resize holds until it is confirmed or
    reverted.
    """

    def __init__(self, hosts: Mapping[str, HostState]) -> None:
        self.hosts = hosts
        self._held: dict[tuple[str, str], Claim] = {}

    def claim(self, instance_uuid: str, kind: str, host: str, need: Need) -> bool:
        """Take ``need`` on ``host``; False (nothing taken) if it does not fit."""
        self.release(instance_uuid, kind)
        state = self.hosts.get(host)
        if state is None or not state.fits(need):
            return False
        state.add(need, 1)
        self._held[(instance_uuid, kind)] = (host, need)
        return True

    def force(self, instance_uuid: str, kind: str, host: str, need: Need) -> None:
        """Record a claim found in the store at start-up, fitting or not."""
        self.release(instance_uuid, kind)
        state = self.hosts.get(host)
        if state is not None:
            state.add(need, 1)
            self._held[(instance_uuid, kind)] = (host, need)

    def release(self, instance_uuid: str, kind: str) -> str | None:
        """Give back a claim; the host it was on, or None if none was held."""
        held = self._held.pop((instance_uuid, kind), None)
        if held is None:
            return None
        host, need = held
        if host in self.hosts:
            self.hosts[host].add(need, -1)
        return host

    def move(self, instance_uuid: str, src_kind: str, dst_kind: str) -> None:
        """Relabel a claim (a confirmed resize's new share becomes the
        instance's own)."""
        held = self._held.pop((instance_uuid, src_kind), None)
        if held is not None:
            self._held[(instance_uuid, dst_kind)] = held

    def held(self, instance_uuid: str, kind: str) -> Claim | None:
        return self._held.get((instance_uuid, kind))


def capacities(
    hosts: Iterable[HostState], flavors: Iterable[Flavor], reserve_percent: float
) -> dict[str, Any]:
    """Behaviour §5.4: free RAM and disk, and how many instances of each
    flavor size fit, over the enabled hosts; ``{}`` when there are none."""
    usable = [h for h in hosts if not h.disabled]
    if not usable:
        return {}
    flavors = list(flavors)
    ram_slots = sorted({int(f.memory_mb or 0) for f in flavors})
    disk_slots = sorted({(int(f.root_gb or 0) + int(f.ephemeral_gb or 0)) * 1024 for f in flavors})

    def units(free: float, total: float, slot: int) -> int:
        if slot == 0:
            return 0
        return math.floor(max(0.0, free - total * reserve_percent / 100.0) / slot)

    return {
        "ram_free": {
            "total_mb": sum(h.free_ram_mb for h in usable),
            "units_by_mb": {
                str(s): sum(units(h.free_ram_mb, h.memory_mb, s) for h in usable) for s in ram_slots
            },
        },
        "disk_free": {
            "total_mb": sum(h.free_disk_gb * 1024 for h in usable),
            "units_by_mb": {
                str(s): sum(units(h.free_disk_gb * 1024, h.disk_gb * 1024, s) for h in usable)
                for s in disk_slots
            },
        },
    }
