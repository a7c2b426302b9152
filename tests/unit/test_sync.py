"""State sync between the owning cells and the top: generation rules,
sync_instances and the periodic heal repairing every difference in one run.

The tree of :mod:`tests.unit.cell_support` (top; c1 with g1; c2), on SQLite
and on PostgreSQL.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cellsd.compute import states as st
from cellsd.messaging import sync
from cellsd.objects import Instance
from cellsd.service import HealService
from cellsd.store.schema import instance_info_caches as caches
from cellsd.store.schema import instances
from tests.unit.cell_support import PATHS, PostgresTree, TreeCase, ctxt, new_instance

if TYPE_CHECKING:
    _Base = TreeCase
else:
    _Base = object


class SyncTests(_Base):
    def report(self, uuid: str, generation: int | None, **fields: Any) -> Instance:
        inst = Instance(uuid=uuid, user_id="u1", project_id="p1", **fields)
        if generation is not None:
            inst.generation = generation
        return inst

    async def test_generation_rules_at_the_top(self) -> None:
        """Newer reports apply, older ones are ignored (so duplicates and
        reordering are harmless), a same-generation report that differs
        repairs a drifted copy, and a report without a generation applies
        its fields without touching the generation."""
        top, uuid = self.stores["top"], str(uuidlib.uuid4())
        apply = sync.apply_instance_at_top
        path = PATHS["g1"]
        self.assertEqual(
            await apply(top, self.report(uuid, 3, vm_state="building"), path), "applied"
        )
        self.assertEqual(await apply(top, self.report(uuid, 5, vm_state="active"), path), "applied")
        self.assertEqual(await apply(top, self.report(uuid, 4, vm_state="building"), path), "stale")
        self.assertEqual(await apply(top, self.report(uuid, 5, vm_state="active"), path), "same")
        stored = await top.instance_get_by_uuid(uuid)
        self.assertEqual(
            (stored.vm_state, stored.generation, stored.cell_name), ("active", 5, path)
        )
        # Drift: the copy was changed behind our back at the same generation.
        drifted = stored.obj_clone()
        drifted.vm_state = "error"
        await top.instance_upsert_at_top(drifted)
        self.assertEqual(
            await apply(top, self.report(uuid, 5, vm_state="active"), path), "repaired"
        )
        self.assertEqual((await top.instance_get_by_uuid(uuid)).vm_state, "active")
        # An info cache update from an older cell carries no generation.
        partial = Instance(uuid=uuid, info_cache=[{"id": "vif"}])
        self.assertEqual(await apply(top, partial, path), "applied")
        stored = await top.instance_get_by_uuid(uuid)
        self.assertEqual(
            (stored.info_cache, stored.generation, stored.vm_state), ([{"id": "vif"}], 5, "active")
        )
        # A dict from an older cell, for an instance the top never saw.
        other = str(uuidlib.uuid4())
        self.assertEqual(await apply(top, {"uuid": other, "vm_state": "error"}, path), "applied")
        self.assertEqual((await top.instance_get_by_uuid(other)).vm_state, "error")

    async def test_destroy_at_top_applies_the_last_state(self) -> None:
        """A destroy report writes the owner's final fields, then deletes
        the top's copy; destroying a copy already gone is fine."""
        top, uuid = self.stores["top"], str(uuidlib.uuid4())
        await sync.apply_instance_at_top(top, self.report(uuid, 2, vm_state="active"), "top!c2")
        final = self.report(uuid, 4, vm_state="deleted", task_state=None)
        await sync.destroy_instance_at_top(top, final, "top!c2")
        gone = await top.instance_get_by_uuid(uuid, "yes")
        self.assertEqual((gone.deleted, gone.vm_state), (True, "deleted"))
        await sync.destroy_instance_at_top(top, final, "top!c2")

    async def corrupt(self, uuid: str, **values: Any) -> None:
        """Change the top's row directly in its database, as by hand."""

        def write(conn: Any) -> None:
            conn.execute(sa.update(instances).where(instances.c.uuid == uuid).values(values))

        await self.stores["top"]._run(write)

    async def drop_row(self, uuid: str) -> None:
        def delete(conn: Any) -> None:
            conn.execute(sa.delete(caches).where(caches.c.instance_uuid == uuid))
            conn.execute(sa.delete(instances).where(instances.c.uuid == uuid))

        await self.stores["top"]._run(delete)

    async def assert_copies_equal(self, owners: dict[str, str]) -> None:
        for uuid, cell in owners.items():
            own = await self.owner_copy(cell, uuid, "yes")
            mine = await self.top_copy(uuid, "yes")
            theirs = sync.as_instance(own)
            theirs.cell_name = PATHS[cell]
            self.assertEqual(sync.differences(mine, theirs), [], uuid)
            for field in ("vm_state", "task_state", "host", "display_name"):
                self.assertEqual(getattr(mine, field), getattr(own, field), (uuid, field))
            self.assertEqual(mine.cell_name, PATHS[cell])
            self.assertEqual(mine.flavor.flavorid, own.flavor.flavorid)

    async def test_sync_instances_repairs_every_difference_in_one_run(self) -> None:
        """Copies at the top corrupted by hand in different ways (states,
        host and cell_name changed; a row removed) are all repaired by one
        sync_instances from the top."""
        a, b, c = await self.build("g1"), await self.build("g1"), await self.build("c2")
        owners = {a.uuid: "g1", b.uuid: "g1", c.uuid: "c2"}
        await self.corrupt(a.uuid, vm_state="error", task_state="deleting", host="nowhere")
        await self.corrupt(b.uuid, cell_name="top!c2", display_name="wrong")
        await self.drop_row(c.uuid)
        await self.tree["top"].sync_instances(ctxt(), None, None, False)
        await self.settle()
        await self.assert_copies_equal(owners)

    async def test_sync_instances_filters(self) -> None:
        """project_id selects whose instances are reported; deleted ones
        are reported (as destroys) only when asked for."""
        mine = await self.build("g1")
        theirs = await self.build("g1", project_id="p2")
        for inst in (mine, theirs):
            await self.corrupt(inst.uuid, vm_state="error")
        await self.tree["top"].sync_instances(ctxt(), "p1", None, False)
        await self.settle()
        self.assertEqual((await self.top_copy(mine.uuid)).vm_state, st.ACTIVE)
        self.assertEqual((await self.top_copy(theirs.uuid)).vm_state, "error")
        await self.tree["top"].terminate_instance(ctxt(), await self.top_copy(theirs.uuid))
        await self.settle()
        await self.corrupt(theirs.uuid, deleted=0, vm_state="active")
        await self.tree["top"].sync_instances(ctxt(), None, None, True)
        await self.settle()
        gone = await self.top_copy(theirs.uuid, "yes")
        self.assertEqual((gone.deleted, gone.vm_state), (True, st.DELETED))

    async def test_heal_repairs_and_takes_turns(self) -> None:
        """A heal run in g1 (anti-entropy) reports the instance whose top
        copy is behind and repairs the top; a second worker sharing g1's
        store does not heal while the first holds the lease; the top has
        nothing to heal."""
        a = await self.build("g1")
        await self.corrupt(a.uuid, vm_state="error", host="nowhere", generation=0)
        first = HealService(self.tree["g1"], self.stores["g1"], self.clock, 60.0)
        second = HealService(self.tree["g1"], self.stores["g1"], self.clock, 60.0)
        self.assertEqual(await first.heal_once(), 1)
        self.assertEqual(await second.heal_once(), 0)
        top = HealService(self.tree["top"], self.stores["top"], self.clock, 60.0)
        self.assertEqual(await top.heal_once(), 0)
        await self.settle()
        await self.assert_copies_equal({a.uuid: "g1"})

    async def test_reports_carry_whole_instances(self) -> None:
        """What the owner reports up is the whole instance, so a top copy
        missing entirely is rebuilt by the next change (§8.4 #23, #24)."""
        a = await self.build("c2")
        await self.drop_row(a.uuid)
        await self.tree["top"].stop_instance(ctxt(), new_instance(a.uuid, cell_name=PATHS["c2"]))
        await self.settle()
        copy = await self.top_copy(a.uuid)
        self.assertEqual((copy.vm_state, copy.host, copy.display_name), (st.STOPPED, "host1", "vm"))


class SQLiteSyncTests(SyncTests, TreeCase):
    pass


class PostgresSyncTests(SyncTests, PostgresTree):
    pass
