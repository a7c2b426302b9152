"""The cases every CellsAPI method is checked with: how to call it, what
the manager must ask of the runner and the store, and what the caller gets.

Shared by the per-transport behaviour suite (tests/unit/rpc_method_behaviour.py)
and the version-cap matrix (tests/unit/test_rpc_version_matrix.py). The
server is a CellsManager over a :class:`~tests.unit.rpc_fakes.FakeRunner` and
a :class:`~tests.unit.rpc_fakes.FakeStore` (:func:`make_server`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from cellsd.context import RequestContext
from cellsd.errors import CellOutcomeUnknown, CellsError, CellTimeout, CellUnreachable
from cellsd.messaging.message import Response
from cellsd.objects import (
    BlockDeviceMapping,
    Cell,
    ComputeNode,
    Flavor,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    KeyPair,
    Migration,
    Service,
    TaskLog,
)
from cellsd.rpc.api import CAST, RPC_METHODS, CellsAPI
from cellsd.rpc.manager import CellsManager
from cellsd.rpc.proxies import ComputeNodeProxy, ServiceProxy
from cellsd.state import CellStateManager
from cellsd.testing import Neighbour
from tests.unit.rpc_fakes import FakeRunner, FakeStore

ME = "api-cell"
C1 = "api-cell!child-cell1"
C2 = "api-cell!child-cell2"
C3 = "api-cell!child-cell3"


def str_of(error: CellsError) -> str:
    """An outcome row's ``error``: the class and the message."""
    return f"{type(error).__name__}: {error.message}"


# --------------------------------------------------------------------------
# Fixtures: built with constructors, so every set field counts as changed


def flavor() -> Flavor:
    return Flavor(flavorid="m1.tiny", name="m1.tiny", memory_mb=512, vcpus=1, root_gb=1)


def instance() -> Instance:
    return Instance(
        uuid="inst-1",
        cell_name=C1,
        host="h1",
        vm_state="active",
        project_id="p1",
        flavor=flavor(),
        metadata={"k": "v"},
    )


def bdm() -> BlockDeviceMapping:
    return BlockDeviceMapping(
        uuid="bdm-1",
        instance_uuid="inst-1",
        device_name="/dev/vda",
        source_type="volume",
        destination_type="volume",
        volume_id="vol-1",
    )


CACHE = {"instance_uuid": "inst-1", "network_info": [{"id": "vif-1", "address": "fa:16:3e:1"}]}
FAULT = InstanceFault(instance_uuid="inst-1", code=500, message="boom", host="h1")
SERVICE = Service(id=1, host="h1", binary="nova-compute", topic="compute", disabled=False)
NODE = ComputeNode(id=3, host="h1", hypervisor_hostname="h1.example", vcpus=8, memory_mb=4096)
KEYPAIR = KeyPair(name="kp", user_id="u1", fingerprint="fp", public_key="ssh-rsa AAAA")
ACTION = InstanceAction(id=1, action="start", instance_uuid="inst-1", request_id="req-1")
EVENT = InstanceActionEvent(id=1, event="compute_start_instance", action_id=1, result="Success")
MIGRATION = Migration(id=1, instance_uuid="inst-1", status="finished", migration_type="resize")
TASK_LOG = TaskLog(id=3, task_name="usage", host="h1", state="DONE")
CAPACITIES = {"ram_free": {"total_mb": 1024, "units_by_mb": {"512": 2}}}


def build_kwargs() -> dict[str, Any]:
    return {
        "instances": [instance()],
        "image": {"id": "img-1", "name": "cirros"},
        "filter_properties": {"instance_type": flavor(), "scheduler_hints": {}},
        "admin_password": "pw",
        "injected_files": [],
        "requested_networks": None,
        "security_groups": ["default"],
        "block_device_mapping": [bdm()],
        "legacy_bdm": False,
    }


def service_wire(service: Service, cell: str) -> dict[str, Any]:
    return ServiceProxy(service, cell).to_wire()


def proxy_check(cls: type[Any], record: Any, cell: str) -> dict[str, Any]:
    wire = cls(record, cell).to_wire()
    assert wire["host"] == f"{cell}@{record.host}"
    assert wire["id"] == f"{cell}@{record.id}"
    assert wire["cell_proxy.class_name"] == cls.class_name
    assert wire["cell_proxy.cell_path"] == cell
    return wire


# --------------------------------------------------------------------------
# The cases


