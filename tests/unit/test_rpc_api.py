"""CellsAPI, the client side of the local RPC API, over the in-memory transport.

What a caller sends under each version cap, what it gets back, and what is
refused on its own side before anything is sent.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from cellsd.context import RequestContext
from cellsd.errors import CellsError, UnknownMethod
from cellsd.interfaces import IRPCTransport
from cellsd.objects import base as objects_base
from cellsd.rpc import api_backports
from cellsd.rpc.api import RPC_METHODS, VERSION_ALIASES, CellsAPI
from cellsd.rpc.errors import (
    InstanceUnknownCell,
    InvalidVersionCap,
    KeypairNotFound,
    RPCVersionCapError,
)
from cellsd.rpc.memory_transport import MemoryRPCTransport, SentRequest

# --------------------------------------------------------------------------
# Fixtures: objects that look like cellsd objects, without depending on them


class FakeObject:
    """Has the two forms of a cellsd object: primitive and plain dict."""

    def __init__(self, obj_name: str, **fields: Any) -> None:
        self.obj_name = obj_name
        self.fields = fields
        for k, v in fields.items():
            setattr(self, k, v)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, FakeObject) else v for k, v in self.fields.items()}

    def obj_to_primitive(self) -> dict[str, Any]:
        return {
            "nova_object.name": self.obj_name,
            "nova_object.namespace": "nova",
            "nova_object.version": "1.0",
            "nova_object.data": {
                k: v.obj_to_primitive() if isinstance(v, FakeObject) else v
                for k, v in self.fields.items()
            },
            "nova_object.changes": [],
        }


FLAVOR = FakeObject("Flavor", flavorid="m1.tiny", memory_mb=512, vcpus=1)
INSTANCE = FakeObject("Instance", uuid="inst-1", cell_name="api!child", host="h1", flavor=FLAVOR)
BDM = FakeObject("BlockDeviceMapping", instance_uuid="inst-1", device_name="/dev/vda")
CACHE = FakeObject("InstanceInfoCache", instance_uuid="inst-1", network_info=[])
FAULT = FakeObject("InstanceFault", instance_uuid="inst-1", code=500, message="boom")
IMAGE = FakeObject("ImageMeta", id="img-1", name="cirros")


def prim(obj: FakeObject) -> dict[str, Any]:
    return obj.obj_to_primitive()


def plain(obj: FakeObject) -> dict[str, Any]:
    return obj.to_dict()


CALL, CAST = "call", "cast"
ALIAS_CAPS: list[str | None] = [None, *VERSION_ALIASES]

# The seed's signatures (nova.cells.rpcapi.CellsAPI), one per method.
SEED_SIGNATURES = """
action_events_get(ctxt, instance, action_id)
action_get_by_request_id(ctxt, instance, request_id)
actions_get(ctxt, instance)
backup_instance(ctxt, instance, image_id, backup_type, rotation)
bdm_destroy_at_top(ctxt, instance_uuid, device_name=None, volume_id=None)
bdm_update_or_create_at_top(ctxt, bdm, create=None)
build_instances(ctxt, **kwargs)
bw_usage_update_at_top(ctxt, uuid, mac, start_period, bw_in, bw_out, last_ctr_in, last_ctr_out, last_refreshed=None)
call_compute_api_method(ctxt, cell_name, method, *args, **kwargs)
cast_compute_api_method(ctxt, cell_name, method, *args, **kwargs)
cell_create(ctxt, values)
cell_delete(ctxt, cell_name)
cell_get(ctxt, cell_name)
cell_update(ctxt, cell_name, values)
compute_node_get(ctxt, compute_id)
compute_node_get_all(ctxt, hypervisor_match=None)
compute_node_stats(ctxt)
confirm_resize(ctxt, instance, migration, host, reservations, cast=True)
consoleauth_delete_tokens(ctxt, instance_uuid)
get_capacities(ctxt, cell_name=None)
get_cell_info_for_neighbors(ctxt)
get_host_uptime(context, host_name)
get_keypair_at_top(ctxt, user_id, name)
get_migrations(ctxt, filters)
inject_network_info(ctxt, instance)
instance_delete_everywhere(ctxt, instance, delete_type)
instance_destroy_at_top(ctxt, instance)
instance_fault_create_at_top(ctxt, instance_fault)
instance_info_cache_update_at_top(ctxt, instance_info_cache)
instance_update_at_top(ctxt, instance)
instance_update_from_api(ctxt, instance, expected_vm_state, expected_task_state, admin_state_reset)
live_migrate_instance(ctxt, instance, host_name, block_migration, disk_over_commit, request_spec=None)
pause_instance(ctxt, instance)
proxy_rpc_to_manager(ctxt, rpc_message, topic, call=False, timeout=None)
reboot_instance(ctxt, instance, block_device_info, reboot_type)
rebuild_instance(ctxt, instance, new_pass, injected_files, image_ref, orig_image_ref, orig_sys_metadata, bdms, recreate=False, on_shared_storage=False, host=None, preserve_ephemeral=False, request_spec=None, kwargs=None)
reset_network(ctxt, instance)
resize_instance(ctxt, instance, extra_instance_updates, scheduler_hint, flavor, reservations, clean_shutdown=True)
resume_instance(ctxt, instance)
revert_resize(ctxt, instance, migration, host, reservations)
service_delete(ctxt, cell_service_id)
service_get_all(ctxt, filters=None)
service_get_by_compute_host(ctxt, host_name)
service_update(ctxt, host_name, binary, params_to_update)
set_admin_password(ctxt, instance, new_pass)
snapshot_instance(ctxt, instance, image_id)
soft_delete_instance(ctxt, instance, reservations=None)
start_instance(ctxt, instance)
stop_instance(ctxt, instance, do_cast=True, clean_shutdown=True)
suspend_instance(ctxt, instance)
sync_instances(ctxt, project_id=None, updated_since=None, deleted=False)
task_log_get_all(ctxt, task_name, period_beginning, period_ending, host=None, state=None)
terminate_instance(ctxt, instance, bdms, reservations=None, delete_type='delete')
unpause_instance(ctxt, instance)
validate_console_port(ctxt, instance_uuid, console_port, console_type)
"""  # noqa: E501
SEED = {line.split("(")[0]: line for line in SEED_SIGNATURES.split("\n") if line}
#: cellsd's own methods (versions 1.38 and 1.39), beyond the seed.
EXTENSIONS = {
    "ping",
    "ping_all",
    "tree",
    "instance_list",
    "instance_delete_everywhere_outcomes",
    "sync_instances_outcomes",
}


def render_signature(method: Callable[..., Any]) -> str:
    parts = []
    for p in list(inspect.signature(method).parameters.values()):
        if p.kind is p.VAR_POSITIONAL:
            parts.append("*" + p.name)
        elif p.kind is p.VAR_KEYWORD:
            parts.append("**" + p.name)
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            parts.append(f"{p.name}={p.default!r}")
    return f"{method.__name__}({', '.join(parts)})"


# --------------------------------------------------------------------------
# The expected messages: every method, and each form it takes (newest first)


@attrs.frozen
class Form:
    version: str
    kind: str
    kwargs: dict[str, Any]
    rpc: str | None = None


@attrs.frozen
class Case:
    invoke: Callable[[CellsAPI, RequestContext], defer.Deferred[Any]]
    forms: list[Form]


def _build_kwargs() -> dict[str, Any]:
    return {
        "instances": [INSTANCE],
        "image": IMAGE,
        "filter_properties": {"instance_type": FLAVOR, "scheduler_hints": {}},
        "admin_password": "pw",
        "injected_files": [],
        "requested_networks": None,
        "security_groups": ["default"],
        "block_device_mapping": [BDM],
        "legacy_bdm": False,
    }


def _build_form(version: str) -> dict[str, Any]:
    """build_instances' build_inst_kwargs as behaviour §4.2 defines them."""
    form: dict[str, Any] = {
        "instances": [prim(INSTANCE)],
        "image": plain(IMAGE),  # always a plain dict
        "filter_properties": {"instance_type": prim(FLAVOR), "scheduler_hints": {}},
        "admin_password": "pw",
        "injected_files": [],
        "requested_networks": None,
        "security_groups": ["default"],
        "block_device_mapping": [prim(BDM)],
    }
    if version != "1.34":  # 1.34 drops legacy_bdm; older forms keep it
        form["block_device_mapping"] = [plain(BDM)]
        form["legacy_bdm"] = False
    if version in ("1.30", "1.8"):
        form["instances"] = [plain(INSTANCE)]
    if version == "1.8":
        form["filter_properties"] = {"instance_type": plain(FLAVOR), "scheduler_hints": {}}
    return {"build_inst_kwargs": form}


