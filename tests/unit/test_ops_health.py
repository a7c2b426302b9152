"""Neighbour health where an operator looks (issue 7, item 3): the
``cellsd_neighbour_health`` gauge, and the health of every cell of the
tree (not only the direct children) on the status page and in ``cellsctl
tree``, each as its parent sees it.

Health comes from real :class:`~cellsd.links.health.NeighbourHealth`
machines on a task.Clock, one per (cell, neighbour), exposed through the
``link_states`` diagnostics NeighbourLinks has (in-memory links lack them).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from cellsd.cli.cellsctl import render_tree
from cellsd.context import RequestContext
from cellsd.links.health import HealthThresholds, NeighbourHealth
from cellsd.ops.metrics import CellMetrics
from cellsd.ops.web import TREE_TTL, StatusSource, make_root
from cellsd.rpc.manager import CellsManager
from cellsd.testing import MemoryTree

G1 = "api-cell!child-cell2!grandchild-cell1"
THRESHOLDS = HealthThresholds(down_after=30.0, down_failures=3, up_after=10.0)


def give_health(tree: MemoryTree, clock: Clock) -> dict[tuple[str, str], NeighbourHealth]:
    """A NeighbourHealth per cell and neighbour, every link up, read by a
    link_states() on each cell's links; the machines by (cell, neighbour)."""
    machines: dict[tuple[str, str], NeighbourHealth] = {}
    for name, runner in tree.runners.items():
        state = runner.state
        for n in [*state.get_parent_cells(), *state.get_child_cells()]:
            h = machines[(name, n.name)] = NeighbourHealth(clock, THRESHOLDS)
            h.link_up()

        def link_states(name: str = name, state: Any = state) -> dict[str, Any]:
            def one(neighbour: str) -> dict[str, Any]:
                h = machines[(name, neighbour)]
                return {"up": h._live, "reconnects": 0, "refused": 0, **h.as_dict()}

            return {
                "parents": {p.name: one(p.name) for p in state.get_parent_cells()},
                "children": {c.name: one(c.name) for c in state.get_child_cells()},
            }

        runner.links.link_states = link_states  # type: ignore[attr-defined]
    return machines


class HealthGaugeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock)
        self.health = give_health(self.tree, self.clock)
        runner = self.tree["child-cell2"]
        self.metrics = CellMetrics(
            SimpleNamespace(runner=runner, state=runner.state, links=runner.links)
        )

    def states(self, neighbour: str, direction: str) -> dict[str, float | None]:
        return {
            state: self.metrics.registry.get_sample_value(
                "cellsd_neighbour_health",
                {"neighbour": neighbour, "direction": direction, "state": state},
            )
            for state in ("up", "suspect", "down", "disabled")
        }

    def test_one_state_per_neighbour_follows_the_transitions(self) -> None:
        """The gauge is 1 for the neighbour's state and 0 for the other
        three, at every step: up; link lost (suspect); 30 s later (down);
        disabled by the operator; the parent stays up throughout."""
        g1 = self.health[("child-cell2", "grandchild-cell1")]
        expect = dict.fromkeys(("up", "suspect", "down", "disabled"), 0.0)
        self.assertEqual(self.states("grandchild-cell1", "child"), {**expect, "up": 1.0})
        g1.link_lost("connection reset")
        self.assertEqual(self.states("grandchild-cell1", "child"), {**expect, "suspect": 1.0})
        self.clock.advance(30)
        self.assertEqual(self.states("grandchild-cell1", "child"), {**expect, "down": 1.0})
        g1.disable("maintenance")
        self.assertEqual(self.states("grandchild-cell1", "child"), {**expect, "disabled": 1.0})
        self.assertEqual(self.states("api-cell", "parent"), {**expect, "up": 1.0})
        self.assertEqual(self.states("grandchild-cell2", "child"), {**expect, "up": 1.0})
        text = self.metrics.render().decode()
        self.assertIn(
            'cellsd_neighbour_health{direction="child",neighbour="grandchild-cell1",'
            'state="disabled"} 1.0',
            text,
        )


class HealthOfEveryCellTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock, call_timeout=10.0)
        self.health = give_health(self.tree, self.clock)
        runner = self.tree["api-cell"]
        cell = SimpleNamespace(runner=runner, state=runner.state, links=runner.links)
        metrics = CellMetrics(cell)
        metrics.install(runner)
        self.source = StatusSource(cell, metrics, self.clock, timeout=2.0)
        self.root = make_root(self.source)
        self.manager = CellsManager(runner, runner.state, self.clock)

    def rows(self) -> dict[str, dict[str, Any]]:
        self.clock.advance(TREE_TTL + 0.1)  # past the page's tree cache
        request = DummyRequest([b"status.json"])
        self.root.getChildWithDefault(b"status.json", request).render(request)
        self.assertEqual(request.finished, 1)
        data = orjson.loads(b"".join(request.written))
        return {row["path"]: row for row in data["cells"]}

    def test_grandchild_health_on_the_status_page(self) -> None:
        """Injected: child-cell2's link to grandchild-cell1 drops, then a
        link comes back (it is recovering: suspect for 10 s). Seen on the
        top's page: the grandchild's health and why, as child-cell2 sees it,
        at each step (down while the link is gone, suspect once it is back,
        up after 10 s); a direct child's health is the top's own view."""
        g1 = self.health[("child-cell2", "grandchild-cell1")]
        rows = self.rows()
        self.assertEqual(rows[G1]["health"], "up")
        self.assertEqual(rows["api-cell!child-cell4"]["health"], "up")
        g1.link_lost("connection reset")
        self.clock.advance(40)
        row = self.rows()[G1]
        self.assertEqual(row["health"], "down")
        self.assertIn("connection reset", row["health_reason"])
        g1.link_up()
        row = self.rows()[G1]
        self.assertEqual(row["health"], "suspect")
        self.assertIn("recovering", row["health_reason"])
        self.clock.advance(10)
        self.assertEqual(self.rows()[G1]["health"], "up")

    def test_grandchild_health_in_cellsctl_tree(self) -> None:
        """Injected: child-cell3's link to grandchild-cell3 is lost 40 s
        ago. Seen in ``cellsctl tree`` at the top: grandchild-cell3's line
        says ``link down`` with the reason, as child-cell3 sees it."""
        self.health[("child-cell3", "grandchild-cell3")].link_lost("peer closed")
        self.clock.advance(40)
        d = self.manager.tree(RequestContext(is_admin=True))
        tree = self.successResultOf(d)
        text = render_tree(tree)
        line = next(t for t in text.splitlines() if "grandchild-cell3" in t)
        self.assertIn("link down: no live link for 40s: peer closed", line)
        other = next(t for t in text.splitlines() if "grandchild-cell2" in t)
        self.assertIn("link up", other)
