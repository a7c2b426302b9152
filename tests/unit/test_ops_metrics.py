"""Metrics and the failed-message record, on the in-memory eight-cell tree
(cellsd.testing.EIGHT_CELLS), and the per-message log lines they sit beside.

Every cell's CellMetrics has its own registry, so the numbers read here are
exactly what that cell's /metrics would show.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from cellsd.context import get_admin_context
from cellsd.messaging.routing import DOWN
from cellsd.messaging.runner import MessageRunner, RunnerObserver
from cellsd.ops.metrics import CellMetrics, LiveCollector
from cellsd.testing import MemoryTree

GRANDCHILD1 = "api-cell!child-cell2!grandchild-cell1"
GRANDCHILD3 = "api-cell!child-cell3!grandchild-cell3"


def parts(runner: MessageRunner, links: Any = None) -> SimpleNamespace:
    """The cell parts metrics read (cellsd.service.Cell has the same names)."""
    return SimpleNamespace(runner=runner, state=runner.state, links=links or runner.links)


class FakeLinks:
    """NeighbourLinks' diagnostics, as data."""

    def __init__(self, states: dict[str, Any], protos: list[Any]) -> None:
        self._states, self._protos = states, protos

    def link_states(self) -> dict[str, Any]:
        return self._states

    def links(self) -> list[Any]:
        return self._protos


class MetricsOnATree(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock, call_timeout=10.0)
        self.metrics = {}
        for name, runner in self.tree.runners.items():
            m = CellMetrics(parts(runner), failures_kept=3, wall=lambda: 1000.0)
            m.install(runner)
            self.metrics[name] = m
        self.ctxt = get_admin_context()

    def value(self, at: str, name: str, **labels: str) -> float | None:
        return self.metrics[at].registry.get_sample_value(name, labels)

    def test_observer_is_a_no_op_by_default(self) -> None:
        """A runner without metrics has the do-nothing observer."""
        runner = MemoryTree(Clock())["api-cell"]
        self.assertIs(type(runner.observer), RunnerObserver)

    def test_messages_by_kind_method_and_neighbour(self) -> None:
        """A targeted ping to a grandchild counts as sent at the top,
        received and forwarded in the middle, received at the target."""
        d = self.tree["api-cell"].send_targeted(
            self.ctxt, GRANDCHILD1, "ping", {}, DOWN, need_response=True
        )
        self.successResultOf(d)
        labels = {"kind": "targeted", "method": "ping"}
        total = "cellsd_messages_sent_total"
        self.assertEqual(self.value("api-cell", total, neighbour="child-cell2", **labels), 1)
        self.assertIsNone(self.value("api-cell", total, neighbour="child-cell1", **labels))
        received = "cellsd_messages_received_total"
        self.assertEqual(self.value("child-cell2", received, neighbour="api-cell", **labels), 1)
        forwarded = "cellsd_messages_forwarded_total"
        self.assertEqual(
            self.value("child-cell2", forwarded, neighbour="grandchild-cell1", **labels), 1
        )
        self.assertIsNone(self.value("child-cell2", total, neighbour="grandchild-cell1", **labels))
        self.assertEqual(
            self.value("grandchild-cell1", received, neighbour="child-cell2", **labels), 1
        )

    def test_call_latency_histogram(self) -> None:
        """The call's time, from sending to the whole answer, lands in the
        histogram of the cell that made it."""
        self.tree.network.delays["grandchild-cell1"] = 0.3
        d = self.tree["api-cell"].send_targeted(
            self.ctxt, GRANDCHILD1, "ping", {}, DOWN, need_response=True
        )
        self.clock.advance(0.3)
        self.successResultOf(d)
        labels = {"kind": "targeted", "method": "ping"}
        self.assertEqual(self.value("api-cell", "cellsd_call_seconds_count", **labels), 1)
        self.assertAlmostEqual(self.value("api-cell", "cellsd_call_seconds_sum", **labels), 0.3)
        bucket = self.value("api-cell", "cellsd_call_seconds_bucket", le="0.25", **labels)
        self.assertEqual(bucket, 0)
        self.assertEqual(
            self.value("api-cell", "cellsd_call_seconds_bucket", le="0.5", **labels), 1
        )

    def test_partial_broadcast_and_timeouts_per_cell(self) -> None:
        """A broadcast with one silent cell counts as partial, counts a
        timeout for that cell, and records the failed message."""
        self.tree.network.blackholes.add("grandchild-cell3")
        d = self.tree["api-cell"].send_broadcast(
            self.ctxt, "ping", {}, DOWN, need_response=True, timeout=5.0
        )
        self.clock.advance(5.0)
        responses = self.successResultOf(d)
        assert responses is not None
        self.assertEqual(len(responses), 8)
        m = "api-cell"
        self.assertEqual(self.value(m, "cellsd_broadcast_partial_total", method="ping"), 1)
        self.assertEqual(self.value(m, "cellsd_cell_timeouts_total", cell=GRANDCHILD3), 1)
        errors = {"kind": "broadcast", "method": "ping", "error": "CellTimeout"}
        self.assertEqual(self.value(m, "cellsd_message_failures_total", **errors), 1)
        [failure] = self.metrics[m].failures
        self.assertEqual(failure["path"], GRANDCHILD3)
        self.assertEqual(failure["seen_at"], "api-cell")
        self.assertEqual(failure["method"], "ping")
        self.assertEqual(failure["time"], 1000.0)
        self.assertTrue(failure["error"].startswith("CellTimeout: Timeout waiting"))
        self.assertEqual(len(failure["uuid"]), 36)

    def test_a_whole_broadcast_is_not_partial(self) -> None:
        """Every cell answering: no partial count, no failure record."""
        d = self.tree["api-cell"].send_broadcast(self.ctxt, "ping", {}, DOWN, need_response=True)
        self.successResultOf(d)
        self.assertIsNone(self.value("api-cell", "cellsd_broadcast_partial_total", method="ping"))
        self.assertEqual(list(self.metrics["api-cell"].failures), [])

    def test_cast_failures_are_recorded_where_they_happen(self) -> None:
        """Nobody waits for a cast: its failure is recorded by the cell that
        saw it, with the message's uuid."""
        self.tree.network.down.add("grandchild-cell1")
        d = self.tree["api-cell"].send_targeted(self.ctxt, GRANDCHILD1, "ping", {}, DOWN)
        self.successResultOf(d)
        [failure] = self.metrics["child-cell2"].failures
        self.assertEqual(failure["path"], GRANDCHILD1)
        self.assertEqual(failure["seen_at"], "api-cell!child-cell2")
        self.assertTrue(failure["error"].startswith("CellUnreachable:"))

    def test_failure_record_is_bounded(self) -> None:
        """Only the last failures_kept failures are kept, newest last."""
        self.tree.network.down.add("child-cell1")
        uuids = []
        for _ in range(5):
            d = self.tree["api-cell"].send_targeted(
                self.ctxt, "api-cell!child-cell1", "ping", {}, DOWN, need_response=True
            )
            self.successResultOf(d)
            uuids.append(self.metrics["api-cell"].failures[-1]["uuid"])
        kept = [f["uuid"] for f in self.metrics["api-cell"].failures]
        self.assertEqual(kept, uuids[-3:])

    def test_render_is_prometheus_text(self) -> None:
        """render() is the text exposition format of this cell only."""
        self.successResultOf(
            self.tree["api-cell"].send_broadcast(self.ctxt, "ping", {}, DOWN, need_response=True)
        )
        text = self.metrics["api-cell"].render().decode()
        self.assertIn("# TYPE cellsd_messages_sent_total counter", text)
        sample = (
            'cellsd_messages_sent_total{kind="broadcast",method="ping",neighbour="child-cell1"}'
        )
        self.assertIn(sample + " 1.0", text)
        self.assertIn("cellsd_runner_executed_total 1.0", text)
        other = self.metrics["child-cell1"].render().decode()
        self.assertNotIn("cellsd_messages_sent_total{", other)


class LiveCollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock)
        self.runner = self.tree["child-cell2"]
        states = {
            "cell": "child-cell2",
            "parents": {"api-cell": {"up": True, "links": 1, "reconnects": 2, "refused": 0}},
            "children": {
                "grandchild-cell1": {"up": False, "links": 0, "reconnects": 0, "refused": 3},
                "grandchild-cell2": {"up": True, "links": 2, "reconnects": 0, "refused": 0},
            },
            "refused_unknown": {"intruder": 4},
            "handshakes": {"pending": 5, "timed_out": 7, "evicted": 2, "authenticated": 1},
        }
        busy = SimpleNamespace(
            neighbour="api-cell", is_parent=True, _outstandingRequests={b"1": 0, b"2": 0}
        )
        self.metrics = CellMetrics(parts(self.runner, FakeLinks(states, [busy])))

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def test_runner_counters_are_read_at_scrape_time(self) -> None:
        """The runner's counters (duplicates dropped …) are read live."""
        self.runner.stats["duplicates"] = 7
        self.assertEqual(self.value("cellsd_runner_duplicates_total"), 7)
        self.runner.stats["duplicates"] = 9
        self.assertEqual(self.value("cellsd_runner_duplicates_total"), 9)

    def test_links_per_neighbour(self) -> None:
        """Up, live links, reconnects, refused handshakes and calls in flight
        per neighbour, and refusals of unknown names."""
        parent = {"neighbour": "api-cell", "direction": "parent"}
        down = {"neighbour": "grandchild-cell1", "direction": "child"}
        self.assertEqual(self.value("cellsd_link_up", **parent), 1)
        self.assertEqual(self.value("cellsd_link_reconnects_total", **parent), 2)
        self.assertEqual(self.value("cellsd_link_calls_in_flight", **parent), 2)
        self.assertEqual(self.value("cellsd_link_up", **down), 0)
        self.assertEqual(self.value("cellsd_link_refused_handshakes_total", **down), 3)
        self.assertEqual(
            self.value("cellsd_link_live", neighbour="grandchild-cell2", direction="child"), 2
        )
        self.assertEqual(self.value("cellsd_link_refused_unknown_total", presented="intruder"), 4)

    def test_listener_handshakes(self) -> None:
        """Connections to the listener not yet authenticated, and those
        closed for taking too long or for the bound (cellsd.links.guard)."""
        self.assertEqual(self.value("cellsd_listener_pending_handshakes"), 5)
        closed = "cellsd_listener_unauthenticated_closed_total"
        self.assertEqual(self.value(closed, reason="timed_out"), 7)
        self.assertEqual(self.value(closed, reason="evicted"), 2)

    def test_cells_mute_age_and_capacities(self) -> None:
        """Capacities per cell, mute state and last-seen age per child."""
        state = self.runner.state
        self.clock.advance(100)
        state.update_cell_capacities(
            "grandchild-cell1", {"ram_free": {"total_mb": 2048}, "disk_free": {"total_mb": 9}}
        )
        self.clock.advance(4)
        g1, g2 = {"cell": "grandchild-cell1"}, {"cell": "grandchild-cell2"}
        self.assertEqual(self.value("cellsd_cell_mute", **g1), 0)
        self.assertEqual(self.value("cellsd_cell_mute", **g2), 1)  # never heard from
        self.assertEqual(self.value("cellsd_cell_last_seen_age_seconds", **g1), 4)
        self.assertIsNone(self.value("cellsd_cell_last_seen_age_seconds", **g2))
        self.assertEqual(self.value("cellsd_cell_free_mb", resource="ram_free", **g1), 2048)
        self.assertEqual(self.value("cellsd_cell_free_mb", resource="disk_free", **g1), 9)
        # this cell's own total includes its children's
        me = {"cell": "child-cell2"}
        self.assertEqual(self.value("cellsd_cell_free_mb", resource="ram_free", **me), 2048)

    def test_links_without_diagnostics(self) -> None:
        """In-memory links have no link_states: no link metrics, no error."""
        collector = LiveCollector(parts(self.runner))
        names = [m.name for m in collector.collect()]
        self.assertIn("cellsd_runner_received", names)
        self.assertNotIn("cellsd_link_up", names)


