"""A partition in the middle of a broadcast that changes state (issue 7,
item 6), in memory: what the caller is told per cell, and that a re-run
after the partition heals applies the change once in every cell.

The tree of :mod:`tests.unit.cell_support` (top; c1 with g1; c2), each cell
with its SQLite store, the leaves g1 and c2 with simulated hosts. The caller
is a CellsAPI served by the top's CellsManager; the state-changing
broadcast is ``instance_delete_everywhere`` in its call form
(``instance_delete_everywhere_outcomes``, local RPC 1.39), which answers one
``{"cell", "outcome", "error"}`` row per cell.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from cellsd.compute import states as st
from cellsd.errors import CellOutcomeUnknown, CellTimeout, CellUnreachable
from cellsd.messaging.message import FAILED, OK, UNKNOWN, UNREACHABLE, Response
from cellsd.rpc.manager import CellsManager
from cellsd.service import HealService
from cellsd.testing import memory_api
from tests.unit.cell_support import TreeCase, ctxt


def rows_by_cell(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["cell"]: r["outcome"] for r in rows}


class OutcomeTests(SynchronousTestCase):
    def test_outcome_of_each_failure(self) -> None:
        """Response.outcome: an answer is ok; CellUnreachable (never sent)
        is unreachable; CellOutcomeUnknown (sent, link lost) and
        CellTimeout (sent, no answer in time) are unknown; any other error
        is failed."""
        cases = {
            OK: Response("a", 1),
            UNREACHABLE: Response.from_failure("a", CellUnreachable(cell_name="a", reason="x")),
            UNKNOWN: Response.from_failure("a", CellOutcomeUnknown(cell_name="a", reason="x")),
            FAILED: Response.from_failure("a", ValueError("x")),
        }
        for outcome, response in cases.items():
            self.assertEqual(response.outcome, outcome)
        timeout = Response.from_failure("a", CellTimeout(cell_name="a"))
        self.assertEqual(timeout.outcome, UNKNOWN)
        # Rebuilt from the wire (a _Remote subclass): the same outcome.
        wire = Response.from_dict(cases[UNKNOWN].to_dict())
        self.assertEqual(wire.outcome, UNKNOWN)


class PartitionMidBroadcastTests(TreeCase):
    async def delete_actions(self, cell: str, uuid: str) -> int:
        found = await self.stores[cell].actions_get(uuid)
        return sum(1 for a in found if a.action == "delete")

    async def test_partition_mid_broadcast_then_rerun_applies_once(self) -> None:
        """Injected: instance A lives in c2, instance B in g1 (below c1).
        Frames to c1 take 1 s. Two deletes-everywhere (A and B) are sent;
        c2 has received both and is applying them when the top-c2 link is
        cut; the c1-g1 link is cut before c1 (still waiting for its frames)
        can forward them.

        Seen: each call answers at once with c1 ok, g1 unreachable (never
        reached) and c2 unknown (sent, answer lost): A was deleted in c2
        meanwhile, B is untouched. After the links heal, the same two calls
        answer ok in every cell; A was deleted once (c2 did not delete it
        again), B once; the top, after the owners' anti-entropy run that
        follows a reconnect, holds both as deleted."""
        a = await self.build("c2")
        b = await self.build("g1")
        api = memory_api(CellsManager(self.tree["top"], self.tree["top"].state, self.clock))
        net = self.tree.network
        net.delays["c1"] = 1.0
        received = self.tree["c2"].stats["received"]

        calls = [
            api.instance_delete_everywhere_outcomes(ctxt(), {"uuid": i.uuid}, "hard")
            for i in (a, b)
        ]
        # Both broadcasts reached c2 (it is applying them): sent, unanswered.
        self.assertEqual(self.tree["c2"].stats["received"], received + 2)
        net.cut("top", "c2")
        net.cut("c1", "g1")
        self.clock.advance(1.0)  # c1 gets its frames now; g1 is cut off
        first = [rows_by_cell(await d) for d in calls]
        expected = {"top!c1": OK, "top!c1!g1": UNREACHABLE, "top!c2": UNKNOWN}
        self.assertEqual(first, [expected, expected])
        await self.settle()
        # The unknown outcome was in fact applied in c2; unreachable was not.
        gone = await self.owner_copy("c2", a.uuid, read_deleted="yes")
        self.assertEqual(gone.vm_state, st.DELETED)
        self.assertEqual((await self.owner_copy("g1", b.uuid)).vm_state, st.ACTIVE)

        net.heal("top", "c2")
        net.heal("c1", "g1")
        net.delays.clear()
        again = [
            await api.instance_delete_everywhere_outcomes(ctxt(), {"uuid": i.uuid}, "hard")
            for i in (a, b)
        ]
        everywhere_ok = {"top!c1": OK, "top!c1!g1": OK, "top!c2": OK}
        self.assertEqual([rows_by_cell(r) for r in again], [everywhere_ok, everywhere_ok])
        self.assertTrue(all(r["error"] is None for rows in again for r in rows))
        await self.settle()
        self.assertEqual(await self.delete_actions("c2", a.uuid), 1)
        self.assertEqual(await self.delete_actions("g1", b.uuid), 1)
        gone = await self.owner_copy("g1", b.uuid, read_deleted="yes")
        self.assertEqual(gone.vm_state, st.DELETED)

        # The owners' reports that the partition may have lost: anti-entropy
        # runs after a reconnect, and the top converges.
        for cell in ("c2", "g1"):
            await HealService(self.tree[cell], self.stores[cell], self.clock, 60).heal_once(
                lease=False
            )
        await self.settle()
        for inst in (a, b):
            copy = await self.top_copy(inst.uuid, read_deleted="yes")
            self.assertEqual(copy.vm_state, st.DELETED)
            self.assertTrue(copy.deleted)

    async def test_link_cut_after_send_is_unknown_not_unreachable(self) -> None:
        """Injected: frames to c2 take 1 s; the top-c2 link is cut 0.5 s
        after a delete-everywhere was sent (the frame is lost with the
        link). Seen: c2's row is unknown, not unreachable, since the top
        cannot tell the frame never arrived; nothing was deleted, and a
        re-run after healing deletes the instance once."""
        a = await self.build("c2")
        api = memory_api(CellsManager(self.tree["top"], self.tree["top"].state, self.clock))
        net = self.tree.network
        net.delays["c2"] = 1.0
        d = api.instance_delete_everywhere_outcomes(ctxt(), {"uuid": a.uuid}, "hard")
        self.clock.advance(0.5)
        net.cut("top", "c2")
        self.clock.advance(1.0)
        rows = await d
        self.assertEqual(rows_by_cell(rows)["top!c2"], UNKNOWN)
        row = next(r for r in rows if r["cell"] == "top!c2")
        self.assertTrue(row["error"].startswith("CellOutcomeUnknown: "), row)
        self.assertIn("may or may not have been applied", row["error"])
        await self.settle()
        self.assertEqual((await self.owner_copy("c2", a.uuid)).vm_state, st.ACTIVE)

        net.heal("top", "c2")
        net.delays.clear()
        rows = await api.instance_delete_everywhere_outcomes(ctxt(), {"uuid": a.uuid}, "hard")
        self.assertEqual(set(rows_by_cell(rows).values()), {OK})
        await self.settle()
        self.assertEqual(await self.delete_actions("c2", a.uuid), 1)


class SyncOutcomesTests(TreeCase):
    async def test_sync_instances_outcomes_under_partition(self) -> None:
        """Injected: the c1-g1 link is cut. Seen: sync_instances_outcomes
        answers c1 and c2 ok and g1 unreachable; after healing, every row
        is ok."""
        await self.build("g1")
        api = memory_api(CellsManager(self.tree["top"], self.tree["top"].state, self.clock))
        self.tree.network.cut("c1", "g1")
        rows = await api.sync_instances_outcomes(ctxt(), "p1")
        self.assertEqual(rows_by_cell(rows), {"top!c1": OK, "top!c1!g1": UNREACHABLE, "top!c2": OK})
        self.tree.network.heal("c1", "g1")
        rows = await api.sync_instances_outcomes(ctxt(), "p1")
        self.assertEqual(set(rows_by_cell(rows).values()), {OK})
        await self.settle()
