"""Fault scenarios in memory (issue 7, item 6): what the user sees.

Each test injects one fault into a MemoryTree (cellsd.testing) through the
MemoryNetwork's knobs (delays, duplicates, drop_rates, jitter) and asserts
what the caller gets: no hang, the right error per cell, no duplicated
effect. Time is a task.Clock, so deadlines are exact.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cellsd.context import RequestContext
from cellsd.errors import CellMaxHopCountReached, CellTimeout
from cellsd.messaging.routing import DOWN
from cellsd.testing import EIGHT_CELLS, MemoryTree

CALL_TIMEOUT = 10.0
ADMIN = RequestContext(is_admin=True)


class FaultCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock, EIGHT_CELLS, call_timeout=CALL_TIMEOUT)
        self.net = self.tree.network

    def wait(self, d: Any, limit: float = 100.0) -> tuple[Any, float]:
        """Advance the clock in 0.1 s steps until ``d`` fires (no hang
        allowed: fails after ``limit`` seconds); its result and when."""
        fired: list[float] = []

        def note(result: Any) -> Any:
            fired.append(self.clock.seconds())
            return result

        d.addBoth(note)
        while not fired and self.clock.seconds() < limit:
            self.clock.advance(0.1)
        self.assertTrue(fired, f"no answer within {limit} clock seconds")
        return self.successResultOf(d), fired[0]

    def broadcast(self, at: str = "api-cell") -> tuple[dict[str, Any], float]:
        d = self.tree[at].send_broadcast(ADMIN, "ping", {}, DOWN, need_response=True)
        responses, when = self.wait(d)
        return {r.cell_name: r for r in responses}, when

    def executed(self) -> dict[str, int]:
        return {name: r.stats["executed"] for name, r in self.tree.runners.items()}


class SlowTests(FaultCase):
    def test_child_slow(self) -> None:
        """Injected: child-cell1 answers 30 s late (deadline 10 s). Seen: a
        CellTimeout row for it, every other cell ok, all at the deadline."""
        self.net.delays["child-cell1"] = 30.0
        rows, when = self.broadcast()
        self.assertEqual(len(rows), 8)
        self.assertIsInstance(rows["api-cell!child-cell1"].value, CellTimeout)
        others = [r for path, r in rows.items() if path != "api-cell!child-cell1"]
        self.assertFalse(any(r.failure for r in others))
        self.assertLessEqual(when, CALL_TIMEOUT)

    def test_grandchild_slow(self) -> None:
        """Injected: grandchild-cell1 answers 30 s late in the 3-level tree.
        Seen: child-cell2 answers before the top's deadline with its partial
        map (itself and grandchild-cell2 ok, grandchild-cell1 a
        CellTimeout), so no row for child-cell2 is a timeout."""
        self.net.delays["grandchild-cell1"] = 30.0
        rows, when = self.broadcast()
        self.assertEqual(len(rows), 8)
        slow = rows["api-cell!child-cell2!grandchild-cell1"]
        self.assertIsInstance(slow.value, CellTimeout)
        self.assertFalse(rows["api-cell!child-cell2"].failure)
        self.assertFalse(rows["api-cell!child-cell2!grandchild-cell2"].failure)
        self.assertEqual(sum(r.failure for r in rows.values()), 1)
        self.assertLess(when, CALL_TIMEOUT)

    def test_frames_dropped(self) -> None:
        """Injected: every frame to child-cell4 is lost. Seen: a CellTimeout
        row for child-cell4 at the deadline; every other cell ok."""
        self.net.drop_rates["child-cell4"] = 1.0
        rows, when = self.broadcast()
        self.assertIsInstance(rows["api-cell!child-cell4"].value, CellTimeout)
        self.assertEqual(sum(r.failure for r in rows.values()), 1)
        self.assertLessEqual(when, CALL_TIMEOUT)
        self.assertGreater(self.net.dropped, 0)


class DuplicateAndReorderTests(FaultCase):
    def test_every_frame_duplicated(self) -> None:
        """Injected: every frame to every cell is delivered twice. Seen: the
        broadcast answers once per cell, each cell executed it once (the
        copies were dropped by uuid), and a targeted call runs once."""
        self.net.duplicates.update(self.tree.runners)
        rows, _ = self.broadcast()
        self.assertEqual(len(rows), 8)
        self.assertFalse(any(r.failure for r in rows.values()))
        self.clock.advance(1)  # let every copy arrive
        self.assertEqual(set(self.executed().values()), {1})
        self.assertGreater(self.net.duplicated, 0)
        duplicates = sum(r.stats["duplicates"] for r in self.tree.runners.values())
        self.assertGreater(duplicates, 0)

        target = "api-cell!child-cell2!grandchild-cell1"
        d = self.tree["api-cell"].send_targeted(ADMIN, target, "ping", {}, need_response=True)
        response, _ = self.wait(d)
        self.clock.advance(1)
        self.assertFalse(response.failure)
        self.assertEqual(self.tree["grandchild-cell1"].stats["executed"], 2)  # broadcast + this

    def test_frames_reordered(self) -> None:
        """Injected: each frame waits a random 0-3 s, so 20 concurrent calls
        overtake each other. Seen: every caller gets its own answer."""
        for name in self.tree.runners:
            self.net.jitter[name] = 3.0
        targets = ["api-cell!child-cell1", "api-cell!child-cell3!grandchild-cell3"] * 10
        calls = [
            self.tree["api-cell"].send_targeted(ADMIN, t, "ping", {}, need_response=True)
            for t in targets
        ]
        for target, d in zip(targets, calls, strict=True):
            response, _ = self.wait(d)
            self.assertFalse(response.failure, response.value)
            self.assertEqual(response.cell_name, target)


class LoopTests(SynchronousTestCase):
    """Injected: a configuration with a loop, A's child B lists A as its
    child (A→B→A)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock, {"A": ["B"], "B": ["A"]}, max_hop_count=5)

    def test_broadcast_stops(self) -> None:
        """Seen: a broadcast from A answers at once with A and B; when it
        comes back round to A the uuid is known and it goes no further."""
        d = self.tree["A"].send_broadcast(ADMIN, "ping", {}, DOWN, need_response=True)
        responses = self.successResultOf(d) or []
        self.assertEqual({r.cell_name for r in responses if not r.failure}, {"A", "A!B"})
        self.assertEqual(self.tree["A"].stats["executed"], 1)
        self.assertEqual(self.tree["B"].stats["executed"], 1)
        self.assertEqual(self.tree["A"].stats["duplicates"], 1)  # came round, dropped

    def test_targeted_stops_at_max_hop_count(self) -> None:
        """Seen: a targeted call down the loop, A!B!A!B!..., is refused with
        CellMaxHopCountReached once it has made max_hop_count hops."""
        target = "!".join(["A", "B"] * 5)
        d = self.tree["A"].send_targeted(ADMIN, target, "ping", {}, need_response=True)
        response = self.successResultOf(d)
        assert response is not None
        self.assertIsInstance(response.value, CellMaxHopCountReached)