@attrs.frozen
class Case:
    """One CellsAPI method: how to invoke it, the operations the manager
    must make (runner and store), what the runner answers and what the
    caller must get."""

    invoke: Callable[[CellsAPI, RequestContext], Deferred[Any]]
    #: (runner operation, its arguments as bound to the seed signature)
    calls: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    answers: dict[str, Any] = attrs.field(factory=dict)
    result: Any = None
    #: Checks a result that cannot be compared whole (timings).
    check: Callable[[Any, Any], None] | None = None
    store_calls: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    #: The CellsAPI method when the case is a variant (e.g. a cast form).
    api_method: str | None = None


def _c(method: str, **args: Any) -> tuple[str, dict[str, Any]]:
    return (method, args)


def _one(value: Any, cell: str = C1) -> Callable[..., Response]:
    return lambda **_: Response(cell, value)


I = instance  # noqa: E741  (short: used in every instance action)

# fmt: off
CASES: dict[str, Case] = {
    # compute API methods in a cell
    "cast_compute_api_method": Case(
        lambda a, c: a.cast_compute_api_method(c, "child-cell1", "get_vnc_console", "inst-1", "novnc"),  # noqa: E501
        [_c("run_compute_api_method", cell_name=C1, method_info={"method": "get_vnc_console", "method_args": ["inst-1", "novnc"], "method_kwargs": {}}, call=False)]),  # noqa: E501
    "call_compute_api_method": Case(
        lambda a, c: a.call_compute_api_method(c, C1, "get_vnc_console", "inst-1", console_type="novnc"),  # noqa: E501
        [_c("run_compute_api_method", cell_name=C1, method_info={"method": "get_vnc_console", "method_args": ["inst-1"], "method_kwargs": {"console_type": "novnc"}}, call=True)],  # noqa: E501
        {"run_compute_api_method": _one({"url": "http://vnc/1"})}, {"url": "http://vnc/1"}),
    "build_instances": Case(
        lambda a, c: a.build_instances(c, **build_kwargs()),
        [_c("build_instances", target_cell=ME, build_inst_kwargs={k: v for k, v in build_kwargs().items() if k != "legacy_bdm"})]),  # noqa: E501
    # instance data sent up to the top
    "instance_update_at_top": Case(
        lambda a, c: a.instance_update_at_top(c, I()), [_c("instance_update_at_top", instance=I())]),  # noqa: E501
    "instance_destroy_at_top": Case(
        lambda a, c: a.instance_destroy_at_top(c, I()), [_c("instance_destroy_at_top", instance=I())]),  # noqa: E501
    "instance_info_cache_update_at_top": Case(
        lambda a, c: a.instance_info_cache_update_at_top(c, CACHE),
        [_c("instance_update_at_top", instance=Instance(uuid="inst-1", info_cache=CACHE))]),
    "instance_delete_everywhere": Case(
        lambda a, c: a.instance_delete_everywhere(c, I(), "soft"),
        [_c("instance_delete_everywhere", instance=I(), delete_type="soft")]),
    "instance_fault_create_at_top": Case(
        lambda a, c: a.instance_fault_create_at_top(c, FAULT),
        [_c("instance_fault_create_at_top", instance_fault=FAULT.to_dict())]),
    "bw_usage_update_at_top": Case(
        lambda a, c: a.bw_usage_update_at_top(c, "inst-1", "fa:16:3e:1", "2015-01-01T00:00:00", 1, 2, 3, 4),  # noqa: E501
        [_c("bw_usage_update_at_top", bw_update_info={"uuid": "inst-1", "mac": "fa:16:3e:1", "start_period": "2015-01-01T00:00:00", "bw_in": 1, "bw_out": 2, "last_ctr_in": 3, "last_ctr_out": 4, "last_refreshed": None})]),  # noqa: E501
    "consoleauth_delete_tokens": Case(
        lambda a, c: a.consoleauth_delete_tokens(c, "inst-1"),
        [_c("consoleauth_delete_tokens", instance_uuid="inst-1")]),
    "bdm_update_or_create_at_top": Case(
        lambda a, c: a.bdm_update_or_create_at_top(c, bdm(), create=True),
        [_c("bdm_update_or_create_at_top", bdm=bdm().to_dict(), create=True)]),
    "bdm_destroy_at_top": Case(
        lambda a, c: a.bdm_destroy_at_top(c, "inst-1", volume_id="vol-1"),
        [_c("bdm_destroy_at_top", instance_uuid="inst-1", device_name=None, volume_id="vol-1")]),
    "get_keypair_at_top": Case(
        lambda a, c: a.get_keypair_at_top(c, "u1", "kp"),
        [_c("get_keypair_at_top", user_id="u1", name="kp")],
        {"get_keypair_at_top": [Response("child-cell1!api-cell", None), Response("child-cell1!api-cell!top", KEYPAIR)]},  # noqa: E501
        KEYPAIR),
    # cells, services, hosts, compute nodes, task logs, migrations
    "get_cell_info_for_neighbors": Case(
        lambda a, c: a.get_cell_info_for_neighbors(c),
        check=lambda t, r: t.assertEqual([n["name"] for n in r], ["child-cell1", "child-cell2"])),
    "sync_instances": Case(
        lambda a, c: a.sync_instances(c, project_id="p1", updated_since="2015-01-01T00:00:00"),
        [_c("sync_instances", project_id="p1", updated_since="2015-01-01T00:00:00", deleted=False)]),  # noqa: E501
    "service_get_all": Case(
        lambda a, c: a.service_get_all(c, {"disabled": False}),
        [_c("service_get_all", filters={"disabled": False})],
        {"service_get_all": [Response(C1, [SERVICE]), Response(ME, [Service(id=2, host="h0", binary="nova-cells")])]},  # noqa: E501
        [proxy_check(ServiceProxy, SERVICE, C1), service_wire(Service(id=2, host="h0", binary="nova-cells"), ME)]),  # noqa: E501
    "service_get_by_compute_host": Case(
        lambda a, c: a.service_get_by_compute_host(c, "child-cell1@h1"),
        [_c("service_get_by_compute_host", cell_name=C1, host_name="h1")],
        {"service_get_by_compute_host": _one(SERVICE)}, proxy_check(ServiceProxy, SERVICE, C1)),
    "get_host_uptime": Case(
        lambda a, c: a.get_host_uptime(c, f"{C1}@h1"),
        [_c("get_host_uptime", cell_name=C1, host_name="h1")],
        {"get_host_uptime": _one("up 93 days")}, "up 93 days"),
    "service_update": Case(
        lambda a, c: a.service_update(c, "child-cell1@h1", "nova-compute", {"disabled": True}),
        [_c("service_update", cell_name=C1, host_name="h1", binary="nova-compute", params_to_update={"disabled": True})],  # noqa: E501
        {"service_update": _one(SERVICE)}, service_wire(SERVICE, C1)),
    "service_delete": Case(
        lambda a, c: a.service_delete(c, f"{C1}@7"),
        [_c("service_delete", cell_name=C1, service_id=7)]),
    "proxy_rpc_to_manager": Case(
        lambda a, c: a.proxy_rpc_to_manager(c, {"method": "get_uptime", "args": {}}, f"compute.{C1}@h1", call=True, timeout=5),  # noqa: E501
        [_c("proxy_rpc_to_manager", cell_name=C1, host_name="h1", topic="compute.h1", rpc_message={"method": "get_uptime", "args": {}}, call=True, timeout=5)],  # noqa: E501
        {"proxy_rpc_to_manager": _one("up 3 days")}, "up 3 days"),
    "task_log_get_all": Case(
        lambda a, c: a.task_log_get_all(c, "usage", "2015-01-01T00:00:00", "2015-02-01T00:00:00", host="child-cell1@h1"),  # noqa: E501
        [_c("task_log_get_all", cell_name=C1, task_name="usage", period_beginning="2015-01-01T00:00:00", period_ending="2015-02-01T00:00:00", host="h1", state=None)],  # noqa: E501
        {"task_log_get_all": [Response(C1, [TASK_LOG])]},
        [{"id": f"{C1}@3", "host": f"{C1}@h1", "task_name": "usage", "state": "DONE"}]),
    "compute_node_get": Case(
        lambda a, c: a.compute_node_get(c, "child-cell1@3"),
        [_c("compute_node_get", cell_name=C1, compute_id=3)],
        {"compute_node_get": _one(NODE)}, proxy_check(ComputeNodeProxy, NODE, C1)),
    "compute_node_get_all": Case(
        lambda a, c: a.compute_node_get_all(c, hypervisor_match="h1"),
        [_c("compute_node_get_all", hypervisor_match="h1")],
        {"compute_node_get_all": [Response(C1, [NODE]), Response(ME, [])]},
        [ComputeNodeProxy(NODE, C1).to_wire()]),
    "compute_node_stats": Case(
        lambda a, c: a.compute_node_stats(c),
        [_c("compute_node_stats")],
        {"compute_node_stats": [Response(C1, {"count": 1, "vcpus": 8}), Response(ME, {"count": 2, "vcpus": 16, "running_vms": 3})]},  # noqa: E501
        {"count": 3, "vcpus": 24, "running_vms": 3}),
    "get_capacities": Case(lambda a, c: a.get_capacities(c, "child-cell1"), result=CAPACITIES),
    "get_migrations": Case(
        lambda a, c: a.get_migrations(c, {"status": "finished", "cell_name": "child-cell1"}),
        [_c("get_migrations", cell_name=C1, run_locally=False, filters={"status": "finished"})],
        {"get_migrations": [Response(C1, [MIGRATION])]}, [MIGRATION]),
    "cell_create": Case(
        lambda a, c: a.cell_create(c, {"name": "child-cell9", "transport_url": "tcp:h:1"}),
        result=Cell(id=2, name="child-cell9", transport_url="tcp:h:1"),
        store_calls=[_c("cell_create", values={"name": "child-cell9", "transport_url": "tcp:h:1"})]),  # noqa: E501
    "cell_update": Case(
        lambda a, c: a.cell_update(c, "child-cell8", {"weight_offset": 2.0}),
        result=Cell(id=8, name="child-cell8", weight_offset=2.0),
        store_calls=[_c("cell_update", name="child-cell8", values={"weight_offset": 2.0})]),
    "cell_delete": Case(
        lambda a, c: a.cell_delete(c, "child-cell8"), result=1,
        store_calls=[_c("cell_delete", name="child-cell8")]),
    "cell_get": Case(
        lambda a, c: a.cell_get(c, "child-cell1"),
        result=Cell(name="child-cell1", is_parent=False, weight_offset=0.0, weight_scale=1.0, transport_url="tcp:child1:7000"),  # noqa: E501
        store_calls=[_c("cell_get", name="child-cell1")]),
    # per-instance queries
    "actions_get": Case(
        lambda a, c: a.actions_get(c, I()),
        [_c("actions_get", cell_name=C1, instance_uuid="inst-1")],
        {"actions_get": _one([ACTION])}, [ACTION]),
    "action_get_by_request_id": Case(
        lambda a, c: a.action_get_by_request_id(c, I(), "req-1"),
        [_c("action_get_by_request_id", cell_name=C1, instance_uuid="inst-1", request_id="req-1")],
        {"action_get_by_request_id": _one(ACTION)}, ACTION),
    "action_events_get": Case(
        lambda a, c: a.action_events_get(c, I(), 1),
        [_c("action_events_get", cell_name=C1, action_id=1)],
        {"action_events_get": _one([EVENT])}, [EVENT]),
    "validate_console_port": Case(
        lambda a, c: a.validate_console_port(c, "inst-1", 5900, "novnc"),
        [_c("validate_console_port", cell_name=C1, instance_uuid="inst-1", console_port=5900, console_type="novnc")],  # noqa: E501
        {"validate_console_port": _one(True)}, True,
        store_calls=[_c("instance_get_by_uuid", instance_uuid="inst-1", read_deleted="no")]),
    # instance actions
    "instance_update_from_api": Case(
        lambda a, c: a.instance_update_from_api(c, I(), "active", None, False),
        [_c("instance_update_from_api", instance=I(), expected_vm_state="active", expected_task_state=None, admin_state_reset=False)]),  # noqa: E501
    "start_instance": Case(lambda a, c: a.start_instance(c, I()), [_c("start_instance", instance=I())]),  # noqa: E501
    "stop_instance": Case(
        lambda a, c: a.stop_instance(c, I(), do_cast=False, clean_shutdown=False),
        [_c("stop_instance", instance=I(), do_cast=False, clean_shutdown=False)],
        {"stop_instance": _one({"vm_state": "stopped"})}, {"vm_state": "stopped"}),
    "stop_instance (cast)": Case(
        lambda a, c: a.stop_instance(c, I()),
        [_c("stop_instance", instance=I(), do_cast=True, clean_shutdown=True)],
        api_method="stop_instance"),
    "reboot_instance": Case(
        lambda a, c: a.reboot_instance(c, I(), None, "HARD"),
        [_c("reboot_instance", instance=I(), reboot_type="HARD")]),
    "pause_instance": Case(lambda a, c: a.pause_instance(c, I()), [_c("pause_instance", instance=I())]),  # noqa: E501
    "unpause_instance": Case(lambda a, c: a.unpause_instance(c, I()), [_c("unpause_instance", instance=I())]),  # noqa: E501
    "suspend_instance": Case(lambda a, c: a.suspend_instance(c, I()), [_c("suspend_instance", instance=I())]),  # noqa: E501
    "resume_instance": Case(lambda a, c: a.resume_instance(c, I()), [_c("resume_instance", instance=I())]),  # noqa: E501
    "terminate_instance": Case(
        lambda a, c: a.terminate_instance(c, I(), [], delete_type="force_delete"),
        [_c("terminate_instance", instance=I(), delete_type="force_delete")]),
    "soft_delete_instance": Case(
        lambda a, c: a.soft_delete_instance(c, I()), [_c("soft_delete_instance", instance=I())]),
    "resize_instance": Case(
        lambda a, c: a.resize_instance(c, I(), {"task_state": "resize_prep"}, {}, flavor(), [], clean_shutdown=False),  # noqa: E501
        [_c("resize_instance", instance=I(), flavor=flavor().to_dict(), extra_instance_updates={"task_state": "resize_prep"}, clean_shutdown=False)]),  # noqa: E501
    "live_migrate_instance": Case(
        lambda a, c: a.live_migrate_instance(c, I(), f"{C1}@h2", True, False),
        [_c("live_migrate_instance", instance=I(), block_migration=True, disk_over_commit=False, host_name="h2")]),  # noqa: E501
    "revert_resize": Case(
        lambda a, c: a.revert_resize(c, I(), {"id": 1}, "h1", []), [_c("revert_resize", instance=I())]),  # noqa: E501
    "confirm_resize": Case(
        lambda a, c: a.confirm_resize(c, I(), {"id": 1}, "h1", []), [_c("confirm_resize", instance=I())]),  # noqa: E501
    "reset_network": Case(lambda a, c: a.reset_network(c, I()), [_c("reset_network", instance=I())]),  # noqa: E501
    "inject_network_info": Case(
        lambda a, c: a.inject_network_info(c, I()), [_c("inject_network_info", instance=I())]),
    "snapshot_instance": Case(
        lambda a, c: a.snapshot_instance(c, I(), "img-2"),
        [_c("snapshot_instance", instance=I(), image_id="img-2")]),
    "backup_instance": Case(
        lambda a, c: a.backup_instance(c, I(), "img-2", "daily", 3),
        [_c("backup_instance", instance=I(), image_id="img-2", backup_type="daily", rotation=3)]),
    "rebuild_instance": Case(
        lambda a, c: a.rebuild_instance(c, I(), "pw", [["/f", "x"]], "img-3", "img-1", {}, [], preserve_ephemeral=True, kwargs={"k": 1}),  # noqa: E501
        [_c("rebuild_instance", instance=I(), image_href="img-3", admin_password="pw", files_to_inject=[["/f", "x"]], preserve_ephemeral=True, kwargs={"k": 1})]),  # noqa: E501
    "set_admin_password": Case(
        lambda a, c: a.set_admin_password(c, I(), "pw2"),
        [_c("set_admin_password", instance=I(), new_pass="pw2")]),
    # cellsd's diagnostics (1.38)
    "ping": Case(
        lambda a, c: a.ping(c, "child-cell1"),
        [_c("send_targeted", target_cell=C1, method_name="ping", method_kwargs={}, direction="down", need_response=True, fanout=False, timeout=None)],  # noqa: E501
        {"send_targeted": lambda target_cell, **_: Response(target_cell, {"cell": target_cell})},
        check=lambda t, r: t.assertEqual((r["cell"], r["ok"], r["error"]), (C1, True, None))),
    "ping_all": Case(
        lambda a, c: a.ping_all(c),
        [_c("send_broadcast", method_name="ping", method_kwargs={}, direction="down", need_response=True, run_locally=True, fanout=False, timeout=None),  # noqa: E501
         _c("send_targeted", target_cell=ME, method_name="ping", method_kwargs={}, direction="down", need_response=True, fanout=False, timeout=None),  # noqa: E501
         _c("send_targeted", target_cell=C1, method_name="ping", method_kwargs={}, direction="down", need_response=True, fanout=False, timeout=None)],  # noqa: E501
        {"send_broadcast": [Response(ME, {}), Response(C1, {})],
         "send_targeted": lambda target_cell, **_: Response(target_cell, {})},
        check=lambda t, r: t.assertEqual([(x["cell"], x["ok"]) for x in r], [(ME, True), (C1, True)])),  # noqa: E501
    "tree": Case(
        lambda a, c: a.tree(c),
        [_c("send_broadcast", method_name="ping", method_kwargs={"detail": True}, direction="down", need_response=True, run_locally=True, fanout=False, timeout=None)],  # noqa: E501
        {"send_broadcast": [Response(ME, {"children": ["child-cell1"], "is_top": True}), Response(C1, {"children": [], "is_top": False})]},  # noqa: E501
        check=lambda t, r: t.assertEqual(r["cells"], [{"cell": ME, "ok": True, "outcome": "ok", "children": ["child-cell1"], "is_top": True}, {"cell": C1, "ok": True, "outcome": "ok", "children": [], "is_top": False}])),  # noqa: E501
    "instance_list": Case(
        lambda a, c: a.instance_list(c, "child-cell1"),
        [_c("send_targeted", target_cell=C1, method_name="instance_get_all", method_kwargs={"filters": {"deleted": False}}, direction="down", need_response=True, fanout=False, timeout=None)],  # noqa: E501
        {"send_targeted": Response(C1, [{"uuid": "b"}, {"uuid": "a"}])},
        check=lambda t, r: t.assertEqual(r, [{"uuid": "a"}, {"uuid": "b"}])),
    # cellsd's state-changing broadcasts with outcomes (1.39)
    "instance_delete_everywhere_outcomes": Case(
        lambda a, c: a.instance_delete_everywhere_outcomes(c, I(), "hard"),
        [_c("send_broadcast", method_name="instance_delete_everywhere", method_kwargs={"instance": I(), "delete_type": "hard"}, direction="down", need_response=True, run_locally=False, fanout=False, timeout=None)],  # noqa: E501
        {"send_broadcast": [Response(C2, CellOutcomeUnknown(cell_name=C2, reason="link cut"), True), Response(C1, None), Response(C3, CellUnreachable(cell_name=C3, reason="down"), True)]},  # noqa: E501
        [{"cell": C1, "outcome": "ok", "error": None},
         {"cell": C2, "outcome": "unknown", "error": str_of(CellOutcomeUnknown(cell_name=C2, reason="link cut"))},  # noqa: E501
         {"cell": C3, "outcome": "unreachable", "error": str_of(CellUnreachable(cell_name=C3, reason="down"))}]),  # noqa: E501
    "sync_instances_outcomes": Case(
        lambda a, c: a.sync_instances_outcomes(c, "p1", deleted=True),
        [_c("send_broadcast", method_name="sync_instances", method_kwargs={"project_id": "p1", "updated_since": None, "deleted": True}, direction="down", need_response=True, run_locally=False, fanout=False, timeout=None)],  # noqa: E501
        {"send_broadcast": [Response(C1, None), Response(C2, CellTimeout(cell_name=C2), True)]},
        [{"cell": C1, "outcome": "ok", "error": None},
         {"cell": C2, "outcome": "unknown", "error": str_of(CellTimeout(cell_name=C2))}]),
}
# fmt: on


