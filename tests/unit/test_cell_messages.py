"""Every seed MessageRunner operation, checked by its effect at its target,
on a tree of four cells in memory, each with its own store::

    top
    ├── c1
    │   └── g1     (hosts host1, host2)
    └── c2         (hosts host1, host2)

Each test runs twice: on SQLite (always) and on PostgreSQL (when the server
at 127.0.0.1:5432 is there; required in CI).
"""

from __future__ import annotations

import datetime
import functools
import pathlib
import re
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from cellsd.compute import states as st
from cellsd.errors import (
    CellRoutingInconsistency,
    CellServiceAPIMethodNotFound,
    ComputeHostNotFound,
    HostBinaryNotFound,
    InstanceInvalidState,
    InstanceNotFound,
    KeypairNotFound,
    ServiceNotFound,
)
from cellsd.messaging.message import Response
from cellsd.messaging.runner import MessageRunner
from cellsd.objects import BlockDeviceMapping, KeyPair
from tests.unit.cell_support import (
    HUGE,
    PATHS,
    SMALL,
    PostgresTree,
    TreeCase,
    build_kwargs,
    ctxt,
    new_instance,
)

if TYPE_CHECKING:
    _Base = TreeCase
else:
    _Base = object

SEED = pathlib.Path("/work/shared/reference/seeds/001_fc749e6190db29a1.txt")
#: What the manager compares between the top's copy and the owner's.
SYNCED = ("vm_state", "task_state", "power_state", "host", "node", "generation")


def value(r: Response | None) -> Any:
    assert r is not None
    return r.value_or_raise()


class SeedAPITests(TreeCase):
    tree_shape = {"top": []}

    def test_every_seed_method_with_its_signature(self) -> None:
        """Every public method of the seed's MessageRunner exists with the
        seed's parameters, in order, with the seed's defaults."""
        import inspect

        text = SEED.read_text() if SEED.exists() else ""
        found = re.findall(r"^([a-z_]+)\((ctxt[^)]*)\)$", text, re.M)
        if not found:
            self.skipTest("the seed file is not here")
        for name, params in found:
            method = getattr(MessageRunner, name, None)
            assert method is not None, name
            sig = inspect.signature(method)
            got = [
                p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                for p in list(sig.parameters.values())[1:]
            ]
            want = [p.strip().replace("'", "'") for p in params.split(",")]
            self.assertEqual(got, want, name)
        self.assertTrue(MessageRunner.get_message_types())