def _one(version: str, kind: str, rpc: str | None = None, **kwargs: Any) -> list[Form]:
    return [Form(version, kind, kwargs, rpc)]


P_INST = prim(INSTANCE)
INFO_CACHE_INSTANCE = {"uuid": "inst-1", "info_cache": prim(CACHE)}
INFO_CACHE_INSTANCE_PLAIN = {"uuid": "inst-1", "info_cache": plain(CACHE)}
METHOD_INFO = {"method": "get_vnc_console", "method_args": ["novnc"], "method_kwargs": {"x": 1}}
BW = {
    "uuid": "inst-1",
    "mac": "fa:16:3e:00:00:01",
    "start_period": 1000,
    "bw_in": 1,
    "bw_out": 2,
    "last_ctr_in": 3,
    "last_ctr_out": 4,
    "last_refreshed": None,
}

# fmt: off
CASES: dict[str, Case] = {
    "cast_compute_api_method": Case(
        lambda a, c: a.cast_compute_api_method(c, "api!child", "get_vnc_console", "novnc", x=1),
        _one("1.0", CAST, "run_compute_api_method", cell_name="api!child", method_info=METHOD_INFO, call=False)),  # noqa: E501
    "call_compute_api_method": Case(
        lambda a, c: a.call_compute_api_method(c, "api!child", "get_vnc_console", "novnc", x=1),
        _one("1.0", CALL, "run_compute_api_method", cell_name="api!child", method_info=METHOD_INFO, call=True)),  # noqa: E501
    "build_instances": Case(
        lambda a, c: a.build_instances(c, **_build_kwargs()),
        [Form(v, CAST, _build_form(v)) for v in ("1.34", "1.32", "1.30", "1.8")]),
    "instance_update_at_top": Case(
        lambda a, c: a.instance_update_at_top(c, INSTANCE),
        [Form("1.35", CAST, {"instance": P_INST}), Form("1.34", CAST, {"instance": plain(INSTANCE)})]),  # noqa: E501
    "instance_destroy_at_top": Case(
        lambda a, c: a.instance_destroy_at_top(c, INSTANCE),
        [Form("1.35", CAST, {"instance": P_INST}), Form("1.34", CAST, {"instance": plain(INSTANCE)})]),  # noqa: E501
    "instance_info_cache_update_at_top": Case(
        lambda a, c: a.instance_info_cache_update_at_top(c, CACHE),
        [Form("1.35", CAST, {"instance": INFO_CACHE_INSTANCE}, "instance_update_at_top"),
         Form("1.34", CAST, {"instance": INFO_CACHE_INSTANCE_PLAIN}, "instance_update_at_top")]),
    "instance_delete_everywhere": Case(
        lambda a, c: a.instance_delete_everywhere(c, INSTANCE, "soft"),
        [Form("1.27", CAST, {"instance": P_INST, "delete_type": "soft"}),
         Form("1.0", CAST, {"instance": plain(INSTANCE), "delete_type": "soft"})]),
    "instance_fault_create_at_top": Case(
        lambda a, c: a.instance_fault_create_at_top(c, FAULT),
        _one("1.0", CAST, instance_fault=plain(FAULT))),
    "bw_usage_update_at_top": Case(
        lambda a, c: a.bw_usage_update_at_top(c, "inst-1", "fa:16:3e:00:00:01", 1000, 1, 2, 3, 4),
        _one("1.0", CAST, bw_update_info=BW)),
    "get_cell_info_for_neighbors": Case(
        lambda a, c: a.get_cell_info_for_neighbors(c), _one("1.1", CALL)),
    "sync_instances": Case(
        lambda a, c: a.sync_instances(c, project_id="p1", updated_since="2015-01-01T00:00:00"),
        _one("1.1", CAST, project_id="p1", updated_since="2015-01-01T00:00:00", deleted=False)),
    "service_get_all": Case(
        lambda a, c: a.service_get_all(c, {"disabled": False}),
        _one("1.2", CALL, filters={"disabled": False})),
    "service_get_by_compute_host": Case(
        lambda a, c: a.service_get_by_compute_host(c, "api!child@h1"),
        _one("1.2", CALL, host_name="api!child@h1")),
    "get_host_uptime": Case(
        lambda a, c: a.get_host_uptime(c, "api!child@h1"), _one("1.17", CALL, host_name="api!child@h1")),  # noqa: E501
    "service_update": Case(
        lambda a, c: a.service_update(c, "api!child@h1", "nova-compute", {"disabled": True}),
        _one("1.7", CALL, host_name="api!child@h1", binary="nova-compute", params_to_update={"disabled": True})),  # noqa: E501
    "service_delete": Case(
        lambda a, c: a.service_delete(c, "api!child@7"), _one("1.26", CALL, cell_service_id="api!child@7")),  # noqa: E501
    "proxy_rpc_to_manager": Case(
        lambda a, c: a.proxy_rpc_to_manager(c, {"method": "m"}, "compute.api!child@h1", timeout=5),
        _one("1.2", CALL, topic="compute.api!child@h1", rpc_message={"method": "m"}, call=False, timeout=5)),  # noqa: E501
    "task_log_get_all": Case(
        lambda a, c: a.task_log_get_all(c, "usage", "b", "e", host="api!child@h1"),
        _one("1.3", CALL, task_name="usage", period_beginning="b", period_ending="e", host="api!child@h1", state=None)),  # noqa: E501
    "compute_node_get": Case(
        lambda a, c: a.compute_node_get(c, "api!child@3"), _one("1.4", CALL, compute_id="api!child@3")),  # noqa: E501
    "compute_node_get_all": Case(
        lambda a, c: a.compute_node_get_all(c, hypervisor_match="h"), _one("1.4", CALL, hypervisor_match="h")),  # noqa: E501
    "compute_node_stats": Case(lambda a, c: a.compute_node_stats(c), _one("1.4", CALL)),
    "actions_get": Case(
        lambda a, c: a.actions_get(c, INSTANCE), _one("1.5", CALL, cell_name="api!child", instance_uuid="inst-1")),  # noqa: E501
    "action_get_by_request_id": Case(
        lambda a, c: a.action_get_by_request_id(c, INSTANCE, "req-1"),
        _one("1.5", CALL, cell_name="api!child", instance_uuid="inst-1", request_id="req-1")),
    "action_events_get": Case(
        lambda a, c: a.action_events_get(c, INSTANCE, 9), _one("1.5", CALL, cell_name="api!child", action_id=9)),  # noqa: E501
    "consoleauth_delete_tokens": Case(
        lambda a, c: a.consoleauth_delete_tokens(c, "inst-1"), _one("1.6", CAST, instance_uuid="inst-1")),  # noqa: E501
    "validate_console_port": Case(
        lambda a, c: a.validate_console_port(c, "inst-1", 5900, "novnc"),
        _one("1.6", CALL, instance_uuid="inst-1", console_port=5900, console_type="novnc")),
    "get_capacities": Case(
        lambda a, c: a.get_capacities(c, "api!child"), _one("1.9", CALL, cell_name="api!child")),
    # cellsd's diagnostics, newer than any Nova release
    "ping": Case(lambda a, c: a.ping(c, "api!child"), _one("1.38", CALL, cell_name="api!child")),
    "ping_all": Case(lambda a, c: a.ping_all(c, up=True), _one("1.38", CALL, up=True)),
    "tree": Case(lambda a, c: a.tree(c), _one("1.38", CALL)),
    "instance_list": Case(
        lambda a, c: a.instance_list(c, "c1", {"deleted": None}),
        _one("1.38", CALL, cell_name="c1", filters={"deleted": None}),
    ),
    "instance_delete_everywhere_outcomes": Case(
        lambda a, c: a.instance_delete_everywhere_outcomes(c, INSTANCE, "hard"),
        _one("1.39", CALL, instance=P_INST, delete_type="hard"),
    ),
    "sync_instances_outcomes": Case(
        lambda a, c: a.sync_instances_outcomes(c, "p1"),
        _one("1.39", CALL, project_id="p1", updated_since=None, deleted=False),
    ),
    "bdm_update_or_create_at_top": Case(
        lambda a, c: a.bdm_update_or_create_at_top(c, BDM, create=True),
        [Form("1.28", CAST, {"bdm": prim(BDM), "create": True}),
         Form("1.10", CAST, {"bdm": plain(BDM), "create": True})]),
    "bdm_destroy_at_top": Case(
        lambda a, c: a.bdm_destroy_at_top(c, "inst-1", volume_id="vol-1"),
        _one("1.10", CAST, instance_uuid="inst-1", device_name=None, volume_id="vol-1")),
    "get_migrations": Case(
        lambda a, c: a.get_migrations(c, {"status": "done"}), _one("1.11", CALL, filters={"status": "done"})),  # noqa: E501
    "instance_update_from_api": Case(
        lambda a, c: a.instance_update_from_api(c, INSTANCE, "active", None, False),
        _one("1.16", CAST, instance=P_INST, expected_vm_state="active", expected_task_state=None, admin_state_reset=False)),  # noqa: E501
    "start_instance": Case(lambda a, c: a.start_instance(c, INSTANCE), _one("1.12", CAST, instance=P_INST)),  # noqa: E501
    "stop_instance": Case(
        lambda a, c: a.stop_instance(c, INSTANCE, clean_shutdown=False),
        [Form("1.31", CAST, {"instance": P_INST, "do_cast": True, "clean_shutdown": False}),
         Form("1.12", CAST, {"instance": P_INST, "do_cast": True})]),
    "cell_create": Case(lambda a, c: a.cell_create(c, {"name": "x"}), _one("1.13", CALL, values={"name": "x"})),  # noqa: E501
    "cell_update": Case(
        lambda a, c: a.cell_update(c, "x", {"is_parent": False}),
        _one("1.13", CALL, cell_name="x", values={"is_parent": False})),
    "cell_delete": Case(lambda a, c: a.cell_delete(c, "x"), _one("1.13", CALL, cell_name="x")),
    "cell_get": Case(lambda a, c: a.cell_get(c, "x"), _one("1.13", CALL, cell_name="x")),
    "reboot_instance": Case(
        lambda a, c: a.reboot_instance(c, INSTANCE, {"bdi": 1}, "HARD"),
        _one("1.14", CAST, instance=P_INST, reboot_type="HARD")),
    "pause_instance": Case(lambda a, c: a.pause_instance(c, INSTANCE), _one("1.19", CAST, instance=P_INST)),  # noqa: E501
    "unpause_instance": Case(lambda a, c: a.unpause_instance(c, INSTANCE), _one("1.19", CAST, instance=P_INST)),  # noqa: E501
    "suspend_instance": Case(lambda a, c: a.suspend_instance(c, INSTANCE), _one("1.15", CAST, instance=P_INST)),  # noqa: E501
    "resume_instance": Case(lambda a, c: a.resume_instance(c, INSTANCE), _one("1.15", CAST, instance=P_INST)),  # noqa: E501
    "terminate_instance": Case(
        lambda a, c: a.terminate_instance(c, INSTANCE, [BDM], delete_type="force_delete"),
        [Form("1.36", CAST, {"instance": P_INST, "delete_type": "force_delete"}),
         Form("1.18", CAST, {"instance": P_INST})]),
    "soft_delete_instance": Case(
        lambda a, c: a.soft_delete_instance(c, INSTANCE, reservations=["r"]),
        _one("1.18", CAST, instance=P_INST)),
    "resize_instance": Case(
        lambda a, c: a.resize_instance(c, INSTANCE, {"task_state": "resize_prep"}, {}, FLAVOR, [], clean_shutdown=False),  # noqa: E501
        [Form("1.33", CAST, {"instance": P_INST, "flavor": plain(FLAVOR), "extra_instance_updates": {"task_state": "resize_prep"}, "clean_shutdown": False}),  # noqa: E501
         Form("1.20", CAST, {"instance": P_INST, "flavor": plain(FLAVOR), "extra_instance_updates": {"task_state": "resize_prep"}})]),  # noqa: E501
    "live_migrate_instance": Case(
        lambda a, c: a.live_migrate_instance(c, INSTANCE, "api!child@h2", True, False),
        _one("1.20", CAST, instance=P_INST, block_migration=True, disk_over_commit=False, host_name="api!child@h2")),  # noqa: E501
    "revert_resize": Case(
        lambda a, c: a.revert_resize(c, INSTANCE, {"id": 1}, "h1", []), _one("1.21", CAST, instance=P_INST)),  # noqa: E501
    "confirm_resize": Case(
        lambda a, c: a.confirm_resize(c, INSTANCE, {"id": 1}, "h1", [], cast=False),
        _one("1.21", CAST, instance=P_INST)),
    "reset_network": Case(lambda a, c: a.reset_network(c, INSTANCE), _one("1.22", CAST, instance=P_INST)),  # noqa: E501
    "inject_network_info": Case(
        lambda a, c: a.inject_network_info(c, INSTANCE), _one("1.23", CAST, instance=P_INST)),
    "snapshot_instance": Case(
        lambda a, c: a.snapshot_instance(c, INSTANCE, "img-2"), _one("1.24", CAST, instance=P_INST, image_id="img-2")),  # noqa: E501
    "backup_instance": Case(
        lambda a, c: a.backup_instance(c, INSTANCE, "img-2", "daily", 3),
        _one("1.24", CAST, instance=P_INST, image_id="img-2", backup_type="daily", rotation=3)),
    "rebuild_instance": Case(
        lambda a, c: a.rebuild_instance(c, INSTANCE, "pw", [["/f", "x"]], "img-3", "img-1", {}, [], preserve_ephemeral=True, kwargs={"k": 1}),  # noqa: E501
        _one("1.25", CAST, instance=P_INST, image_href="img-3", admin_password="pw", files_to_inject=[["/f", "x"]], preserve_ephemeral=True, kwargs={"k": 1})),  # noqa: E501
    "set_admin_password": Case(
        lambda a, c: a.set_admin_password(c, INSTANCE, "pw2"), _one("1.29", CAST, instance=P_INST, new_pass="pw2")),  # noqa: E501
    "get_keypair_at_top": Case(
        lambda a, c: a.get_keypair_at_top(c, "u1", "kp"), _one("1.37", CALL, user_id="u1", name="kp")),  # noqa: E501
}
# fmt: on


