"""Build requests are durable (issue 7 item 1), in memory: the top (owner)
records each build in its store before build_instances returns, records
the cell it asks before each hand-off, forgets the build once placed, and
after a restart resumes it, asking the recorded cell first; a cell given the
same build again answers without building twice.

A "restart" of the owner is a new journal, scheduler and manager on the
same store and runner (the old ones are left hanging where the injected
fault stopped them, as a killed process would be); time is a task.Clock.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient

from cellsd.errors import OutboxFull, PendingBuildsFull
from cellsd.messaging.methods import install_cell_methods
from cellsd.messaging.routing import DOWN
from cellsd.objects.base import DATA_KEY
from cellsd.ops.metrics import CellMetrics
from cellsd.rpc.amp_transport import AMPTransport, RPCServerFactory
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.manager import CellsManager
from cellsd.scheduler.journal import BuildJournal, ReceivedHandOffs, resume_builds
from cellsd.scheduler.request import ROUTING_PATH
from cellsd.scheduler.scheduler import CellsScheduler
from tests.unit.scheduler_support import SchedulerCase, build_kwargs, ctxt, sleep

LEAVES = ("a", "b", "c")


class DurableBuildCase(SchedulerCase):
    """top with leaves a (8 GB), b (4 GB), c (2 GB); the top's manager has
    a build journal."""

    async def _set_up(self) -> None:
        await super()._set_up()
        self.journal, self.manager = self.start_top()

    def start_top(self, limit: int | None = None) -> tuple[BuildJournal, CellsManager]:
        """The top's journal, scheduler and manager, as a (re)started
        daemon makes them (cellsd.service.build_cell)."""
        runner, store = self.tree["top"], self.stores["top"]
        propagator = self.tree.propagators["top"]
        journal = BuildJournal(store, "top", limit)
        scheduler = CellsScheduler(runner, store, None, self.settings, propagator, journal=journal)
        install_cell_methods(runner, store, None, scheduler, propagator)
        self.tree.schedulers["top"] = scheduler
        manager = CellsManager(runner, runner.state, self.clock, store=store, builds=journal)
        return journal, manager

    async def restart_top(self) -> int:
        """A new owner on the same store resumes what the old one left."""
        self.journal, self.manager = self.start_top()
        return await resume_builds(self.journal, self.tree["top"], self.clock, grace=0)

    def cast(self, kwargs: dict[str, Any]) -> Deferred[Any]:
        """build_instances as the RPC server hands it to the manager."""
        return self.manager.dispatch(
            ctxt(), "build_instances", "1.34", {"build_inst_kwargs": kwargs}
        )

    async def pending(self) -> list[Any]:
        return list(await self.stores["top"].builds_pending())

    async def holders(self, uuids: list[str]) -> dict[str, list[str]]:
        """Each instance's leaves (a list: a duplicate would show twice)."""
        out: dict[str, list[str]] = {u: [] for u in uuids}
        for leaf in LEAVES:
            for inst in await self.stores[leaf].instance_get_all_by_filters({"uuid": uuids}):
                out[str(inst.uuid)].append(leaf)
        return out

    async def placed_once_in(self, uuids: list[str], leaf: str) -> None:
        """Eventually every instance is in ``leaf`` alone, and the top's
        journal is empty."""

        async def check() -> None:
            self.assertEqual(await self.holders(uuids), {u: [leaf] for u in uuids})
            self.assertEqual(await self.pending(), [])

        await self.eventually(check)
        await self.settle()

    async def route_is(self, route: str) -> Any:
        async def check() -> Any:
            (build,) = await self.pending()
            self.assertEqual(build.route, route)
            return build

        return await self.eventually(check)


def uuids_of(kwargs: dict[str, Any]) -> list[str]:
    return [str(i.uuid) for i in kwargs["instances"]]


