"""The simulated compute on its own: hosts, claims, and the vm_state /
task_state machine of every instance action of the seeds.

One cell with two hosts (host1: 16 GB, host2: 8 GB) and an SQLite store;
reports upward go to a recorder instead of the runner; time comes from a
task.Clock, so the duration of each step is exact.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

import orjson
from zope.interface.verify import verifyObject

from cellsd.compute import states as st
from cellsd.compute.simulated import SimulatedCompute
from cellsd.errors import (
    CannotResizeToSameFlavor,
    ComputeHostNotFound,
    ComputeServiceUnavailable,
    ConsoleTypeInvalid,
    InstanceInvalidState,
    InvalidArguments,
    NoValidHost,
    UnableToMigrateToSelf,
    UnknownMethod,
)
from cellsd.interfaces import IComputeAPI
from cellsd.objects import Instance
from tests.unit.cell_support import HUGE, SMALL, TINY, TreeCase, ctxt, new_instance, sleep


class Recorder:
    """Stands in for the runner's *_at_top methods."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def instance_update_at_top(self, ctxt: Any, instance: Instance) -> None:
        self.calls.append(("update", instance))

    def instance_destroy_at_top(self, ctxt: Any, instance: Instance) -> None:
        self.calls.append(("destroy", instance))

    def instance_fault_create_at_top(self, ctxt: Any, instance_fault: Any) -> None:
        self.calls.append(("fault", instance_fault))

    def bdm_update_or_create_at_top(self, ctxt: Any, bdm: Any, create: Any = None) -> None:
        self.calls.append(("bdm", (bdm, create)))

    def consoleauth_delete_tokens(self, ctxt: Any, instance_uuid: str) -> None:
        self.calls.append(("tokens", instance_uuid))

    def of(self, kind: str) -> list[Any]:
        return [v for k, v in self.calls if k == kind]


class ComputeCase(TreeCase):
    tree_shape = {"cell": []}

    async def _set_up(self) -> None:
        await super()._set_up()
        self.store: Any = self.stores["cell"]
        self.compute: SimulatedCompute = self.computes["cell"]
        self.reports = Recorder()
        self.compute.reporter = self.reports

    async def boot(self, flavor: Any = TINY, **kw: Any) -> Any:
        """An instance built and settled (active)."""
        proto = new_instance(str(uuidlib.uuid4()), flavor=flavor, **kw)
        (inst,) = await self.compute.build_instances(
            ctxt(), [proto], filter_properties={"instance_type": flavor}
        )
        await self.settle()
        return await self.get(inst.uuid)

    async def get(self, uuid: Any, read_deleted: str = "no") -> Any:
        return await self.store.instance_get_by_uuid(str(uuid), read_deleted)

    async def act(self, method: str, inst: Any, *args: Any, **kw: Any) -> Any:
        """Run an action to its end; the instance afterwards."""
        await getattr(self.compute, method)(ctxt(), await self.get(inst.uuid), *args, **kw)
        await self.settle()
        return await self.get(inst.uuid, "yes")

    def states(self, inst: Instance) -> tuple[Any, Any, Any]:
        return (inst.vm_state, inst.task_state, inst.power_state)

    async def node(self, host: str) -> Any:
        (node,) = await self.store.compute_node_get_all_by_host(host)
        return node


