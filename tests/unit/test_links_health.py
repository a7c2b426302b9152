"""Neighbour health with hysteresis (issue 7, item 3).

The state machine (cellsd.links.health) on a task.Clock, every transition;
then NeighbourLinks over real TLS in memory (iosim) reporting the state and
reason; the runner failing fast with the reason; and the scheduler skipping
down and disabled children.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cellsd.cli.cellsctl import render_tree
from cellsd.config import CellsSettings
from cellsd.context import RequestContext
from cellsd.errors import CellUnreachable
from cellsd.interfaces import ICellLink
from cellsd.links.health import Health, HealthThresholds, NeighbourHealth
from cellsd.links.memory import MemoryLinks
from cellsd.messaging.routing import DOWN
from cellsd.rpc.manager import CellsManager
from cellsd.scheduler.scheduler import CellsScheduler
from cellsd.testing import MemoryTree
from tests.unit.test_links_neighbours import _Case

T = HealthThresholds(down_after=30.0, down_failures=3, up_after=10.0)


class StateMachineTests(SynchronousTestCase):
    """Each transition of NeighbourHealth, driven by a task.Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.health = NeighbourHealth(self.clock, T)

    def assertState(self, state: Health, reason_part: str = "") -> None:
        got, reason = self.health.evaluate()
        self.assertEqual(got, state, reason)
        self.assertIn(reason_part, reason)

    def up_then_lost(self) -> None:
        self.health.link_up()
        self.clock.advance(100)
        self.health.link_lost("connection reset")

    def test_never_connected_is_down(self) -> None:
        """A neighbour that never connected is down, and says so."""
        self.assertState(Health.DOWN, "not connected yet")
        self.health.attempt_failed("connection refused")
        self.assertState(Health.DOWN, "after 1 failed attempts: connection refused")
        self.assertFalse(self.health.usable())

    def test_first_link_is_up_at_once(self) -> None:
        """The first link ever makes the neighbour up without waiting: it
        has no history of flapping."""
        self.health.link_up()
        self.assertState(Health.UP, "link up")
        self.assertTrue(self.health.usable())

    def test_lost_is_suspect_then_down_after_time(self) -> None:
        """A lost link makes the neighbour suspect; without a live link for
        down_after seconds it is down, with the last error as the reason."""
        self.up_then_lost()
        self.assertState(Health.SUSPECT, "connection reset")
        self.assertTrue(self.health.usable())
        self.clock.advance(29.9)
        self.assertState(Health.SUSPECT)
        self.clock.advance(0.1)
        self.assertState(Health.DOWN, "no live link for 30s: connection reset")
        self.assertFalse(self.health.usable())

    def test_down_after_consecutive_failures(self) -> None:
        """down_failures consecutive failed attempts make a suspect
        neighbour down before down_after has passed."""
        self.up_then_lost()
        self.health.attempt_failed("refused")
        self.health.attempt_failed("refused")
        self.assertState(Health.SUSPECT)
        self.health.attempt_failed("certificate names ['x']")
        self.assertState(Health.DOWN, "3 consecutive failed attempts: certificate names ['x']")

    def test_suspect_back_is_up(self) -> None:
        """A link that comes back before the neighbour went down makes it
        up again at once."""
        self.up_then_lost()
        self.clock.advance(5)
        self.health.link_up()
        self.assertState(Health.UP)

    def test_down_back_needs_stable_link(self) -> None:
        """A neighbour that was down stays suspect ("recovering") until its
        link has stayed up up_after seconds; failures were reset."""
        self.up_then_lost()
        self.clock.advance(30)
        self.health.link_up()
        self.assertState(Health.SUSPECT, "recovering")
        self.assertTrue(self.health.usable())
        self.clock.advance(9.9)
        self.assertState(Health.SUSPECT, "recovering")
        self.clock.advance(0.1)
        self.assertState(Health.UP)

    def test_flap_while_recovering_is_down_at_once(self) -> None:
        """A recovering link that drops again leaves the neighbour down at
        once, not suspect: hysteresis against flapping."""
        self.up_then_lost()
        self.clock.advance(30)
        self.health.link_up()
        self.clock.advance(2)
        self.health.link_lost("reset again")
        self.assertState(Health.DOWN, "lost again while recovering: reset again")
        self.health.link_up()
        self.assertState(Health.SUSPECT, "recovering")

    def test_disabled_wins(self) -> None:
        """Disabled overrides every other state and keeps its reason;
        enabling returns to the state the links give."""
        self.health.link_up()
        self.health.disable("maintenance")
        self.assertState(Health.DISABLED, "maintenance")
        self.assertFalse(self.health.usable())
        self.health.enable()
        self.assertState(Health.UP)

    def test_thresholds_from_config(self) -> None:
        """[cells] carries the thresholds, with the documented defaults."""
        self.assertEqual(HealthThresholds.from_settings(CellsSettings()), HealthThresholds())
        self.assertEqual(HealthThresholds.from_settings(object()), HealthThresholds())
        custom = CellsSettings(health_down_after=5.0, health_down_failures=1, health_up_after=2.0)
        self.assertEqual(HealthThresholds.from_settings(custom), HealthThresholds(5.0, 1, 2.0))


