"""The CellsManager on its own: its registry, its argument forms, and the
post-processing of behaviour §4.3, against a FakeRunner proven to have the
seed's MessageRunner signatures."""

from __future__ import annotations

import inspect
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from cellsd.context import RequestContext
from cellsd.errors import (
    CellRoutingInconsistency,
    ComputeHostNotFound,
    InvalidArguments,
    UnknownMethod,
)
from cellsd.interfaces import ICellStore
from cellsd.messaging.message import Response
from cellsd.messaging.runner import MessageRunner
from cellsd.objects import BlockDeviceMapping, Cell, ComputeNode, Flavor, Instance, Service, TaskLog
from cellsd.rpc.api import RPC_METHODS
from cellsd.rpc.errors import InstanceUnknownCell
from cellsd.rpc.manager import RPC_API_VERSION, CellsManager, rpc_methods
from cellsd.rpc.manager_queries import QueryMethods
from cellsd.rpc.proxies import ComputeNodeProxy, ServiceProxy, rebuild_proxies
from cellsd.testing import MemoryTree, memory_api
from tests.unit.rpc_cases import C1, KEYPAIR, ME, flavor, instance, make_server
from tests.unit.rpc_fakes import (
    FAKE_SEED_METHODS,
    FAKE_STORE_METHODS,
    SEED,
    SEED_FILE,
    SEED_SIGNATURES,
    FakeRunner,
    FakeStore,
    normalize,
    parse_seed_signatures,
    render_signature,
)

#: The version that introduced each RPC name (behaviour §4.2 history).
INTRODUCED = {
    "run_compute_api_method": "1.0",
    "instance_update_at_top": "1.0",
    "instance_destroy_at_top": "1.0",
    "instance_delete_everywhere": "1.0",
    "instance_fault_create_at_top": "1.0",
    "bw_usage_update_at_top": "1.0",
    "get_cell_info_for_neighbors": "1.1",
    "sync_instances": "1.1",
    "service_get_all": "1.2",
    "service_get_by_compute_host": "1.2",
    "proxy_rpc_to_manager": "1.2",
    "task_log_get_all": "1.3",
    "compute_node_get": "1.4",
    "compute_node_get_all": "1.4",
    "compute_node_stats": "1.4",
    "actions_get": "1.5",
    "action_get_by_request_id": "1.5",
    "action_events_get": "1.5",
    "consoleauth_delete_tokens": "1.6",
    "validate_console_port": "1.6",
    "service_update": "1.7",
    "build_instances": "1.8",
    "get_capacities": "1.9",
    "bdm_update_or_create_at_top": "1.10",
    "bdm_destroy_at_top": "1.10",
    "get_migrations": "1.11",
    "start_instance": "1.12",
    "stop_instance": "1.12",
    "cell_create": "1.13",
    "cell_update": "1.13",
    "cell_delete": "1.13",
    "cell_get": "1.13",
    "reboot_instance": "1.14",
    "suspend_instance": "1.15",
    "resume_instance": "1.15",
    "instance_update_from_api": "1.16",
    "get_host_uptime": "1.17",
    "terminate_instance": "1.18",
    "soft_delete_instance": "1.18",
    "pause_instance": "1.19",
    "unpause_instance": "1.19",
    "resize_instance": "1.20",
    "live_migrate_instance": "1.20",
    "revert_resize": "1.21",
    "confirm_resize": "1.21",
    "reset_network": "1.22",
    "inject_network_info": "1.23",
    "snapshot_instance": "1.24",
    "backup_instance": "1.24",
    "rebuild_instance": "1.25",
    "service_delete": "1.26",
    "set_admin_password": "1.29",
    "get_keypair_at_top": "1.37",
    "ping": "1.38",
    "ping_all": "1.38",
    "tree": "1.38",
    "instance_list": "1.38",
    "instance_delete_everywhere_outcomes": "1.39",
    "sync_instances_outcomes": "1.39",
}


