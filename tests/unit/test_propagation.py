"""Capabilities and capacities flowing up the tree (behaviour §5.3-§5.7):
aggregation, coalesced pushes, mute children, optimistic claims."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cellsd.context import get_admin_context
from cellsd.state import apply_claims
from cellsd.testing import EIGHT_CELLS, MemoryTree

LEAVES = ["child-cell1", "grandchild-cell1", "grandchild-cell2", "grandchild-cell3", "child-cell4"]


def caps(ram_mb: int, units: int, disk_mb: int = 0) -> dict[str, Any]:
    return {
        "ram_free": {"total_mb": ram_mb, "units_by_mb": {"512": units}},
        "disk_free": {"total_mb": disk_mb, "units_by_mb": {"1024": disk_mb // 1024}},
    }


def with_sources(tree: MemoryTree, figures: Mapping[str, dict[str, Any]]) -> None:
    for name, value in figures.items():
        tree[name].state.set_capacity_source(_constant(value))


def _constant(value: dict[str, Any]) -> Any:
    return lambda: value


class AggregationTests(SynchronousTestCase):
    """Capacities summed up the eight-cell tree."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock, EIGHT_CELLS, coalesce_window=0.5)
        self.figures = {
            n: caps(1024 * (i + 1), 2 * (i + 1), 2048 * (i + 1)) for i, n in enumerate(LEAVES)
        }
        with_sources(self.tree, self.figures)

    def push_all(self) -> None:
        """Every leaf pushes, then the coalesced pushes run level by level."""
        for name in LEAVES:
            self.successResultOf(self.tree.propagators[name].push_now())
        for _ in range(3):
            self.clock.advance(0.5)

    def test_top_equals_sum_of_leaves(self) -> None:
        """After every leaf has reported, the top's aggregate is the sum of
        the leaves; each level sees its children's subtree sums."""
        self.push_all()
        top = self.tree["api-cell"].state
        total = top.get_capacities()
        self.assertEqual(total["ram_free"]["total_mb"], 1024 * 15)
        self.assertEqual(total["ram_free"]["units_by_mb"], {"512": 30})
        self.assertEqual(total["disk_free"]["total_mb"], 2048 * 15)
        # child-cell2's subtree: grandchild-cell1 and grandchild-cell2.
        self.assertEqual(top.get_capacities("child-cell2")["ram_free"]["total_mb"], 1024 * (2 + 3))
        self.assertEqual(top.get_capacities("child-cell1"), self.figures["child-cell1"])
        mid = self.tree["child-cell3"].state
        self.assertEqual(mid.get_capacities(), self.figures["grandchild-cell3"])

    def test_a_change_reaches_the_top(self) -> None:
        """A leaf's new figures reach the top within a window per level."""
        self.push_all()
        with_sources(self.tree, {"grandchild-cell3": caps(0, 0)})
        self.successResultOf(self.tree.propagators["grandchild-cell3"].push_now())
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        total = self.tree["api-cell"].state.get_capacities()
        self.assertEqual(total["ram_free"]["total_mb"], 1024 * (15 - 4))

    def test_capabilities_union(self) -> None:
        """Capabilities are unioned up the tree the same way."""
        self.push_all()
        names = self.tree["api-cell"].state.get_our_capabilities()["name"]
        self.assertEqual(len(names), 8)


class CoalescingTests(SynchronousTestCase):
    """A burst of child reports causes a handful of upward pushes."""

    def build(self, window: float | None) -> tuple[Clock, MemoryTree, list[str]]:
        clock = Clock()
        kids = [f"c{i}" for i in range(100)]
        shape: Mapping[str, Sequence[str]] = {"top": ["mid"], "mid": kids}
        tree = MemoryTree(clock, shape, coalesce_window=window)
        with_sources(tree, {k: caps(100, 1) for k in kids})
        return clock, tree, kids

    def received_at_top(self, tree: MemoryTree) -> int:
        return tree["top"].stats["executed"]

    def test_hundred_children_at_once(self) -> None:
        """100 children reporting together: the middle cell pushes once
        (one capabilities and one capacities message reach the top), and
        the top has every child's figures."""
        clock, tree, kids = self.build(window=1.0)
        for kid in kids:
            self.successResultOf(tree.propagators[kid].push_now())
        self.assertEqual(tree.propagators["mid"].requests, 200)
        self.assertEqual(tree.propagators["mid"].pushes, 0)
        clock.advance(1.0)
        self.assertEqual(tree.propagators["mid"].pushes, 1)
        self.assertEqual(self.received_at_top(tree), 2)
        total = tree["top"].state.get_capacities()
        self.assertEqual(total["ram_free"], {"total_mb": 100 * 100, "units_by_mb": {"512": 100}})

    def test_without_coalescing(self) -> None:
        """For comparison, Liberty's rule (push after every report) sends
        one upward message per child report: 200 for the same burst."""
        _, tree, kids = self.build(window=None)
        ctxt = get_admin_context()
        for kid in kids:
            self.successResultOf(tree[kid].tell_parents_our_capabilities(ctxt))
            self.successResultOf(tree[kid].tell_parents_our_capacities(ctxt))
        self.assertEqual(self.received_at_top(tree), 200)

    def test_a_stream_of_reports(self) -> None:
        """Reports trickling in over 5 s (one every 50 ms) cause one push
        per window: 5 or 6, not 100."""
        clock, tree, kids = self.build(window=1.0)
        for kid in kids:
            self.successResultOf(tree.propagators[kid].push_now())
            clock.advance(0.05)
        clock.advance(1.0)
        self.assertIn(tree.propagators["mid"].pushes, (5, 6))
        total = tree["top"].state.get_capacities()
        self.assertEqual(total["ram_free"]["total_mb"], 100 * 100)