class AcceptTests(DurableBuildCase):
    async def test_stored_before_the_cast_returns_and_forgotten_once_placed(self) -> None:
        """Injected: every hand-off is held 5 s on the way. When
        build_instances returns, the build is in the top's store (context
        and arguments in their wire form, keyed by the first instance's
        uuid) and nothing is placed yet; the route a is recorded before a
        is asked. Once the hand-off arrives the instance is built in a and
        the record is gone."""
        self.tree.network.delays.update(dict.fromkeys(LEAVES, 5.0))
        kwargs = build_kwargs()
        (uuid,) = uuids_of(kwargs)
        self.assertIsNone(await self.cast(kwargs))
        (build,) = await self.pending()
        self.assertEqual(build.id, uuid)
        self.assertEqual(orjson.loads(build.ctxt)["project_id"], "p1")
        stored = orjson.loads(build.build_kwargs)
        self.assertEqual(stored["instances"][0][DATA_KEY]["uuid"], uuid)
        self.assertEqual(self.gauge(), 1.0)
        self.assertEqual(await self.holders([uuid]), {uuid: []})
        await self.route_is("top!a")
        self.clock.advance(5.0)
        await self.placed_once_in([uuid], "a")
        self.assertEqual(self.gauge(), 0.0)

    def gauge(self) -> float | None:
        """cellsd_builds_pending as the top's /metrics shows it."""
        runner = self.tree["top"]
        cell = SimpleNamespace(runner=runner, state=runner.state, links=runner.links)
        cell.builds = self.journal
        value: float | None = CellMetrics(cell).registry.get_sample_value("cellsd_builds_pending")
        return value

    async def test_a_concurrent_burst_still_spreads(self) -> None:
        """21 builds accepted together spread as unrecorded ones do
        (test_scheduler's burst: 13/6/2): recording each route does not
        let the builds weighed meanwhile miss the capacity claimed."""
        burst = [build_kwargs() for _ in range(21)]
        await defer.gatherResults([self.cast(kwargs) for kwargs in burst])
        uuids = [u for kwargs in burst for u in uuids_of(kwargs)]

        async def spread() -> None:
            where = await self.holders(uuids)
            self.assertEqual(
                Counter(h for found in where.values() for h in found), {"a": 13, "b": 6, "c": 2}
            )
            self.assertEqual(await self.pending(), [])

        await self.eventually(spread)

    async def test_a_resent_request_is_accepted_and_not_scheduled_again(self) -> None:
        """The same build_instances arrives three times (a client's retry,
        a redelivery): twice while it is pending, once after it was placed.
        Each is accepted; the build is handed off once and lands once."""
        kwargs = build_kwargs()
        (uuid,) = uuids_of(kwargs)
        self.tree.network.delays["a"] = 5.0
        await self.cast(kwargs)
        await self.cast(kwargs)
        self.clock.advance(5.0)
        await self.placed_once_in([uuid], "a")
        await self.cast(kwargs)
        await self.settle()
        self.assertEqual(await self.holders([uuid]), {uuid: ["a"]})
        self.assertEqual(await self.pending(), [])
        self.assertEqual(self.tree.schedulers["top"].stats["handed_off"], 1)
        self.assertEqual(self.tree.schedulers["a"].stats["built_here"], 1)


class ResumeTests(DurableBuildCase):
    async def test_a_resumed_build_asks_its_recorded_cell_first(self) -> None:
        """Injected: a is down and b swallows the hand-off (never answers),
        then the top dies. The recorded route is b. After the restart, with
        every leaf back, the build is resumed and asks b first, although
        the weighers prefer a: it lands in b, once, and nowhere else."""
        self.tree.network.down.add("a")
        self.tree.network.blackholes.add("b")
        kwargs = build_kwargs()
        (uuid,) = uuids_of(kwargs)
        await self.cast(kwargs)
        await self.route_is("top!b")
        self.tree.network.down.clear()
        self.tree.network.blackholes.clear()
        self.assertEqual(await self.restart_top(), 1)
        await self.placed_once_in([uuid], "b")
        self.assertEqual(self.tree.schedulers["b"].stats["built_here"], 1)
        self.assertEqual(self.tree.schedulers["a"].stats["built_here"], 0)
        self.assertEqual(self.journal.resumed, 1)

    async def test_a_leaf_that_built_it_answers_from_its_store(self) -> None:
        """Injected: the top dies after a built the 16 instances (which fill
        its host) but before the top forgot the build; a has forgotten the
        hand-off too (only its store remembers). The resumed build asks a
        first, which answers that it holds them, building nothing: each
        instance is in a once, none in ERROR, a's host used once."""
        stuck: Deferred[None] = Deferred()

        async def never_forgotten(build_id: str) -> None:
            await stuck  # the process dies here

        self.journal.done = never_forgotten  # type: ignore[method-assign]
        kwargs = build_kwargs(count=16)
        uuids = uuids_of(kwargs)
        await self.cast(kwargs)
        await self.eventually(lambda: self._all_in_a(uuids))
        await self.settle()
        self.assertEqual(len(await self.pending()), 1)
        a = self.tree.schedulers["a"]
        a.handoffs = ReceivedHandOffs(self.clock)
        await self.restart_top()
        await self.placed_once_in(uuids, "a")
        self.assertEqual((a.stats["built_here"], a.stats["already_here"]), (1, 1))
        used = await self.hosts_used()
        self.assertEqual(used["a1"], (8192, 8192))
        states = {i.vm_state for i in await self.stores["a"].instance_get_all_by_filters({})}
        self.assertEqual(states, {"active"})
        faults = await self.stores["top"].instance_fault_get_by_instance_uuids(uuids)
        self.assertEqual([f for f in faults.values() if f], [])

    async def _all_in_a(self, uuids: list[str]) -> None:
        self.assertEqual(await self.holders(uuids), {u: ["a"] for u in uuids})

    async def test_nothing_pending_resumes_nothing(self) -> None:
        """A restart with an empty journal schedules nothing."""
        self.assertEqual(await self.restart_top(), 0)
        self.assertEqual(self.tree.schedulers["top"].stats["handed_off"], 0)