class ContractTests(SynchronousTestCase):
    def test_seed_copy_matches_the_seed_file(self) -> None:
        """The signature lines kept in rpc_fakes are the seed file's, all of
        them and nothing else."""
        if not SEED_FILE.exists():
            raise self.skipTest(f"{SEED_FILE} is not in this checkout's tree")
        self.assertEqual(
            parse_seed_signatures(SEED_FILE.read_text()), parse_seed_signatures(SEED_SIGNATURES)
        )

    def test_fake_runner_has_the_seed_signatures(self) -> None:
        """FakeRunner has exactly the seed's operations, each with the seed's
        parameters and defaults (so the manager's calls, checked against
        the fake, fit the real runner)."""
        self.assertEqual(set(FAKE_SEED_METHODS), set(SEED))
        for name in FAKE_SEED_METHODS:
            self.assertEqual(render_signature(getattr(FakeRunner, name)), SEED[name])

    def test_fake_runner_sends_match_the_real_runner(self) -> None:
        """send_targeted/send_broadcast (used by the diagnostics) have the
        real MessageRunner's parameters and defaults."""
        for name in ("send_targeted", "send_broadcast"):
            self.assertEqual(
                render_signature(getattr(FakeRunner, name)),
                render_signature(getattr(MessageRunner, name)),
            )

    def test_real_runner_operations_match_the_seed(self) -> None:
        """Every seed operation MessageRunner already has keeps the seed's
        parameters (skipped for those not written yet)."""
        missing = [n for n in SEED if not hasattr(MessageRunner, n)]
        for name in sorted(set(SEED) - set(missing)):
            real = render_signature(getattr(MessageRunner, name))
            self.assertEqual(real, SEED[name])
        if missing:
            raise self.skipTest(f"MessageRunner lacks {len(missing)} seed operations yet")

    def test_fake_store_matches_the_store_interface(self) -> None:
        """FakeStore's methods have ICellStore's parameters."""
        for name in FAKE_STORE_METHODS:
            declared = ICellStore[name].getSignatureInfo()
            params = list(inspect.signature(getattr(FakeStore, name)).parameters)[1:]
            self.assertEqual(params, list(declared["positional"]), name)

    def test_every_rpc_name_is_served_since_its_version(self) -> None:
        """Every RPC name the client sends is registered, with the version
        that introduced it, and nothing else is."""
        sent = {spec.rpc_name for spec in RPC_METHODS.values()}
        self.assertEqual(set(rpc_methods()), sent)
        self.assertEqual(rpc_methods(), INTRODUCED)

    def test_manager_files_stay_small(self) -> None:
        """The manager is split into modules under ~600 lines each."""
        import cellsd.rpc.manager as m
        import cellsd.rpc.manager_methods as mm
        import cellsd.rpc.manager_queries as mq
        import cellsd.rpc.manager_support as ms

        for module in (m, mm, mq, ms):
            self.assertLess(len(inspect.getsource(module).splitlines()), 600, module.__name__)


class _ManagerCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = make_server()
        self.runner = self.server.runner
        self.store = self.server.store
        self.manager = self.server.manager
        self.ctxt = RequestContext(user_id="u1", is_admin=True)

    def dispatch(self, method: str, version: str = "1.37", **kwargs: Any) -> Deferred[Any]:
        return self.manager.dispatch(self.ctxt, method, version, kwargs)

    def result(self, method: str, version: str = "1.37", **kwargs: Any) -> Any:
        return self.successResultOf(self.dispatch(method, version, **kwargs))

    def error(self, method: str, version: str = "1.37", **kwargs: Any) -> BaseException:
        err = self.failureResultOf(self.dispatch(method, version, **kwargs)).value
        assert err is not None
        return err

    def only_call(self) -> Any:
        [call] = self.runner.calls
        return call