def _fits(version: str, cap: str | None) -> bool:
    """Behaviour §4.1, restated: no cap, or same major and minor <= cap's."""
    if cap is None:
        return True
    major, minor = (int(x) for x in version.split("."))
    cap_major, cap_minor = (int(x) for x in cap.split("."))
    return major == cap_major and minor <= cap_minor


class Target:
    """A server that answers every call with ``("ok", method)``."""

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda ctxt, **kwargs: ["ok", method]


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.ctxt = RequestContext(user_id="u1", project_id="p1")
        # The 1.35 info-cache instance is an Instance object once cellsd
        # objects define one; these tests pin the dict form.
        self.patch(api_backports, "_instance_class", lambda: None)

    def api(
        self, cap: str | None = None, target: object | None = None, **kw: Any
    ) -> tuple[CellsAPI, MemoryRPCTransport]:
        transport = MemoryRPCTransport(Target() if target is None else target, **kw)
        return CellsAPI(transport, version_cap=cap), transport


# --------------------------------------------------------------------------


class SurfaceTests(_Base):
    def test_transport_provides_interface(self) -> None:
        """The in-memory transport fully implements IRPCTransport."""
        self.assertTrue(verifyObject(IRPCTransport, MemoryRPCTransport()))

    def test_every_seed_method_with_its_signature(self) -> None:
        """CellsAPI has exactly the seed's public methods, each with the seed's
        parameters and defaults, and every one is declared in RPC_METHODS."""
        public = {
            n for n, v in inspect.getmembers(CellsAPI, inspect.isfunction) if not n.startswith("_")
        }
        public.discard("can_send_version")
        self.assertEqual(public, set(SEED) | EXTENSIONS)
        self.assertEqual(set(RPC_METHODS), set(SEED) | EXTENSIONS)
        self.assertEqual(set(CASES), set(SEED) | EXTENSIONS)
        for name in sorted(SEED):
            rendered = render_signature(getattr(CellsAPI, name)).replace("self, ", "")
            self.assertEqual(rendered, SEED[name])

    def test_aliases(self) -> None:
        """The release aliases of the seed, Liberty included."""
        self.assertEqual(
            VERSION_ALIASES,
            {
                "grizzly": "1.6",
                "havana": "1.24",
                "icehouse": "1.27",
                "juno": "1.29",
                "kilo": "1.34",
                "liberty": "1.37",
            },
        )
        self.assertIs(CellsAPI.VERSION_ALIASES, VERSION_ALIASES)

    def test_version_history_in_docstring(self) -> None:
        """The class docstring lists every version from 1.0 to 1.37."""
        doc = CellsAPI.__doc__ or ""
        for minor in range(38):
            self.assertIn(f"* 1.{minor} - ", doc)


