"""Clocks skewed by ten minutes between cells (issue 7, item 6), in memory.

The tree of :mod:`tests.unit.cell_support` (top; c1 with g1; c2), each cell
with its SQLite store, the leaves with simulated hosts; every cell reads
its own clock, a :class:`~cellsd.testing_faults.SkewedClock` of the test's
task.Clock: top on time, c1 ten minutes ahead, g1 and c2 ten minutes
behind (so g1 is twenty minutes behind its parent c1). The network's
delays and deadlines run on the test's clock.

What the tests establish: deadlines travel as time left (relative), so no
hop expires a message early or waits past its caller; mute detection
measures the gap between reports on the receiving cell's own clock; the
top applies instance reports by generation, never by timestamp; and the
two places where one cell's timestamps meet another cell's clock were
fixed: certificates now start an hour before they are issued (the CA's
clock may run ahead), and ``sync_instances`` looks 15 minutes further back
than the caller's ``updated_since`` (the owner's ``updated_at`` comes from
its own clock).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cellsd import pki
from cellsd.compute import states as st
from cellsd.errors import CellTimeout
from cellsd.links.tls import load_tls
from cellsd.messaging.routing import DOWN, UP
from cellsd.messaging.sync import SYNC_CLOCK_SKEW, sync_filters
from cellsd.service import HealService
from cellsd.store.schema import instances
from cellsd.testing import MemoryTree, leaf_hosts
from cellsd.testing_faults import SkewedClock
from tests.unit.cell_support import SMALL_TREE, TreeCase, ctxt
from tests.unit.links_pki import connect_link

SKEW = 600.0
OFFSETS = {"top": 0.0, "c1": SKEW, "g1": -SKEW, "c2": -SKEW}
CALL_TIMEOUT = 10.0


class SkewedTreeCase(TreeCase):
    """TreeCase with a clock of its own per cell (OFFSETS)."""

    async def _set_up(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.clocks = {n: SkewedClock(self.clock, off) for n, off in OFFSETS.items()}
        self.tree = MemoryTree(
            self.clock,
            SMALL_TREE,
            call_timeout=CALL_TIMEOUT,
            store_url=self.store_url,
            reactor=reactor,
            hosts=leaf_hosts(SMALL_TREE),
            compute_options=self.compute_options,
            scheduler_settings=self.scheduler_settings,
            clocks=self.clocks,
        )
        self.stores = self.tree.stores
        self.computes = self.tree.computes
        await self.tree.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(self._stop_tree()))
        for name in self.tree.runners:
            self.tree[name].state.refresh_my_capacities()
        for name in ("g1", "c1", "c2"):
            await self.tree[name].tell_parents_our_capacities(ctxt())

    async def answered_at(self, d: Deferred[Any], limit: float = 100.0) -> tuple[Any, float]:
        """Advance the test's clock in 0.5 s steps (letting store threads
        run) until ``d`` fires: its result and how many seconds passed."""
        start = self.clock.seconds()
        while not d.called:
            self.assertLess(self.clock.seconds() - start, limit, "no answer: a hang")
            await task.deferLater(reactor, 0.005, lambda: None)
            self.clock.advance(0.5)
        return await d, self.clock.seconds() - start


class DeadlineTests(SkewedTreeCase):
    async def test_calls_succeed_across_skewed_cells(self) -> None:
        """Injected: the skews above. Seen: a broadcast from the top
        answers ok for all four cells; a targeted call from g1 (twenty
        minutes behind c1, ten behind the top) to the top answers ok; a
        broadcast up from g1 answers for c1 and the top."""
        responses, _ = await self.answered_at(
            self.tree["top"].send_broadcast(ctxt(), "ping", {}, DOWN, need_response=True)
        )
        self.assertEqual(
            {r.cell_name: r.failure for r in responses},
            {"top": False, "top!c1": False, "top!c1!g1": False, "top!c2": False},
        )
        g1 = self.tree["g1"]
        response, _ = await self.answered_at(
            g1.send_targeted(ctxt(), "g1!c1!top", "ping", {}, UP, need_response=True)
        )
        self.assertFalse(response.failure, response.value)
        responses, _ = await self.answered_at(
            g1.send_broadcast(ctxt(), "ping", {}, UP, need_response=True, run_locally=False)
        )
        self.assertEqual({r.cell_name for r in responses if not r.failure}, {"g1!c1", "g1!c1!top"})

    async def test_deadline_is_time_left_not_a_clock_reading(self) -> None:
        """Injected: g1 answers 30 s late. Seen: the top's broadcast
        answers after at most its 10 s deadline of real time (not 10 s plus
        or minus the 600 s skew), with g1 a CellTimeout and the others ok:
        each hop counted the time left on its own clock."""
        self.tree.network.delays["g1"] = 30.0
        responses, seconds = await self.answered_at(
            self.tree["top"].send_broadcast(ctxt(), "ping", {}, DOWN, need_response=True)
        )
        rows = {r.cell_name: r for r in responses}
        self.assertIsInstance(rows["top!c1!g1"].value, CellTimeout)
        self.assertEqual(sum(r.failure for r in responses), 1)
        self.assertLessEqual(seconds, CALL_TIMEOUT)
        self.assertGreater(seconds, CALL_TIMEOUT * 0.8)  # waited, did not expire at once


class MuteTests(SkewedTreeCase):
    async def test_no_child_is_wrongly_mute(self) -> None:
        """Injected: the skews above; each cell reports its capacities every
        60 s of its own clock (as [cells] update_interval does). Seen over
        twenty minutes: neither the top nor c1 ever marks a child mute
        (mute after 300 s without a report), and each child's last-seen age
        stays within one period. Positive control: once g1 stops
        reporting, c1 marks it mute after 300 s."""
        loops: dict[str, task.LoopingCall] = {}

        def stop_loops() -> None:
            for loop in loops.values():
                if loop.running:
                    loop.stop()

        self.addCleanup(stop_loops)
        for name in ("g1", "c1", "c2"):
            runner = self.tree[name]
            loop = loops[name] = task.LoopingCall(runner.tell_parents_our_capacities, ctxt())
            loop.clock = self.clocks[name]
            loop.start(60.0, now=True)
        top, c1 = self.tree["top"].state, self.tree["c1"].state
        watched = [(top, "c1"), (top, "c2"), (c1, "g1")]
        for _ in range(240):  # twenty minutes in 5 s steps
            self.clock.advance(5)
            for state, child in watched:
                cell = state.get_child_cell(child)
                assert cell is not None
                self.assertFalse(state.is_mute(cell), f"{child} wrongly mute")
                age = state.last_seen_age(cell)
                assert age is not None
                self.assertTrue(0 <= age <= 60, (child, age))
        loops["g1"].stop()
        self.clock.advance(301)
        g1 = c1.get_child_cell("g1")
        assert g1 is not None
        self.assertTrue(c1.is_mute(g1))


class ConvergenceTests(SkewedTreeCase):
    async def build_at(self, where: str) -> str:
        return str((await self.build(where)).uuid)

    async def test_updates_converge_at_the_top(self) -> None:
        """Injected: the skews above. Seen: instances built in g1 and c2
        are active at the top; stopping each at its owner reaches the top;
        an update c2 never reported is repaired by anti-entropy (generation
        by generation, timestamps never compared)."""
        in_g1, in_c2 = await self.build_at("g1"), await self.build_at("c2")
        for uuid in (in_g1, in_c2):
            self.assertEqual((await self.top_copy(uuid)).vm_state, st.ACTIVE)
        for where, uuid in (("g1", in_g1), ("c2", in_c2)):
            await self.computes[where].stop(ctxt(), await self.owner_copy(where, uuid))
        await self.settle()

        async def stopped() -> None:
            for uuid in (in_g1, in_c2):
                self.assertEqual((await self.top_copy(uuid)).vm_state, st.STOPPED)

        await self.eventually(stopped)

        def lose(conn: Any) -> None:
            conn.execute(
                sa.update(instances)
                .where(instances.c.uuid == in_c2)
                .values(display_name="renamed", generation=instances.c.generation + 1)
            )

        await self.stores["c2"]._run(lose)
        heal = HealService(self.tree["c2"], self.stores["c2"], self.clocks["c2"], 60)
        self.assertEqual(await heal.heal_once(lease=False), 1)
        await self.settle()

        async def renamed() -> None:
            self.assertEqual((await self.top_copy(in_c2)).display_name, "renamed")

        await self.eventually(renamed)

    async def test_sync_instances_tolerates_an_owner_clock_behind(self) -> None:
        """Injected: an instance in g1 changed without being reported, its
        row stamped by a clock ten minutes behind the caller's (updated_at
        ten minutes ago); the caller asks sync_instances for what changed
        in the last two minutes of its own clock. Seen: g1 reports it all
        the same and the top converges, since the owner looks
        SYNC_CLOCK_SKEW further back."""
        uuid = await self.build_at("g1")
        now = datetime.datetime.now(datetime.UTC)

        def change(conn: Any) -> None:
            conn.execute(
                sa.update(instances)
                .where(instances.c.uuid == uuid)
                .values(
                    display_name="changed",
                    generation=instances.c.generation + 1,
                    updated_at=now - datetime.timedelta(seconds=SKEW),
                )
            )

        await self.stores["g1"]._run(change)
        since = (now - datetime.timedelta(minutes=2)).isoformat()
        await self.tree["top"].sync_instances(ctxt(), None, since, False)
        await self.settle()

        async def changed() -> None:
            self.assertEqual((await self.top_copy(uuid)).display_name, "changed")

        await self.eventually(changed)


class SyncFilterTests(SynchronousTestCase):
    def test_updated_since_moved_back_by_the_skew_margin(self) -> None:
        """sync_filters moves ``updated_since`` SYNC_CLOCK_SKEW earlier
        (string or datetime) and leaves no filter when there is none."""
        since = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
        for given in (since, since.isoformat()):
            filters = sync_filters("p1", given, False)
            self.assertEqual(filters["changes-since"], since - SYNC_CLOCK_SKEW)
        self.assertGreater(SYNC_CLOCK_SKEW, datetime.timedelta(seconds=SKEW))
        self.assertNotIn("changes-since", sync_filters(None, None, False))


class CertificateSkewTests(SynchronousTestCase):
    def test_certificates_from_a_ca_ten_minutes_ahead_work_at_once(self) -> None:
        """Injected: the CA's clock is ten minutes ahead when it makes
        itself and the certificates of api and child1. Seen: both are valid
        by this clock right away (they start pki.CLOCK_SKEW, an hour,
        before the CA's now) and the two cells link up over TLS."""
        base = Path(self.mktemp())
        ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=SKEW)
        pki.init_ca(base, now=ahead)
        material = {}
        for name in ("api", "child1"):
            cert, key = pki.issue(base, name, now=ahead)
            material[name] = load_tls(base / pki.CA_CERT, cert, key)
            start = material[name].own.original.to_cryptography().not_valid_before_utc
            self.assertLess(start, datetime.datetime.now(datetime.UTC))
        self.assertGreaterEqual(pki.CLOCK_SKEW, datetime.timedelta(seconds=2 * SKEW))
        pair = connect_link(parent_material=material["api"], child_material=material["child1"])
        self.assertEqual({p.ready for p in (pair.child, pair.parent)}, {True})
        self.assertEqual(len(pair.ready), 2)