class StoreLatencyTests(SynchronousTestCase):
    def test_store_transactions_are_timed(self) -> None:
        """With a store, each transaction's time lands in the histogram."""
        clock = Clock()
        pending: list[defer.Deferred[Any]] = []

        class Store:
            def _submit(self, work: Any, retry: bool) -> defer.Deferred[Any]:
                pending.append(defer.Deferred())
                return pending[-1]

        store = Store()
        runner = MemoryTree(clock)["api-cell"]
        metrics = CellMetrics(parts(runner))
        metrics.install(runner, store, clock)
        d = store._submit(None, False)
        clock.advance(0.02)
        pending[0].callback("row")
        self.assertEqual(self.successResultOf(d), "row")
        failing = store._submit(None, False)
        pending[1].errback(RuntimeError("boom"))
        self.failureResultOf(failing, RuntimeError)
        reg = metrics.registry
        ok = reg.get_sample_value("cellsd_store_seconds_sum", {"outcome": "ok"})
        self.assertAlmostEqual(ok, 0.02)
        self.assertEqual(
            reg.get_sample_value("cellsd_store_seconds_count", {"outcome": "error"}), 1
        )

    def test_store_without_entry_point(self) -> None:
        """A store without _submit is left alone and not measured."""
        runner = MemoryTree(Clock())["api-cell"]
        with capturedLogs() as events:
            measured = CellMetrics(parts(runner)).instrument_store(object(), Clock())
        self.assertFalse(measured)
        self.assertIn("store latency not measured", events[0]["log_format"])


class MessageLogLines(SynchronousTestCase):
    def test_one_uuid_through_every_cell(self) -> None:
        """With the level at info (`[log] trace_messages`, the default), each
        cell a message passes logs it with its uuid and the cell's name."""
        tree = MemoryTree(Clock())
        for runner in tree.runners.values():
            runner.message_log_level = LogLevel.info
        with capturedLogs() as events:
            d = tree["api-cell"].send_targeted(
                get_admin_context(), GRANDCHILD1, "ping", {}, DOWN, need_response=True
            )
            self.successResultOf(d)
        traced = [e for e in events if "uuid" in e and e["log_level"] == LogLevel.info]
        self.assertEqual(len({e["uuid"] for e in traced}), 1)
        cells = [(e["cell"], e["log_format"].split()[0]) for e in traced]
        self.assertEqual(
            cells,
            [
                ("api-cell", "forwarding"),
                ("child-cell2", "received"),
                ("child-cell2", "forwarding"),
                ("grandchild-cell1", "received"),
                ("grandchild-cell1", "executing"),
            ],
        )

    def test_no_lines_by_default_in_the_runner(self) -> None:
        """A bare MessageRunner (tests, tools) emits no per-message lines:
        tracing costs a third of a relay's CPU, so it is asked for."""
        tree = MemoryTree(Clock())
        with capturedLogs() as events:
            self.successResultOf(
                tree["api-cell"].send_targeted(
                    get_admin_context(), "api-cell!child-cell1", "ping", {}, DOWN, True
                )
            )
        self.assertEqual([e for e in events if "uuid" in e], [])