class VersionCapMatrixTests(_Base):
    def check(self, name: str, cap: str | None) -> None:
        case = CASES[name]
        api, transport = self.api(cap, rebuild_objects=False)
        resolved = VERSION_ALIASES.get(cap, cap) if cap else None
        d = case.invoke(api, self.ctxt)
        form = next((f for f in case.forms if _fits(f.version, resolved)), None)
        where = f"{name} under cap {cap!r}"
        if form is None:
            failure = self.failureResultOf(d, RPCVersionCapError)
            self.assertEqual(failure.value.method, name, where)
            self.assertEqual(failure.value.cap, resolved, where)
            self.assertEqual(transport.sent, [], where)
            return
        result = self.successResultOf(d)
        [sent] = transport.sent
        self.assertEqual(sent.method, form.rpc or name, where)
        self.assertEqual(sent.version, form.version, where)
        self.assertEqual(sent.kind, form.kind, where)
        self.assertEqual(sent.kwargs, form.kwargs, where)
        if form.kind == CAST or name == "service_delete":
            self.assertIsNone(result, where)
        else:
            self.assertEqual(result, ["ok", sent.method], where)

    def test_every_method_under_every_alias(self) -> None:
        """Every method x every alias (and no cap): the message carries the
        form the capped version defined, or the Deferred fails with
        RPCVersionCapError and nothing is sent."""
        for name in sorted(CASES):
            for cap in ALIAS_CAPS:
                self.check(name, cap)

    def test_intermediate_caps(self) -> None:
        """Caps between the aliases pick the matching step of each backport
        (build_instances 1.32 and 1.30, stop at 1.31, resize at 1.33)."""
        for cap in ("1.0", "1.7", "1.8", "1.28", "1.30", "1.31", "1.32", "1.33", "1.35", "1.36"):
            for name in sorted(CASES):
                self.check(name, cap)

    def test_table_declares_what_is_sent(self) -> None:
        """RPC_METHODS names exactly the arguments each method sends uncapped,
        its RPC name and its newest version."""
        for name, case in CASES.items():
            spec = RPC_METHODS[name]
            newest = case.forms[0]
            self.assertEqual(set(spec.args), set(newest.kwargs), name)
            self.assertEqual(spec.rpc_name, newest.rpc or name, name)
            self.assertEqual(spec.version, newest.version, name)

    def test_build_instances_steps(self) -> None:
        """build_instances: kilo 1.34 without legacy_bdm; juno, icehouse and
        havana 1.8 with BDMs, instances and the flavor as plain dicts;
        grizzly refused."""
        expected = {"kilo": "1.34", "juno": "1.8", "icehouse": "1.8", "havana": "1.8"}
        for cap, version in expected.items():
            api, transport = self.api(cap, rebuild_objects=False)
            self.successResultOf(api.build_instances(self.ctxt, **_build_kwargs()))
            [sent] = transport.sent
            self.assertEqual((sent.version, sent.kwargs), (version, _build_form(version)), cap)
        api, transport = self.api("grizzly")
        self.failureResultOf(api.build_instances(self.ctxt, **_build_kwargs()), RPCVersionCapError)
        self.assertEqual(transport.sent, [])

    def test_build_instances_does_not_touch_callers_arguments(self) -> None:
        """The older forms are built on copies: the caller's dicts and
        objects are unchanged."""
        kwargs = _build_kwargs()
        props = kwargs["filter_properties"]
        api, _ = self.api("havana", rebuild_objects=False)
        api.build_instances(self.ctxt, **kwargs)
        self.assertIs(props["instance_type"], FLAVOR)
        self.assertIs(kwargs["instances"][0], INSTANCE)
        self.assertIn("legacy_bdm", kwargs)

    def test_instance_update_at_top_at_kilo_is_plain(self) -> None:
        """Under kilo instance_update_at_top sends 1.34 with the instance as
        a plain dict of its fields, nested objects included."""
        api, transport = self.api("kilo", rebuild_objects=False)
        api.instance_update_at_top(self.ctxt, INSTANCE)
        [sent] = transport.sent
        self.assertEqual(sent.version, "1.34")
        self.assertEqual(
            sent.kwargs["instance"],
            {
                "uuid": "inst-1",
                "cell_name": "api!child",
                "host": "h1",
                "flavor": {"flavorid": "m1.tiny", "memory_mb": 512, "vcpus": 1},
            },
        )

    def test_dict_arguments_pass_through(self) -> None:
        """Plain dicts are accepted wherever objects are, and sent as given."""
        api, transport = self.api("havana", rebuild_objects=False)
        api.instance_delete_everywhere(self.ctxt, {"uuid": "inst-9"}, "hard")
        api.bdm_update_or_create_at_top(self.ctxt, {"volume_id": "v"})
        self.assertEqual(
            [(s.method, s.version, s.kwargs) for s in transport.sent],
            [
                (
                    "instance_delete_everywhere",
                    "1.0",
                    {"instance": {"uuid": "inst-9"}, "delete_type": "hard"},
                ),
                (
                    "bdm_update_or_create_at_top",
                    "1.10",
                    {"bdm": {"volume_id": "v"}, "create": None},
                ),
            ],
        )

    def test_info_cache_update_builds_an_instance_object(self) -> None:
        """Once an Instance class exists, the 1.35 form is an Instance holding
        only the uuid and the info cache."""
        made: list[dict[str, Any]] = []

        def instance(**fields: Any) -> FakeObject:
            made.append(fields)
            return FakeObject("Instance", **fields)

        self.patch(api_backports, "_instance_class", lambda: instance)
        api, transport = self.api(rebuild_objects=False)
        api.instance_info_cache_update_at_top(self.ctxt, CACHE)
        self.assertEqual(made, [{"uuid": "inst-1", "info_cache": CACHE}])
        [sent] = transport.sent
        self.assertEqual(sent.method, "instance_update_at_top")
        self.assertEqual(sent.kwargs["instance"]["nova_object.data"], INFO_CACHE_INSTANCE)