class DispatchTests(_ManagerCase):
    def test_every_version_up_to_the_servers(self) -> None:
        """Requests at every version 1.0 ... 1.39 are accepted; a newer minor
        or another major is refused with a typed error."""
        for minor in range(40):
            self.result("compute_node_stats", f"1.{minor}")
        self.assertEqual(RPC_API_VERSION, "1.39")
        for version in ("1.40", "2.0", "0.9", "one"):
            self.assertIsInstance(self.error("compute_node_stats", version), InvalidArguments)

    def test_unknown_method_and_argument_named(self) -> None:
        """UnknownMethod names the method; InvalidArguments the argument."""
        err = self.error("dispatch")
        self.assertIsInstance(err, UnknownMethod)
        self.assertIn("dispatch", str(err))
        err = self.error("start_instance", instance={}, reservations=[])
        self.assertIsInstance(err, InvalidArguments)
        self.assertIn("reservations", str(err))

    def test_older_forms_without_newer_arguments(self) -> None:
        """Arguments a version did not define take their defaults:
        terminate_instance at 1.18 deletes, stop_instance at 1.12 and
        resize_instance at 1.20 shut down cleanly."""
        self.result("terminate_instance", "1.18", instance=instance().to_dict())
        self.result("stop_instance", "1.12", instance=instance().to_dict(), do_cast=True)
        self.result(
            "resize_instance",
            "1.20",
            instance=instance().to_dict(),
            flavor=flavor().to_dict(),
            extra_instance_updates={},
        )
        args = [c.args for c in self.runner.calls]
        self.assertEqual(args[0]["delete_type"], "delete")
        self.assertTrue(args[1]["clean_shutdown"])
        self.assertTrue(args[2]["clean_shutdown"])


