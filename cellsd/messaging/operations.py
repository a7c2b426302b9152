"""The public operations of the MessageRunner (the seed's MessageRunner API).

One method per method of Nova's ``nova.cells.messaging.MessageRunner``, with
its signature, each building a targeted or broadcast message with the
direction, need_response, run_locally and fanout of behaviour §3.1 and
returning what that table says: a Response, a list of Responses, or None
(always as a Deferred). The work the message does when it arrives is in
:mod:`cellsd.messaging.methods_targeted` and
:mod:`cellsd.messaging.methods_broadcast`.

The Liberty defects of §8.1 #10 to #12 are fixed here, each said where it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cellsd.context import RequestContext
from cellsd.messaging.message import Message, Response, get_message_types, message_from_json
from cellsd.messaging.routing import DOWN, UP, split_path
from cellsd.state import CellState, CellStateManager


def instance_cell_name(instance: Any) -> str | None:
    """The cell path an instance (object or legacy dict) lives in."""
    if isinstance(instance, Mapping):
        return instance.get("cell_name")
    return getattr(instance, "cell_name", None)


def _none(_: object) -> None:
    return None


class MessageOperations:
    """Mixin of :class:`~cellsd.messaging.runner.MessageRunner`: the seed's
    public methods, built on send_targeted / send_broadcast."""

    log = Logger()

    if TYPE_CHECKING:
        state: CellStateManager

        @property
        def my_name(self) -> str: ...

        def send_targeted(
            self,
            ctxt: RequestContext,
            target_cell: str,
            method_name: str,
            method_kwargs: dict[str, Any],
            direction: str = DOWN,
            need_response: bool = False,
            fanout: bool = False,
            timeout: float | None = None,
        ) -> Deferred[Response | None]: ...

        def send_to_top(
            self, ctxt: RequestContext, method_name: str, method_kwargs: dict[str, Any]
        ) -> Deferred[None]: ...

        def send_broadcast(
            self,
            ctxt: RequestContext,
            method_name: str,
            method_kwargs: dict[str, Any],
            direction: str = DOWN,
            need_response: bool = False,
            run_locally: bool = True,
            fanout: bool = False,
            timeout: float | None = None,
        ) -> Deferred[list[Response] | None]: ...

    # -- helpers -------------------------------------------------------------------

    def _direction_to(self, cell_name: str) -> str:
        """Up when the path's first hop is one of our parents, else down."""
        parts = split_path(cell_name)
        if len(parts) > 1 and self.state.get_parent_cell(parts[1]) is not None:
            return UP
        return DOWN

    def _call(
        self, ctxt: RequestContext, cell_name: str, method: str, kwargs: dict[str, Any]
    ) -> Deferred[Response]:
        """A targeted message whose one Response the caller gets."""
        d = self.send_targeted(
            ctxt, cell_name, method, kwargs, self._direction_to(cell_name), need_response=True
        )
        return d  # type: ignore[return-value]  # need_response: never None

    def _ask_all(
        self, ctxt: RequestContext, method: str, kwargs: dict[str, Any], run_locally: bool = True
    ) -> Deferred[list[Response]]:
        """A broadcast down whose Responses (one per cell) the caller gets."""
        d = self.send_broadcast(
            ctxt, method, kwargs, DOWN, need_response=True, run_locally=run_locally
        )
        return d  # type: ignore[return-value]  # need_response: never None

    def _to_top(self, ctxt: RequestContext, method: str, kwargs: dict[str, Any]) -> Deferred[None]:
        """A cast up to every ancestor; only a cell without parents acts
        (durable for must-deliver methods: cellsd.messaging.durable)."""
        return self.send_to_top(ctxt, method, kwargs)

    def _instance_action(
        self,
        ctxt: RequestContext,
        instance: Any,
        method: str,
        extra: Mapping[str, Any] | None = None,
        need_response: bool = False,
    ) -> Deferred[Response | None]:
        """A targeted message to the instance's cell; an instance without a
        cell_name is only logged (behaviour §3.1)."""
        cell_name = instance_cell_name(instance)
        if not cell_name:
            self.log.warn(
                "no cell_name for instance {uuid}; {method} not sent",
                uuid=getattr(instance, "uuid", None) or dict(instance or {}).get("uuid"),
                method=method,
            )
            return defer.succeed(None)
        kwargs = {"instance": instance, **(extra or {})}
        return self.send_targeted(
            ctxt, cell_name, method, kwargs, self._direction_to(cell_name), need_response
        )

    def _cast_action(
        self,
        ctxt: RequestContext,
        instance: Any,
        method: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Deferred[None]:
        return self._instance_action(ctxt, instance, method, extra).addCallback(_none)

    # -- messages and their JSON form -----------------------------------------------

    @staticmethod
    def get_message_types() -> tuple[str, ...]:
        return get_message_types()

    def message_from_json(self, json_message: str | bytes) -> Message:
        """Rebuild a message from its JSON form, this cell appended to its path."""
        return message_from_json(json_message, self.my_name)

    # -- scheduling and compute API --------------------------------------------------

    def build_instances(
        self, ctxt: RequestContext, target_cell: CellState | str, build_inst_kwargs: Any
    ) -> Deferred[None]:
        """Tell a cell (this one, given as its state or path) to build instances."""
        if isinstance(target_cell, CellState):
            name = target_cell.name
            target_cell = self.my_name if target_cell.is_me else f"{self.my_name}!{name}"
        kwargs = {"build_inst_kwargs": build_inst_kwargs}
        return self.send_targeted(ctxt, target_cell, "build_instances", kwargs, DOWN).addCallback(
            _none
        )

    def run_compute_api_method(
        self, ctxt: RequestContext, cell_name: str, method_info: Any, call: bool
    ) -> Deferred[Response | None]:
        """Call an (allow-listed) compute API method in a cell; a Response if ``call``."""
        return self.send_targeted(
            ctxt,
            cell_name,
            "run_compute_api_method",
            {"method_info": method_info},
            self._direction_to(cell_name),
            need_response=bool(call),
        )

    def proxy_rpc_to_manager(
        self,
        ctxt: RequestContext,
        cell_name: str,
        host_name: str,
        topic: str,
        rpc_message: Any,
        call: bool,
        timeout: float | None,
    ) -> Deferred[Response | None]:
        """Pass a compute-manager RPC to a host of a cell; a Response if ``call``."""
        kwargs = {
            "host_name": host_name,
            "topic": topic,
            "rpc_message": rpc_message,
            "timeout": timeout,
        }
        return self.send_targeted(
            ctxt,
            cell_name,
            "proxy_rpc_to_manager",
            kwargs,
            self._direction_to(cell_name),
            need_response=bool(call),
            timeout=timeout if call and timeout else None,
        )

    # -- synchronisation upward (broadcast up, only the top acts) -------------------------

    def instance_update_at_top(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        """Report an instance (the whole record, §8.4 #23) to the top."""
        return self._to_top(ctxt, "instance_update_at_top", {"instance": instance})

    def instance_destroy_at_top(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._to_top(ctxt, "instance_destroy_at_top", {"instance": instance})

    def instance_fault_create_at_top(
        self, ctxt: RequestContext, instance_fault: Any
    ) -> Deferred[None]:
        return self._to_top(
            ctxt, "instance_fault_create_at_top", {"instance_fault": instance_fault}
        )

    def bw_usage_update_at_top(self, ctxt: RequestContext, bw_update_info: Any) -> Deferred[None]:
        return self._to_top(ctxt, "bw_usage_update_at_top", {"bw_update_info": bw_update_info})

    def consoleauth_delete_tokens(self, ctxt: RequestContext, instance_uuid: str) -> Deferred[None]:
        return self._to_top(ctxt, "consoleauth_delete_tokens", {"instance_uuid": instance_uuid})

    def bdm_update_or_create_at_top(
        self, ctxt: RequestContext, bdm: Any, create: bool | None = None
    ) -> Deferred[None]:
        """``create``: True for a new mapping, None for update-or-create,
        False for an update (sent as meant, not inverted: §8.4 #26)."""
        return self._to_top(ctxt, "bdm_update_or_create_at_top", {"bdm": bdm, "create": create})

    def bdm_destroy_at_top(
        self,
        ctxt: RequestContext,
        instance_uuid: str,
        device_name: str | None = None,
        volume_id: str | None = None,
    ) -> Deferred[None]:
        kwargs = {
            "instance_uuid": instance_uuid,
            "device_name": device_name,
            "volume_id": volume_id,
        }
        return self._to_top(ctxt, "bdm_destroy_at_top", kwargs)

    def get_keypair_at_top(
        self, ctxt: RequestContext, user_id: str, name: str
    ) -> Deferred[list[Response]]:
        """Ask the top for a key pair: the Responses of the cells above.

        Liberty returned a failure Response's exception as the key pair
        (§8.1 #12). Failures are left out here (and logged); when no cell
        answered with a key pair and one failed, the Deferred fails with that
        error rather than pretending the key pair does not exist.
        """
        d = self.send_broadcast(
            ctxt,
            "get_keypair_at_top",
            {"user_id": user_id, "name": name},
            UP,
            need_response=True,
            run_locally=False,
        )

        def keep_answers(responses: list[Response] | None) -> list[Response]:
            ok = [r for r in responses or [] if not r.failure]
            failed = [r for r in responses or [] if r.failure]
            for r in failed:
                self.log.warn(
                    "get_keypair_at_top failed at {cell}: {error}", cell=r.cell_name, error=r.value
                )
            if failed and not any(r.value is not None for r in ok):
                failed[0].value_or_raise()
            return ok

        return d.addCallback(keep_answers)

    # -- synchronisation downward -----------------------------------------------------------

    def instance_digests_at_top(
        self, ctxt: RequestContext, digests: dict[str, str]
    ) -> Deferred[list[Response]]:
        """Anti-entropy: this cell's per-project instance digests up; only
        the top answers (the buckets that differ), the cells between answer
        None (:mod:`cellsd.messaging.sync`)."""
        d = self.send_broadcast(
            ctxt,
            "instance_digests_at_top",
            {"digests": digests},
            UP,
            need_response=True,
            run_locally=False,
        )
        return d  # type: ignore[return-value]  # need_response: never None

    def instance_delete_everywhere(
        self, ctxt: RequestContext, instance: Any, delete_type: str
    ) -> Deferred[None]:
        kwargs = {"instance": instance, "delete_type": delete_type}
        d = self.send_broadcast(ctxt, "instance_delete_everywhere", kwargs, DOWN, run_locally=False)
        return d.addCallback(_none)

    def sync_instances(
        self, ctxt: RequestContext, project_id: Any, updated_since: Any, deleted: Any
    ) -> Deferred[None]:
        """Every cell below reports its (matching) instances to the top."""
        kwargs = {"project_id": project_id, "updated_since": updated_since, "deleted": deleted}
        d = self.send_broadcast(ctxt, "sync_instances", kwargs, DOWN, run_locally=False)
        return d.addCallback(_none)

    def instance_update_from_api(
        self,
        ctxt: RequestContext,
        instance: Any,
        expected_vm_state: Any,
        expected_task_state: Any,
        admin_state_reset: Any,
    ) -> Deferred[None]:
        extra = {
            "expected_vm_state": expected_vm_state,
            "expected_task_state": expected_task_state,
            "admin_state_reset": admin_state_reset,
        }
        return self._cast_action(ctxt, instance, "instance_update_from_api", extra)

    # -- services, hosts, compute nodes ----------------------------------------------------

    def service_get_all(
        self, ctxt: RequestContext, filters: Any = None
    ) -> Deferred[list[Response]]:
        return self._ask_all(ctxt, "service_get_all", {"filters": filters})

    def service_get_by_compute_host(
        self, ctxt: RequestContext, cell_name: str, host_name: str
    ) -> Deferred[Response]:
        return self._call(ctxt, cell_name, "service_get_by_compute_host", {"host_name": host_name})

    def get_host_uptime(
        self, ctxt: RequestContext, cell_name: str, host_name: str
    ) -> Deferred[Response]:
        return self._call(ctxt, cell_name, "get_host_uptime", {"host_name": host_name})

    def service_update(
        self,
        ctxt: RequestContext,
        cell_name: str,
        host_name: str,
        binary: str,
        params_to_update: Any,
    ) -> Deferred[Response]:
        """Enable/disable a service; a disabled nova-compute gets no builds."""
        kwargs = {"host_name": host_name, "binary": binary, "params_to_update": params_to_update}
        return self._call(ctxt, cell_name, "service_update", kwargs)

    def service_delete(
        self, ctxt: RequestContext, cell_name: str, service_id: Any
    ) -> Deferred[None]:
        """Delete a service. Liberty discarded the Response, so a failure
        (ServiceNotFound) never reached the API (§8.1 #11); here the
        Deferred fails with it."""
        d = self._call(ctxt, cell_name, "service_delete", {"service_id": service_id})
        return d.addCallback(lambda r: r.value_or_raise()).addCallback(_none)

    def compute_node_get(
        self, ctxt: RequestContext, cell_name: str, compute_id: Any
    ) -> Deferred[Response]:
        return self._call(ctxt, cell_name, "compute_node_get", {"compute_id": compute_id})

    def compute_node_get_all(
        self, ctxt: RequestContext, hypervisor_match: str | None = None
    ) -> Deferred[list[Response]]:
        return self._ask_all(ctxt, "compute_node_get_all", {"hypervisor_match": hypervisor_match})

    def compute_node_stats(self, ctxt: RequestContext) -> Deferred[list[Response]]:
        return self._ask_all(ctxt, "compute_node_stats", {})

    def task_log_get_all(
        self,
        ctxt: RequestContext,
        cell_name: str | None,
        task_name: str,
        period_beginning: Any,
        period_ending: Any,
        host: str | None = None,
        state: str | None = None,
    ) -> Deferred[list[Response]]:
        """Task logs of one cell (a list of its one Response) or of all."""
        kwargs = {
            "task_name": task_name,
            "period_beginning": period_beginning,
            "period_ending": period_ending,
            "host": host,
            "state": state,
        }
        if cell_name:
            return self._call(ctxt, cell_name, "task_log_get_all", kwargs).addCallback(
                lambda r: [r]
            )
        return self._ask_all(ctxt, "task_log_get_all", kwargs)

    def get_migrations(
        self, ctxt: RequestContext, cell_name: str | None, run_locally: bool, filters: Any
    ) -> Deferred[list[Response]]:
        """Migrations of one cell or of every cell below (and this one if
        ``run_locally``), as a list of Responses.

        Liberty looked into a failure Response as if it were exc-info and
        turned a routing error into ``[]``, crashing when the error came from
        a remote cell (§8.1 #10). Here a failure stays a failure Response
        (an unknown cell is reported, not hidden), and ``cell_name`` may be
        a full path or a path below this cell.
        """
        kwargs = {"filters": filters}
        if cell_name:
            if cell_name != self.my_name and not cell_name.startswith(self.my_name + "!"):
                cell_name = f"{self.my_name}!{cell_name}"
            return self._call(ctxt, cell_name, "get_migrations", kwargs).addCallback(lambda r: [r])
        return self._ask_all(ctxt, "get_migrations", kwargs, run_locally=bool(run_locally))

    # -- instance actions, consoles ----------------------------------------------------------

    def actions_get(
        self, ctxt: RequestContext, cell_name: str, instance_uuid: str
    ) -> Deferred[Response]:
        return self._call(ctxt, cell_name, "actions_get", {"instance_uuid": instance_uuid})

    def action_get_by_request_id(
        self, ctxt: RequestContext, cell_name: str, instance_uuid: str, request_id: str
    ) -> Deferred[Response]:
        kwargs = {"instance_uuid": instance_uuid, "request_id": request_id}
        return self._call(ctxt, cell_name, "action_get_by_request_id", kwargs)

    def action_events_get(
        self, ctxt: RequestContext, cell_name: str, action_id: Any
    ) -> Deferred[Response]:
        return self._call(ctxt, cell_name, "action_events_get", {"action_id": action_id})

    def validate_console_port(
        self,
        ctxt: RequestContext,
        cell_name: str,
        instance_uuid: str,
        console_port: Any,
        console_type: str,
    ) -> Deferred[Response]:
        kwargs = {
            "instance_uuid": instance_uuid,
            "console_port": console_port,
            "console_type": console_type,
        }
        return self._call(ctxt, cell_name, "validate_console_port", kwargs)

    # -- instance actions (targeted to the instance's cell) ----------------------------------

    def start_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "start_instance")

    def stop_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        do_cast: bool = True,
        clean_shutdown: bool = True,
    ) -> Deferred[Response | None]:
        """A cast, or (``do_cast`` false) a call whose Response comes once stopped."""
        extra = {"clean_shutdown": clean_shutdown}
        return self._instance_action(
            ctxt, instance, "stop_instance", extra, need_response=not do_cast
        )

    def reboot_instance(
        self, ctxt: RequestContext, instance: Any, reboot_type: str
    ) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "reboot_instance", {"reboot_type": reboot_type})

    def suspend_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "suspend_instance")

    def resume_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "resume_instance")

    def terminate_instance(
        self, ctxt: RequestContext, instance: Any, delete_type: str = "delete"
    ) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "terminate_instance", {"delete_type": delete_type})

    def soft_delete_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "soft_delete_instance")

    def pause_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "pause_instance")

    def unpause_instance(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "unpause_instance")

    def resize_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        flavor: Any,
        extra_instance_updates: Any,
        clean_shutdown: bool = True,
    ) -> Deferred[None]:
        extra = {
            "flavor": flavor,
            "extra_instance_updates": extra_instance_updates,
            "clean_shutdown": clean_shutdown,
        }
        return self._cast_action(ctxt, instance, "resize_instance", extra)

    def live_migrate_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        block_migration: Any,
        disk_over_commit: Any,
        host_name: str | None,
    ) -> Deferred[None]:
        extra = {
            "block_migration": block_migration,
            "disk_over_commit": disk_over_commit,
            "host_name": host_name,
        }
        return self._cast_action(ctxt, instance, "live_migrate_instance", extra)

    def revert_resize(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "revert_resize")

    def confirm_resize(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "confirm_resize")

    def reset_network(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "reset_network")

    def inject_network_info(self, ctxt: RequestContext, instance: Any) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "inject_network_info")

    def snapshot_instance(
        self, ctxt: RequestContext, instance: Any, image_id: str
    ) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "snapshot_instance", {"image_id": image_id})

    def backup_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        image_id: str,
        backup_type: str,
        rotation: int,
    ) -> Deferred[None]:
        extra = {"image_id": image_id, "backup_type": backup_type, "rotation": rotation}
        return self._cast_action(ctxt, instance, "backup_instance", extra)

    def rebuild_instance(
        self,
        ctxt: RequestContext,
        instance: Any,
        image_href: Any,
        admin_password: Any,
        files_to_inject: Any,
        preserve_ephemeral: Any,
        kwargs: Any,
    ) -> Deferred[None]:
        extra = {
            "image_href": image_href,
            "admin_password": admin_password,
            "files_to_inject": files_to_inject,
            "preserve_ephemeral": preserve_ephemeral,
            "kwargs": kwargs,
        }
        return self._cast_action(ctxt, instance, "rebuild_instance", extra)

    def set_admin_password(
        self, ctxt: RequestContext, instance: Any, new_pass: Any
    ) -> Deferred[None]:
        return self._cast_action(ctxt, instance, "set_admin_password", {"new_pass": new_pass})
