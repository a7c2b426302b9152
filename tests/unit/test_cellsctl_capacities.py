"""``cellsctl capacities [CELL]`` and the mute state and last-seen age that
``cellsctl tree`` shows for every child, from a tree answered in memory."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cellsd.cli.cellsctl import _capacities, capacity_report, render_capacities, render_tree
from cellsd.context import RequestContext
from cellsd.errors import ConfigError
from cellsd.rpc.manager import CellsManager
from cellsd.testing import EIGHT_CELLS, MemoryTree, memory_api


def caps(ram_mb: int, units: int) -> dict[str, Any]:
    return {
        "ram_free": {"total_mb": ram_mb, "units_by_mb": {"512": units, "2048": units // 4}},
        "disk_free": {"total_mb": ram_mb * 10, "units_by_mb": {"1024": units}},
    }


class CapacitiesCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock, EIGHT_CELLS, coalesce_window=0.5)
        for i, leaf in enumerate(["child-cell1", "grandchild-cell1", "grandchild-cell2"]):
            figures = caps(1024 * (i + 1), 8 * (i + 1))
            self.tree[leaf].state.set_capacity_source(lambda f=figures: f)  # type: ignore[misc]
            self.successResultOf(self.tree.propagators[leaf].push_now())
            self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.clock.advance(7)
        runner = self.tree["api-cell"]
        self.api = memory_api(CellsManager(runner, runner.state, self.clock))
        self.answer = self.successResultOf(self.api.tree(RequestContext(is_admin=True)))

    def test_report_of_the_connected_cell(self) -> None:
        """The aggregate is the sum of what the children reported; each
        child has its figures, mute state and last-seen age; the report is
        plain JSON."""
        report = capacity_report(self.answer, None)
        self.assertEqual(report["cell"], "api-cell")
        self.assertEqual(report["capacities"]["ram_free"]["total_mb"], 1024 * 6)
        self.assertEqual(report["own"], {})
        children = report["children"]
        self.assertEqual(
            sorted(children), ["child-cell1", "child-cell2", "child-cell3", "child-cell4"]
        )
        self.assertEqual(children["child-cell2"]["capacities"]["ram_free"]["total_mb"], 1024 * 5)
        self.assertFalse(children["child-cell2"]["mute"])
        self.assertEqual(children["child-cell2"]["last_seen_age"], 7.5)
        self.assertTrue(children["child-cell4"]["mute"])
        self.assertIsNone(children["child-cell4"]["last_seen_age"])
        self.assertEqual(json.loads(json.dumps(report)), report)

    def test_report_of_a_cell_below(self) -> None:
        """CELL (relative or absolute) picks a cell below: child-cell2's
        view of its own children."""
        for name in ["child-cell2", "api-cell!child-cell2"]:
            report = capacity_report(self.answer, name)
            self.assertEqual(report["cell"], "api-cell!child-cell2")
            self.assertEqual(sorted(report["children"]), ["grandchild-cell1", "grandchild-cell2"])
            gc2 = report["children"]["grandchild-cell2"]["capacities"]
            self.assertEqual(gc2["ram_free"]["units_by_mb"], {"512": 24, "2048": 6})
        self.assertRaises(ConfigError, capacity_report, self.answer, "nowhere")

    def test_connected_cell_from_its_own_state(self) -> None:
        """Without CELL the report comes from the connected cell's state
        (no broadcast, so a silent cell cannot delay it) and agrees with
        the one built from the tree."""
        ctxt = RequestContext(is_admin=True)
        direct = self.successResultOf(Deferred.fromCoroutine(_capacities(self.api, ctxt, None)))
        self.assertEqual(direct, capacity_report(self.answer, None))
        named = self.successResultOf(
            Deferred.fromCoroutine(_capacities(self.api, ctxt, "api-cell"))
        )
        self.assertEqual(named, direct)
        below = self.successResultOf(
            Deferred.fromCoroutine(_capacities(self.api, ctxt, "child-cell2"))
        )
        self.assertEqual(below, capacity_report(self.answer, "child-cell2"))

    def test_table(self) -> None:
        """The table: total, own hosts, one row per child with mute state,
        last seen, free MB and units per flavor size."""
        text = render_capacities(capacity_report(self.answer, None))
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("CELL"))
        for column in ["MUTE", "LAST SEEN", "RAM FREE MB", "DISK FREE MB", "RAM UNITS"]:
            self.assertIn(column, lines[0])
        total = lines[1].split()
        self.assertEqual(total[:3], ["api-cell", "(total)", "6144"])
        row = next(line for line in lines if line.strip().startswith("child-cell2"))
        self.assertEqual(
            row.split(),
            ["child-cell2", "no", "8s", "ago", "5120", "51200", "512:40", "2048:10", "1024:40"],
        )
        mute = next(line for line in lines if line.strip().startswith("child-cell4"))
        self.assertEqual(mute.split()[:3], ["child-cell4", "mute", "never"])

    def test_tree_shows_every_childs_mute_state(self) -> None:
        """``tree`` marks every child, at every level, as its parent sees
        it: grandchild-cell3 never reported to child-cell3, so it is mute."""
        text = render_tree(self.answer)
        gc1 = next(line for line in text.splitlines() if "grandchild-cell1" in line)
        self.assertIn("heard", gc1)
        self.assertIn("last seen 8s ago", gc1)
        gc3 = next(line for line in text.splitlines() if "grandchild-cell3" in line)
        self.assertIn("mute, last seen never", gc3)
