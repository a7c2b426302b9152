"""The cells scheduler end to end in memory (behaviour §6 with the §8.5
fixes): cells with SQLite stores and simulated hosts, time on a Clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer

from cellsd.objects import Instance
from cellsd.scheduler.settings import SchedulerSettings
from tests.unit.scheduler_support import HUGE, SchedulerCase, build_kwargs, host


class SpreadTests(SchedulerCase):
    """top with leaves a (8 GB), b (4 GB) and c (2 GB); 512 MB instances."""

    async def test_spread_then_fill_never_overfill(self) -> None:
        """One at a time, builds follow the advertised free RAM, decremented
        by each hand-off (no report arrives meanwhile): 21 builds leave the
        units level (13/6/2 of 14/7/3). Beyond the advertised units the hosts'
        reserve is used, and each cell declines once its hosts are full, so
        the next is tried; 28 fill every host exactly, and the 29th ends in
        ERROR at the top with a fault saying why. No host is ever overfilled."""
        placed: list[str] = []
        for _ in range(28):
            kwargs = build_kwargs()
            await self.build(kwargs)
            placed.append(kwargs["instances"][0].uuid)
            if len(placed) == 21:
                await self.settle()
                where = await self.eventually(lambda: self.where(placed))
                self.assertEqual(Counter(where.values()), {"top!a": 13, "top!b": 6, "top!c": 2})
        await self.settle()
        where = await self.eventually(lambda: self.where(placed))
        self.assertEqual(Counter(where.values()), {"top!a": 16, "top!b": 8, "top!c": 4})
        used = await self.hosts_used()
        self.assertEqual(used, {"a1": (8192, 8192), "b1": (4096, 4096), "c1": (2048, 2048)})
        kwargs = build_kwargs()
        await self.build(kwargs)
        uuid = kwargs["instances"][0].uuid
        inst = await self.top_instance(uuid)
        self.assertEqual(inst.vm_state, "error")
        faults = await self.stores["top"].instance_fault_get_by_instance_uuids([uuid])
        message = faults[uuid][0].message
        self.assertIn("No cell could take the instances", message)
        self.assertIn("top!a: no room on the hosts of top!a", message)
        self.assertEqual(await self.hosts_used(), used)

    async def test_a_concurrent_burst_spreads(self) -> None:
        """21 builds started together spread as the sequential ones do: each
        hand-off is claimed as it is sent, so the builds weighed while
        earlier ones are on their way see the cells as they will be."""
        burst = [build_kwargs() for _ in range(21)]
        await defer.gatherResults([self.build(kwargs) for kwargs in burst])
        await self.settle()
        uuids = [kwargs["instances"][0].uuid for kwargs in burst]
        where = await self.eventually(lambda: self.where(uuids))
        self.assertEqual(Counter(where.values()), {"top!a": 13, "top!b": 6, "top!c": 2})

    async def test_one_request_of_several_instances(self) -> None:
        """The instances of one request go to one cell together, which must
        have room for all; the parent takes them all off its estimate."""
        kwargs = build_kwargs(count=3)
        await self.build(kwargs)
        await self.settle()
        uuids = [i.uuid for i in kwargs["instances"]]
        where = await self.eventually(lambda: self.where(uuids))
        self.assertEqual(set(where.values()), {"top!a"})
        a = self.tree["top"].state.get_capacities("a")
        self.assertEqual(a["ram_free"]["units_by_mb"]["512"], 14 - 3)


class RoutingTests(SchedulerCase):
    settings = SchedulerSettings(retries=2, retry_delay=5.0)

    async def test_target_cell_lands_exactly_there(self) -> None:
        """A target_cell hint overrides the weighers: the smallest cell gets
        it; the caller's hints are untouched."""
        kwargs = build_kwargs(target_cell="top!c")
        await self.build(kwargs)
        await self.settle()
        uuid = kwargs["instances"][0].uuid
        self.assertEqual(await self.eventually(lambda: self.where([uuid])), {uuid: "top!c"})
        self.assertEqual(kwargs["filter_properties"]["scheduler_hints"], {"target_cell": "top!c"})
        self.assertEqual(self.tree.schedulers["c"].stats["built_here"], 1)

    async def test_hand_off_failure_tries_the_next_cell(self) -> None:
        """The best cell cannot be reached: the next one builds instead."""
        self.tree.network.down.add("a")
        kwargs = build_kwargs()
        await self.build(kwargs)
        await self.settle()
        uuid = kwargs["instances"][0].uuid
        self.assertEqual(await self.eventually(lambda: self.where([uuid])), {uuid: "top!b"})

    async def test_retries_wait_on_the_clock(self) -> None:
        """With no cell reachable the attempt is retried retry_delay seconds
        later on the clock (nothing blocks); a cell back in time builds it."""
        self.tree.network.down.update({"a", "b", "c"})
        kwargs = build_kwargs()
        d = self.build(kwargs)
        await self.settle()
        self.assertFalse(d.called)
        scheduler = self.tree.schedulers["top"]
        self.assertEqual(scheduler.stats["retries"], 1)
        self.clock.advance(4.9)
        await self.settle()
        self.assertEqual(scheduler.stats["retries"], 1)
        self.tree.network.down.clear()
        self.clock.advance(0.1)
        await d
        await self.settle()
        uuid = kwargs["instances"][0].uuid
        self.assertEqual(await self.eventually(lambda: self.where([uuid])), {uuid: "top!a"})
        self.assertEqual(scheduler.stats["failed"], 0)

    async def test_no_cell_after_every_retry(self) -> None:
        """A flavor too large for every cell: 1 + 2 attempts, 5 s apart,
        then every instance ERROR at the top with a fault saying why."""
        kwargs = build_kwargs(count=2, flavor=HUGE)
        await self.run_with_clock(self.build(kwargs), 1.0)
        scheduler = self.tree.schedulers["top"]
        self.assertEqual((scheduler.stats["retries"], scheduler.stats["failed"]), (2, 1))
        for inst in kwargs["instances"]:
            found = await self.top_instance(inst.uuid)
            self.assertEqual((found.vm_state, found.task_state), ("error", None))
            faults = await self.stores["top"].instance_fault_get_by_instance_uuids([inst.uuid])
            (fault,) = faults[inst.uuid]
            self.assertIn("room for 0", fault.message)
            self.assertEqual(fault.code, 500)

    async def test_forbidden_hint_is_not_retried(self) -> None:
        """A non-admin's target_cell: ERROR at once with a 403 fault that
        names the hint; nothing is built, no retry."""
        kwargs = build_kwargs(target_cell="top!c")
        await self.build(kwargs, is_admin=False)
        uuid = kwargs["instances"][0].uuid
        self.assertEqual((await self.top_instance(uuid)).vm_state, "error")
        (fault,) = (await self.stores["top"].instance_fault_get_by_instance_uuids([uuid]))[uuid]
        self.assertEqual(fault.code, 403)
        self.assertIn("target_cell", fault.message)
        self.assertEqual(self.tree.schedulers["top"].stats["retries"], 0)
        self.assertEqual(
            await self.hosts_used(), {"a1": (0, 8192), "b1": (0, 4096), "c1": (0, 2048)}
        )

    async def test_bad_target_found_below(self) -> None:
        """A target whose last step is wrong is refused where it is found
        (at a), and the refusal comes back: ERROR with a clear fault."""
        kwargs = build_kwargs(target_cell="top!a!nowhere")
        await self.build(kwargs)
        uuid = kwargs["instances"][0].uuid
        (fault,) = (await self.stores["top"].instance_fault_get_by_instance_uuids([uuid]))[uuid]
        self.assertEqual(fault.code, 400)
        self.assertIn("top!a has no child cell 'nowhere'", fault.message)
        self.assertEqual(self.tree.schedulers["top"].stats["retries"], 0)