class HostTests(ComputeCase):
    async def test_contract(self) -> None:
        """SimulatedCompute provides IComputeAPI."""
        self.assertTrue(verifyObject(IComputeAPI, self.compute))

    async def test_hosts_registered_as_services_and_nodes(self) -> None:
        """Each configured host is a nova-compute service with a compute
        node of its size, named after the cell and host."""
        services = await self.store.service_get_all()
        self.assertEqual(
            [(s.host, s.binary, s.topic) for s in services],
            [("host1", "nova-compute", "compute"), ("host2", "nova-compute", "compute")],
        )
        node = await self.node("host1")
        self.assertEqual((node.vcpus, node.memory_mb, node.local_gb), (8, 16384, 200))
        self.assertEqual(node.hypervisor_hostname, "cell-host1")
        self.assertEqual((node.memory_mb_used, node.running_vms), (0, 0))

    async def test_capacities_follow_claims_and_disabled_hosts(self) -> None:
        """Capacities (behaviour §5.4) count free RAM of the enabled hosts,
        less the reserve; a build takes its flavor's share, disabling a
        host takes it out."""
        caps = self.compute.capacities()
        self.assertEqual(caps["ram_free"]["total_mb"], 16384 + 8192)
        # 10 % reserve: floor((16384 - 1638.4) / 512) + floor((8192 - 819.2) / 512)
        self.assertEqual(caps["ram_free"]["units_by_mb"]["512"], 28 + 14)
        await self.boot(SMALL)
        self.assertEqual(self.compute.capacities()["ram_free"]["total_mb"], 24576 - 2048)
        host1 = await self.store.service_get_by_compute_host("host1")
        await self.store.service_update(host1.id, {"disabled": True})
        await self.compute.refresh_disabled()
        self.assertEqual(self.compute.capacities()["ram_free"]["total_mb"], 8192)
        await self.store.service_update(host1.id, {"disabled": True})
        host2 = await self.store.service_get_by_compute_host("host2")
        await self.store.service_update(host2.id, {"disabled": True})
        await self.compute.refresh_disabled()
        self.assertEqual(self.compute.capacities(), {})

    async def test_uptime_needs_a_live_service(self) -> None:
        """Uptime answers for a host that reported in recently; a host
        silent longer than service_down_time is unavailable; an unknown
        host is not found."""
        self.clock.advance(3 * 86400 + 3600 + 120)
        await self.compute.heartbeat()
        line = await self.compute.get_host_uptime(ctxt(), "host1")
        self.assertIn(" up 3 days,  1:02,", line)
        self.clock.advance(61)
        with self.assertRaises(ComputeServiceUnavailable):
            await self.compute.get_host_uptime(ctxt(), "host1")
        with self.assertRaises(ComputeHostNotFound):
            await self.compute.get_host_uptime(ctxt(), "nohost")

    async def test_host_rpcs_are_allow_listed(self) -> None:
        """set_host_enabled disables the host's service and takes it out of
        placement; a method outside the allow-list is refused."""
        self.assertEqual(
            await self.compute.host_rpc(ctxt(), "host1", "set_host_enabled", {"enabled": False}),
            "disabled",
        )
        self.assertTrue((await self.store.service_get_by_compute_host("host1")).disabled)
        inst = await self.boot()
        self.assertEqual(inst.host, "host2")
        with self.assertRaises(UnknownMethod):
            await self.compute.host_rpc(ctxt(), "host1", "__init__", {})
        with self.assertRaises(ComputeHostNotFound):
            await self.compute.host_rpc(ctxt(), "nohost", "get_host_uptime", {})

    async def test_usage_audit_in_task_log(self) -> None:
        """The heartbeat records the usage audit of the last whole hour,
        once per host, with the number of instances on it."""
        await self.boot()
        self.clock.advance(3600)
        await self.compute.heartbeat()
        begin, end = self.compute.audit_period()
        logs = await self.store.task_log_get_all("instance_usage_audit", begin, end)
        self.assertEqual([(t.host, t.state, t.task_items) for t in logs],
                         [("host1", "DONE", 1), ("host2", "DONE", 0)])  # fmt: skip
        await self.compute.heartbeat()
        self.assertEqual(
            len(await self.store.task_log_get_all("instance_usage_audit", begin, end)), 2
        )

    async def test_restart_recounts_claims(self) -> None:
        """A compute started again on the same store counts the stored
        instances' claims, a resize awaiting confirmation on both hosts."""
        await self.boot()
        resized = await self.boot()
        await self.act("resize", resized, SMALL)
        fresh = SimulatedCompute(self.store, self.reports, self.clock, [], "cell")
        fresh.hosts = {
            n: type(h)(h.name, h.vcpus, h.memory_mb, h.disk_gb)
            for n, h in self.compute.hosts.items()
        }
        fresh.claims.hosts = fresh.hosts
        await fresh.recount()
        self.assertEqual(
            {n: (h.memory_mb_used, h.running_vms) for n, h in fresh.hosts.items()},
            {n: (h.memory_mb_used, h.running_vms) for n, h in self.compute.hosts.items()},
        )
        self.assertEqual(fresh.hosts["host1"].memory_mb_used, 512 + 512)
        self.assertEqual(fresh.hosts["host2"].memory_mb_used, 2048)

    async def test_a_build_during_startup_waits_and_is_not_cleared(self) -> None:
        """Injected: a build arrives while a restarted compute is starting
        (a cell takes requests while its store opens), and an instance was
        left building by the crash. The old one ends in ERROR, the new
        build waits for startup to finish and goes active."""
        stale = await self.store.instance_create(
            new_instance(str(uuidlib.uuid4()), vm_state=st.BUILDING, task_state=st.SPAWNING)
        )
        await self.compute.shutdown()
        fresh = SimulatedCompute(self.store, self.reports, self.clock, [], "cell")
        fresh.hosts, fresh.claims = self.compute.hosts, self.compute.claims
        self.tree.computes["cell"] = self.computes["cell"] = fresh
        fresh.expect_startup()
        proto = new_instance(str(uuidlib.uuid4()))
        early = fresh.build_instances(ctxt(), [proto], filter_properties={"instance_type": TINY})
        await sleep(0.05)
        self.assertFalse(early.called)  # held until startup has run
        await fresh.startup()
        (built,) = await early
        await fresh.settled()
        self.assertEqual((await self.get(stale.uuid)).vm_state, st.ERROR)
        self.assertEqual((await self.get(built.uuid)).vm_state, st.ACTIVE)
        await fresh.shutdown()


