"""A placeholder cells scheduler (ICellScheduler) until the real one lands.

This is deliberately small and replaceable: the cells scheduler of behaviour
§6 (filters, weighers, retries) is a later issue and will take this object's
place in :func:`cellsd.messaging.methods.install_cell_methods`. Until then
``build_instances`` at a cell goes:

1. to the cell a ``target_cell`` scheduler hint names, straight there (the
   hint is removed, as TargetCellFilter does, so the target builds it);
2. else onto this cell's own hosts if it has a compute layer with room (the
   compute picks the host: first fit);
3. else to the first child whose reported capacities have room for the
   flavor (or, if none has reported any, the first child not heard from);
4. else, and for a cell with compute but no room and no child with room,
   onto its own hosts, where the build fails with a NoValidHost fault; with
   no compute at all the instances are marked ERROR at the top (§6.5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from cellsd.compute.core import flavor_of
from cellsd.deferreds import async_to_deferred
from cellsd.errors import InstanceNotFound, NoCellsAvailable
from cellsd.interfaces import ICellScheduler, ICellStore, IComputeAPI
from cellsd.messaging.message import Message
from cellsd.objects import Flavor, Instance
from cellsd.state import CellState

if TYPE_CHECKING:
    from cellsd.messaging.runner import MessageRunner


def has_room(capacities: Mapping[str, Any], flavor: Flavor | None) -> bool:
    """Whether reported capacities (§5.4) fit one instance of ``flavor``."""
    if not capacities:
        return False
    if flavor is None:
        return True
    ram = capacities.get("ram_free") or {}
    units = (ram.get("units_by_mb") or {}).get(str(flavor.memory_mb))
    if units is not None:
        return int(units) > 0
    disk_mb = ((flavor.root_gb or 0) + (flavor.ephemeral_gb or 0)) * 1024
    disk = capacities.get("disk_free") or {}
    return int(ram.get("total_mb", 0)) >= (flavor.memory_mb or 0) and int(
        disk.get("total_mb", 0)
    ) >= int(disk_mb)


def _uuid(instance: Any) -> str | None:
    if isinstance(instance, Instance):
        return instance.uuid
    if isinstance(instance, Mapping):
        return instance.get("uuid")
    return None


@implementer(ICellScheduler)
class FirstFitCellScheduler:
    """Placeholder for the cells scheduler: see the module docstring."""

    log = Logger()

    def __init__(
        self,
        runner: MessageRunner,
        store: ICellStore | None = None,
        compute: IComputeAPI | None = None,
    ) -> None:
        self.runner = runner
        self.store = store
        self.compute = compute

    @async_to_deferred
    async def build_instances(self, message: Message, build_inst_kwargs: Mapping[str, Any]) -> None:
        kwargs = dict(build_inst_kwargs)
        instances = list(kwargs.get("instances") or [])
        ctxt, here = message.ctxt, message.routing_path
        props = dict(kwargs.get("filter_properties") or {})
        first = instances[0] if instances else None
        flavor = flavor_of(props.get("instance_type")) or flavor_of(
            getattr(first, "flavor", None) if isinstance(first, Instance) else None
        )
        hints = dict(props.get("scheduler_hints") or {})
        target = hints.pop("target_cell", None)
        if target and target != here:
            props["scheduler_hints"] = hints
            kwargs["filter_properties"] = props
            await self.runner.build_instances(ctxt, self._from_here(target, here), kwargs)
            return
        if self.compute is not None and (target == here or self.compute.can_host(flavor)):
            await self._build_here(ctxt, instances, kwargs)
            return
        child = self._child_with_room(flavor)
        if child is not None:
            await self.runner.build_instances(ctxt, child, kwargs)
            return
        if self.compute is not None:
            await self._build_here(ctxt, instances, kwargs)
            return
        await self._mark_error(ctxt, instances)
        raise NoCellsAvailable()

    def _from_here(self, target: str, here: str) -> str:
        """A target given from the scheduling top, as a path from this cell."""
        me = self.runner.my_name
        if target.startswith(here + "!"):
            return me + target[len(here) :]
        return target

    def _child_with_room(self, flavor: Flavor | None) -> CellState | None:
        children = self.runner.state.get_child_cells()
        for child in children:
            if has_room(child.capacities, flavor):
                return child
        unheard = [c for c in children if not c.capacities]
        return unheard[0] if unheard else None

    async def _build_here(self, ctxt: Any, instances: list[Any], kwargs: dict[str, Any]) -> None:
        assert self.compute is not None
        rest = {k: v for k, v in kwargs.items() if k != "instances"}
        await self.compute.build_instances(ctxt, instances, **rest)

    async def _mark_error(self, ctxt: Any, instances: list[Any]) -> None:
        """Behaviour §6.5: each instance ERROR at the top (and here, if it
        has a record here)."""
        for proto in instances:
            uuid = _uuid(proto)
            if not uuid:
                continue
            self.runner.instance_update_at_top(ctxt, Instance(uuid=uuid, vm_state="error"))
            if self.store is not None:
                with contextlib.suppress(InstanceNotFound):
                    await self.store.instance_update(uuid, {"vm_state": "error"})