class HandOffDedupeTests(DurableBuildCase):
    async def test_a_hand_off_that_reaches_a_cell_twice_builds_once(self) -> None:
        """Injected: the same build (same id, three different messages)
        is handed to a twice at once and once more after it answered. a
        places it once; every hand-off gets the same answer."""
        kwargs = build_kwargs()
        (uuid,) = uuids_of(kwargs)
        kwargs["filter_properties"][ROUTING_PATH] = "top!a"
        runner = self.tree["top"]

        async def hand_off() -> Any:
            response = await runner.send_targeted(
                ctxt(), "top!a", "build_instances", {"build_inst_kwargs": kwargs}, DOWN, True
            )
            assert response is not None
            return response.value_or_raise()

        both = [Deferred.fromCoroutine(hand_off()) for _ in range(2)]
        first = await defer.gatherResults(both)
        again = await hand_off()
        expected = {"cell": "top!a", "instance_uuids": [uuid]}
        self.assertEqual([*first, again], [expected] * 3)
        await self.settle()
        self.assertEqual(await self.holders([uuid]), {uuid: ["a"]})
        a = self.tree.schedulers["a"]
        self.assertEqual((a.stats["built_here"], a.handoffs.duplicates), (1, 2))


class BoundTests(DurableBuildCase):
    async def _set_up(self) -> None:
        await super()._set_up()
        self.journal, self.manager = self.start_top(limit=1)
        self.tree.network.blackholes.update(LEAVES)

    async def test_a_full_journal_refuses_the_build(self) -> None:
        """Injected: a bound of one pending build, and no leaf answers. The
        first build is accepted; the second fails for its caller with
        PendingBuildsFull (an OutboxFull) naming the bound, and is not
        recorded."""
        await self.cast(build_kwargs())
        with self.assertRaises(PendingBuildsFull) as caught:
            await self.cast(build_kwargs())
        self.assertIsInstance(caught.exception, OutboxFull)
        self.assertIn("limit 1", str(caught.exception))
        self.assertIn("outbox_limit", str(caught.exception))
        self.assertEqual(len(await self.pending()), 1)
        self.assertEqual(self.journal.pending_count, 1)

    async def test_the_amp_caller_gets_the_error(self) -> None:
        """The same over the local AMP API: the build_instances cast is
        answered once stored, so the second caller's Deferred fails with
        PendingBuildsFull instead of succeeding silently."""
        factory = RPCServerFactory(self.manager, 16 * 1024 * 1024)
        client, _server, pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), amp.AMP, clock=self.clock
        )
        api = CellsAPI(AMPTransport(client, self.clock), call_timeout=10.0)
        self.addCleanup(api.transport.close)

        async def cast(kwargs: dict[str, Any]) -> Any:
            d = api.build_instances(ctxt(), **kwargs, legacy_bdm=False)
            while not d.called:
                pump.flush()
                await sleep(0.005)
            return await d

        self.assertIsNone(await cast(build_kwargs()))
        with self.assertRaises(PendingBuildsFull) as caught:
            await cast(build_kwargs())
        self.assertIn("limit 1", str(caught.exception))
        self.assertEqual(len(await self.pending()), 1)
