"""The CellsManager's seed methods that act (behaviour §4.3): compute API
methods in a cell, builds, updates sent to the top, instance actions.

:class:`InstanceMethods` is a mixin of :class:`cellsd.rpc.manager.CellsManager`.
Each method accepts every form its RPC name took from the version that
introduced it up to 1.37 (objects, or the plain dicts older callers send),
brings it to the newest form and makes its MessageRunner call with the
seed's signature (``../shared/reference/seeds/001_*.txt``). Casts answer
None once the runner has taken the message.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cellsd.context import RequestContext
from cellsd.errors import InvalidArguments
from cellsd.messaging.routing import split_cell_and_item
from cellsd.objects import BlockDeviceMapping, Flavor, InstanceFault
from cellsd.rpc.api_backports import plain
from cellsd.rpc.errors import InstanceUnknownCell
from cellsd.rpc.manager_support import (
    SeedMethodsBase,
    as_mapping,
    bdm_object,
    settled,
    to_object,
    value_of,
)
from cellsd.rpc.registry import rpc_method


class InstanceMethods(SeedMethodsBase):
    """Seed methods that act: compute API calls, builds, ``*_at_top``
    updates and instance actions."""

    log = Logger()

    # -- compute API methods and builds ----------------------------------------

    @rpc_method("1.0")
    async def run_compute_api_method(
        self, ctxt: RequestContext, cell_name: str, method_info: Any, call: bool
    ) -> Any:
        """A compute API method in a cell; its result when ``call``."""
        info = as_mapping(method_info, "run_compute_api_method", "method_info")
        if not isinstance(info.get("method"), str):
            raise InvalidArguments(
                method_name="run_compute_api_method", reason="method_info needs a 'method' name"
            )
        info.setdefault("method_args", [])
        info.setdefault("method_kwargs", {})
        answer = await settled(
            self.ops.run_compute_api_method(ctxt, self.full_path(cell_name), info, call)
        )
        return value_of(answer) if call else None

    @rpc_method("1.8")
    async def build_instances(self, ctxt: RequestContext, build_inst_kwargs: Any) -> None:
        """Schedule a build from this cell. Every older form is brought to
        the 1.34 one: the flavor (< 1.30) and instances (< 1.32) as objects,
        block device mappings as objects (< 1.34, legacy ones converted)
        and no ``legacy_bdm``.

        With the cell's build journal, this returns once the build is
        recorded in the store (PendingBuildsFull at the bound; a resend of
        a build recorded before is accepted and not scheduled again), and
        the build is scheduled on its own; without, once it is placed or
        has failed."""
        kw = as_mapping(build_inst_kwargs, "build_instances", "build_inst_kwargs")
        props = kw.get("filter_properties")
        if props is not None:
            props = as_mapping(props, "build_instances", "filter_properties")
            if props.get("instance_type") is not None:
                props["instance_type"] = to_object(
                    Flavor, props["instance_type"], "build_instances", "instance_type"
                )
            kw["filter_properties"] = props
        kw["instances"] = [self._instance(i, "build_instances") for i in kw.get("instances") or []]
        legacy = bool(kw.pop("legacy_bdm", False))
        if kw.get("block_device_mapping") is not None:
            kw["block_device_mapping"] = [bdm_object(b, legacy) for b in kw["block_device_mapping"]]
        if kw.get("image") is not None:
            kw["image"] = plain(kw["image"])
        if self.builds is None:
            await settled(self.ops.build_instances(ctxt, self.state.my_name, kw))
            return
        if kw["instances"] and await self.builds.accept(ctxt, kw) is None:
            return
        d = Deferred.fromCoroutine(settled(self.ops.build_instances(ctxt, self.state.my_name, kw)))
        uuids = [i.uuid for i in kw["instances"]]
        d.addErrback(lambda f: self.log.failure("build of {uuids} failed", f, uuids=uuids))

    # -- instance data sent up to the top ------------------------------------------

    @rpc_method("1.0")
    async def instance_update_at_top(self, ctxt: RequestContext, instance: Any) -> None:
        """Before 1.35 the instance is a plain dict (every field changed)."""
        inst = self._instance(instance, "instance_update_at_top")
        await settled(self.ops.instance_update_at_top(ctxt, inst))

    @rpc_method("1.0")
    async def instance_destroy_at_top(self, ctxt: RequestContext, instance: Any) -> None:
        inst = self._instance(instance, "instance_destroy_at_top")
        await settled(self.ops.instance_destroy_at_top(ctxt, inst))

    @rpc_method("1.0")
    async def instance_delete_everywhere(
        self, ctxt: RequestContext, instance: Any, delete_type: str
    ) -> None:
        """Before 1.27 the instance is a plain dict; delete_type is 'soft'
        or 'hard'."""
        if delete_type not in ("soft", "hard"):
            raise InvalidArguments(
                method_name="instance_delete_everywhere",
                reason=f"delete_type must be 'soft' or 'hard', not {delete_type!r}",
            )
        inst = self._instance(instance, "instance_delete_everywhere")
        await settled(self.ops.instance_delete_everywhere(ctxt, inst, delete_type))

    @rpc_method("1.0")
    async def instance_fault_create_at_top(self, ctxt: RequestContext, instance_fault: Any) -> None:
        """The fault travels on as a plain dict, as cells v1 sent it."""
        fault = to_object(InstanceFault, instance_fault, "instance_fault_create_at_top", "fault")
        await settled(self.ops.instance_fault_create_at_top(ctxt, fault.to_dict()))

    @rpc_method("1.0")
    async def bw_usage_update_at_top(self, ctxt: RequestContext, bw_update_info: Any) -> None:
        info = as_mapping(bw_update_info, "bw_usage_update_at_top", "bw_update_info")
        await settled(self.ops.bw_usage_update_at_top(ctxt, info))

    @rpc_method("1.6")
    async def consoleauth_delete_tokens(self, ctxt: RequestContext, instance_uuid: str) -> None:
        await settled(self.ops.consoleauth_delete_tokens(ctxt, instance_uuid))

    @rpc_method("1.10")
    async def bdm_update_or_create_at_top(
        self, ctxt: RequestContext, bdm: Any, create: bool | None = None
    ) -> None:
        """The BDM (an object from 1.28, a dict before) travels on as the
        plain dict of its set fields."""
        obj = to_object(BlockDeviceMapping, bdm, "bdm_update_or_create_at_top", "bdm")
        await settled(self.ops.bdm_update_or_create_at_top(ctxt, obj.to_dict(), create=create))

    @rpc_method("1.10")
    async def bdm_destroy_at_top(
        self,
        ctxt: RequestContext,
        instance_uuid: str,
        device_name: str | None = None,
        volume_id: str | None = None,
    ) -> None:
        await settled(
            self.ops.bdm_destroy_at_top(
                ctxt, instance_uuid, device_name=device_name, volume_id=volume_id
            )
        )

    @rpc_method("1.1")
    async def sync_instances(
        self,
        ctxt: RequestContext,
        project_id: str | None = None,
        updated_since: Any = None,
        deleted: bool = False,
    ) -> None:
        await settled(self.ops.sync_instances(ctxt, project_id, updated_since, deleted))

    # -- instance actions ---------------------------------------------------------------

    @rpc_method("1.16")
    async def instance_update_from_api(
        self,
        ctxt: RequestContext,
        instance: Any,
        expected_vm_state: Any,
        expected_task_state: Any,
        admin_state_reset: bool,
    ) -> None:
        inst = self._instance(instance, "instance_update_from_api")
        await settled(
            self.ops.instance_update_from_api(
                ctxt, inst, expected_vm_state, expected_task_state, admin_state_reset
            )
        )

    async def _action(self, method: str, ctxt: RequestContext, instance: Any, *args: Any) -> None:
        inst = self._instance(instance, method)
        await settled(getattr(self.ops, method)(ctxt, inst, *args))

    @rpc_method("1.12")
    async def start_instance(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("start_instance", ctxt, instance)

    @rpc_method("1.12")
    async def stop_instance(
        self, ctxt: RequestContext, instance: Any, do_cast: bool = True, clean_shutdown: bool = True
    ) -> Any:
        """A cast, or with ``do_cast`` false a call answering the stop's
        result; clean_shutdown arrives from 1.31."""
        inst = self._instance(instance, "stop_instance")
        if not do_cast and not inst.cell_name:
            raise InstanceUnknownCell(inst.uuid)
        answer = await settled(
            self.ops.stop_instance(ctxt, inst, do_cast=do_cast, clean_shutdown=clean_shutdown)
        )
        return None if do_cast else value_of(answer)

    @rpc_method("1.14")
    async def reboot_instance(self, ctxt: RequestContext, instance: Any, reboot_type: str) -> None:
        await self._action("reboot_instance", ctxt, instance, reboot_type)

    @rpc_method("1.15")
    async def suspend_instance(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("suspend_instance", ctxt, instance)

    @rpc_method("1.15")
    async def resume_instance(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("resume_instance", ctxt, instance)

    @rpc_method("1.18")
    async def terminate_instance(
        self, ctxt: RequestContext, instance: Any, delete_type: str = "delete"
    ) -> None:
        """delete_type ('delete' or 'force_delete') arrives from 1.36."""
        if delete_type not in ("delete", "force_delete"):
            raise InvalidArguments(
                method_name="terminate_instance",
                reason=f"delete_type must be 'delete' or 'force_delete', not {delete_type!r}",
            )
        inst = self._instance(instance, "terminate_instance")
        await settled(self.ops.terminate_instance(ctxt, inst, delete_type=delete_type))

    @rpc_method("1.18")
    async def soft_delete_instance(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("soft_delete_instance", ctxt, instance)

    @rpc_method("1.19")
    async def pause_instance(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("pause_instance", ctxt, instance)

    @rpc_method("1.19")
    async def unpause_instance(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("unpause_instance", ctxt, instance)

    @rpc_method("1.20")
    async def resize_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        flavor: Any,
        extra_instance_updates: Any,
        clean_shutdown: bool = True,
    ) -> None:
        """The flavor travels on as a plain dict; clean_shutdown arrives
        from 1.33."""
        inst = self._instance(instance, "resize_instance")
        flavor_dict = as_mapping(plain(flavor), "resize_instance", "flavor")
        updates = as_mapping(
            extra_instance_updates, "resize_instance", "extra_instance_updates", optional=True
        )
        await settled(
            self.ops.resize_instance(
                ctxt, inst, flavor_dict, updates, clean_shutdown=clean_shutdown
            )
        )

    @rpc_method("1.20")
    async def live_migrate_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        block_migration: bool,
        disk_over_commit: bool,
        host_name: str | None,
    ) -> None:
        """The destination host may be cell-qualified (``cell@host``, as the
        API cell lists hosts); the instance's cell gets the bare host. A
        host of another cell is refused: instances do not move across cells."""
        inst = self._instance(instance, "live_migrate_instance")
        if host_name:
            cell, host = split_cell_and_item(host_name)
            if cell and inst.cell_name and self.full_path(cell) != self.full_path(inst.cell_name):
                raise InvalidArguments(
                    method_name="live_migrate_instance",
                    reason=f"host {host_name!r} is not in the instance's cell {inst.cell_name}",
                )
            host_name = host
        await settled(
            self.ops.live_migrate_instance(ctxt, inst, block_migration, disk_over_commit, host_name)
        )

    @rpc_method("1.21")
    async def revert_resize(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("revert_resize", ctxt, instance)

    @rpc_method("1.21")
    async def confirm_resize(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("confirm_resize", ctxt, instance)

    @rpc_method("1.22")
    async def reset_network(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("reset_network", ctxt, instance)

    @rpc_method("1.23")
    async def inject_network_info(self, ctxt: RequestContext, instance: Any) -> None:
        await self._action("inject_network_info", ctxt, instance)

    @rpc_method("1.24")
    async def snapshot_instance(self, ctxt: RequestContext, instance: Any, image_id: str) -> None:
        await self._action("snapshot_instance", ctxt, instance, image_id)

    @rpc_method("1.24")
    async def backup_instance(
        self, ctxt: RequestContext, instance: Any, image_id: str, backup_type: str, rotation: int
    ) -> None:
        await self._action("backup_instance", ctxt, instance, image_id, backup_type, rotation)

    @rpc_method("1.25")
    async def rebuild_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        image_href: str,
        admin_password: str | None,
        files_to_inject: Any,
        preserve_ephemeral: bool,
        kwargs: Any,
    ) -> None:
        """``kwargs`` None is sent on as ``{}``."""
        inst = self._instance(instance, "rebuild_instance")
        extra = as_mapping(kwargs, "rebuild_instance", "kwargs", optional=True)
        await settled(
            self.ops.rebuild_instance(
                ctxt, inst, image_href, admin_password, files_to_inject, preserve_ephemeral, extra
            )
        )

    @rpc_method("1.29")
    async def set_admin_password(self, ctxt: RequestContext, instance: Any, new_pass: str) -> None:
        await self._action("set_admin_password", ctxt, instance, new_pass)