class ArgumentFormTests(_ManagerCase):
    def test_build_instances_at_1_8(self) -> None:
        """The 1.8 form (instances, flavor and BDMs as plain dicts, with
        legacy_bdm) reaches the runner as the 1.34 form: objects, no
        legacy_bdm, the image a plain dict, targeted at this cell."""
        self.result(
            "build_instances",
            "1.8",
            build_inst_kwargs={
                "instances": [instance().to_dict()],
                "image": {"id": "img-1"},
                "filter_properties": {"instance_type": flavor().to_dict()},
                "block_device_mapping": [{"device_name": "/dev/vda", "volume_id": "v1"}],
                "legacy_bdm": False,
            },
        )
        call = self.only_call()
        self.assertEqual(call.args["target_cell"], ME)
        kw = call.args["build_inst_kwargs"]
        self.assertNotIn("legacy_bdm", kw)
        self.assertEqual(normalize(kw["instances"]), normalize([instance()]))
        self.assertIsInstance(kw["filter_properties"]["instance_type"], Flavor)
        self.assertEqual(kw["filter_properties"]["instance_type"], flavor())
        [bdm] = kw["block_device_mapping"]
        self.assertIsInstance(bdm, BlockDeviceMapping)
        self.assertEqual((bdm.device_name, bdm.volume_id), ("/dev/vda", "v1"))

    def test_legacy_bdms_converted(self) -> None:
        """legacy_bdm true: v1 mappings get the v2 source/destination types."""
        legacy = [
            {"device_name": "/dev/vda", "volume_id": "v1"},
            {"device_name": "/dev/vdb", "snapshot_id": "s1"},
            {"device_name": "/dev/vdc", "virtual_name": "swap"},
            {"device_name": "/dev/vdd", "virtual_name": "ephemeral0"},
        ]
        self.result(
            "build_instances",
            "1.30",
            build_inst_kwargs={"instances": [], "block_device_mapping": legacy, "legacy_bdm": True},
        )
        bdms = self.only_call().args["build_inst_kwargs"]["block_device_mapping"]
        self.assertEqual(
            [(b.source_type, b.destination_type, b.guest_format) for b in bdms],
            [
                ("volume", "volume", None),
                ("snapshot", "volume", None),
                ("blank", "local", "swap"),
                ("blank", "local", None),
            ],
        )

    def test_plain_instance_forms_become_instances(self) -> None:
        """A plain-dict instance becomes an Instance whose every given field
        counts as changed (a dict cannot say which did); a primitive keeps
        its own change list."""
        self.result(
            "instance_delete_everywhere", "1.0", instance={"uuid": "i9"}, delete_type="hard"
        )
        inst = self.only_call().args["instance"]
        self.assertIsInstance(inst, Instance)
        self.assertEqual((inst.uuid, inst.obj_what_changed()), ("i9", {"uuid"}))
        self.runner.calls.clear()
        primitive = Instance.from_dict({"uuid": "i9", "host": "h"}).obj_to_primitive()
        self.result("instance_update_at_top", "1.35", instance=primitive)
        self.assertEqual(self.only_call().args["instance"].obj_what_changed(), set())

    def test_wrong_forms_are_refused(self) -> None:
        """Another object's primitive, a non-dict, or a bad delete_type is
        InvalidArguments naming the argument; nothing reaches the runner."""
        service = Service(id=1).obj_to_primitive()
        err = self.error("start_instance", instance=service)
        self.assertIn("Instance", str(err))
        self.assertIsInstance(self.error("start_instance", instance="inst-1"), InvalidArguments)
        err = self.error("instance_delete_everywhere", instance={}, delete_type="gone")
        self.assertIn("delete_type", str(err))
        err = self.error("terminate_instance", instance={}, delete_type="soft")
        self.assertIn("delete_type", str(err))
        err = self.error("run_compute_api_method", cell_name=C1, method_info={}, call=True)
        self.assertIn("method_info", str(err))
        self.assertEqual(self.runner.calls, [])

    def test_bdm_and_fault_travel_as_plain_dicts(self) -> None:
        """bdm_update_or_create_at_top and instance_fault_create_at_top hand
        the runner the plain dict of the set fields, from either form."""
        bdm = BlockDeviceMapping(uuid="b1", device_name="/dev/vda")
        self.result("bdm_update_or_create_at_top", "1.28", bdm=bdm.obj_to_primitive())
        self.result("bdm_update_or_create_at_top", "1.10", bdm=bdm.to_dict(), create=False)
        self.result("instance_fault_create_at_top", "1.0", instance_fault={"code": 1, "x": 2})
        args = [c.args for c in self.runner.calls]
        self.assertEqual(args[0], {"bdm": bdm.to_dict(), "create": None})
        self.assertEqual(args[1], {"bdm": bdm.to_dict(), "create": False})
        self.assertEqual(args[2], {"instance_fault": {"code": 1}})

    def test_relative_and_full_cell_paths(self) -> None:
        """Cell names may be full paths from this cell or relative below it."""
        self.result("actions_get", cell_name="child-cell1", instance_uuid="i")
        self.result("actions_get", cell_name=C1, instance_uuid="i")
        self.result("actions_get", cell_name=ME, instance_uuid="i")
        self.assertEqual([c.args["cell_name"] for c in self.runner.calls], [C1, C1, ME])


