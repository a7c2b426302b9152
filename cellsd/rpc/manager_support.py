"""Shared parts of the CellsManager's seed methods: argument forms,
runner answers, and the mixin base that knows the cell's paths.

The seed methods themselves are in :mod:`cellsd.rpc.manager_methods`
(requests that act: builds, instance actions, updates sent to the top) and
:mod:`cellsd.rpc.manager_queries` (requests that read: services, hosts,
compute nodes, task logs, migrations, key pairs, cells).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from cellsd.errors import CellRoutingInconsistency, InvalidArguments
from cellsd.interfaces import ICellStore
from cellsd.messaging.message import Response
from cellsd.messaging.routing import split_cell_and_item
from cellsd.messaging.runner import MessageRunner
from cellsd.objects import BlockDeviceMapping, Instance
from cellsd.objects.base import NAME_KEY, CellsObject
from cellsd.rpc.errors import NoCellStore
from cellsd.scheduler.journal import BuildJournal
from cellsd.state import CellStateManager

_O = TypeVar("_O", bound=CellsObject)


# --------------------------------------------------------------------------
# Argument forms


def to_object(cls: type[_O], value: Any, method: str, arg: str) -> _O:
    """``value`` as a ``cls`` object: as is, from its primitive, or from the
    plain dict older callers send (every field it carries counts as
    changed, since a dict cannot say which ones did)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        if NAME_KEY in value:
            if value[NAME_KEY] != cls.obj_name():
                raise InvalidArguments(
                    method_name=method,
                    reason=f"{arg} must be a {cls.obj_name()}, not a {value[NAME_KEY]}",
                )
            return cls.obj_from_primitive(value)
        obj = cls.from_dict(value)
        for name in obj.obj_set_fields():
            setattr(obj, name, getattr(obj, name))
        return obj
    raise InvalidArguments(
        method_name=method,
        reason=f"{arg} must be a {cls.obj_name()} or a dict, not {type(value).__name__}",
    )


def as_mapping(value: Any, method: str, arg: str, optional: bool = False) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArguments(
            method_name=method, reason=f"{arg} must be a dict, not {type(value).__name__}"
        )
    return dict(value)


def legacy_bdm(values: dict[str, Any]) -> dict[str, Any]:
    """A block device mapping in the legacy (v1) format, in the v2 one."""
    if values.get("source_type"):
        return values
    out = dict(values)
    virtual = str(values.get("virtual_name") or "")
    if values.get("no_device"):
        out["no_device"] = True
    elif values.get("snapshot_id"):
        out.update(source_type="snapshot", destination_type="volume")
    elif values.get("volume_id"):
        out.update(source_type="volume", destination_type="volume")
    elif virtual == "swap":
        out.update(source_type="blank", destination_type="local", guest_format="swap")
    elif virtual.startswith("ephemeral"):
        out.update(source_type="blank", destination_type="local")
    return out


def bdm_object(value: Any, legacy: bool) -> BlockDeviceMapping:
    """A BDM of build_instances as an object; ``legacy``: a plain dict in
    the v1 format (before 1.34 a caller could still send those)."""
    if legacy and isinstance(value, Mapping) and NAME_KEY not in value:
        value = legacy_bdm(dict(value))
    return to_object(BlockDeviceMapping, value, "build_instances", "block_device_mapping")


def item_id(item: str) -> int | str:
    return int(item) if item.isdigit() else item


# --------------------------------------------------------------------------
# Answers


async def settled(value: Any) -> Any:
    """A runner operation's result: its Deferred or coroutine awaited."""
    if isinstance(value, Deferred):
        return await value
    if inspect.isawaitable(value):
        return await value
    return value


def responses_of(value: Any) -> list[Response]:
    """A runner answer as a list: None, one Response or a list of them."""
    if value is None:
        return []
    if isinstance(value, Response):
        return [value]
    return list(value)


def value_of(response: Response | None) -> Any:
    return None if response is None else response.value_or_raise()


class SeedMethodsBase:
    """What the seed-method mixins share (the manager provides ``runner``,
    ``state`` and ``store``)."""

    runner: MessageRunner
    state: CellStateManager
    store: ICellStore | None
    builds: BuildJournal | None

    @property
    def ops(self) -> Any:
        """The runner's seed operations (``cellsd.messaging.operations``, a
        mixin of MessageRunner), called with the seed's signatures."""
        return self.runner

    def full_path(self, cell_name: str) -> str:
        """A cell path as a target from this cell: paths that start here are
        kept, others are taken as relative below this cell."""
        me = self.state.my_name
        if cell_name == me or cell_name.startswith(me + "!"):
            return cell_name
        return f"{me}!{cell_name}"

    def split_qualified(self, method: str, arg: str, value: Any) -> tuple[str, str]:
        """``cell@item`` -> (full cell path, item); CellRoutingInconsistency
        when no cell is given, as cells v1 raised for a None target."""
        if not isinstance(value, str):
            raise InvalidArguments(
                method_name=method,
                reason=f"{arg} must be a 'cell@item' string, not {type(value).__name__}",
            )
        cell, item = split_cell_and_item(value)
        if not cell:
            raise CellRoutingInconsistency(
                reason=f"No cell given in routing path: {arg} {value!r} is not 'cell@{value}'"
            )
        return self.full_path(cell), item

    def cell_store(self, method: str) -> ICellStore:
        store = self.store if self.store is not None else getattr(self.runner, "store", None)
        if store is None:
            raise NoCellStore(method)
        return store

    def _instance(self, value: Any, method: str) -> Instance:
        return to_object(Instance, value, method, "instance")