class BuildTests(ComputeCase):
    async def test_build_to_active_on_the_first_host_with_room(self) -> None:
        """A build creates the instance building/scheduling, reports it up,
        and walks networking, block_device_mapping and spawning to active
        on host1, claiming the flavor there."""
        inst = await self.boot()
        self.assertEqual(self.states(inst), (st.ACTIVE, None, st.RUNNING))
        self.assertEqual((inst.host, inst.node, inst.launched_on), ("host1", "host1", "host1"))
        self.assertIsNotNone(inst.launched_at)
        self.assertEqual(inst.info_cache[0]["network"]["label"], "private")
        self.assertEqual((inst.memory_mb, inst.vcpus, inst.flavor.flavorid), (512, 1, "1"))
        tasks = [i.task_state for i in self.reports.of("update")]
        self.assertEqual(
            tasks, [st.SCHEDULING, st.NETWORKING, st.BLOCK_DEVICE_MAPPING, st.SPAWNING, None]
        )
        gens = [i.generation for i in self.reports.of("update")]
        self.assertEqual(gens, sorted(gens))
        self.assertEqual(len(set(gens)), len(gens))
        # Reports carry the whole instance, not only the changed fields.
        self.assertIn("display_name", self.reports.of("update")[-1].obj_set_fields())
        node = await self.node("host1")
        self.assertEqual((node.memory_mb_used, node.vcpus_used, node.running_vms), (512, 1, 1))

    async def test_no_room_is_error_with_a_fault(self) -> None:
        """A flavor no host fits ends in ERROR with a NoValidHost fault,
        recorded here and reported up; the create event failed."""
        inst = await self.boot(HUGE)
        self.assertEqual(inst.vm_state, st.ERROR)
        faults = await self.store.instance_fault_get_by_instance_uuids([inst.uuid])
        self.assertIn("No valid host", faults[inst.uuid][0].message)
        self.assertEqual(len(self.reports.of("fault")), 1)
        (action,) = await self.store.actions_get(inst.uuid)
        (event,) = await self.store.action_events_get(action.id)
        self.assertEqual((action.action, event.result), ("create", "Error"))

    async def test_block_device_mappings_created_and_sent_up(self) -> None:
        """The build's block device mappings are stored here and reported up
        as creates (create=True: the flag as meant, §8.4 #26)."""
        proto = new_instance(str(uuidlib.uuid4()))
        bdm = {"device_name": "/dev/vda", "source_type": "image", "boot_index": 0}
        await self.compute.build_instances(ctxt(), [proto], block_device_mapping=[bdm])
        await self.settle()
        (stored,) = await self.store.bdm_get_all_by_instance(proto.uuid)
        self.assertEqual(stored.device_name, "/dev/vda")
        ((sent, create),) = self.reports.of("bdm")
        self.assertEqual((sent.uuid, create), (stored.uuid, True))

    async def test_several_instances_get_numbered_names(self) -> None:
        """Two instances in one request are named vm-1 and vm-2."""
        protos = [new_instance(str(uuidlib.uuid4())) for _ in range(2)]
        built = await self.compute.build_instances(ctxt(), protos)
        self.assertEqual([i.display_name for i in built], ["vm-1", "vm-2"])
        await self.settle()
        hosts = [(await self.get(i.uuid)).host for i in built]
        self.assertEqual(hosts, ["host1", "host1"])