class PostProcessingTests(_ManagerCase):
    def test_task_log_host_forms(self) -> None:
        """host None: every cell; ``cell@host``: that host of that cell; a
        host without ``@``: that cell, any host. Each log's id and host are
        prefixed with the path of the cell that answered."""
        self.runner.answers["task_log_get_all"] = lambda cell_name, **_: [
            Response(cell_name or ME, [TaskLog(id=1, host="h1")]),
            Response(f"{ME}!child-cell2", [{"id": 2, "host": "h2", "state": "DONE"}]),
        ]
        logs = self.result(
            "task_log_get_all", task_name="t", period_beginning="b", period_ending="e"
        )
        self.assertEqual(
            logs,
            [
                {"id": f"{ME}@1", "host": f"{ME}@h1"},
                {"id": f"{ME}!child-cell2@2", "host": f"{ME}!child-cell2@h2", "state": "DONE"},
            ],
        )
        self.result(
            "task_log_get_all",
            task_name="t",
            period_beginning="b",
            period_ending="e",
            host="child-cell1@h1",
        )
        self.result(
            "task_log_get_all",
            task_name="t",
            period_beginning="b",
            period_ending="e",
            host="child-cell1",
        )
        self.assertEqual(
            [(c.args["cell_name"], c.args["host"]) for c in self.runner.calls],
            [(None, None), (C1, "h1"), (C1, None)],
        )

    def test_compute_node_stats_summed(self) -> None:
        """Every key is summed over the cells; a key missing in some starts
        at 0, and a null counts as 0."""
        self.runner.answers["compute_node_stats"] = [
            Response(ME, {"count": 1, "vcpus": 2, "free_disk_gb": None}),
            Response(C1, {"count": 2, "memory_mb": 512}),
        ]
        self.assertEqual(
            self.result("compute_node_stats"),
            {"count": 3, "vcpus": 2, "free_disk_gb": 0, "memory_mb": 512},
        )

    def test_compute_node_get_uses_the_cell_asked(self) -> None:
        """compute_node_get wraps the node with the requested cell's path
        (cells v1), service_get_by_compute_host with the answering one's."""
        node = ComputeNode(id=3, host="h1")
        self.runner.answers["compute_node_get"] = [Response("elsewhere", node)][0]
        wire = self.result("compute_node_get", compute_id="child-cell1@3")
        self.assertEqual((wire["id"], wire["host"]), (f"{C1}@3", f"{C1}@h1"))
        self.runner.answers["service_get_by_compute_host"] = Response("there", Service(host="h"))
        wire = self.result("service_get_by_compute_host", host_name="child-cell1@h")
        self.assertEqual(wire["host"], "there@h")

    def test_failing_cell_fails_compute_node_queries(self) -> None:
        """compute_node_get_all: a failure Response is raised, not listed."""
        self.runner.answers["compute_node_get_all"] = [
            Response(C1, ComputeHostNotFound(host="x"), failure=True)
        ]
        self.assertIsInstance(self.error("compute_node_get_all"), ComputeHostNotFound)

    def test_proxy_rpc_topic(self) -> None:
        """Fix #14: ``compute.<cell>@<host>`` becomes topic ``compute.<host>``
        for the target cell; a topic without ``<topic>.`` or a cell is a
        typed error."""
        self.result("proxy_rpc_to_manager", topic="compute.child-cell1@h1", rpc_message={})
        args = self.only_call().args
        self.assertEqual(
            (args["cell_name"], args["host_name"], args["topic"]), (C1, "h1", "compute.h1")
        )
        self.assertFalse(args["call"])
        err = self.error("proxy_rpc_to_manager", topic="compute", rpc_message={})
        self.assertIsInstance(err, InvalidArguments)
        err = self.error("proxy_rpc_to_manager", topic="compute.h1", rpc_message={})
        self.assertIsInstance(err, CellRoutingInconsistency)

    def test_several_keypairs_first_wins(self) -> None:
        """Several cells answer a key pair: the first, with a warning naming
        the cells."""
        events: list[dict[str, Any]] = []
        self.patch(QueryMethods, "_log", Logger(observer=cast(Any, events.append)))
        other = KEYPAIR.obj_clone()
        other.fingerprint = "other"
        self.runner.answers["get_keypair_at_top"] = [Response("a", KEYPAIR), Response("b", other)]
        self.assertEqual(self.result("get_keypair_at_top", user_id="u1", name="kp"), KEYPAIR)
        [event] = events
        self.assertEqual(event["cells"], "a, b")

    def test_stop_call_needs_a_cell(self) -> None:
        """stop_instance as a call for an instance without a cell is
        InstanceUnknownCell; its answer is the runner's value otherwise."""
        err = self.error("stop_instance", instance={"uuid": "i"}, do_cast=False)
        self.assertIsInstance(err, InstanceUnknownCell)
        self.runner.answers["stop_instance"] = Response(C1, "stopped")
        self.assertEqual(
            self.result("stop_instance", instance=instance(), do_cast=False), "stopped"
        )
        self.assertIsNone(self.result("stop_instance", instance=instance(), do_cast=True))

    def test_live_migrate_stays_in_the_cell(self) -> None:
        """A host of another cell is refused; a bare host passes as is."""
        err = self.error(
            "live_migrate_instance",
            instance=instance(),
            block_migration=False,
            disk_over_commit=False,
            host_name=f"{ME}!child-cell2@h9",
        )
        self.assertIsInstance(err, InvalidArguments)
        self.result(
            "live_migrate_instance",
            instance=instance(),
            block_migration=False,
            disk_over_commit=False,
            host_name="h9",
        )
        self.assertEqual(self.only_call().args["host_name"], "h9")

    def test_cell_get_prefers_the_store_row(self) -> None:
        """cell_get: the cells table row when there is one."""
        self.store.cells["child-cell1"] = Cell(id=4, name="child-cell1", transport_url="amqp://x")
        cell = self.result("cell_get", cell_name="child-cell1")
        self.assertEqual((cell.id, cell.transport_url), (4, "amqp://x"))

    def test_no_store_for_console_ports(self) -> None:
        """validate_console_port without any store is a typed error."""
        manager = CellsManager(cast(Any, FakeRunner()), self.manager.state, Clock())
        kwargs = {"instance_uuid": "i", "console_port": 1, "console_type": "novnc"}
        d = manager.dispatch(self.ctxt, "validate_console_port", "1.6", kwargs)
        self.assertIn("store", str(self.failureResultOf(d).value))