class MuteTests(SynchronousTestCase):
    """Children not heard from within mute_child_interval (§5.7)."""

    def setUp(self) -> None:
        self.clock = Clock()
        shape = {"top": ["a", "b"]}
        self.tree = MemoryTree(self.clock, shape, coalesce_window=0.5, mute_child_interval=30)
        with_sources(self.tree, {"a": caps(1000, 2), "b": caps(3000, 6)})
        self.top = self.tree["top"].state

    def report(self, name: str) -> None:
        self.successResultOf(self.tree.propagators[name].push_now())

    def mute(self) -> dict[str, bool]:
        return {i["name"]: i["mute"] for i in self.top.get_cell_info_for_neighbors()}

    def test_mute_after_the_interval(self) -> None:
        """Never heard: mute. Heard: not mute until strictly more than the
        interval has passed. A mute child's capabilities and capacities
        leave the aggregate (it stays a candidate, weighed down); a report
        brings it back."""
        self.assertEqual(self.mute(), {"a": True, "b": True})
        self.report("a")
        self.report("b")
        self.assertEqual(self.mute(), {"a": False, "b": False})
        self.clock.advance(20)
        self.report("a")
        self.clock.advance(10)
        self.assertEqual(self.mute(), {"a": False, "b": False})  # b: exactly 30 s
        self.clock.advance(0.5)
        self.assertEqual(self.mute(), {"a": False, "b": True})
        info = {i["name"]: i for i in self.top.get_cell_info_for_neighbors()}
        self.assertEqual(info["b"]["last_seen_age"], 30.5)
        self.assertEqual(self.top.get_capacities()["ram_free"]["total_mb"], 1000)
        self.assertNotIn("b", self.top.get_our_capabilities()["name"])
        self.assertEqual(self.top.get_capacities("b")["ram_free"]["total_mb"], 3000)
        self.report("b")
        self.assertEqual(self.top.get_capacities()["ram_free"]["total_mb"], 4000)

    def test_silent_children_are_asked(self) -> None:
        """The periodic run asks children that are mute but linked to
        announce themselves; their answers arrive within a window."""
        prop = self.tree.propagators["top"]
        self.assertEqual(sorted(c.name for c in prop.silent_children()), ["a", "b"])
        self.successResultOf(prop.ask_silent_children())
        self.clock.advance(0.5)
        self.assertEqual(self.mute(), {"a": False, "b": False})
        self.assertEqual(prop.silent_children(), [])
        self.tree.network.down.add("b")
        self.clock.advance(31)
        self.assertEqual([c.name for c in prop.silent_children()], ["a"])


class ClaimTests(SynchronousTestCase):
    """What a parent hands a child comes off its advertised capacity until
    the child's next report (§8.5 #29)."""

    def test_claims_until_next_report(self) -> None:
        """Each slot loses ceil(claimed / slot) units (summed claims, so many
        small builds never drift), totals lose the amount; the child's next
        report replaces the estimate; the aggregate follows."""
        clock = Clock()
        tree = MemoryTree(clock, {"top": ["a"]}, coalesce_window=0.5)
        state = tree["top"].state
        state.update_cell_capacities(
            "a",
            {"ram_free": {"total_mb": 8192, "units_by_mb": {"512": 14, "4096": 1, "0": 0}}},
        )
        for _ in range(3):
            state.claim_capacity("a", 512, 1024)
        self.assertEqual(
            state.get_capacities("a"),
            {"ram_free": {"total_mb": 8192 - 1536, "units_by_mb": {"512": 11, "4096": 0, "0": 0}}},
        )
        self.assertEqual(state.get_capacities()["ram_free"]["total_mb"], 8192 - 1536)
        state.update_cell_capacities(
            "a", {"ram_free": {"total_mb": 6656, "units_by_mb": {"512": 11}}}
        )
        self.assertEqual(state.get_capacities("a")["ram_free"]["units_by_mb"], {"512": 11})
        self.assertEqual(apply_claims({}, 100, 100), {})