class LifecycleTests(ComputeCase):
    async def test_every_action_lands_in_its_state(self) -> None:
        """Each seed action, run to its end from a state that allows it,
        leaves the instance where Nova would."""
        inst = await self.boot()
        expect = [
            ("stop", (), {}, (st.STOPPED, None, st.SHUTDOWN)),
            ("start", (), {}, (st.ACTIVE, None, st.RUNNING)),
            ("reboot", ("SOFT",), {}, (st.ACTIVE, None, st.RUNNING)),
            ("reboot", ("HARD",), {}, (st.ACTIVE, None, st.RUNNING)),
            ("pause", (), {}, (st.PAUSED, None, st.POWER_PAUSED)),
            ("unpause", (), {}, (st.ACTIVE, None, st.RUNNING)),
            ("suspend", (), {}, (st.SUSPENDED, None, st.POWER_SUSPENDED)),
            ("resume", (), {}, (st.ACTIVE, None, st.RUNNING)),
            ("set_admin_password", ("secret",), {}, (st.ACTIVE, None, st.RUNNING)),
            ("snapshot", ("snap-1",), {}, (st.ACTIVE, None, st.RUNNING)),
            ("backup", ("bak-1", "daily", 2), {}, (st.ACTIVE, None, st.RUNNING)),
            ("rebuild", ("img-2", "pw"), {"display_name": "vm2"}, (st.ACTIVE, None, st.RUNNING)),
            ("reset_network", (), {}, (st.ACTIVE, None, st.RUNNING)),
            ("inject_network_info", (), {}, (st.ACTIVE, None, st.RUNNING)),
            ("resize", (SMALL,), {}, (st.RESIZED, None, st.RUNNING)),
            ("confirm_resize", (), {}, (st.ACTIVE, None, st.RUNNING)),
            ("resize", (TINY,), {}, (st.RESIZED, None, st.RUNNING)),
            ("revert_resize", (), {}, (st.ACTIVE, None, st.RUNNING)),
            ("live_migrate", (False, False, None), {}, (st.ACTIVE, None, st.RUNNING)),
            ("soft_delete", (), {}, (st.SOFT_DELETED, None, st.SHUTDOWN)),
            ("delete", (), {}, (st.DELETED, None, st.NOSTATE)),
        ]
        gen = inst.generation
        for method, args, kw, want in expect:
            after = await self.act(method, inst, *args, **kw)
            self.assertEqual(self.states(after), want, method)
            if method != "inject_network_info":
                self.assertGreater(after.generation, gen, method)
            gen = after.generation
        self.assertTrue(after.deleted)
        self.assertEqual((after.image_ref, after.display_name), ("img-2", "vm2"))
        self.assertEqual([i.uuid for i in self.reports.of("destroy")], [inst.uuid])
        for host in ("host1", "host2"):
            self.assertEqual((await self.node(host)).memory_mb_used, 0)

    async def test_resize_moves_confirm_frees_the_old_host(self) -> None:
        """A resize lands on host2 with the new flavor and both hosts hold a
        share until confirmed; confirm frees host1, and the migration went
        pre-migrating ... finished, confirmed."""
        inst = await self.boot()
        resized = await self.act("resize", inst, SMALL)
        self.assertEqual(
            (resized.host, resized.flavor.flavorid, resized.memory_mb), ("host2", "2", 2048)
        )
        self.assertEqual(orjson.loads(resized.system_metadata["old_flavor"])["flavorid"], "1")
        self.assertEqual(
            ((await self.node("host1")).memory_mb_used, (await self.node("host2")).memory_mb_used),
            (512, 2048),
        )
        done = await self.act("confirm_resize", inst)
        self.assertNotIn("old_flavor", done.system_metadata)
        self.assertEqual((await self.node("host1")).memory_mb_used, 0)
        (mig,) = await self.store.migration_get_all_by_filters({"instance_uuid": inst.uuid})
        self.assertEqual(
            (mig.source_compute, mig.dest_compute, mig.migration_type, mig.status),
            ("host1", "host2", "resize", "confirmed"),
        )

    async def test_revert_returns_to_the_old_host_and_flavor(self) -> None:
        """Reverting goes back to host1 and the old flavor, frees host2."""
        inst = await self.boot()
        await self.act("resize", inst, SMALL)
        back = await self.act("revert_resize", inst)
        self.assertEqual((back.host, back.flavor.flavorid, back.memory_mb), ("host1", "1", 512))
        self.assertEqual((await self.node("host2")).memory_mb_used, 0)
        (mig,) = await self.store.migration_get_all_by_filters({"instance_uuid": inst.uuid})
        self.assertEqual(mig.status, "reverted")

    async def test_stopped_instance_resizes_and_stays_stopped(self) -> None:
        """A stopped instance resized is stopped again once confirmed."""
        inst = await self.boot()
        await self.act("stop", inst)
        resized = await self.act("resize", inst, SMALL)
        self.assertEqual(resized.power_state, st.SHUTDOWN)
        done = await self.act("confirm_resize", inst)
        self.assertEqual(done.vm_state, st.STOPPED)

    async def test_live_migration_to_a_named_host(self) -> None:
        """Live migration moves the instance and records a live-migration;
        migrating to its own host or an unknown one is refused."""
        inst = await self.boot()
        with self.assertRaises(UnableToMigrateToSelf):
            await self.compute.live_migrate(ctxt(), inst, False, False, "host1")
        with self.assertRaises(ComputeHostNotFound):
            await self.compute.live_migrate(ctxt(), inst, False, False, "host9")
        moved = await self.act("live_migrate", inst, True, False, "host2")
        self.assertEqual(moved.host, "host2")
        (mig,) = await self.store.migration_get_all_by_filters({"migration_type": "live-migration"})
        self.assertEqual((mig.dest_compute, mig.status), ("host2", "completed"))
        self.assertEqual(self.reports.of("tokens"), [inst.uuid])

    async def test_resize_without_room_changes_nothing(self) -> None:
        """NoValidHost for a resize no host fits; the task is cleared."""
        inst = await self.boot()
        with self.assertRaises(NoValidHost):
            await self.compute.resize(ctxt(), inst, HUGE)
        after = await self.get(inst.uuid)
        self.assertEqual((self.states(after), after.host), ((st.ACTIVE, None, st.RUNNING), "host1"))
        with self.assertRaises(CannotResizeToSameFlavor):
            await self.compute.resize(ctxt(), after, TINY)

    async def test_backup_rotation(self) -> None:
        """Backups keep the newest ``rotation`` of each type."""
        inst = await self.boot()
        for n in range(3):
            await self.act("backup", inst, f"daily-{n}", "daily", 2)
        await self.act("backup", inst, "weekly-0", "weekly", 1)
        kept = orjson.loads((await self.get(inst.uuid)).system_metadata["backups"])
        self.assertEqual([b["image_id"] for b in kept], ["daily-1", "daily-2", "weekly-0"])
        with self.assertRaises(InvalidArguments):
            await self.compute.backup(ctxt(), inst, "x", "daily", -1)

    async def test_actions_and_events_per_request_id(self) -> None:
        """Each action is recorded under its request id with its compute
        event, finished with Success and the action's details."""
        inst = await self.boot()
        c = ctxt()
        await self.compute.stop(c, inst, clean_shutdown=False)
        await self.settle()
        action = await self.store.action_get_by_request_id(inst.uuid, c.request_id)
        self.assertEqual((action.action, action.user_id), ("stop", "u1"))
        self.assertIsNotNone(action.finish_time)
        (event,) = await self.store.action_events_get(action.id)
        self.assertEqual(
            (event.event, event.result, event.details),
            ("compute_stop", "Success", "clean_shutdown=False"),
        )

    async def test_consoles(self) -> None:
        """The console port of a type validates; another port does not; an
        unknown type is refused; a stopped instance has no console."""
        inst = await self.boot()
        info = await self.compute.get_console(ctxt(), inst, "novnc")
        self.assertTrue(
            await self.compute.validate_console_port(ctxt(), inst, info["port"], "novnc")
        )
        self.assertFalse(await self.compute.validate_console_port(ctxt(), inst, 1, "novnc"))
        with self.assertRaises(ConsoleTypeInvalid):
            await self.compute.validate_console_port(ctxt(), inst, 1, "telnet")
        stopped = await self.act("stop", inst)
        self.assertFalse(
            await self.compute.validate_console_port(ctxt(), stopped, info["port"], "novnc")
        )
        self.assertIn("login:", await self.compute.get_console_output(ctxt(), stopped))


