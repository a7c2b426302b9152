"""A child down, end to end in memory (issue 7, items 3 and 6): what callers,
broadcasts and the scheduler see while a child is down, and that it is used
again once it is back.

top with leaves a (8 GB, the one the scheduler prefers), b (4 GB) and c
(2 GB), each with its SQLite store and simulated host (SchedulerCase).
The top's links carry per-neighbour health (NeighbourHealth on the test's
Clock, thresholds: down after 30 s without a link, up 10 s after it is
back), as NeighbourLinks does.
"""

from __future__ import annotations

from typing import Any

from cellsd.context import RequestContext
from cellsd.errors import CellUnreachable
from cellsd.rpc.manager import CellsManager
from tests.unit.scheduler_support import SchedulerCase, build_kwargs
from tests.unit.test_links_health import HealthLinks

ADMIN = RequestContext(is_admin=True)


class ChildDownTests(SchedulerCase):
    async def _set_up(self) -> None:
        await super()._set_up()
        top = self.tree["top"]
        self.links = HealthLinks(top.links, self.clock)  # type: ignore[arg-type]
        top.links = self.links  # type: ignore[assignment]
        for name in ("a", "b", "c"):
            self.links.of(name).link_up()
        self.manager = CellsManager(top, top.state, self.clock)

    async def placed_in(self) -> str | None:
        kwargs = build_kwargs()
        await self.build(kwargs)
        await self.settle()
        uuid = kwargs["instances"][0].uuid
        where: dict[str, Any] = await self.eventually(lambda: self.where([uuid]))
        return where[uuid]

    async def test_child_down_then_back(self) -> None:
        """Injected: a's link is lost and stays lost for 30 s (a is down).

        Seen while down: a call to a fails at once (no clock time passes)
        with CellUnreachable saying "a is down" and why; ``ping --all``
        answers top, b and c ok and a unreachable; the scheduler leaves a out
        of its candidates and a build goes to b, the best cell left. When a's link is back
        and has stayed up 10 s, a answers again, the whole tree is ok and
        the next build goes to a."""
        self.assertEqual(await self.placed_in(), "top!a")  # a is preferred when up

        self.tree.network.down.add("a")
        self.links.of("a").link_lost("connection reset by peer")
        self.clock.advance(30)
        before = self.clock.seconds()
        row = await self.manager.ping(ADMIN, "a")
        self.assertEqual(self.clock.seconds(), before)  # failed fast
        self.assertEqual(row["outcome"], "unreachable")
        self.assertTrue(row["error"].startswith(CellUnreachable.__name__), row)
        self.assertIn("a is down: no live link for 30s: connection reset by peer", row["error"])
        rows = {r["cell"]: r["outcome"] for r in await self.manager.ping_all(ADMIN)}
        self.assertEqual(rows, {"top": "ok", "top!a": "unreachable", "top!b": "ok", "top!c": "ok"})
        scheduler = self.tree.schedulers["top"]
        self.assertEqual([c.name for c in scheduler.candidates()], ["b", "c"])
        self.assertEqual(await self.placed_in(), "top!b")

        self.tree.network.down.discard("a")
        self.links.of("a").link_up()
        self.assertEqual(self.links.of("a").state().value, "suspect")  # recovering
        self.assertTrue((await self.manager.ping(ADMIN, "a"))["ok"])
        self.clock.advance(10)
        self.assertEqual(self.links.of("a").state().value, "up")
        rows = {r["cell"]: r["outcome"] for r in await self.manager.ping_all(ADMIN)}
        self.assertEqual(set(rows.values()), {"ok"})
        self.assertEqual([c.name for c in scheduler.candidates()], ["a", "b", "c"])
        self.assertEqual(await self.placed_in(), "top!a")
