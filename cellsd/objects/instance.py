"""Instance and Flavor."""

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
    NETWORK_INFO,
    OBJECT,
    CellsObject,
    PersistentObject,
    field,
    register_object,
)


@register_object
@attrs.define(slots=True)
class Flavor(CellsObject):
    """An instance type; travels inside an Instance (stored with it)."""

    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    flavorid: str | None = field()
    name: str | None = field()
    memory_mb: int | None = field()
    vcpus: int | None = field()
    root_gb: int | None = field()
    ephemeral_gb: int | None = field()
    swap: int = field(default=0)
    rxtx_factor: float | None = field()
    vcpu_weight: int | None = field()
    disabled: bool = field(kind=BOOL, default=False)
    is_public: bool = field(kind=BOOL, default=True)
    extra_specs: dict[str, str] = field(kind=DICT, factory=dict)


@register_object
@attrs.define(slots=True)
class Instance(PersistentObject):
    """A server. The owning cell bumps ``generation`` on every change; the top
    applies an update only when its generation is newer than the stored one.

    ``info_cache`` is the network_info (decoded JSON); ``metadata`` is owned
    by the API cell and never written from below; ``cell_name`` is the full
    path of the owning cell, kept at the top.
    """

    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    uuid: str | None = field()
    user_id: str | None = field()
    project_id: str | None = field()
    image_ref: str | None = field()
    kernel_id: str | None = field()
    ramdisk_id: str | None = field()
    hostname: str | None = field()
    display_name: str | None = field()
    display_description: str | None = field()
    launch_index: int | None = field()
    key_name: str | None = field()
    key_data: str | None = field()
    user_data: str | None = field()
    power_state: int | None = field()
    vm_state: str | None = field()
    task_state: str | None = field()
    memory_mb: int | None = field()
    vcpus: int | None = field()
    root_gb: int | None = field()
    ephemeral_gb: int | None = field()
    host: str | None = field()
    node: str | None = field()
    launched_on: str | None = field()
    instance_type_id: int | None = field()
    flavor: Flavor | None = field(kind=OBJECT, obj_class="Flavor")
    reservation_id: str | None = field()
    launched_at: datetime.datetime | None = field(kind=DATETIME)
    terminated_at: datetime.datetime | None = field(kind=DATETIME)
    availability_zone: str | None = field()
    locked: bool = field(kind=BOOL, default=False)
    locked_by: str | None = field()
    os_type: str | None = field()
    architecture: str | None = field()
    vm_mode: str | None = field()
    root_device_name: str | None = field()
    default_ephemeral_device: str | None = field()
    default_swap_device: str | None = field()
    config_drive: str | None = field()
    access_ip_v4: str | None = field()
    access_ip_v6: str | None = field()
    auto_disk_config: bool = field(kind=BOOL, default=False)
    progress: int | None = field()
    shutdown_terminate: bool = field(kind=BOOL, default=False)
    disable_terminate: bool = field(kind=BOOL, default=False)
    cell_name: str | None = field()
    metadata: dict[str, str] = field(kind=DICT, factory=dict)
    system_metadata: dict[str, str] = field(kind=DICT, factory=dict)
    info_cache: Any = field(kind=NETWORK_INFO)
    generation: int = field(default=0)