class RefusalTests(ComputeCase):
    async def test_actions_in_the_wrong_state_are_refused(self) -> None:
        """InstanceInvalidState names the attribute and state that do not
        fit; the instance is left as it was and no action is recorded."""
        inst = await self.boot()
        wrong_when_active: list[tuple[str, tuple[Any, ...]]] = [
            ("start", ()),
            ("unpause", ()),
            ("resume", ()),
            ("confirm_resize", ()),
            ("revert_resize", ()),
        ]
        for method, args in wrong_when_active:
            with self.assertRaises(InstanceInvalidState, msg=method) as caught:
                await getattr(self.compute, method)(ctxt(), inst, *args)
            self.assertEqual(caught.exception.kwargs["attr"], "vm_state")
            self.assertEqual(caught.exception.kwargs["state"], st.ACTIVE)
        stopped = await self.act("stop", inst)
        refused: list[tuple[str, tuple[Any, ...]]] = [
            ("stop", ()),
            ("pause", ()),
            ("suspend", ()),
            ("reboot", ("SOFT",)),
            ("set_admin_password", ("x",)),
            ("live_migrate", (False, False, None)),
        ]
        for method, args in refused:
            with self.assertRaises(InstanceInvalidState, msg=method):
                await getattr(self.compute, method)(ctxt(), stopped, *args)
        after = await self.get(inst.uuid)
        self.assertEqual(self.states(after), (st.STOPPED, None, st.SHUTDOWN))
        self.assertEqual(
            [a.action for a in await self.store.actions_get(inst.uuid)], ["stop", "create"]
        )
        with self.assertRaises(InvalidArguments):
            await self.compute.reboot(ctxt(), after, "GENTLE")

    async def test_soft_delete_needs_a_launched_instance(self) -> None:
        """An instance never launched cannot be soft-deleted; a
        soft-deleted one cannot be soft-deleted again, but can be deleted."""
        never = await self.boot(HUGE)
        with self.assertRaises(InstanceInvalidState):
            await self.compute.soft_delete(ctxt(), never)
        inst = await self.boot()
        gone = await self.act("soft_delete", inst)
        with self.assertRaises(InstanceInvalidState):
            await self.compute.soft_delete(ctxt(), gone)
        deleted = await self.act("force_delete", inst)
        self.assertTrue(deleted.deleted)