class CellsObjectsTests(SynchronousTestCase):
    """The same paths with cellsd's own objects (skipped until they exist)."""

    def setUp(self) -> None:
        try:
            self.objects = importlib.import_module("cellsd.objects")
        except ImportError:
            self.skipTest("cellsd.objects cannot be imported yet")
        if not hasattr(self.objects, "Instance"):
            self.skipTest("cellsd.objects has no Instance yet")
        self.ctxt = RequestContext(user_id="u1")

    def test_objects_travel_as_primitives_and_come_back_as_objects(self) -> None:
        """Uncapped, an Instance is sent in its primitive form and the server
        receives an Instance; under kilo it is sent as its plain dict."""
        received: list[Any] = []

        class Top:
            def instance_update_at_top(self, ctxt: RequestContext, instance: Any) -> None:
                received.append(instance)

        instance = self.objects.Instance(uuid="inst-1", cell_name="api!child", host="h1")
        transport = MemoryRPCTransport(Top())
        CellsAPI(transport).instance_update_at_top(self.ctxt, instance)
        CellsAPI(transport, "kilo").instance_update_at_top(self.ctxt, instance)
        first, second = transport.sent
        self.assertEqual(
            (first.version, first.kwargs["instance"]), ("1.35", instance.obj_to_primitive())
        )
        self.assertEqual((second.version, second.kwargs["instance"]), ("1.34", instance.to_dict()))
        self.assertIsInstance(received[0], self.objects.Instance)
        self.assertEqual(received[0].uuid, "inst-1")

    def test_info_cache_update_sends_an_instance(self) -> None:
        """instance_info_cache_update_at_top sends an Instance with only the
        uuid and the info cache set (1.35), or its plain dict (kilo)."""
        cache = {"instance_uuid": "inst-1", "network_info": [{"id": "vif-1"}]}
        transport = MemoryRPCTransport()
        CellsAPI(transport).instance_info_cache_update_at_top(self.ctxt, cache)
        CellsAPI(transport, "kilo").instance_info_cache_update_at_top(self.ctxt, cache)
        first, second = transport.sent
        self.assertEqual([first.method, second.method], ["instance_update_at_top"] * 2)
        self.assertEqual(first.kwargs["instance"]["nova_object.name"], "Instance")
        self.assertEqual(set(first.kwargs["instance"]["nova_object.data"]), {"uuid", "info_cache"})
        self.assertEqual(set(second.kwargs["instance"]), {"uuid", "info_cache"})
        self.assertEqual(second.kwargs["instance"]["uuid"], "inst-1")


