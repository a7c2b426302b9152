"""Anti-entropy between an owning cell and the top (cellsd.messaging.sync):
per-project digests compared after a reconnect and on a timer, and only the
differing instances reported up.

The tree of :mod:`tests.unit.cell_support` (top; c1 with g1; c2), on
SQLite: g1's digests go up through c1, which is not the top and does not
answer. Lost updates are made by writing the owner's store directly (its
generation bumped, nothing reported), so the top never hears of them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from twisted.internet.defer import Deferred

from cellsd.compute import states as st
from cellsd.service import HealService
from cellsd.store.schema import instances
from tests.unit.cell_support import TreeCase

PERIOD = 60.0


class AntiEntropyTests(TreeCase):
    def setUp(self) -> Any:
        d = super().setUp()
        #: Instance reports sent up per cell: {cell: [(kind, uuid), ...]}.
        self.sent: dict[str, list[tuple[str, str]]] = {}
        return d

    def spy(self, cell: str) -> list[tuple[str, str]]:
        """Record the instance reports ``cell`` sends up (still sent)."""
        runner = self.tree[cell]
        sent = self.sent.setdefault(cell, [])
        for kind in ("instance_update_at_top", "instance_destroy_at_top"):
            real = getattr(runner, kind)

            def report(ctxt: Any, instance: Any, real: Any = real, kind: str = kind) -> Any:
                sent.append((kind, str(instance.uuid)))
                return real(ctxt, instance)

            self.patch(runner, kind, report)
        return sent

    def heal(self, cell: str) -> HealService:
        return HealService(self.tree[cell], self.stores[cell], self.clock, PERIOD)

    async def lose_update(self, cell: str, uuid: str, **values: Any) -> None:
        """Change the owner's row and bump its generation, reporting nothing."""
        values["generation"] = instances.c.generation + 1

        def write(conn: Any) -> None:
            conn.execute(sa.update(instances).where(instances.c.uuid == uuid).values(values))

        await self.stores[cell]._run(write)

    async def test_lost_update_is_healed_within_one_period(self) -> None:
        """An update g1 never reported (lost) reaches the top within one
        period of the running service, and only that instance is sent."""
        a = await self.build("g1")
        await self.build("g1")
        await self.lose_update("g1", a.uuid, vm_state=st.STOPPED)
        sent = self.spy("g1")
        service = self.heal("g1")
        service.startService()
        self.addCleanup(service.stopService)
        self.clock.advance(PERIOD)

        async def healed() -> None:
            copy = await self.top_copy(a.uuid)
            self.assertEqual(copy.vm_state, st.STOPPED)

        await self.eventually(healed)
        await self.settle()
        owner = await self.owner_copy("g1", a.uuid)
        self.assertEqual((await self.top_copy(a.uuid)).generation, owner.generation)
        self.assertEqual(sent, [("instance_update_at_top", a.uuid)])

    async def test_identical_state_sends_no_instance_updates(self) -> None:
        """When the top's copies match, a run in each owning cell (g1 below
        a middle cell, c2 directly below the top) reports nothing."""
        for where in ("g1", "g1", "c2"):
            await self.build(where)
        await self.build("g1", project_id="p2")
        g1, c2 = self.spy("g1"), self.spy("c2")
        self.assertEqual(await self.heal("g1").heal_once(), 0)
        self.assertEqual(await self.heal("c2").heal_once(), 0)
        await self.settle()
        self.assertEqual((g1, c2), ([], []))

    async def test_bucket_mismatch_repairs_only_the_differences(self) -> None:
        """In project p1, one update lost, one top copy behind, and one
        delete never reported; p1's other instance and all of p2 agree. One
        run sends exactly those three (two updates, one destroy) and the
        next run sends nothing."""
        lost, behind, deleted, same = [await self.build("g1") for _ in range(4)]
        other = await self.build("g1", project_id="p2")
        await self.lose_update("g1", lost.uuid, vm_state=st.STOPPED)

        def set_back(conn: Any) -> None:
            conn.execute(
                sa.update(instances).where(instances.c.uuid == behind.uuid).values(generation=0)
            )

        await self.stores["top"]._run(set_back)
        await self.stores["g1"].instance_destroy(deleted.uuid)
        sent = self.spy("g1")
        self.assertEqual(await self.heal("g1").heal_once(), 3)
        await self.settle()
        self.assertEqual(
            sorted(sent),
            sorted(
                [
                    ("instance_update_at_top", lost.uuid),
                    ("instance_update_at_top", behind.uuid),
                    ("instance_destroy_at_top", deleted.uuid),
                ]
            ),
        )
        self.assertNotIn(same.uuid, {u for _, u in sent})
        self.assertNotIn(other.uuid, {u for _, u in sent})
        self.assertEqual((await self.top_copy(lost.uuid)).vm_state, st.STOPPED)
        self.assertTrue((await self.top_copy(deleted.uuid, "yes")).deleted)
        owner = await self.owner_copy("g1", behind.uuid)
        self.assertEqual((await self.top_copy(behind.uuid)).generation, owner.generation)
        del sent[:]
        self.assertEqual(await self.heal("g1").heal_once(), 0)
        self.assertEqual(sent, [])

    async def test_reconnect_to_a_parent_runs_the_exchange_at_once(self) -> None:
        """A link to a parent coming up (the link-up observer) heals at once,
        before any period passed and even while another worker holds the
        timer's lease; a child's link coming up does nothing."""
        a = await self.build("c2")
        await self.lose_update("c2", a.uuid, vm_state=st.STOPPED)
        holder = self.heal("c2")
        self.assertEqual(await holder.heal_once(), 1)  # takes the lease
        await self.settle()
        await self.lose_update("c2", a.uuid, vm_state=st.ACTIVE)
        sent = self.spy("c2")
        service = self.heal("c2")
        self.assertEqual(await service.heal_once(), 0)  # the lease is held
        self.assertIsNone(service.link_up("g9", False))
        d = service.link_up("top", True)
        assert d is not None
        self.assertEqual(await d, 1)
        await self.settle()
        self.assertEqual(sent, [("instance_update_at_top", a.uuid)])
        self.assertEqual((await self.top_copy(a.uuid)).vm_state, st.ACTIVE)

    async def test_link_up_before_the_store_is_ready_waits_for_it(self) -> None:
        """A parent link that comes up while the store is still starting
        (daemon start-up) runs the exchange once the store is ready."""
        a = await self.build("c2")
        await self.lose_update("c2", a.uuid, vm_state=st.STOPPED)
        sent = self.spy("c2")
        ready: Deferred[None] = Deferred()
        service = HealService(self.tree["c2"], self.stores["c2"], self.clock, PERIOD, ready)
        d = service.link_up("top", True)
        assert d is not None
        self.assertFalse(d.called)
        self.assertEqual(sent, [])
        ready.callback(None)
        self.assertEqual(await d, 1)
        await self.settle()
        self.assertEqual((await self.top_copy(a.uuid)).vm_state, st.STOPPED)
