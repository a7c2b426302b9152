"""What a targeted message does at its target cell (behaviour §3.2).

:class:`TargetedCellWork` is a mixin of
:class:`cellsd.messaging.methods.TargetedMessageMethods`; its collaborators
(the cell's store, its compute layer, its cells scheduler) are given to that
class's constructor. A cell built without one of them answers the messages
that need it with NotAvailableHere.

Instance actions "refresh then call": the instance is read from this cell's
store and the compute layer runs the action. When the instance is not here,
Liberty broadcast ``instance_destroy_at_top``, deleting the API's record of
an instance that may well be alive elsewhere (§8.3 #21); here InstanceNotFound
is the answer and the API decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from cellsd.errors import (
    CellServiceAPIMethodNotFound,
    ComputeServiceUnavailable,
    InvalidArguments,
    NotAvailableHere,
)
from cellsd.interfaces import ICellScheduler, ICellStore, IComputeAPI
from cellsd.messaging.arguments import filter_values, integer, mapping
from cellsd.messaging.message import Message
from cellsd.objects import Instance, Migration, Service

if TYPE_CHECKING:
    from cellsd.messaging.runner import MessageRunner

#: run_compute_api_method: the compute API methods a message may call (each
#: takes the instance first). Nothing else is looked up on the compute layer.
COMPUTE_API_METHODS = frozenset(
    {
        "start",
        "stop",
        "reboot",
        "pause",
        "unpause",
        "suspend",
        "resume",
        "resize",
        "confirm_resize",
        "revert_resize",
        "live_migrate",
        "rebuild",
        "snapshot",
        "backup",
        "set_admin_password",
        "reset_network",
        "inject_network_info",
        "soft_delete",
        "delete",
        "force_delete",
        "lock",
        "unlock",
        "get_console_output",
        "get_console",
    }
)

#: terminate_instance: delete_type -> compute API method.
DELETE_TYPES = {"delete": "delete", "force_delete": "force_delete", "soft_delete": "soft_delete"}

#: service_update: what params_to_update may change.
SERVICE_PARAMS = frozenset({"disabled", "disabled_reason", "forced_down"})

#: instance_update_from_api never writes these in the owning cell: metadata
#: travels by run_compute_api_method, the rest are the owner's (§3.4).
_NOT_FROM_API = frozenset(
    {
        "metadata",
        "system_metadata",
        "cell_name",
        "id",
        "uuid",
        "generation",
        "deleted",
        "created_at",
    }
)


def _uuid_of(value: Any) -> str:
    if isinstance(value, Instance):
        return str(value.uuid)
    if isinstance(value, Mapping):
        return str(value.get("uuid"))
    return str(value)


class TargetedCellWork:
    """The targeted handlers of the seed's MessageRunner methods."""

    log = Logger()
    runner: MessageRunner
    store: ICellStore | None
    compute: IComputeAPI | None
    scheduler: ICellScheduler | None

    # -- collaborators -------------------------------------------------------------

    def _store(self) -> ICellStore:
        if self.store is None:
            raise NotAvailableHere(cell_name=self.runner.my_name, what="store")
        return self.store

    def _compute(self) -> IComputeAPI:
        if self.compute is None:
            raise NotAvailableHere(cell_name=self.runner.my_name, what="compute hosts")
        return self.compute

    async def _instance(self, instance: Any) -> Instance:
        """This cell's current copy of the instance; InstanceNotFound."""
        found: Instance = await self._store().instance_get_by_uuid(_uuid_of(instance))
        return found

    # -- scheduling and the compute API -----------------------------------------------

    async def build_instances(self, message: Message, build_inst_kwargs: Mapping[str, Any]) -> Any:
        """Hand the build to this cell's cells scheduler; a parent waiting
        for the answer gets where the build went (or the refusal)."""
        if self.scheduler is None:
            raise NotAvailableHere(cell_name=self.runner.my_name, what="scheduler")
        return await self.scheduler.build_instances(message, build_inst_kwargs)

    async def run_compute_api_method(self, message: Message, method_info: Mapping[str, Any]) -> Any:
        """``method_info = {method, method_args, method_kwargs}``; the first
        argument is the instance (or its uuid). Only allow-listed methods."""
        method = str(method_info.get("method"))
        if method not in COMPUTE_API_METHODS:
            raise CellServiceAPIMethodNotFound(detail=f"Unknown method '{method}' in compute API")
        args = method_info.get("method_args") or []
        if not isinstance(args, list | tuple):
            raise InvalidArguments(method_name=method, reason="method_args must be a list")
        args = list(args)
        kwargs = mapping(method, "method_kwargs", method_info.get("method_kwargs"))
        if not args:
            raise InvalidArguments(method_name=method, reason="no instance given")
        compute = self._compute()
        instance = await self._instance(args[0])
        # getattr only on a name from the allow-list above.
        fn = getattr(compute, method)
        return await fn(message.ctxt, instance, *args[1:], **kwargs)

    # -- services and hosts ---------------------------------------------------------

    async def service_get_by_compute_host(self, message: Message, host_name: str) -> Service:
        service: Service = await self._store().service_get_by_compute_host(host_name)
        return service

    async def get_host_uptime(self, message: Message, host_name: str) -> str:
        if self.compute is None:
            await self._store().service_get_by_compute_host(host_name)
            raise ComputeServiceUnavailable(host=host_name)
        uptime: str = await self.compute.get_host_uptime(message.ctxt, host_name)
        return uptime

    async def service_update(
        self,
        message: Message,
        host_name: str,
        binary: str,
        params_to_update: Mapping[str, Any] | None,
    ) -> Service:
        params = dict(params_to_update or {})
        unknown = set(params) - SERVICE_PARAMS
        if unknown:
            raise InvalidArguments(
                method_name="service_update", reason=f"cannot update {sorted(unknown)}"
            )
        store = self._store()
        service = await store.service_get_by_host_and_binary(host_name, binary)
        assert service.id is not None
        updated: Service = await store.service_update(service.id, params)
        return updated

    async def service_delete(self, message: Message, service_id: Any) -> None:
        await self._store().service_destroy(integer("service_delete", "service_id", service_id))

    async def proxy_rpc_to_manager(
        self,
        message: Message,
        host_name: str,
        rpc_message: Mapping[str, Any] | None,
        topic: str,
        timeout: Any,
    ) -> Any:
        """A compute-manager RPC for one host. Liberty sent it to the RPC
        server ``<cell path>@<host>``, which no compute listens on (§8.1
        #14); here it goes to the host named ``compute.<host>``."""
        await self._store().service_get_by_compute_host(host_name)
        compute = self._compute()
        msg = dict(rpc_message or {})
        self.log.debug(
            "proxying {method} to compute.{host}", method=msg.get("method"), host=host_name
        )
        args = mapping("proxy_rpc_to_manager", "rpc_message['args']", msg.get("args"))
        result = await compute.host_rpc(message.ctxt, host_name, str(msg.get("method")), args)
        return result if message.need_response else None

    async def compute_node_get(self, message: Message, compute_id: Any) -> Any:
        return await self._store().compute_node_get(
            integer("compute_node_get", "compute_id", compute_id)
        )

    # -- records ------------------------------------------------------------------------

    async def actions_get(self, message: Message, instance_uuid: str) -> list[dict[str, Any]]:
        return [a.to_dict() for a in await self._store().actions_get(instance_uuid)]

    async def action_get_by_request_id(
        self, message: Message, instance_uuid: str, request_id: str
    ) -> dict[str, Any] | None:
        found = await self._store().action_get_by_request_id(instance_uuid, request_id)
        return None if found is None else found.to_dict()

    async def action_events_get(self, message: Message, action_id: Any) -> list[dict[str, Any]]:
        action = integer("action_events_get", "action_id", action_id)
        return [e.to_dict() for e in await self._store().action_events_get(action)]

    async def get_migrations(
        self, message: Message, filters: Mapping[str, Any] | None
    ) -> list[Migration]:
        wanted = filter_values("get_migrations", filters)
        found: list[Migration] = await self._store().migration_get_all_by_filters(wanted)
        return found

    async def task_log_get_all(
        self,
        message: Message,
        task_name: str,
        period_beginning: Any,
        period_ending: Any,
        host: Any = None,
        state: Any = None,
    ) -> list[dict[str, Any]]:
        logs = await self._store().task_log_get_all(
            task_name, period_beginning, period_ending, host, state
        )
        return [t.to_dict() for t in logs]

    async def validate_console_port(
        self, message: Message, instance_uuid: str, console_port: Any, console_type: str
    ) -> bool:
        instance = await self._instance(instance_uuid)
        valid: bool = await self._compute().validate_console_port(
            message.ctxt, instance, console_port, console_type
        )
        return valid

    async def instance_get_all(
        self, message: Message, filters: Mapping[str, Any] | None = None
    ) -> list[Instance]:
        wanted = filter_values("instance_get_all", filters)
        found: list[Instance] = await self._store().instance_get_all_by_filters(wanted)
        return found

    # -- the API cell's changes --------------------------------------------------------

    async def instance_update_from_api(
        self,
        message: Message,
        instance: Any,
        expected_vm_state: Any,
        expected_task_state: Any,
        admin_state_reset: Any,
    ) -> None:
        """Write the API cell's changes (behaviour §3.4): never metadata or
        system metadata, and vm/task state only for an admin state reset.
        The result is reported back up whole: with generations the echo is
        harmless, and it tells the top the generation its change got here."""
        if isinstance(instance, Instance):
            changed = instance.obj_what_changed()
            values = {n: getattr(instance, n) for n in changed}
        else:
            values = mapping("instance_update_from_api", "instance", instance, ("uuid",))
        drop = set(_NOT_FROM_API)
        if not admin_state_reset:
            drop |= {"vm_state", "task_state"}
        values = {k: v for k, v in values.items() if k not in drop}
        if not values:
            return
        store = self._store()
        updated = await store.instance_update(
            _uuid_of(instance),
            values,
            expected_vm_state=expected_vm_state,
            expected_task_state=expected_task_state,
        )
        self.runner.instance_update_at_top(message.ctxt, updated)

    # -- instance actions --------------------------------------------------------------

    async def _act(
        self, message: Message, instance: Any, method: str, *args: Any, **kw: Any
    ) -> None:
        compute = self._compute()
        current = await self._instance(instance)
        await getattr(compute, method)(message.ctxt, current, *args, **kw)

    async def start_instance(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "start")

    async def stop_instance(
        self, message: Message, instance: Any, clean_shutdown: Any = True
    ) -> None:
        # A caller that waits (do_cast false) gets its answer once stopped.
        compute = self._compute()
        current = await self._instance(instance)
        await compute.stop(
            message.ctxt,
            current,
            do_cast=not message.need_response,
            clean_shutdown=bool(clean_shutdown),
        )

    async def reboot_instance(self, message: Message, instance: Any, reboot_type: str) -> None:
        await self._act(message, instance, "reboot", reboot_type)

    async def suspend_instance(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "suspend")

    async def resume_instance(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "resume")

    async def terminate_instance(
        self, message: Message, instance: Any, delete_type: str = "delete"
    ) -> None:
        method = DELETE_TYPES.get(delete_type)
        if method is None:
            raise InvalidArguments(
                method_name="terminate_instance", reason=f"unknown delete_type {delete_type!r}"
            )
        await self._act(message, instance, method)

    async def soft_delete_instance(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "soft_delete")

    async def pause_instance(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "pause")

    async def unpause_instance(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "unpause")

    async def resize_instance(
        self,
        message: Message,
        instance: Any,
        flavor: Any,
        extra_instance_updates: Mapping[str, Any] | None,
        clean_shutdown: Any = True,
    ) -> None:
        extra = dict(extra_instance_updates or {})
        await self._act(
            message, instance, "resize", flavor=flavor, clean_shutdown=bool(clean_shutdown), **extra
        )

    async def live_migrate_instance(
        self,
        message: Message,
        instance: Any,
        block_migration: Any,
        disk_over_commit: Any,
        host_name: Any,
    ) -> None:
        await self._act(
            message, instance, "live_migrate", block_migration, disk_over_commit, host_name
        )

    async def revert_resize(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "revert_resize")

    async def confirm_resize(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "confirm_resize")

    async def reset_network(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "reset_network")

    async def inject_network_info(self, message: Message, instance: Any) -> None:
        await self._act(message, instance, "inject_network_info")

    async def snapshot_instance(self, message: Message, instance: Any, image_id: str) -> None:
        await self._act(message, instance, "snapshot", image_id)

    async def backup_instance(
        self, message: Message, instance: Any, image_id: str, backup_type: str, rotation: Any
    ) -> None:
        rotation = integer("backup_instance", "rotation", rotation)
        await self._act(message, instance, "backup", image_id, backup_type, rotation)

    async def rebuild_instance(
        self,
        message: Message,
        instance: Any,
        image_href: Any,
        admin_password: Any,
        files_to_inject: Any,
        preserve_ephemeral: Any,
        kwargs: Mapping[str, Any] | None,
    ) -> None:
        extra = {**dict(kwargs or {}), "preserve_ephemeral": bool(preserve_ephemeral)}
        await self._act(
            message, instance, "rebuild", image_href, admin_password, files_to_inject, **extra
        )

    async def set_admin_password(self, message: Message, instance: Any, new_pass: Any) -> None:
        await self._act(message, instance, "set_admin_password", new_pass)