class MessageTests(_Base):
    # -- build_instances and instance actions ------------------------------------

    async def test_build_lands_in_the_hinted_grandchild(self) -> None:
        """build_instances with a target_cell hint builds in g1; the top's
        copy matches the owner's and names the owner's path."""
        top = await self.build("g1")
        own = await self.owner_copy("g1", str(top.uuid))
        self.assertEqual((own.vm_state, own.task_state, own.host), (st.ACTIVE, None, "host1"))
        self.assertEqual(top.cell_name, PATHS["g1"])
        for field in SYNCED:
            self.assertEqual(getattr(top, field), getattr(own, field), field)
        self.assertEqual(top.flavor.flavorid, own.flavor.flavorid)
        # The API's metadata is the top's own; it travels down with the build.
        self.assertEqual(top.metadata, {"owner": "api"})

    async def test_build_without_hint_is_scheduled_to_a_cell_with_hosts(self) -> None:
        """Without a hint the cells scheduler of the top hands the build
        down until a cell with hosts builds it (g1 through c1, or c2)."""
        inst = new_instance(str(uuidlib.uuid4()))
        me = self.tree["top"].state.get_my_state()
        await self.tree["top"].build_instances(ctxt(), me, build_kwargs(inst))
        await self.settle()
        top = await self.top_copy(str(inst.uuid))
        self.assertIn(top.cell_name, (PATHS["g1"], PATHS["c2"]))
        own = await self.owner_copy(top.cell_name.rsplit("!", 1)[-1], str(inst.uuid))
        self.assertEqual((own.vm_state, top.vm_state), (st.ACTIVE, st.ACTIVE))

    async def test_build_with_no_room_anywhere_marks_error_at_the_top(self) -> None:
        """No child reports room for the flavor and the top has no hosts:
        the top's record of the instance goes to ERROR."""
        inst = new_instance(str(uuidlib.uuid4()), flavor=HUGE)
        await self.stores["top"].instance_create(inst, generation=0)
        await self.tree["top"].build_instances(ctxt(), "top", build_kwargs(inst, flavor=HUGE))
        top = await self.eventually(lambda: self._vm_state_is(inst.uuid, st.ERROR))
        self.assertEqual(top.vm_state, st.ERROR)

    async def _vm_state_is(self, uuid: Any, state: str) -> Any:
        found = await self.top_copy(str(uuid))
        self.assertEqual(found.vm_state, state)
        return found

    async def test_lifecycle_from_the_top_keeps_the_copies_equal(self) -> None:
        """Each instance action sent from the top with the top's copy runs
        in g1, and afterwards the top's copy equals the owner's."""
        top = await self.build("g1")
        runner = self.tree["top"]
        steps: list[tuple[str, dict[str, Any], str]] = [
            ("stop_instance", {}, st.STOPPED),
            ("start_instance", {}, st.ACTIVE),
            ("reboot_instance", {"reboot_type": "HARD"}, st.ACTIVE),
            ("pause_instance", {}, st.PAUSED),
            ("unpause_instance", {}, st.ACTIVE),
            ("suspend_instance", {}, st.SUSPENDED),
            ("resume_instance", {}, st.ACTIVE),
            ("snapshot_instance", {"image_id": "snap"}, st.ACTIVE),
            (
                "backup_instance",
                {"image_id": "b", "backup_type": "daily", "rotation": 1},
                st.ACTIVE,
            ),
            ("set_admin_password", {"new_pass": "pw"}, st.ACTIVE),
            ("reset_network", {}, st.ACTIVE),
            ("inject_network_info", {}, st.ACTIVE),
            (
                "rebuild_instance",
                {
                    "image_href": "img-2",
                    "admin_password": "pw",
                    "files_to_inject": [],
                    "preserve_ephemeral": True,
                    "kwargs": {},
                },
                st.ACTIVE,
            ),
            (
                "resize_instance",
                {"flavor": SMALL.to_dict(), "extra_instance_updates": {}, "clean_shutdown": False},
                st.RESIZED,
            ),
            ("confirm_resize", {}, st.ACTIVE),
            (
                "live_migrate_instance",
                {"block_migration": False, "disk_over_commit": False, "host_name": None},
                st.ACTIVE,
            ),
            ("soft_delete_instance", {}, st.SOFT_DELETED),
            ("terminate_instance", {"delete_type": "delete"}, st.DELETED),
        ]
        uuid = str(top.uuid)
        for method, kwargs, vm_state in steps:
            copy = await self.top_copy(uuid)
            result = await getattr(runner, method)(ctxt(), copy, **kwargs)
            self.assertIsNone(result, method)
            await self.settle()
            read = "yes" if vm_state == st.DELETED else "no"
            own = await self.owner_copy("g1", uuid, read)
            mine = await self.eventually(functools.partial(self._same, uuid, own, read))
            self.assertEqual(own.vm_state, vm_state, method)
            self.assertEqual(mine.flavor.flavorid, own.flavor.flavorid, method)
        self.assertTrue((await self.top_copy(uuid, "yes")).deleted)

    async def _same(self, uuid: str, own: Any, read: str) -> Any:
        mine = await self.top_copy(uuid, read)
        # A deleted copy: the top's own delete counted one more generation.
        fields = [f for f in SYNCED if not (own.deleted and f == "generation")]
        self.assertEqual([getattr(mine, f) for f in fields], [getattr(own, f) for f in fields])
        return mine

    async def test_wrong_state_comes_back_as_instance_invalid_state(self) -> None:
        """An action that waits for its answer (stop without cast, a called
        compute API method) fails with InstanceInvalidState in the wrong
        state; a stop that waits answers once stopped."""
        top = await self.build("g1")
        r = await self.tree["top"].stop_instance(ctxt(), top, do_cast=False, clean_shutdown=False)
        self.assertIsNone(value(r))
        self.assertEqual((await self.owner_copy("g1", str(top.uuid))).vm_state, st.STOPPED)
        r = await self.tree["top"].stop_instance(ctxt(), top, do_cast=False)
        with self.assertRaises(InstanceInvalidState):
            value(r)
        info = {"method": "pause", "method_args": [top.uuid], "method_kwargs": {}}
        r = await self.tree["top"].run_compute_api_method(ctxt(), PATHS["g1"], info, True)
        with self.assertRaises(InstanceInvalidState):
            value(r)

    async def test_instance_without_cell_name_is_not_sent(self) -> None:
        """An instance action for an instance without cell_name is dropped
        (logged), as in Liberty."""
        inst = new_instance(str(uuidlib.uuid4()))
        d: Any = self.tree["top"].start_instance(ctxt(), inst)
        self.assertIsNone(await d)
        self.assertIsNone(await self.tree["top"].stop_instance(ctxt(), inst, do_cast=False))

    # -- run_compute_api_method, consoles ----------------------------------------

    async def test_run_compute_api_method(self) -> None:
        """A called allow-listed method answers; a method outside the
        allow-list is CellServiceAPIMethodNotFound; an instance missing
        there is InstanceNotFound and the top's copy is kept (§8.3 #21)."""
        top = await self.build("g1")
        runner = self.tree["top"]
        info = {"method": "get_console_output", "method_args": [top.uuid], "method_kwargs": {}}
        self.assertIn(
            "login:", value(await runner.run_compute_api_method(ctxt(), PATHS["g1"], info, True))
        )
        info["method"] = "__class__"
        r = await runner.run_compute_api_method(ctxt(), PATHS["g1"], info, True)
        with self.assertRaises(CellServiceAPIMethodNotFound) as caught:
            value(r)
        self.assertIn("Unknown method '__class__' in compute API", str(caught.exception))
        info = {"method": "start", "method_args": [top.uuid], "method_kwargs": {}}
        r = await runner.run_compute_api_method(ctxt(), PATHS["c2"], info, True)
        with self.assertRaises(InstanceNotFound):
            value(r)
        self.assertIsNone(await runner.run_compute_api_method(ctxt(), PATHS["c2"], info, False))
        await self.settle()
        self.assertFalse((await self.top_copy(str(top.uuid))).deleted)

    async def test_validate_console_port(self) -> None:
        """The instance's console port validates in its cell; another port
        does not; an instance not there is InstanceNotFound."""
        top = await self.build("g1")
        info = {
            "method": "get_console",
            "method_args": [top.uuid],
            "method_kwargs": {"console_type": "novnc"},
        }
        console = value(
            await self.tree["top"].run_compute_api_method(ctxt(), PATHS["g1"], info, True)
        )
        runner = self.tree["top"]
        ok = await runner.validate_console_port(
            ctxt(), PATHS["g1"], top.uuid, console["port"], "novnc"
        )
        self.assertIs(value(ok), True)
        bad = await runner.validate_console_port(ctxt(), PATHS["g1"], top.uuid, 1, "novnc")
        self.assertIs(value(bad), False)
        missing = await runner.validate_console_port(ctxt(), PATHS["c2"], top.uuid, 1, "novnc")
        with self.assertRaises(InstanceNotFound):
            value(missing)

    # -- services, hosts, compute nodes -----------------------------------------------

    async def test_services_and_hosts_in_one_cell(self) -> None:
        """service_get_by_compute_host, get_host_uptime, service_update
        (disabling a host keeps builds off it) and service_delete (errors
        reach the caller: §8.1 #11) at g1."""
        runner, g1 = self.tree["top"], PATHS["g1"]
        service = value(await runner.service_get_by_compute_host(ctxt(), g1, "host1"))
        self.assertEqual((service.host, service.binary), ("host1", "nova-compute"))
        with self.assertRaises(ComputeHostNotFound):
            value(await runner.service_get_by_compute_host(ctxt(), g1, "host9"))
        self.assertIn(" up ", value(await runner.get_host_uptime(ctxt(), g1, "host1")))
        updated = value(
            await runner.service_update(
                ctxt(), g1, "host1", "nova-compute", {"disabled": True, "disabled_reason": "test"}
            )
        )
        self.assertEqual((updated.disabled, updated.disabled_reason), (True, "test"))
        with self.assertRaises(HostBinaryNotFound):
            value(await runner.service_update(ctxt(), g1, "host1", "nova-api", {"disabled": True}))
        built = await self.build("g1")
        self.assertEqual(built.host, "host2")
        await runner.service_delete(ctxt(), g1, service.id)
        with self.assertRaises(ServiceNotFound):
            await runner.service_delete(ctxt(), g1, service.id)
        self.assertEqual([s.host for s in await self.stores["g1"].service_get_all()], ["host2"])

    async def test_compute_nodes_and_proxy_rpc(self) -> None:
        """compute_node_get by id (ComputeHostNotFound for another), and a
        proxied compute-manager call reaching the host (§8.1 #14)."""
        runner, g1 = self.tree["top"], PATHS["g1"]
        (node,) = await self.stores["g1"].compute_node_get_all_by_host("host2")
        self.assertEqual(value(await runner.compute_node_get(ctxt(), g1, node.id)).host, "host2")
        with self.assertRaises(ComputeHostNotFound):
            value(await runner.compute_node_get(ctxt(), g1, 999))
        msg = {"method": "set_host_enabled", "args": {"enabled": False}}
        r = await runner.proxy_rpc_to_manager(
            ctxt(), g1, "host2", f"compute.{g1}@host2", msg, True, 5
        )
        self.assertEqual(value(r), "disabled")
        self.assertTrue((await self.stores["g1"].service_get_by_compute_host("host2")).disabled)
        r = await runner.proxy_rpc_to_manager(ctxt(), g1, "host9", "compute.x@host9", msg, True, 5)
        with self.assertRaises(ComputeHostNotFound):
            value(r)
        self.assertIsNone(
            await runner.proxy_rpc_to_manager(
                ctxt(), g1, "host2", "compute.x@host2", msg, False, None
            )
        )

    async def test_broadcast_queries_answer_for_every_cell(self) -> None:
        """service_get_all, compute_node_get_all (with and without
        hypervisor_match) and compute_node_stats answer once per cell,
        this one included, each Response named by the cell's path."""
        runner = self.tree["top"]
        await self.build("c2")
        services = {
            r.cell_name: [s.host for s in value(r)] for r in await runner.service_get_all(ctxt())
        }
        self.assertEqual(
            services,
            {
                "top": [],
                "top!c1": [],
                "top!c1!g1": ["host1", "host2"],
                "top!c2": ["host1", "host2"],
            },
        )
        disabled = await runner.service_get_all(ctxt(), {"disabled": True})
        self.assertEqual([value(r) for r in disabled], [[], [], [], []])
        only = await runner.service_get_all(ctxt(), {"host": "host2"})
        self.assertEqual(sum(len(value(r)) for r in only), 2)
        nodes = await runner.compute_node_get_all(ctxt())
        self.assertEqual(sum(len(value(r)) for r in nodes), 4)
        matched = await runner.compute_node_get_all(ctxt(), hypervisor_match="g1-")
        self.assertEqual(
            {r.cell_name: [n.hypervisor_hostname for n in value(r)] for r in matched if value(r)},
            {"top!c1!g1": ["g1-host1", "g1-host2"]},
        )
        stats = {r.cell_name: value(r) for r in await runner.compute_node_stats(ctxt())}
        self.assertEqual(stats["top!c2"]["running_vms"], 1)
        self.assertEqual(stats["top!c2"]["memory_mb_used"], 512)
        self.assertEqual(stats["top"]["count"], 0)
        self.assertEqual(stats["top!c1!g1"]["count"], 2)

    async def test_task_logs_migrations_and_actions(self) -> None:
        """task_log_get_all (one cell or all), get_migrations (one cell by a
        short or full path, all without the asking cell, an unknown cell
        reported: §8.1 #10), and the instance's actions and events."""
        runner = self.tree["top"]
        top = await self.build("g1")
        await self.computes["g1"].audit_usage()
        begin, end = self.computes["g1"].audit_period()
        logs = await runner.task_log_get_all(ctxt(), None, "instance_usage_audit", begin, end)
        self.assertEqual(
            {r.cell_name: len(value(r)) for r in logs},
            {"top": 0, "top!c1": 0, "top!c1!g1": 2, "top!c2": 2},
        )
        (one,) = await runner.task_log_get_all(
            ctxt(), PATHS["g1"], "instance_usage_audit", begin, end, host="host1"
        )
        self.assertEqual([t["host"] for t in value(one)], ["host1"])
        c = ctxt()
        await runner.resize_instance(c, top, SMALL, {}, False)
        await self.settle()
        every = await runner.get_migrations(ctxt(), None, False, {})
        self.assertEqual(
            {r.cell_name: len(value(r)) for r in every}, {"top!c1": 0, "top!c1!g1": 1, "top!c2": 0}
        )
        (short,) = await runner.get_migrations(ctxt(), "c1!g1", False, {"status": "finished"})
        self.assertEqual(short.cell_name, PATHS["g1"])
        self.assertEqual([m.migration_type for m in value(short)], ["resize"])
        (unknown,) = await runner.get_migrations(ctxt(), "c9", False, {})
        self.assertTrue(unknown.failure)
        with self.assertRaises(CellRoutingInconsistency):
            value(unknown)
        actions = value(await runner.actions_get(ctxt(), PATHS["g1"], top.uuid))
        self.assertEqual([a["action"] for a in actions], ["resize", "create"])
        action = value(
            await runner.action_get_by_request_id(ctxt(), PATHS["g1"], top.uuid, c.request_id)
        )
        self.assertEqual(action["action"], "resize")
        events = value(await runner.action_events_get(ctxt(), PATHS["g1"], action["id"]))
        self.assertEqual(
            [(e["event"], e["result"]) for e in events], [("compute_resize", "Success")]
        )
        self.assertIsNone(
            value(await runner.action_get_by_request_id(ctxt(), PATHS["g1"], top.uuid, "req-x"))
        )

    # -- the top-only handlers ------------------------------------------------------

    async def test_faults_bandwidth_and_tokens_act_only_at_the_top(self) -> None:
        """instance_fault_create_at_top, bw_usage_update_at_top and
        consoleauth_delete_tokens change the top's store only."""
        uuid = str(uuidlib.uuid4())
        g1 = self.tree["g1"]
        await g1.instance_fault_create_at_top(
            ctxt(),
            {"id": 7, "instance_uuid": uuid, "code": 500, "message": "boom", "host": "host1"},
        )
        start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        info = {
            "uuid": uuid,
            "mac": "fa:16:3e:00:00:01",
            "start_period": start,
            "bw_in": 1,
            "bw_out": 2,
            "last_ctr_in": 3,
            "last_ctr_out": 4,
            "last_refreshed": None,
        }
        await g1.bw_usage_update_at_top(ctxt(), info)
        token = await self.stores["top"].console_auth_token_create(uuid, "novnc", "h", 5900, 60)
        await g1.consoleauth_delete_tokens(ctxt(), uuid)
        await self.settle()
        faults = await self.stores["top"].instance_fault_get_by_instance_uuids([uuid])
        self.assertEqual([f.message for f in faults[uuid]], ["boom"])
        usage = await self.stores["top"].bw_usage_get_by_uuids([uuid], start)
        self.assertEqual([(u.bw_in, u.bw_out) for u in usage], [(1, 2)])
        self.assertIsNone(await self.stores["top"].console_auth_token_validate(token))
        faults = await self.stores["c1"].instance_fault_get_by_instance_uuids([uuid])
        self.assertEqual(faults[uuid], [])

    async def test_block_device_mappings_at_the_top(self) -> None:
        """create=True twice makes one mapping (keyed by uuid); None
        updates it; False updates only a known mapping; a destroy by
        device name soft-deletes it."""
        uuid = str(uuidlib.uuid4())
        g1, top = self.tree["g1"], self.stores["top"]
        bdm = BlockDeviceMapping(
            uuid=str(uuidlib.uuid4()),
            instance_uuid=uuid,
            device_name="/dev/vdb",
            volume_id="v1",
            source_type="volume",
        )
        await g1.bdm_update_or_create_at_top(ctxt(), bdm, create=True)
        await g1.bdm_update_or_create_at_top(ctxt(), bdm, create=True)
        bigger = {**bdm.to_dict(), "volume_size": 10}
        await g1.bdm_update_or_create_at_top(ctxt(), bigger, create=None)
        await g1.bdm_update_or_create_at_top(
            ctxt(),
            {"instance_uuid": uuid, "device_name": "/dev/vdz", "volume_size": 5},
            create=False,
        )
        await g1.bdm_update_or_create_at_top(
            ctxt(), {"instance_uuid": uuid, "volume_id": "v1", "volume_size": 20}, create=False
        )

        await self.settle()
        found = await top.bdm_get_all_by_instance(uuid)
        self.assertEqual([(b.uuid, b.volume_size) for b in found], [(bdm.uuid, 20)])
        await g1.bdm_destroy_at_top(ctxt(), uuid, device_name="/dev/vdb")
        await self.settle()
        self.assertEqual(await top.bdm_get_all_by_instance(uuid), [])

    async def test_get_keypair_at_top(self) -> None:
        """A key pair is read from the top; cells on the way answer None;
        a missing key pair is None everywhere."""
        await self.stores["top"].key_pair_create(
            KeyPair(name="k", user_id="u1", fingerprint="f", public_key="ssh-rsa AAA")
        )
        rs = await self.tree["g1"].get_keypair_at_top(ctxt(), "u1", "k")
        self.assertEqual(
            {r.cell_name: getattr(r.value, "name", None) for r in rs},
            {"g1!c1": None, "g1!c1!top": "k"},
        )
        rs = await self.tree["g1"].get_keypair_at_top(ctxt(), "u1", "nope")
        self.assertEqual([r.value for r in rs], [None, None])
        with self.assertRaises(KeypairNotFound):
            await self.stores["top"].key_pair_get("u1", "nope")

    # -- changes from the API, deletes everywhere --------------------------------------

    async def test_instance_update_from_api(self) -> None:
        """The API's change reaches the owner; its vm_state only with an
        admin state reset; metadata never; the top hears the result."""
        top = await self.build("g1")
        copy = await self.top_copy(str(top.uuid))
        copy.display_name = "renamed"
        copy.vm_state = "error"
        copy.metadata = {"changed": "yes"}
        await self.tree["top"].instance_update_from_api(ctxt(), copy, None, None, False)
        await self.settle()
        own = await self.owner_copy("g1", str(top.uuid))
        self.assertEqual(
            (own.display_name, own.vm_state, own.metadata), ("renamed", st.ACTIVE, {"owner": "api"})
        )
        copy = await self.top_copy(str(top.uuid))
        copy.vm_state = st.ERROR
        await self.tree["top"].instance_update_from_api(ctxt(), copy, None, None, True)
        await self.settle()
        self.assertEqual((await self.owner_copy("g1", str(top.uuid))).vm_state, st.ERROR)
        await self.eventually(lambda: self._vm_state_is(top.uuid, st.ERROR))

    async def test_instance_delete_everywhere(self) -> None:
        """A soft delete everywhere soft-deletes the instance where it
        lives; a hard one deletes it and the top's copy."""
        top = await self.build("c2")
        await self.tree["top"].instance_delete_everywhere(ctxt(), top, "soft")
        await self.settle()
        self.assertEqual((await self.owner_copy("c2", str(top.uuid))).vm_state, st.SOFT_DELETED)
        await self.tree["top"].instance_delete_everywhere(ctxt(), top, "hard")
        await self.settle()
        self.assertTrue((await self.owner_copy("c2", str(top.uuid), "yes")).deleted)
        await self.eventually(lambda: self._deleted_at_top(str(top.uuid)))

    async def _deleted_at_top(self, uuid: str) -> None:
        self.assertTrue((await self.top_copy(uuid, "yes")).deleted)


class SQLiteMessageTests(MessageTests, TreeCase):
    pass


class PostgresMessageTests(MessageTests, PostgresTree):
    pass