class VersionCapTests(_Base):
    def test_aliases_and_versions_accepted(self) -> None:
        """A cap is an alias (resolved to its version) or an X.Y version."""
        transport = MemoryRPCTransport()
        self.assertEqual(CellsAPI(transport, "kilo").version_cap, "1.34")
        self.assertEqual(CellsAPI(transport, "liberty").version_cap, "1.37")
        self.assertEqual(CellsAPI(transport, "1.20").version_cap, "1.20")
        self.assertIsNone(CellsAPI(transport).version_cap)

    def test_bad_caps_refused_at_construction(self) -> None:
        """Unknown aliases and malformed versions raise InvalidVersionCap,
        whose message names the cap and the accepted aliases."""
        for bad in ("folsom", "1", "1.x", "", "v1.2", "1.2.3", " "):
            exc = self.assertRaises(InvalidVersionCap, CellsAPI, MemoryRPCTransport(), bad)
            self.assertIn(repr(bad), str(exc))
            self.assertIn("kilo", str(exc))

    def test_can_send_version(self) -> None:
        """Same major version and minor within the cap; no cap sends all."""
        api = CellsAPI(MemoryRPCTransport(), "1.6")
        self.assertTrue(api.can_send_version("1.6"))
        self.assertTrue(api.can_send_version("1.0"))
        self.assertFalse(api.can_send_version("1.7"))
        self.assertFalse(api.can_send_version("2.0"))
        self.assertFalse(CellsAPI(MemoryRPCTransport(), "2.0").can_send_version("1.0"))
        self.assertTrue(CellsAPI(MemoryRPCTransport()).can_send_version("9.99"))

    def test_cap_error_message_and_no_synchronous_raise(self) -> None:
        """A method above the cap returns a failed Deferred (it does not
        raise) whose error names the method, the version it needs and the
        cap."""
        api, transport = self.api("grizzly")
        d = api.get_keypair_at_top(self.ctxt, "u1", "kp")
        exc = self.failureResultOf(d, RPCVersionCapError).value
        self.assertEqual((exc.method, exc.version, exc.cap), ("get_keypair_at_top", "1.37", "1.6"))
        for word in ("get_keypair_at_top", "1.37", "1.6"):
            self.assertIn(word, str(exc))
        self.assertEqual(transport.sent, [])

    def test_other_major_version_cap_refuses_everything(self) -> None:
        """A cap of another major version refuses even 1.0 methods."""
        api, transport = self.api("2.0")
        self.failureResultOf(api.instance_fault_create_at_top(self.ctxt, FAULT), RPCVersionCapError)
        self.assertEqual(transport.sent, [])