class DeepTreeTests(SchedulerCase):
    """top -> m1 -> x, top -> m2 -> y: the scheduler runs again at each level."""

    shape = {"top": ["m1", "m2"], "m1": ["x"], "m2": ["y"]}
    hosts = {"x": [host("x1", 8192)], "y": [host("y1", 4096)]}

    async def test_runs_again_at_each_level(self) -> None:
        """From the top through m1 to x, the cell with the most room."""
        kwargs = build_kwargs()
        await self.build(kwargs)
        await self.settle()
        uuid = kwargs["instances"][0].uuid
        self.assertEqual(await self.eventually(lambda: self.where([uuid])), {uuid: "top!m1!x"})
        self.assertEqual(self.tree.schedulers["m1"].stats["handed_off"], 1)

    async def test_a_child_that_cannot_place_says_so(self) -> None:
        """x's only host was disabled since it last reported: x declines,
        so m1 declines, and the top tries m2 (Liberty's m1 would have put
        the instance in ERROR and told nobody: §8.5 #30)."""
        store = self.stores["x"]
        service = await store.service_get_by_host_and_binary("x1", "nova-compute")
        assert service.id is not None
        await store.service_update(service.id, {"disabled": True})
        kwargs = build_kwargs()
        await self.build(kwargs)
        await self.settle()
        uuid = kwargs["instances"][0].uuid
        self.assertEqual(await self.eventually(lambda: self.where([uuid])), {uuid: "top!m2!y"})
        self.assertEqual(self.tree.schedulers["m1"].stats["declined"], 1)

    async def test_failure_below_the_top_is_sent_up(self) -> None:
        """A build started at m2 (its own manager) that fails: the top
        hears of the ERROR and the fault, as instance_update_at_top and
        instance_fault_create_at_top."""
        kwargs = build_kwargs(flavor=HUGE)
        await self.build(kwargs, at="m2")
        uuid = kwargs["instances"][0].uuid

        async def error_at_top() -> Any:
            inst: Instance = await self.top_instance(uuid)
            self.assertEqual(inst.vm_state, "error")
            faults = await self.stores["top"].instance_fault_get_by_instance_uuids([uuid])
            self.assertTrue(faults[uuid])
            return faults[uuid][0]

        fault = await self.eventually(error_at_top)
        self.assertIn("no room on the hosts of m2!y", fault.message)
