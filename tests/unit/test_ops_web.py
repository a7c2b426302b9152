"""The status page, /status.json and /metrics, rendered in memory with
twisted.web's DummyRequest over the eight-cell in-memory tree."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from cellsd.ops.metrics import CellMetrics
from cellsd.ops.web import TREE_TTL, StatusSource, make_root
from cellsd.testing import MemoryTree

ALL_PATHS = [
    "api-cell",
    "api-cell!child-cell1",
    "api-cell!child-cell2",
    "api-cell!child-cell2!grandchild-cell1",
    "api-cell!child-cell2!grandchild-cell2",
    "api-cell!child-cell3",
    "api-cell!child-cell3!grandchild-cell3",
    "api-cell!child-cell4",
]


def give_link_states(tree: MemoryTree) -> None:
    """In-memory links with NeighbourLinks' diagnostics: a neighbour is up
    unless the network has it down."""
    for runner in tree.runners.values():
        state = runner.state

        def link_states(state: Any = state) -> dict[str, Any]:
            down = tree.network.down
            return {
                "parents": {p.name: {"up": p.name not in down} for p in state.get_parent_cells()},
                "children": {
                    c.name: {"up": c.name not in down, "reconnects": 0, "refused": 0}
                    for c in state.get_child_cells()
                },
            }

        runner.links.link_states = link_states  # type: ignore[attr-defined]


class FakeStore:
    """The one store method the page uses."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows
        self.calls = 0

    def instance_get_all_by_filters(self, filters: dict[str, Any]) -> defer.Deferred[list[Any]]:
        assert filters == {"deleted": False}
        self.calls += 1
        return defer.succeed(self.rows)


class StatusPageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock, call_timeout=10.0)
        give_link_states(self.tree)
        runner = self.tree["api-cell"]
        self.cell = SimpleNamespace(runner=runner, state=runner.state, links=runner.links)
        self.metrics = CellMetrics(self.cell)
        self.metrics.install(runner)
        self.source = StatusSource(self.cell, self.metrics, self.clock, timeout=2.0)
        self.root = make_root(self.source)

    def get(self, path: bytes) -> DummyRequest:
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        resource = getChildForRequest(self.root, request)
        result = resource.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def status(self) -> dict[str, Any]:
        request = self.get(b"/status.json")
        self.assertEqual(request.finished, 1)
        data: dict[str, Any] = orjson.loads(b"".join(request.written))
        return data

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["path"]: row for row in self.status()["cells"]}

    def test_every_cell_in_tree_order(self) -> None:
        """status.json lists every cell, parents before children."""
        data = self.status()
        self.assertEqual([c["path"] for c in data["cells"]], ALL_PATHS)
        self.assertTrue(all(c["ok"] for c in data["cells"]))
        self.assertEqual(data["cell"], "api-cell")
        self.assertEqual(data["failures"], [])
        self.assertFalse(data["has_store"])
        self.assertIsNone(data["outbox"])  # no store, so no outbox

    def test_the_outbox_waiting_for_each_parent(self) -> None:
        """With an outbox, status.json says what waits for which parent and
        why the last send failed."""
        waiting = {"limit": 10, "waiting": {"up": 3}, "last_errors": {"up": "no link"}}
        self.patch(self.tree["api-cell"], "outbox", FakeOutbox(waiting))
        self.assertEqual(self.status()["outbox"], waiting)

    def test_state_of_direct_and_deeper_cells(self) -> None:
        """A direct child's link, mute state and age come from this cell's
        state; a grandchild's from its parent's answer; capacities from
        each cell's own answer; no store: instances unknown."""
        self.clock.advance(50)
        self.tree["child-cell3"].state.update_cell_capacities(
            "grandchild-cell3", {"ram_free": {"total_mb": 1}}
        )
        self.tree["grandchild-cell3"].state.my_cell_state.update_capacities(
            {"ram_free": {"total_mb": 4096}, "disk_free": {"total_mb": 500}}, 0
        )
        self.clock.advance(10)
        rows = self.rows()
        child = rows["api-cell!child-cell1"]
        self.assertEqual(
            (child["link_up"], child["mute"], child["last_seen_age"]), (True, True, None)
        )
        grandchild = rows["api-cell!child-cell3!grandchild-cell3"]
        self.assertEqual(grandchild["link_up"], True)
        self.assertEqual(grandchild["mute"], False)
        self.assertEqual(grandchild["last_seen_age"], 10)
        self.assertEqual((grandchild["ram_free_mb"], grandchild["disk_free_mb"]), (4096, 500))
        self.assertEqual((child["ram_free_mb"], child["instances"]), (None, None))

    def test_a_dead_cell_turns_down_and_a_hidden_one_stays(self) -> None:
        """A cell whose link is down is shown down with the error; cells
        seen before behind it stay on the page as not reached."""
        self.rows()
        self.tree.network.down.add("child-cell2")
        self.clock.advance(TREE_TTL)
        rows = self.rows()
        self.assertEqual(list(rows), ALL_PATHS)
        dead = rows["api-cell!child-cell2"]
        self.assertFalse(dead["ok"])
        self.assertFalse(dead["link_up"])
        self.assertTrue(dead["error"].startswith("CellUnreachable: Cell api-cell!child-cell2"))
        hidden = rows["api-cell!child-cell2!grandchild-cell1"]
        self.assertFalse(hidden["ok"])
        self.assertIn("not reached", hidden["error"])
        self.assertTrue(rows["api-cell!child-cell3!grandchild-cell3"]["ok"])

    def test_failed_messages_newest_first(self) -> None:
        """The failure record is in the data, newest first, with uuid, path
        and error."""
        self.tree.network.blackholes.add("grandchild-cell3")
        d = defer.Deferred.fromCoroutine(self.source.status())
        self.clock.advance(2.0)
        data = self.successResultOf(d)
        [failure] = data["failures"]
        self.assertEqual(failure["path"], "api-cell!child-cell3!grandchild-cell3")
        self.assertTrue(failure["error"].startswith("CellTimeout"))
        row = {c["path"]: c for c in data["cells"]}["api-cell!child-cell3!grandchild-cell3"]
        self.assertFalse(row["ok"])

    def test_one_broadcast_per_interval(self) -> None:
        """Any number of requests within TREE_TTL share one broadcast;
        requests while it is in flight wait for the same one."""
        sent = "cellsd_messages_sent_total"
        labels = {"kind": "broadcast", "method": "ping", "neighbour": "child-cell1"}
        for _ in range(3):
            self.status()
        self.assertEqual(self.metrics.registry.get_sample_value(sent, labels), 1)
        self.clock.advance(TREE_TTL)
        self.tree.network.delays["child-cell1"] = 0.5
        first, second = self.get(b"/status.json"), self.get(b"/status.json")
        self.assertEqual((first.finished, second.finished), (0, 0))
        self.clock.advance(0.5)
        self.assertEqual((first.finished, second.finished), (1, 1))
        self.assertEqual(self.metrics.registry.get_sample_value(sent, labels), 2)

    def test_instance_counts_from_the_store(self) -> None:
        """With a store, live instances are counted per cell_name (none
        means this cell), and the count is reused for a while."""
        store = FakeStore(
            [
                SimpleNamespace(cell_name="api-cell!child-cell1"),
                SimpleNamespace(cell_name="api-cell!child-cell1"),
                SimpleNamespace(cell_name=None),
            ]
        )
        self.cell.store = store
        rows = self.rows()
        self.assertEqual(rows["api-cell!child-cell1"]["instances"], 2)
        self.assertEqual(rows["api-cell"]["instances"], 1)
        self.assertEqual(rows["api-cell!child-cell4"]["instances"], 0)
        self.rows()
        self.assertEqual(store.calls, 1)

    def test_metrics_text(self) -> None:
        """/metrics is the Prometheus text of this cell's registry."""
        self.status()
        request = self.get(b"/metrics")
        content_type = request.responseHeaders.getRawHeaders(b"content-type") or []
        self.assertTrue(content_type[0].startswith(b"text/plain"))
        text = b"".join(request.written).decode()
        self.assertIn("cellsd_call_seconds_count", text)
        self.assertIn("cellsd_runner_forwarded_total", text)

    def test_page(self) -> None:
        """/ is the HTML page: the cell's name, the SVG it draws into, and a
        script that fetches status.json every 2 seconds."""
        request = self.get(b"/")
        page = b"".join(request.written).decode()
        self.assertIn("<title>cellsd: api-cell</title>", page)
        self.assertIn('<svg id="tree"', page)
        self.assertIn('fetch("status.json"', page)
        self.assertIn("setInterval(refresh, 2000)", page)
        self.assertNotIn("innerHTML", page)


class FakeOutbox:
    def __init__(self, status: dict[str, Any]) -> None:
        self._status = status

    def status(self) -> dict[str, Any]:
        return self._status
