"""What each CellsAPI method sends: :data:`RPC_METHODS`.

One entry per method of :class:`cellsd.rpc.api.CellsAPI`: its RPC name, its
newest version, call or cast, and which of its parameters travel under
which names. The CellsAPI methods and the manager's version checks read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

__all__ = ["CALL", "CAST", "CAST_OR_CALL", "RPC_METHODS", "RpcMethod"]

CALL: Final = "call"
CAST: Final = "cast"
#: stop_instance: a cast, or a call when the caller asks to wait.
CAST_OR_CALL: Final = "cast|call"


@attrs.frozen
class RpcMethod:
    """How one CellsAPI method travels, in its newest form."""

    rpc_name: str
    version: str
    kind: str
    #: (name on the wire, name of the CellsAPI parameter it comes from)
    sources: tuple[tuple[str, str], ...]

    @property
    def args(self) -> tuple[str, ...]:
        """The keyword arguments sent, by their names on the wire."""
        return tuple(wire for wire, _ in self.sources)


def _m(version: str, kind: str, args: str = "", rpc: str = "") -> RpcMethod:
    """``args``: wire names, ``wire=param`` where the parameter is renamed."""
    sources = tuple((a.partition("=")[0], a.rpartition("=")[2]) for a in args.split())
    return RpcMethod(rpc, version, kind, sources)


_I = "instance"

#: Every CellsAPI method: its newest version, call or cast, the keyword
#: arguments it sends, and its RPC name where that is not the method's name.
#: The older forms sent under a version cap are built by the methods.
# fmt: off
_TABLE: Final[dict[str, RpcMethod]] = {
    # compute API methods in a given cell
    "cast_compute_api_method": _m("1.0", CAST, "cell_name method_info call", rpc="run_compute_api_method"),  # noqa: E501
    "call_compute_api_method": _m("1.0", CALL, "cell_name method_info call", rpc="run_compute_api_method"),  # noqa: E501
    # instance data sent up to the API cell
    "instance_update_at_top": _m("1.35", CAST, _I),
    "instance_destroy_at_top": _m("1.35", CAST, _I),
    "instance_info_cache_update_at_top": _m("1.35", CAST, _I, rpc="instance_update_at_top"),
    "instance_delete_everywhere": _m("1.27", CAST, "instance delete_type"),
    "instance_fault_create_at_top": _m("1.0", CAST, "instance_fault"),
    "bw_usage_update_at_top": _m("1.0", CAST, "bw_update_info"),
    "consoleauth_delete_tokens": _m("1.6", CAST, "instance_uuid"),
    "bdm_update_or_create_at_top": _m("1.28", CAST, "bdm create"),
    "bdm_destroy_at_top": _m("1.10", CAST, "instance_uuid device_name volume_id"),
    "get_keypair_at_top": _m("1.37", CALL, "user_id name"),
    # cells, services, compute nodes, task logs, migrations
    "get_cell_info_for_neighbors": _m("1.1", CALL),
    "sync_instances": _m("1.1", CAST, "project_id updated_since deleted"),
    "service_get_all": _m("1.2", CALL, "filters"),
    "service_get_by_compute_host": _m("1.2", CALL, "host_name"),
    "get_host_uptime": _m("1.17", CALL, "host_name"),
    "service_update": _m("1.7", CALL, "host_name binary params_to_update"),
    "service_delete": _m("1.26", CALL, "cell_service_id"),
    "proxy_rpc_to_manager": _m("1.2", CALL, "topic rpc_message call timeout"),
    "task_log_get_all": _m("1.3", CALL, "task_name period_beginning period_ending host state"),
    "compute_node_get": _m("1.4", CALL, "compute_id"),
    "compute_node_get_all": _m("1.4", CALL, "hypervisor_match"),
    "compute_node_stats": _m("1.4", CALL),
    "get_capacities": _m("1.9", CALL, "cell_name"),
    "get_migrations": _m("1.11", CALL, "filters"),
    "cell_create": _m("1.13", CALL, "values"),
    "cell_update": _m("1.13", CALL, "cell_name values"),
    "cell_delete": _m("1.13", CALL, "cell_name"),
    "cell_get": _m("1.13", CALL, "cell_name"),
    # per-instance queries
    "actions_get": _m("1.5", CALL, "cell_name instance_uuid"),
    "action_get_by_request_id": _m("1.5", CALL, "cell_name instance_uuid request_id"),
    "action_events_get": _m("1.5", CALL, "cell_name action_id"),
    "validate_console_port": _m("1.6", CALL, "instance_uuid console_port console_type"),
    # instance actions
    "build_instances": _m("1.34", CAST, "build_inst_kwargs"),
    "instance_update_from_api": _m("1.16", CAST, "instance expected_vm_state expected_task_state admin_state_reset"),  # noqa: E501
    "start_instance": _m("1.12", CAST, _I),
    "stop_instance": _m("1.31", CAST_OR_CALL, "instance do_cast clean_shutdown"),
    "reboot_instance": _m("1.14", CAST, "instance reboot_type"),
    "pause_instance": _m("1.19", CAST, _I),
    "unpause_instance": _m("1.19", CAST, _I),
    "suspend_instance": _m("1.15", CAST, _I),
    "resume_instance": _m("1.15", CAST, _I),
    "terminate_instance": _m("1.36", CAST, "instance delete_type"),
    "soft_delete_instance": _m("1.18", CAST, _I),
    "resize_instance": _m("1.33", CAST, "instance flavor extra_instance_updates clean_shutdown"),
    "live_migrate_instance": _m("1.20", CAST, "instance block_migration disk_over_commit host_name"),  # noqa: E501
    "revert_resize": _m("1.21", CAST, _I),
    "confirm_resize": _m("1.21", CAST, _I),
    "reset_network": _m("1.22", CAST, _I),
    "inject_network_info": _m("1.23", CAST, _I),
    "snapshot_instance": _m("1.24", CAST, "instance image_id"),
    "backup_instance": _m("1.24", CAST, "instance image_id backup_type rotation"),
    "rebuild_instance": _m("1.25", CAST, "instance image_href=image_ref admin_password=new_pass "
                           "files_to_inject=injected_files preserve_ephemeral kwargs"),
    "set_admin_password": _m("1.29", CAST, "instance new_pass"),
    # cellsd's own diagnostics
    "ping": _m("1.38", CALL, "cell_name"),
    "ping_all": _m("1.38", CALL, "up"),
    "tree": _m("1.38", CALL),
    "instance_list": _m("1.38", CALL, "cell_name filters"),
    # cellsd's state-changing broadcasts with per-cell outcomes
    "instance_delete_everywhere_outcomes": _m("1.39", CALL, "instance delete_type"),
    "sync_instances_outcomes": _m("1.39", CALL, "project_id updated_since deleted"),
}
# fmt: on
RPC_METHODS: Final[Mapping[str, RpcMethod]] = {
    name: attrs.evolve(spec, rpc_name=spec.rpc_name or name) for name, spec in _TABLE.items()
}
