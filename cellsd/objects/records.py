"""Per-instance records and the rest: block device mappings, bandwidth
usage, faults, instance actions and their events, key pairs, cells."""

# field() returns an attrs field specifier, not a shared mutable default.
# ruff: noqa: RUF009

from __future__ import annotations

import datetime
from typing import ClassVar

import attrs

from cellsd.objects.base import (
    BOOL,
    DATETIME,
    PersistentObject,
    field,
    register_object,
)


@register_object
@attrs.define(slots=True)
class BlockDeviceMapping(PersistentObject):
    """A disk of an instance. ``uuid`` is its natural key across cells (row
    ids differ per cell and never travel as keys)."""

    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    uuid: str | None = field()
    instance_uuid: str | None = field()
    source_type: str | None = field()
    destination_type: str | None = field()
    guest_format: str | None = field()
    device_type: str | None = field()
    disk_bus: str | None = field()
    boot_index: int | None = field()
    device_name: str | None = field()
    delete_on_termination: bool = field(kind=BOOL, default=False)
    snapshot_id: str | None = field()
    volume_id: str | None = field()
    volume_size: int | None = field()
    image_id: str | None = field()
    no_device: bool = field(kind=BOOL, default=False)
    connection_info: str | None = field()

    @property
    def is_swap(self) -> bool:
        return (
            self.source_type == "blank"
            and self.destination_type == "local"
            and self.guest_format == "swap"
        )


@register_object
@attrs.define(slots=True)
class BandwidthUsage(PersistentObject):
    """Traffic of one interface of an instance over an audit period. The
    dict form callers send names the instance ``uuid``."""

    VERSION: ClassVar[str] = "1.0"
    ALIASES: ClassVar[dict[str, str]] = {"uuid": "instance_uuid"}

    id: int | None = field()
    instance_uuid: str | None = field()
    mac: str | None = field()
    start_period: datetime.datetime | None = field(kind=DATETIME)
    last_refreshed: datetime.datetime | None = field(kind=DATETIME)
    bw_in: int | None = field()
    bw_out: int | None = field()
    last_ctr_in: int | None = field()
    last_ctr_out: int | None = field()


@register_object
@attrs.define(slots=True)
class InstanceFault(PersistentObject):
    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    instance_uuid: str | None = field()
    code: int | None = field()
    message: str | None = field()
    details: str | None = field()
    host: str | None = field()


@register_object
@attrs.define(slots=True)
class InstanceAction(PersistentObject):
    """An API action on an instance, per request id."""

    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    action: str | None = field()
    instance_uuid: str | None = field()
    request_id: str | None = field()
    user_id: str | None = field()
    project_id: str | None = field()
    start_time: datetime.datetime | None = field(kind=DATETIME)
    finish_time: datetime.datetime | None = field(kind=DATETIME)
    message: str | None = field()


@register_object
@attrs.define(slots=True)
class InstanceActionEvent(PersistentObject):
    """A step of an instance action (e.g. compute_start_instance)."""

    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    event: str | None = field()
    action_id: int | None = field()
    start_time: datetime.datetime | None = field(kind=DATETIME)
    finish_time: datetime.datetime | None = field(kind=DATETIME)
    result: str | None = field()
    traceback: str | None = field()
    host: str | None = field()
    details: str | None = field()


@register_object
@attrs.define(slots=True)
class KeyPair(PersistentObject):
    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    name: str | None = field()
    user_id: str | None = field()
    fingerprint: str | None = field()
    public_key: str | None = field()
    type: str = field(default="ssh")


@register_object
@attrs.define(slots=True)
class Cell(PersistentObject):
    """A row of the cells table: a neighbour known from the database."""

    VERSION: ClassVar[str] = "1.0"

    id: int | None = field()
    name: str | None = field()
    api_url: str | None = field()
    transport_url: str | None = field()
    weight_offset: float = field(default=0.0)
    weight_scale: float = field(default=1.0)
    is_parent: bool = field(kind=BOOL, default=False)