class CallerSideChecksTests(_Base):
    def test_instance_unknown_cell(self) -> None:
        """The action queries fail with InstanceUnknownCell, sending nothing,
        when the instance has no cell_name (dict or object)."""
        api, transport = self.api()
        no_cell = [
            {"uuid": "inst-2", "cell_name": None},
            {"uuid": "inst-2", "cell_name": ""},
            FakeObject("Instance", uuid="inst-2", cell_name=None),
        ]
        for instance in no_cell:
            for d in (
                api.actions_get(self.ctxt, instance),
                api.action_get_by_request_id(self.ctxt, instance, "req-1"),
                api.action_events_get(self.ctxt, instance, 1),
            ):
                exc = self.failureResultOf(d, InstanceUnknownCell).value
                self.assertIn("inst-2", str(exc))
        self.assertEqual(transport.sent, [])

    def test_keypair_not_found(self) -> None:
        """get_keypair_at_top turns a None answer into KeypairNotFound naming
        the user and the key pair; a found key pair is returned as is."""

        class Keys:
            def get_keypair_at_top(self, ctxt: RequestContext, user_id: str, name: str) -> Any:
                return {"name": name, "user_id": user_id} if name == "mine" else None

        api, _ = self.api(target=Keys())
        exc = self.failureResultOf(api.get_keypair_at_top(self.ctxt, "u1", "gone"), KeypairNotFound)
        self.assertEqual(exc.value.kwargs, {"user_id": "u1", "name": "gone"})
        self.assertIn("gone", str(exc.value))
        found = self.successResultOf(api.get_keypair_at_top(self.ctxt, "u1", "mine"))
        self.assertEqual(found, {"name": "mine", "user_id": "u1"})


class Slow:
    """A server whose answers wait until the test fires them."""

    def __init__(self) -> None:
        self.pending: dict[str, defer.Deferred[Any]] = {}
        self.received: list[tuple[str, dict[str, Any]]] = []

    def _wait(self, method: str, kwargs: dict[str, Any]) -> defer.Deferred[Any]:
        self.received.append((method, kwargs))
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending[method] = d
        return d

    def stop_instance(self, ctxt: RequestContext, **kwargs: Any) -> defer.Deferred[Any]:
        return self._wait("stop_instance", kwargs)

    def start_instance(self, ctxt: RequestContext, **kwargs: Any) -> defer.Deferred[Any]:
        return self._wait("start_instance", kwargs)

    def service_get_all(self, ctxt: RequestContext, **kwargs: Any) -> defer.Deferred[Any]:
        return self._wait("service_get_all", kwargs)


class CallCastTests(_Base):
    def test_cast_does_not_wait(self) -> None:
        """A cast fires with None as soon as the transport took it, though
        the server has not finished; the server did get it."""
        slow = Slow()
        api, _ = self.api(target=slow, rebuild_objects=False)
        self.assertIsNone(self.successResultOf(api.start_instance(self.ctxt, {"uuid": "i"})))
        self.assertEqual(slow.received, [("start_instance", {"instance": {"uuid": "i"}})])

    def test_call_waits_for_the_result(self) -> None:
        """A call fires only when the server answers, with its answer."""
        slow = Slow()
        api, _ = self.api(target=slow)
        d = api.service_get_all(self.ctxt)
        self.assertNoResult(d)
        slow.pending["service_get_all"].callback([{"host": "api!child@h1"}])
        self.assertEqual(self.successResultOf(d), [{"host": "api!child@h1"}])

    def test_stop_instance_do_cast_false_is_a_call(self) -> None:
        """stop_instance(do_cast=False) waits for the server's result."""
        slow = Slow()
        api, transport = self.api(target=slow, rebuild_objects=False)
        d = api.stop_instance(self.ctxt, {"uuid": "i"}, do_cast=False)
        self.assertEqual(transport.sent[0].kind, CALL)
        self.assertNoResult(d)
        slow.pending["stop_instance"].callback("stopped")
        self.assertEqual(self.successResultOf(d), "stopped")

    def test_call_timeouts(self) -> None:
        """Calls carry the API's call_timeout; proxy_rpc_to_manager is always
        a call and carries its own timeout when given one."""
        transport = MemoryRPCTransport(Target())
        api = CellsAPI(transport, call_timeout=7.5)
        api.compute_node_stats(self.ctxt)
        api.proxy_rpc_to_manager(self.ctxt, {"method": "m"}, "compute.c@h", call=False)
        api.proxy_rpc_to_manager(self.ctxt, {"method": "m"}, "compute.c@h", timeout=3)
        api.consoleauth_delete_tokens(self.ctxt, "i")
        self.assertEqual(
            [(s.kind, s.timeout) for s in transport.sent],
            [(CALL, 7.5), (CALL, 7.5), (CALL, 3), (CAST, None)],
        )

    def test_server_error_reaches_caller(self) -> None:
        """An error raised by the server is rebuilt on the caller's side as
        its own class."""

        class Failing:
            def cell_get(self, ctxt: RequestContext, cell_name: str) -> Any:
                raise KeypairNotFound(user_id="u", name=cell_name)

        api, _ = self.api(target=Failing())
        exc = self.failureResultOf(api.cell_get(self.ctxt, "x"), KeypairNotFound).value
        self.assertEqual(exc.kwargs, {"user_id": "u", "name": "x"})

    def test_cast_error_is_logged_not_returned(self) -> None:
        """A cast's failure in the server is logged; the caller already has
        its None."""

        class Failing:
            def reset_network(self, ctxt: RequestContext, instance: Any) -> None:
                raise ValueError("no network")

        api, _ = self.api(target=Failing(), rebuild_objects=False)
        self.assertIsNone(self.successResultOf(api.reset_network(self.ctxt, {"uuid": "i"})))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class BrokenTransport(MemoryRPCTransport):
    def cast(self, ctxt: Any, method: str, version: str, kwargs: dict[str, Any]) -> Any:
        raise ConnectionError("cellsd is down")