class TimingTests(ComputeCase):
    compute_options = {"heartbeat_interval": 3600.0, "step_delay": 5.0}

    async def next_step(self) -> None:
        """Once the compute waits on the clock, let its step pass."""
        for _ in range(500):
            if any(c.getTime() <= self.clock.seconds() + 10 for c in self.clock.getDelayedCalls()):
                self.clock.advance(5)
                return
            await sleep(0.005)
        raise AssertionError("the compute never waited on the clock")

    async def run_build(self) -> Any:
        proto = new_instance(str(uuidlib.uuid4()))
        (inst,) = await self.compute.build_instances(ctxt(), [proto])
        for _ in range(4):
            await self.next_step()
        await self.settle()
        return await self.get(inst.uuid)

    async def test_each_step_is_observable(self) -> None:
        """With 5 s steps a caller sees every task_state: a resize shows
        resize_prep, then each of its steps, each after 5 s."""
        inst = await self.run_build()
        self.assertEqual(inst.vm_state, st.ACTIVE)
        await self.compute.resize(ctxt(), inst, SMALL, clean_shutdown=False)
        seen = [(await self.get(inst.uuid)).task_state]
        for _ in range(4):
            await self.next_step()
            await sleep(0.05)
            seen.append((await self.get(inst.uuid)).task_state)
        await self.settle()
        self.assertEqual(
            seen,
            [st.RESIZE_PREP, st.RESIZE_MIGRATING, st.RESIZE_MIGRATED, st.RESIZE_FINISH, None],
        )

    async def test_busy_instance_refuses_other_actions(self) -> None:
        """While a task runs, another action is refused on task_state; a
        delete is taken, and a second delete is refused."""
        inst = await self.run_build()
        await self.compute.stop(ctxt(), inst)
        busy = await self.get(inst.uuid)
        self.assertEqual((busy.vm_state, busy.task_state), (st.ACTIVE, st.POWERING_OFF))
        with self.assertRaises(InstanceInvalidState) as caught:
            await self.compute.snapshot(ctxt(), busy, "img")
        self.assertEqual(caught.exception.kwargs["attr"], "task_state")
        await self.compute.delete(ctxt(), busy)
        with self.assertRaises(InstanceInvalidState):
            await self.compute.delete(ctxt(), busy)
        for _ in range(2):
            self.clock.advance(10)
            await sleep(0.05)
        await self.settle()
        self.assertTrue((await self.get(inst.uuid, "yes")).deleted)

    async def test_clean_shutdown_takes_longer(self) -> None:
        """A clean stop waits two steps for the guest, a forced one one."""
        inst = await self.run_build()
        await self.compute.stop(ctxt(), inst, clean_shutdown=True)
        await self.next_step()
        await sleep(0.05)
        self.assertEqual((await self.get(inst.uuid)).task_state, st.POWERING_OFF)
        self.clock.advance(5)
        await self.settle()
        self.assertEqual((await self.get(inst.uuid)).vm_state, st.STOPPED)
        await self.compute.start(ctxt(), inst)
        await self.next_step()
        await self.settle()
        await self.compute.stop(ctxt(), await self.get(inst.uuid), clean_shutdown=False)
        await self.next_step()
        await self.settle()
        self.assertEqual((await self.get(inst.uuid)).vm_state, st.STOPPED)

    async def test_stop_without_cast_waits_for_the_end(self) -> None:
        """stop(do_cast=False) fires only once the instance is stopped."""
        inst = await self.run_build()
        d = self.compute.stop(ctxt(), inst, do_cast=False, clean_shutdown=False)
        await sleep(0.05)
        self.assertFalse(d.called)
        await self.next_step()
        self.assertIsNone(await d)
        self.assertEqual((await self.get(inst.uuid)).vm_state, st.STOPPED)
