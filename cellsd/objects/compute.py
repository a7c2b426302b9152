"""Per-cell host records: Service, ComputeNode, Migration, TaskLog."""

# field() returns an attrs field specifier, not a shared mutable default.
# ruff: noqa: RUF009

from __future__ import annotations

import datetime
from typing import Any, ClassVar

import attrs

from cellsd.objects.base import (
    BOOL,
    DATETIME,
    DICT,
    LIST,
    PersistentObject,
    field,
    register_object,
)


@register_object
@attrs.define(slots=True)
class Service(PersistentObject):
    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    host: str | None = field()
    binary: str | None = field()
    topic: str | None = field()
    report_count: int = field(default=0)
    disabled: bool = field(kind=BOOL, default=False)
    disabled_reason: str | None = field()
    last_seen_up: datetime.datetime | None = field(kind=DATETIME)
    forced_down: bool = field(kind=BOOL, default=False)
    version: int = field(default=0)


@register_object
@attrs.define(slots=True)
class ComputeNode(PersistentObject):
    """A hypervisor's resources; ``stats`` is a dict, ``supported_instances``
    a list of [arch, hypervisor_type, vm_mode]; other blobs are JSON text."""

    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    service_id: int | None = field()
    host: str | None = field()
    vcpus: int | None = field()
    memory_mb: int | None = field()
    local_gb: int | None = field()
    vcpus_used: int | None = field()
    memory_mb_used: int | None = field()
    local_gb_used: int | None = field()
    hypervisor_type: str | None = field()
    hypervisor_version: int | None = field()
    hypervisor_hostname: str | None = field()
    free_ram_mb: int | None = field()
    free_disk_gb: int | None = field()
    current_workload: int | None = field()
    running_vms: int | None = field()
    cpu_info: str | None = field()
    disk_available_least: int | None = field()
    host_ip: str | None = field()
    supported_instances: list[Any] = field(kind=LIST, factory=list)
    metrics: str | None = field()
    pci_stats: str | None = field()
    extra_resources: str | None = field()
    stats: dict[str, Any] = field(kind=DICT, factory=dict)
    numa_topology: str | None = field()
    ram_allocation_ratio: float | None = field()
    cpu_allocation_ratio: float | None = field()


@register_object
@attrs.define(slots=True)
class Migration(PersistentObject):
    """A resize or move; ``migration_type`` is migration, resize,
    live-migration or evacuation."""

    #: 1.1: cell_name
    VERSION: ClassVar[str] = "1.1"

    id: int | None = field()
    source_compute: str | None = field()
    dest_compute: str | None = field()
    source_node: str | None = field()
    dest_node: str | None = field()
    dest_host: str | None = field()
    old_instance_type_id: int | None = field()
    new_instance_type_id: int | None = field()
    instance_uuid: str | None = field()
    status: str | None = field()
    migration_type: str | None = field()
    hidden: bool = field(kind=BOOL, default=False)
    #: The path of the cell that recorded it, as the asking cell names it;
    #: set by the CellsManager when it gathers migrations (not stored).
    cell_name: str | None = field()


@register_object
@attrs.define(slots=True)
class TaskLog(PersistentObject):
    """One run of a periodic task over a period, on a host."""

    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    task_name: str | None = field()
    state: str | None = field()
    host: str | None = field()
    period_beginning: datetime.datetime | None = field(kind=DATETIME)
    period_ending: datetime.datetime | None = field(kind=DATETIME)
    message: str | None = field()
    task_items: int = field(default=0)
    errors: int = field(default=0)