class SendErrorTests(_Base):
    def test_send_error_fails_the_deferred(self) -> None:
        """A transport that raises while sending fails the Deferred; the
        method never raises synchronously."""
        api = CellsAPI(BrokenTransport())
        self.failureResultOf(api.start_instance(self.ctxt, {"uuid": "i"}), ConnectionError)

    def test_bdm_send_errors_are_swallowed(self) -> None:
        """bdm_update_or_create_at_top and bdm_destroy_at_top log a failure
        to send and fire with None."""
        api = CellsAPI(BrokenTransport())
        self.assertIsNone(self.successResultOf(api.bdm_update_or_create_at_top(self.ctxt, BDM)))
        self.assertIsNone(self.successResultOf(api.bdm_destroy_at_top(self.ctxt, "i", "/dev/vdb")))
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 2)

    def test_bdm_cap_error_is_not_swallowed(self) -> None:
        """Swallowing covers send errors only: under grizzly the BDM methods
        still fail with RPCVersionCapError."""
        api = CellsAPI(BrokenTransport(), "grizzly")
        self.failureResultOf(api.bdm_destroy_at_top(self.ctxt, "i"), RPCVersionCapError)
        self.failureResultOf(api.bdm_update_or_create_at_top(self.ctxt, BDM), RPCVersionCapError)


# --------------------------------------------------------------------------
# The in-memory transport itself


@attrs.define
class Widget:
    """A registered test object, to see objects rebuilt on the far side."""

    name: str

    def obj_to_primitive(self) -> dict[str, Any]:
        return {"nova_object.name": "CellsdTestWidget", "nova_object.data": {"name": self.name}}


objects_base.register("CellsdTestWidget", lambda p: Widget(**p["nova_object.data"]))


class IStartOnly(Interface):
    def start_instance(ctxt: Any, instance: Any) -> Any:
        """Start."""


class MemoryTransportTests(_Base):
    def test_records_the_json_form(self) -> None:
        """What is recorded is what crosses the wire: tuples become lists and
        objects their primitives; the context travels as its dict form."""
        transport = MemoryRPCTransport()
        transport.cast(self.ctxt, "m", "1.0", {"t": (1, 2), "w": Widget("a")})
        self.assertEqual(
            transport.sent,
            [
                SentRequest(
                    CAST,
                    "m",
                    "1.0",
                    {"t": [1, 2], "w": Widget("a").obj_to_primitive()},
                    self.ctxt.to_dict(),
                )
            ],
        )
        self.assertEqual(transport.methods(), ["m"])
        transport.clear()
        self.assertEqual(transport.sent, [])

    def test_target_gets_rebuilt_objects_and_fresh_context(self) -> None:
        """The target receives registered objects rebuilt from the wire and a
        context rebuilt from its dict form; results come back the same way."""
        seen: list[Any] = []

        class Echo:
            def echo(self, ctxt: RequestContext, w: Any) -> Any:
                seen.append((ctxt, w))
                return {"back": w}

        transport = MemoryRPCTransport(Echo())
        result = self.successResultOf(
            transport.call(self.ctxt, "echo", "1.0", {"w": Widget("b")}, 5)
        )
        [(ctxt, w)] = seen
        self.assertEqual(w, Widget("b"))
        self.assertIsNot(ctxt, self.ctxt)
        self.assertEqual(ctxt.to_dict(), self.ctxt.to_dict())
        self.assertEqual(result, {"back": Widget("b")})

    def test_unknown_and_private_methods(self) -> None:
        """A method the target lacks, a private name, or one outside the
        declared interface fails with UnknownMethod."""
        transport = MemoryRPCTransport(Slow(), interface=IStartOnly, rebuild_objects=False)
        for method in ("service_get_all", "_wait", "nothing"):
            d = transport.call(self.ctxt, method, "1.0", {}, 1)
            self.failureResultOf(d, UnknownMethod)
        d = transport.call(self.ctxt, "start_instance", "1.0", {"instance": {}}, 1)
        self.assertNoResult(d)

    def test_unencodable_arguments_fail_the_callers_deferred(self) -> None:
        """An argument that cannot be sent fails the CellsAPI Deferred."""
        api, transport = self.api()
        f = self.failureResultOf(api.cell_create(self.ctxt, {"bad": object()}))
        self.assertIsInstance(f.value, TypeError)
        self.assertEqual(transport.sent, [])

    def test_errors_are_cells_errors_or_rebuilt(self) -> None:
        """Errors from a target cross the in-memory wire like a real one:
        allow-listed classes keep their class."""

        class Failing:
            def f(self, ctxt: RequestContext) -> None:
                raise InstanceUnknownCell("inst-3")

        transport = MemoryRPCTransport(Failing())
        exc = self.failureResultOf(transport.call(self.ctxt, "f", "1.0", {}, 1)).value
        self.assertIsInstance(exc, InstanceUnknownCell)
        self.assertIsInstance(exc, CellsError)
        self.assertIn("inst-3", str(exc))