def api_method_of(name: str) -> str:
    return CASES[name].api_method or name


def kind_of(name: str) -> str:
    """ "call" or "cast" as the case sends it (stop_instance: both)."""
    if name in ("stop_instance", "stop_instance (cast)"):
        return "call" if name == "stop_instance" else "cast"
    return "cast" if RPC_METHODS[api_method_of(name)].kind == CAST else "call"


# --------------------------------------------------------------------------
# The server under test


def make_state() -> CellStateManager:
    state = CellStateManager(
        ME,
        [
            Neighbour("child-cell1", False, endpoint="tcp:child1:7000"),
            Neighbour("child-cell2", False),
        ],
        Clock(),
        capabilities={"hypervisor": ["kvm"]},
    )
    state.update_cell_capacities("child-cell1", CAPACITIES)
    return state


@attrs.define
class Server:
    """A CellsManager over a FakeRunner and a FakeStore."""

    runner: FakeRunner
    store: FakeStore
    manager: CellsManager


def make_server() -> Server:
    runner, store = FakeRunner(ME), FakeStore()
    store.instances["inst-1"] = instance()
    store.cells["child-cell8"] = Cell(id=8, name="child-cell8")
    manager = CellsManager(cast(Any, runner), make_state(), Clock(), store=cast(Any, store))
    return Server(runner, store, manager)


def prepare(server: Server, name: str) -> None:
    server.runner.answers.update(CASES[name].answers)
