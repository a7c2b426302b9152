"""Durable delivery of ``*_at_top`` messages (cellsd.messaging.outbox).

The tree of :mod:`tests.unit.cell_support` (top; c1 with g1; c2) on SQLite,
each cell with an Outbox in its store as in the daemon. Faults are injected
in the memory network (a cell down, frames duplicated), in a sender's store
(a confirmation that is lost) and in the top's store (an apply that fails).
What a user sees is the top's copy of each instance and its faults.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from sqlalchemy.exc import OperationalError

from cellsd.compute import states as st
from cellsd.errors import CellsError, OutboxFull, StoreUnavailable
from cellsd.messaging.outbox import RETRY_MAX_DELAY, Outbox, ordering_key
from cellsd.objects import BlockDeviceMapping, Instance, InstanceFault
from tests.unit.cell_support import TreeCase, ctxt, sleep


class OutboxTests(TreeCase):
    async def update_at(self, where: str, uuid: str, **values: Any) -> Instance:
        """Change the owner's copy (its generation goes up) and report it up,
        as the compute does; fires once the report is accepted."""
        inst: Instance = await self.stores[where].instance_update(uuid, values)
        await self.tree[where].instance_update_at_top(ctxt(), inst)
        return inst

    def waiting(self, where: str) -> int:
        return self.tree.outboxes[where].depth()

    def retry(self) -> None:
        """Let every outbox's back-off run out."""
        self.clock.advance(RETRY_MAX_DELAY)

    async def faults_at_top(self, uuid: str) -> list[Any]:
        found = await self.stores["top"].instance_fault_get_by_instance_uuids([uuid])
        return list(found.get(uuid, []))

    async def test_an_update_travels_through_the_middle_cell_and_leaves_no_trace(self) -> None:
        """No fault: g1's report is queued at g1, then at c1, applied at the
        top, and both outboxes are empty again."""
        inst = await self.build("g1")
        await self.update_at("g1", inst.uuid, vm_state=st.STOPPED)
        await self.settle()
        self.assertEqual((await self.top_copy(inst.uuid)).vm_state, st.STOPPED)
        self.assertEqual((self.waiting("g1"), self.waiting("c1")), (0, 0))
        self.assertEqual(await self.stores["g1"].outbox_counts(), {})
        self.assertEqual(await self.stores["c1"].outbox_counts(), {})

    async def test_updates_made_while_the_parent_is_down_arrive_after_it_is_back(self) -> None:
        """Injected: c1 (g1's parent) is down while g1 changes an instance
        five times and reports a fault. The reports are kept in g1's store
        (five plus one waiting), the top is unchanged; once c1 is back the
        top converges to g1's state with exactly one fault."""
        inst = await self.build("g1")
        self.tree.network.down.add("c1")
        states = [st.STOPPED, st.ACTIVE, st.STOPPED, st.ACTIVE, st.STOPPED]
        for state in states:
            last = await self.update_at("g1", inst.uuid, vm_state=state)
        fault = InstanceFault(instance_uuid=inst.uuid, code=500, message="disk", details="")
        await self.tree["g1"].instance_fault_create_at_top(ctxt(), fault.to_dict())
        await self.settle()
        self.assertEqual(self.waiting("g1"), 6)
        self.assertEqual((await self.top_copy(inst.uuid)).vm_state, st.ACTIVE)
        self.tree.network.down.discard("c1")
        self.retry()
        await self.settle()
        top = await self.top_copy(inst.uuid)
        self.assertEqual((top.vm_state, top.generation), (st.STOPPED, last.generation))
        self.assertEqual(len(await self.faults_at_top(inst.uuid)), 1)
        self.assertEqual((self.waiting("g1"), self.waiting("c1")), (0, 0))

    async def test_a_lost_confirmation_resends_and_the_top_applies_once(self) -> None:
        """Injected: c1's store fails to delete the first message the top
        confirmed (as if the confirmation were lost), so c1 sends it again.
        The top drops the resend by its uuid: one fault, not two."""
        inst = await self.build("g1")
        store = self.stores["c1"]
        real = store.outbox_confirm
        lost: list[int] = []

        def lose_first(entry_id: int) -> Any:
            if not lost:
                lost.append(entry_id)
                raise OperationalError("DELETE", {}, Exception("injected"))
            return real(entry_id)

        self.patch(store, "outbox_confirm", lose_first)
        fault = InstanceFault(instance_uuid=inst.uuid, code=500, message="once", details="")
        await self.tree["g1"].instance_fault_create_at_top(ctxt(), fault.to_dict())
        await self.settle()
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.waiting("c1"), 1)
        self.retry()
        await self.settle()
        self.assertEqual(self.waiting("c1"), 0)
        self.assertEqual([f.message for f in await self.faults_at_top(inst.uuid)], ["once"])
        self.assertGreaterEqual(self.tree.outboxes["top"].stats["duplicates"], 1)

    async def test_every_frame_duplicated_applies_each_report_once(self) -> None:
        """Injected: every frame to c1 and to the top is delivered twice.
        Each of three faults is stored once at the top."""
        inst = await self.build("g1")
        self.tree.network.duplicates.update({"c1", "top"})
        for n in range(3):
            fault = InstanceFault(instance_uuid=inst.uuid, code=500, message=f"f{n}", details="")
            await self.tree["g1"].instance_fault_create_at_top(ctxt(), fault.to_dict())
        await self.settle()
        self.clock.advance(1)
        await self.settle()
        messages = sorted(f.message for f in await self.faults_at_top(inst.uuid))
        self.assertEqual(messages, ["f0", "f1", "f2"])

    async def test_a_failed_apply_at_the_top_is_kept_and_retried(self) -> None:
        """Injected: the top's store fails once (a database error) while
        applying an update. The middle cell keeps the message (not
        confirmed) and the retry applies it."""
        await self.apply_fails_once(OperationalError("UPDATE", {}, Exception("database is locked")))
        self.flushLoggedErrors(OperationalError)

    async def test_a_top_whose_store_is_unavailable_is_retried(self) -> None:
        """Injected: the top's store is unavailable once (StoreUnavailable,
        a typed error, but not the message's fault). The message is kept
        and applied by the retry, not confirmed and lost."""
        await self.apply_fails_once(StoreUnavailable(reason="it was stopped"))

    async def apply_fails_once(self, error: Exception) -> None:
        inst = await self.build("g1")
        store = self.stores["top"]
        real = store.instance_apply_update
        failures: list[str] = []

        def fail_once(instance: Any, *args: Any) -> Any:
            if not failures:
                failures.append(str(instance.uuid))
                raise error
            return real(instance, *args)

        self.patch(store, "instance_apply_update", fail_once)
        await self.update_at("g1", inst.uuid, vm_state=st.STOPPED)
        await self.settle()
        self.assertEqual(failures, [inst.uuid])
        self.assertEqual(self.waiting("c1"), 1)
        self.assertEqual((await self.top_copy(inst.uuid)).vm_state, st.ACTIVE)
        self.retry()
        await self.settle()
        self.assertEqual((await self.top_copy(inst.uuid)).vm_state, st.STOPPED)
        self.assertEqual(self.waiting("c1"), 0)

    async def test_what_was_queued_is_sent_after_a_restart(self) -> None:
        """Injected: g1 is restarted (a new Outbox on the same store) while
        its parent is down and two reports wait. The new outbox counts them
        at start and sends them once the parent is back."""
        inst = await self.build("g1")
        self.tree.network.down.add("c1")
        await self.update_at("g1", inst.uuid, vm_state=st.STOPPED)
        fault = InstanceFault(instance_uuid=inst.uuid, code=500, message="kept", details="")
        await self.tree["g1"].instance_fault_create_at_top(ctxt(), fault.to_dict())
        await self.settle()
        old = self.tree.outboxes["g1"]
        old.stop()
        runner = self.tree["g1"]
        new = Outbox(self.stores["g1"], runner.state, runner.links, self.clock)
        runner.outbox = self.tree.outboxes["g1"] = new
        await new.start()
        self.addCleanup(new.stop)
        self.assertEqual(new.depths, {"c1": 2})
        self.tree.network.down.discard("c1")
        self.retry()
        await self.settle()
        self.assertEqual((await self.top_copy(inst.uuid)).vm_state, st.STOPPED)
        self.assertEqual([f.message for f in await self.faults_at_top(inst.uuid)], ["kept"])
        self.assertEqual(new.depth(), 0)

    def restarted_outbox(self, where: str) -> Outbox:
        """A new, not yet started Outbox for ``where`` on the same store, as
        in a restarted cell whose store is still being opened."""
        self.tree.outboxes[where].stop()
        runner = self.tree[where]
        new = Outbox(self.stores[where], runner.state, runner.links, self.clock)
        runner.outbox = self.tree.outboxes[where] = new
        self.addCleanup(new.stop)
        return new

    async def test_a_report_accepted_before_the_start_waits_for_it(self) -> None:
        """Injected: g1 restarted and its local API takes a report before
        the outbox has started (the store was still being opened: the
        caller used to get a RuntimeError). The report waits: it is
        accepted once the outbox starts, counted once, and reaches the top."""
        inst = await self.build("g1")
        new = self.restarted_outbox("g1")
        accepted: list[None] = []
        fault = InstanceFault(instance_uuid=inst.uuid, code=500, message="early", details="")
        d = self.tree["g1"].instance_fault_create_at_top(ctxt(), fault.to_dict())
        d.addCallback(accepted.append)
        self.clock.advance(1)
        self.assertEqual(accepted, [])
        self.assertEqual(await self.stores["g1"].outbox_counts(), {})
        await new.start()
        await d
        self.assertEqual(len(accepted), 1)
        self.assertEqual(new.stats["queued"], 1)
        self.retry()
        await self.settle()
        self.assertEqual([f.message for f in await self.faults_at_top(inst.uuid)], ["early"])
        self.assertEqual(new.depth(), 0)

    async def test_a_report_waiting_for_a_start_that_never_comes_fails_clearly(self) -> None:
        """Injected: g1 is stopped before its outbox ever started (its store
        could not be opened). A report waiting for the start fails with a
        CellsError saying the message was not stored, not a hang."""
        inst = await self.build("g1")
        new = self.restarted_outbox("g1")
        fault = InstanceFault(instance_uuid=inst.uuid, code=500, message="never", details="")
        d = self.tree["g1"].instance_fault_create_at_top(ctxt(), fault.to_dict())
        new.stop()
        with self.assertRaises(CellsError) as caught:
            await d
        self.assertIn("not stored", str(caught.exception))
        self.assertIn("g1", str(caught.exception))
        await new.when_idle()

    async def test_a_full_outbox_refuses_with_an_error_naming_the_limit(self) -> None:
        """Injected: c1 is down and g1's outbox holds at most two messages.
        The third report fails with OutboxFull (the caller hears it); the two
        accepted ones still reach the top once c1 is back."""
        inst = await self.build("g1")
        self.tree.outboxes["g1"].limit = 2
        self.tree.network.down.add("c1")
        await self.update_at("g1", inst.uuid, vm_state=st.STOPPED)
        fault = InstanceFault(instance_uuid=inst.uuid, code=500, message="kept", details="")
        await self.tree["g1"].instance_fault_create_at_top(ctxt(), fault.to_dict())
        with self.assertRaises(OutboxFull) as caught:
            await self.update_at("g1", inst.uuid, vm_state=st.ACTIVE)
        message = str(caught.exception)
        self.assertIn("limit 2", message)
        self.assertIn("instance_update_at_top", message)
        self.assertEqual(self.tree.outboxes["g1"].stats["refused_full"], 1)
        self.tree.network.down.discard("c1")
        self.retry()
        await self.settle()
        self.assertEqual((await self.top_copy(inst.uuid)).vm_state, st.STOPPED)
        self.assertEqual(len(await self.faults_at_top(inst.uuid)), 1)

    async def test_status_says_what_waits_and_why(self) -> None:
        """An operator reading the outbox's status while c1 is down sees the
        count and the reason the last send failed."""
        inst = await self.build("g1")
        self.tree.network.down.add("c1")
        await self.update_at("g1", inst.uuid, vm_state=st.STOPPED)
        await self.settle()
        status = self.tree.outboxes["g1"].status()
        self.assertEqual(status["waiting"], {"c1": 1})
        self.assertIn("c1", status["last_errors"]["c1"])

    async def test_the_outbox_depth_and_limit_are_metrics(self) -> None:
        """While c1 is down, g1's /metrics shows one message waiting for c1
        and the limit; after c1 is back, none and one confirmed."""
        from types import SimpleNamespace

        from cellsd.ops.metrics import CellMetrics

        runner = self.tree["g1"]
        parts = SimpleNamespace(runner=runner, state=runner.state, links=runner.links)
        metrics = CellMetrics(parts, failures_kept=3, wall=lambda: 1000.0)

        def value(name: str, **labels: str) -> float | None:
            return metrics.registry.get_sample_value(name, labels)

        inst = await self.build("g1")
        confirmed = value("cellsd_outbox_confirmed_total") or 0.0
        self.tree.network.down.add("c1")
        await self.update_at("g1", inst.uuid, vm_state=st.STOPPED)
        await self.settle()
        self.assertEqual(value("cellsd_outbox_messages", neighbour="c1"), 1)
        self.assertEqual(value("cellsd_outbox_limit"), self.tree.outboxes["g1"].limit)
        self.tree.network.down.discard("c1")
        self.retry()
        await self.settle()
        self.assertEqual(value("cellsd_outbox_messages", neighbour="c1"), 0)
        self.assertEqual(value("cellsd_outbox_confirmed_total"), confirmed + 1)

    async def test_a_fault_reported_twice_under_two_uuids_is_recorded_once(self) -> None:
        """Injected: the same fault (as the owner recorded it, with its
        creation time) is reported twice as two messages, as when the top
        applied it and crashed before recording the message's uuid. The top
        recognises it and keeps one; a different fault is still recorded."""
        inst = await self.build("g1")
        fault = await self.stores["g1"].instance_fault_create(
            InstanceFault(instance_uuid=inst.uuid, code=500, message="disk", details="")
        )
        for _ in range(2):
            await self.tree["g1"].instance_fault_create_at_top(ctxt(), fault.to_dict())
        other = InstanceFault(instance_uuid=inst.uuid, code=500, message="net", details="")
        await self.tree["g1"].instance_fault_create_at_top(ctxt(), other.to_dict())
        await self.settle()
        messages = sorted(f.message for f in await self.faults_at_top(inst.uuid))
        self.assertEqual(messages, ["disk", "net"])

    async def test_updates_without_generations_keep_their_order(self) -> None:
        """Injected: every frame to c1 and to the top is delayed by a random
        0-1 s, which reorders them. Eight updates of one block device
        mapping (no generation to order them by) are applied at the top in
        the order g1 accepted them: the last size wins."""
        uuid = str(uuidlib.uuid4())
        bdm = BlockDeviceMapping(
            uuid=str(uuidlib.uuid4()),
            instance_uuid=uuid,
            device_name="/dev/vdb",
            volume_id="v1",
            source_type="volume",
        )
        g1 = self.tree["g1"]
        await g1.bdm_update_or_create_at_top(ctxt(), bdm, create=True)
        await self.settle()
        self.tree.network.jitter.update({"c1": 1.0, "top": 1.0})
        for size in range(1, 9):
            await g1.bdm_update_or_create_at_top(
                ctxt(), {**bdm.to_dict(), "volume_size": size}, create=None
            )
        for _ in range(200):
            self.clock.advance(0.25)
            await sleep(0.005)
            if not any(o.depth() or o.busy for o in self.tree.outboxes.values()):
                break
        await self.settle()
        (found,) = await self.stores["top"].bdm_get_all_by_instance(uuid)
        self.assertEqual(found.volume_size, 8)

    def test_ordering_keys(self) -> None:
        """Block device mappings by instance, faults by instance, bandwidth
        by interface; instance reports (they have generations) none."""
        from cellsd.messaging.message import BROADCAST, build_message

        def key(method: str, **kwargs: Any) -> str | None:
            msg = build_message(ctxt(), BROADCAST, method, kwargs, "up", "g1", 10)
            return ordering_key(method, msg.body.to_bytes())

        bdm = BlockDeviceMapping(instance_uuid="i-1", volume_size=1)
        self.assertEqual(key("bdm_update_or_create_at_top", bdm=bdm, create=None), "bdm:i-1")
        self.assertEqual(
            key("bdm_update_or_create_at_top", bdm={"instance_uuid": "i-1"}), "bdm:i-1"
        )
        self.assertEqual(key("bdm_destroy_at_top", instance_uuid="i-1"), "bdm:i-1")
        fault = {"instance_uuid": "i-2", "code": 500}
        self.assertEqual(key("instance_fault_create_at_top", instance_fault=fault), "fault:i-2")
        info = {"uuid": "i-3", "mac": "aa"}
        self.assertEqual(key("bw_usage_update_at_top", bw_update_info=info), "bw:i-3:aa")
        self.assertIsNone(key("instance_update_at_top", instance=Instance(uuid="i-4")))