class ProxyTests(SynchronousTestCase):
    def test_service_proxy(self) -> None:
        """Attributes and items id/host read ``cell@...``; others pass
        through; compute_node is hidden; items iterate prefixed."""
        proxy = ServiceProxy(Service(id=7, host="h1", binary="nova-compute"), C1)
        self.assertEqual((proxy.id, proxy["host"]), (f"{C1}@7", f"{C1}@h1"))
        self.assertEqual(proxy.binary, "nova-compute")
        self.assertRaises(AttributeError, getattr, proxy, "compute_node")
        self.assertEqual(dict(proxy.items())["id"], f"{C1}@7")
        dict_proxy = ServiceProxy({"id": 1, "host": "h", "compute_node": {}}, C1)
        self.assertNotIn("compute_node", dict_proxy.to_wire())
        self.assertRaises(KeyError, dict_proxy.__getitem__, "compute_node")

    def test_wire_round_trip(self) -> None:
        """A proxy's wire dict rebuilds into an equal proxy whose record is
        unprefixed (ids back to ints); other dicts are left alone."""
        node = ComputeNode(id=3, host="h1", vcpus=4)
        wire = ComputeNodeProxy(node, C1).to_wire()
        [rebuilt, plain] = rebuild_proxies([wire, {"id": "x@1"}])
        self.assertIsInstance(rebuilt, ComputeNodeProxy)
        self.assertEqual(rebuilt.record, node)
        self.assertEqual(rebuilt.cell_path, C1)
        self.assertEqual(rebuilt, ComputeNodeProxy(node, C1))
        self.assertEqual(plain, {"id": "x@1"})


class MemoryAPITests(SynchronousTestCase):
    def test_docstring_example(self) -> None:
        """cellsd.testing.memory_api as its docstring shows: a CellsAPI over
        a real MemoryTree, served by a CellsManager through dispatch."""
        clock = Clock()
        runner = MemoryTree(clock)["api-cell"]
        api = memory_api(CellsManager(runner, runner.state, clock))
        rows = self.successResultOf(api.ping_all(RequestContext(is_admin=True)))
        self.assertEqual(len(rows), 8)
        self.assertTrue(all(r["ok"] for r in rows))

    def test_requests_go_through_dispatch(self) -> None:
        """Unknown methods and arguments get the server's typed errors."""
        server = make_server()
        api = memory_api(server.manager)
        transport = api.transport
        ctxt = RequestContext()
        d = transport.call(ctxt, "resolve_cell", "1.0", {"cell_name": "x"}, 1.0)
        self.assertIsInstance(self.failureResultOf(d).value, UnknownMethod)
        d = transport.call(ctxt, "get_capacities", "1.9", {"cell": "x"}, 1.0)
        self.assertIsInstance(self.failureResultOf(d).value, InvalidArguments)