class RegistryHealthTests(_Case):
    """NeighbourLinks keeps the health of each neighbour from its links."""

    def test_states_follow_links(self) -> None:
        """link_states shows state and reason: down before connecting, up
        once linked, suspect when the link drops, down after 30 s."""
        child = self.child()
        self.completer.failOnce()
        api = child.link_states()["parents"]["api"]
        self.assertEqual(api["state"], "down")
        self.assertIn("could not connect", api["reason"])
        parent = self.parent()
        self.reactor.advance(1.5)
        pump = self.complete()
        self.assertEqual(child.link_states()["parents"]["api"]["state"], "up")
        self.assertEqual(parent.link_states()["children"]["child1"]["state"], "up")
        pump.clientIO.loseConnection()
        pump.flush()
        self.assertEqual(parent.link_states()["children"]["child1"]["state"], "suspect")
        self.reactor.advance(30)
        child1 = parent.link_states()["children"]["child1"]
        self.assertEqual(child1["state"], "down")
        self.assertIn("no live link for 30s", child1["reason"])

    def test_disabled_gets_no_link(self) -> None:
        """A disabled neighbour is handed no link (calls fail at once) and
        is not usable for scheduling, until it is enabled again."""
        child = self.child()
        parent = self.parent()
        self.complete()
        parent.set_disabled("child1", False, "disabled by the operator")
        self.assertIsNone(parent.link_for("child1", False))
        self.assertFalse(parent.usable("child1", False))
        self.assertEqual(
            parent.unreachable_reason("child1", False),
            "child1 is disabled: disabled by the operator",
        )
        parent.set_disabled("child1", False, None)
        self.assertIsNotNone(parent.link_for("child1", False))
        self.assertIsNotNone(child.link_for("api", True))


class HealthLinks:
    """MemoryLinks plus per-neighbour health, as NeighbourLinks has it."""

    def __init__(self, inner: MemoryLinks, clock: Clock) -> None:
        self.inner = inner
        self.health: dict[str, NeighbourHealth] = {}
        self.clock = clock

    def of(self, name: str) -> NeighbourHealth:
        return self.health.setdefault(name, NeighbourHealth(self.clock, T))

    def link_for(self, name: str, is_parent: bool) -> ICellLink | None:
        if self.of(name).state() is Health.DISABLED:
            return None
        return self.inner.link_for(name, is_parent)

    def usable(self, name: str, is_parent: bool) -> bool:
        return self.of(name).usable()

    def unreachable_reason(self, name: str, is_parent: bool) -> str:
        state, reason = self.of(name).evaluate()
        return f"{name} is {state.value}: {reason}"

    def link_states(self) -> dict[str, Any]:
        return {"parents": {}, "children": {n: h.as_dict() for n, h in self.health.items()}}


class RunnerAndSchedulerTests(SynchronousTestCase):
    """The runner and the scheduler act on the health the links report."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock, {"top": ["a", "b"]}, call_timeout=30.0)
        top = self.tree["top"]
        self.links = HealthLinks(top.links, self.clock)  # type: ignore[arg-type]
        top.links = self.links  # type: ignore[assignment]
        for name in ("a", "b"):
            self.links.of(name).link_up()

    def ping(self, target: str) -> Any:
        d = self.tree["top"].send_targeted(
            RequestContext(is_admin=True), target, "ping", {}, need_response=True
        )
        return self.successResultOf(d)

    def test_suspect_without_link_fails_fast(self) -> None:
        """A suspect neighbour whose link is gone fails at once (no clock
        time passes) as CellUnreachable naming the state and why."""
        self.tree.network.down.add("a")
        self.links.of("a").link_lost("connection reset")
        response = self.ping("top!a")
        self.assertIsInstance(response.value, CellUnreachable)
        self.assertIn("a is suspect: no live link for 0s: connection reset", str(response.value))
        self.assertEqual(self.clock.seconds(), 0)

    def test_down_reported_with_reason(self) -> None:
        """Once down, the failure says down and why; the other child still
        answers a broadcast."""
        self.tree.network.down.add("a")
        self.links.of("a").link_lost("connection reset")
        self.clock.advance(30)
        self.assertIn("a is down: no live link for 30s", str(self.ping("top!a").value))
        d = self.tree["top"].send_broadcast(
            RequestContext(is_admin=True), "ping", {}, DOWN, need_response=True
        )
        rows = {r.cell_name: r.failure for r in self.successResultOf(d) or []}
        self.assertEqual(rows, {"top": False, "top!a": True, "top!b": False})

    def test_scheduler_skips_down_and_disabled(self) -> None:
        """The scheduler's candidates leave out down and disabled children
        and keep suspect ones."""
        scheduler = CellsScheduler(self.tree["top"])
        names = lambda: [c.name for c in scheduler.candidates()]  # noqa: E731
        self.assertEqual(names(), ["a", "b"])
        self.links.of("a").link_lost("reset")
        self.assertEqual(names(), ["a", "b"])  # suspect: still a candidate
        self.clock.advance(30)
        self.assertEqual(names(), ["b"])
        self.links.of("b").disable("maintenance")
        self.assertEqual(names(), [])

    def test_cellsctl_tree_shows_health(self) -> None:
        """CellsManager.tree() carries each neighbour's health and reason,
        and ``cellsctl tree`` prints it on each child's line."""
        self.tree.network.down.add("a")
        self.links.of("a").link_lost("connection reset")
        self.clock.advance(30)
        top = self.tree["top"]
        answer = self.successResultOf(
            CellsManager(top, top.state, self.clock).tree(RequestContext(is_admin=True))
        )
        by_name = {n["name"]: n for n in answer["neighbours"]}
        self.assertEqual(by_name["a"]["health"], "down")
        text = render_tree(answer)
        line_a = next(line for line in text.splitlines() if line.endswith("]") and " a " in line)
        self.assertIn("link down: no live link for 30s: connection reset", line_a)
        line_b = next(line for line in text.splitlines() if " b " in line)
        self.assertIn("link up", line_b)
