"""The MessageRunner on an in-memory tree of eight cells (issue 2).

The tree (cellsd.testing.EIGHT_CELLS)::

    api-cell
    ├── child-cell1
    ├── child-cell2
    │   ├── grandchild-cell1
    │   └── grandchild-cell2
    ├── child-cell3
    │   └── grandchild-cell3
    └── child-cell4

Messages cross the in-memory links as the same bytes real links carry; time
comes from a task.Clock, so deadlines are exact.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cellsd.context import RequestContext
from cellsd.errors import (
    CellMaxHopCountReached,
    CellOutcomeUnknown,
    CellRoutingInconsistency,
    CellTimeout,
    CellUnreachable,
    InvalidArguments,
    MalformedMessage,
    UnknownMethod,
)
from cellsd.interfaces import (
    IBroadcastMessageMethods,
    ICellLink,
    IMessageReceiver,
    INeighbourLinks,
    ITargetedMessageMethods,
)
from cellsd.links.memory import MemoryLink, MemoryNetwork
from cellsd.messaging.message import (
    BROADCAST,
    TARGETED,
    Header,
    Message,
    Response,
    build_message,
    decode_responses,
)
from cellsd.messaging.methods import BroadcastMessageMethods, TargetedMessageMethods
from cellsd.messaging.routing import DOWN, UP
from cellsd.messaging.runner import MessageRunner
from cellsd.testing import EIGHT_CELLS, MemoryTree

ALL = [
    "api-cell",
    "child-cell1",
    "child-cell2",
    "child-cell3",
    "child-cell4",
    "grandchild-cell1",
    "grandchild-cell2",
    "grandchild-cell3",
]
#: Absolute paths from the top, as answers name the cells.
PATHS = {
    "api-cell": "api-cell",
    "child-cell1": "api-cell!child-cell1",
    "child-cell2": "api-cell!child-cell2",
    "child-cell3": "api-cell!child-cell3",
    "child-cell4": "api-cell!child-cell4",
    "grandchild-cell1": "api-cell!child-cell2!grandchild-cell1",
    "grandchild-cell2": "api-cell!child-cell2!grandchild-cell2",
    "grandchild-cell3": "api-cell!child-cell3!grandchild-cell3",
}
#: The default call_timeout of a MemoryTree.
TIMEOUT = 60.0


@attrs.define
class Spy:
    """What the spy methods saw, and how they should misbehave."""

    #: (cell, kind, method, routing_path, kwargs) per execution.
    calls: list[tuple[str, str, str, str, dict[str, Any]]] = attrs.field(factory=list)
    #: Cells whose ping never answers.
    hang: set[str] = attrs.field(factory=set)
    #: Cells whose ping raises ValueError.
    fail: set[str] = attrs.field(factory=set)
    #: Cells whose ping answers when the test fires the Deferred left here.
    park: set[str] = attrs.field(factory=set)
    parked: dict[str, list[Deferred[Any]]] = attrs.field(factory=dict)

    def executed_at(self, kind: str | None = None) -> list[str]:
        return [c[0] for c in self.calls if kind is None or c[1] == kind]

    def answer(self, runner: MessageRunner, kind: str, message: Message, kwargs: Any) -> Any:
        name = runner.my_name
        self.calls.append((name, kind, message.method_name, message.routing_path, kwargs))
        if name in self.hang:
            return Deferred()
        if name in self.fail:
            raise ValueError(f"boom at {name}")
        if name in self.park:
            d: Deferred[Any] = Deferred()
            self.parked.setdefault(name, []).append(d)
            return d
        return None


@implementer(ITargetedMessageMethods)
class SpyTargeted(TargetedMessageMethods):
    """The real targeted methods, with ping observed and steerable."""

    def __init__(self, runner: MessageRunner, spy: Spy) -> None:
        super().__init__(runner)
        self.spy = spy

    def ping(self, message: Message, detail: bool = False) -> Any:
        odd = self.spy.answer(self.runner, TARGETED, message, {})
        return super().ping(message, detail) if odd is None else odd


@implementer(IBroadcastMessageMethods)
class SpyBroadcast(BroadcastMessageMethods):
    """The real broadcast methods, with ping observed; it also accepts
    keyword arguments so tests can see what arrives."""

    def __init__(self, runner: MessageRunner, spy: Spy) -> None:
        super().__init__(runner)
        self.spy = spy

    def ping(self, message: Message, detail: bool = False, **kwargs: Any) -> Any:
        odd = self.spy.answer(self.runner, BROADCAST, message, kwargs)
        return super().ping(message, detail) if odd is None else odd


class TreeTestCase(SynchronousTestCase):
    """A fresh eight-cell tree with spies installed, per test."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.ctxt = RequestContext(user_id="u", project_id="p")
        self.make_tree()

    def make_tree(self, **kwargs: Any) -> MemoryTree:
        self.tree = MemoryTree(self.clock, **kwargs)
        self.spy = Spy()
        for runner in self.tree.runners.values():
            runner.install_methods(SpyTargeted(runner, self.spy), SpyBroadcast(runner, self.spy))
        return self.tree

    def ping(
        self, source: str, target: str, direction: str = DOWN, **kwargs: Any
    ) -> Deferred[Response | None]:
        return self.tree[source].send_targeted(
            self.ctxt, target, "ping", {}, direction, need_response=True, **kwargs
        )

    def ping_all(
        self, source: str = "api-cell", direction: str = DOWN, **kwargs: Any
    ) -> Deferred[list[Response] | None]:
        kwargs.setdefault("need_response", True)
        return self.tree[source].send_broadcast(self.ctxt, "ping", {}, direction, **kwargs)

    def response(self, d: Deferred[Response | None]) -> Response:
        r = self.successResultOf(d)
        assert r is not None
        return r

    def responses(self, d: Deferred[list[Response] | None]) -> dict[str, Response]:
        """The answers by cell name, checking each cell answered once."""
        rs = self.successResultOf(d)
        assert rs is not None
        names = [r.cell_name for r in rs]
        self.assertEqual(len(names), len(set(names)), f"a cell answered twice: {names}")
        return {r.cell_name: r for r in rs}

    def failure_of(self, r: Response, exc_type: type[Exception]) -> Exception:
        """The error a failure Response raises, checked for its type."""
        self.assertTrue(r.failure, r)
        return self.assertRaises(exc_type, r.value_or_raise)


class InterfaceTests(TreeTestCase):
    """Every implementation provides its contract (mypy-zope checks it too)."""

    def test_message_methods(self) -> None:
        """The method implementations provide the message contracts."""
        runner = self.tree["api-cell"]
        self.assertTrue(verifyObject(ITargetedMessageMethods, TargetedMessageMethods(runner)))
        self.assertTrue(verifyObject(IBroadcastMessageMethods, BroadcastMessageMethods(runner)))
        self.assertTrue(verifyObject(ITargetedMessageMethods, SpyTargeted(runner, self.spy)))
        self.assertTrue(verifyObject(IBroadcastMessageMethods, SpyBroadcast(runner, self.spy)))

    def test_runner_and_links(self) -> None:
        """The runner receives from links; memory links provide the link contracts."""
        self.assertTrue(verifyObject(IMessageReceiver, self.tree["child-cell2"]))
        links = self.tree.network.links_for("child-cell2")
        self.assertTrue(verifyObject(INeighbourLinks, links))
        link = links.link_for("api-cell", True)
        assert link is not None
        self.assertTrue(verifyObject(ICellLink, link))
        self.assertTrue(
            verifyObject(ICellLink, MemoryLink(self.tree.network, "api-cell", "child-cell1", False))
        )

    def test_tree_shape(self) -> None:
        """MemoryTree builds the eight cells of the issue in three levels."""
        self.assertEqual(sorted(self.tree.runners), ALL)
        self.assertEqual({n: self.tree.path_to(n) for n in ALL}, PATHS)
        self.assertEqual(len(EIGHT_CELLS["api-cell"]), 4)


class TargetedTests(TreeTestCase):
    """Targeted messages: one cell, one Response."""

    def test_ping_every_cell_from_the_top(self) -> None:
        """The top reaches every cell; each answer names the cell by its
        absolute path and says how many cells handled the message."""
        for name in ALL:
            r = self.response(self.ping("api-cell", PATHS[name]))
            self.assertFalse(r.failure, r)
            self.assertEqual(r.cell_name, PATHS[name])
            self.assertEqual(r.value["name"], name)
            self.assertEqual(r.value["cell"], PATHS[name])
            self.assertEqual(r.value["hop_count"], PATHS[name].count("!") + 1)
            self.assertEqual(r.value["is_top"], name == "api-cell")
        self.assertEqual(sorted(self.spy.executed_at()), ALL)

    def test_ping_answer_lists_children(self) -> None:
        """A ping says which children the answering cell has."""
        r = self.response(self.ping("api-cell", PATHS["child-cell2"]))
        self.assertEqual(r.value["children"], ["grandchild-cell1", "grandchild-cell2"])

    def test_ping_up_from_a_grandchild(self) -> None:
        """A grandchild names its ancestors by paths starting at itself."""
        target = "grandchild-cell1!child-cell2!api-cell"
        r = self.response(self.ping("grandchild-cell1", target, UP))
        self.assertEqual(r.cell_name, target)
        self.assertEqual(r.value["name"], "api-cell")
        self.assertEqual(r.value["hop_count"], 3)
        self.assertTrue(r.value["is_top"])
        r = self.response(self.ping("grandchild-cell1", "grandchild-cell1!child-cell2", UP))
        self.assertEqual(r.value["name"], "child-cell2")
        self.assertEqual(r.value["hop_count"], 2)

    def test_cast_executes_and_returns_none(self) -> None:
        """Without need_response the caller gets None, and the target runs."""
        d = self.tree["api-cell"].send_targeted(
            self.ctxt, PATHS["grandchild-cell3"], "ping", {}, DOWN
        )
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            [(c[0], c[3]) for c in self.spy.calls],
            [("grandchild-cell3", PATHS["grandchild-cell3"])],
        )

    def test_no_target_raises_synchronously(self) -> None:
        """No target: CellRoutingInconsistency at once, not a Deferred."""
        e = self.assertRaises(
            CellRoutingInconsistency,
            self.tree["api-cell"].send_targeted,
            self.ctxt,
            None,
            "ping",
            {},
        )
        self.assertEqual(str(e), "Inconsistency in cell routing: No cell given in routing path.")

    def test_unknown_child_at_the_source(self) -> None:
        """An unknown first hop fails at the source, as a failure Response."""
        r = self.response(self.ping("api-cell", "api-cell!child-cell9"))
        self.assertEqual(r.cell_name, "api-cell")
        e = self.failure_of(r, CellRoutingInconsistency)
        self.assertEqual(
            str(e),
            "Inconsistency in cell routing: Unknown child when routing to api-cell!child-cell9",
        )

    def test_unknown_child_further_down(self) -> None:
        """An unknown child found two hops away comes back as a failure
        Response naming the cell that found it."""
        r = self.response(self.ping("api-cell", "api-cell!child-cell2!grandchild-cell3"))
        self.assertEqual(r.cell_name, "api-cell!child-cell2")
        e = self.failure_of(r, CellRoutingInconsistency)
        self.assertTrue(
            str(e).startswith(
                "Inconsistency in cell routing: "
                "Unknown child when routing to api-cell!child-cell2!grandchild-cell3"
            ),
            str(e),
        )
        self.assertEqual(self.spy.calls, [])

    def test_target_not_starting_here(self) -> None:
        """A target that does not start at the source is inconsistent."""
        r = self.response(self.ping("api-cell", "child-cell1"))
        e = self.failure_of(r, CellRoutingInconsistency)
        self.assertEqual(
            str(e),
            "Inconsistency in cell routing: "
            "destination is child-cell1 but routing_path is api-cell",
        )

    def test_wrong_direction(self) -> None:
        """Sending up to a child looks for a parent of that name: unknown parent."""
        r = self.response(self.ping("api-cell", "api-cell!child-cell1", UP))
        e = self.failure_of(r, CellRoutingInconsistency)
        self.assertIn("Unknown parent when routing to api-cell!child-cell1", str(e))

    def test_no_sideways_routes(self) -> None:
        """A child cannot route up then down to a sibling (§8.1.8): the top
        refuses it as an unknown parent."""
        target = "child-cell1!api-cell!child-cell2"
        r = self.response(self.ping("child-cell1", target, UP))
        self.assertEqual(r.cell_name, "child-cell1!api-cell")
        e = self.failure_of(r, CellRoutingInconsistency)
        self.assertIn(f"Unknown parent when routing to {target}", str(e))

    def test_unknown_method(self) -> None:
        """A method the contract does not declare is refused at the target,
        even when the implementation has an attribute of that name."""
        for name in ["no_such_method", "state", "runner", "__init__", "spy"]:
            d = self.tree["api-cell"].send_targeted(
                self.ctxt, PATHS["grandchild-cell2"], name, {}, need_response=True
            )
            r = self.response(d)
            self.assertEqual(r.cell_name, PATHS["grandchild-cell2"])
            e = self.failure_of(r, UnknownMethod)
            self.assertTrue(str(e).startswith(f"Unknown targeted message method: {name!r}"), str(e))

    def test_invalid_arguments(self) -> None:
        """Keyword arguments that do not fit the method are refused, naming it."""
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("ping", {"extra": 1}, "extra"),
            ("ping", {"message": 1}, "message"),
            ("update_capabilities", {"cell_name": "x"}, "capabilities"),
        ]
        for method, kwargs, word in cases:
            d = self.tree["api-cell"].send_targeted(
                self.ctxt, PATHS["child-cell4"], method, kwargs, need_response=True
            )
            e = self.failure_of(self.response(d), InvalidArguments)
            self.assertTrue(str(e).startswith(f"Bad arguments for {method}: "), str(e))
            self.assertIn(word, str(e))
        self.assertEqual(self.spy.calls, [])

    def test_method_error_travels_back(self) -> None:
        """An exception in the target's method comes back as that exception."""
        self.spy.fail.add("grandchild-cell1")
        r = self.response(self.ping("api-cell", PATHS["grandchild-cell1"]))
        self.assertEqual(r.cell_name, PATHS["grandchild-cell1"])
        e = self.failure_of(r, ValueError)
        self.assertIn("boom at grandchild-cell1", str(e))
        self.assertEqual(self.tree["grandchild-cell1"].stats["failures"], 1)
        # The target logged it where it happened.
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_target_down(self) -> None:
        """A cell on the way that is down: CellUnreachable for the target, at once."""
        self.tree.network.down.add("child-cell3")
        r = self.response(self.ping("api-cell", PATHS["grandchild-cell3"]))
        self.assertEqual(r.cell_name, PATHS["grandchild-cell3"])
        e = self.failure_of(r, CellUnreachable)
        self.assertEqual(
            str(e),
            "Cell api-cell!child-cell3!grandchild-cell3 is unreachable: "
            "no link to child-cell3 is up",
        )
        self.assertEqual(self.tree["api-cell"].stats["unreachable"], 1)

    def test_blackholed_child(self) -> None:
        """A child that never answers: CellTimeout before the deadline."""
        self.tree.network.blackholes.add("child-cell1")
        d = self.ping("api-cell", PATHS["child-cell1"])
        self.clock.advance(TIMEOUT - 1.5)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        r = self.response(d)
        self.assertEqual(r.cell_name, PATHS["child-cell1"])
        e = self.failure_of(r, CellTimeout)
        self.assertEqual(str(e), "Timeout waiting for response from cell api-cell!child-cell1")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_blackholed_grandchild(self) -> None:
        """A grandchild that never answers: its parent reports the timeout
        before the caller's own deadline, as a failure Response."""
        self.tree.network.blackholes.add("grandchild-cell3")
        d = self.ping("api-cell", PATHS["grandchild-cell3"])
        self.clock.advance(TIMEOUT - 5)
        self.assertNoResult(d)
        self.clock.advance(3.5)  # still before the top's own deadline
        r = self.response(d)
        self.assertEqual(r.cell_name, PATHS["grandchild-cell3"])
        e = self.failure_of(r, CellTimeout)
        self.assertTrue(
            str(e).startswith(
                "Timeout waiting for response from cell api-cell!child-cell3!grandchild-cell3"
            )
        )
        self.assertEqual(self.tree["child-cell3"].stats["timeouts"], 1)
        self.assertEqual(self.tree["api-cell"].stats["timeouts"], 0)

    def test_custom_timeout(self) -> None:
        """A call's own timeout replaces call_timeout."""
        self.tree.network.blackholes.add("child-cell4")
        d = self.ping("api-cell", PATHS["child-cell4"], timeout=10)
        self.clock.advance(5)
        self.assertNoResult(d)
        self.clock.advance(4.99)
        self.failure_of(self.response(d), CellTimeout)

    def test_slow_cell_within_deadline(self) -> None:
        """A delayed answer that arrives in time is the answer."""
        self.tree.network.delays["child-cell2"] = 20
        d = self.ping("api-cell", PATHS["grandchild-cell2"])
        self.clock.advance(19)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.response(d).value["name"], "grandchild-cell2")

    def test_hanging_method(self) -> None:
        """A method that never answers still gets its caller a CellTimeout
        before the caller's deadline, at a remote target and at the source."""
        self.spy.hang.update({"child-cell2", "api-cell"})
        remote = self.ping("api-cell", PATHS["child-cell2"])
        local = self.ping("api-cell", "api-cell")
        self.clock.advance(TIMEOUT - 0.01)
        for d, path in [(remote, PATHS["child-cell2"]), (local, "api-cell")]:
            r = self.response(d)
            self.assertEqual(r.cell_name, path)
            self.failure_of(r, CellTimeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline_shrinks_per_hop(self) -> None:
        """Each hop passes on less time than it was given, so it can answer
        before its caller gives up; a cast carries no deadline."""
        seen: list[tuple[str, float | None]] = []
        net = self.tree.network
        for name, runner in list(net.receivers.items()):
            net.receivers[name] = RecordingReceiver(name, runner, seen)
        self.response(self.ping("api-cell", PATHS["grandchild-cell1"]))
        self.assertEqual([n for n, _ in seen], ["child-cell2", "grandchild-cell1"])
        at_child, at_grandchild = (t for _, t in seen)
        assert at_child is not None and at_grandchild is not None
        self.assertLess(at_child, TIMEOUT)
        self.assertLess(at_grandchild, at_child)
        self.assertGreater(at_grandchild, 0)
        seen.clear()
        self.tree["api-cell"].send_targeted(self.ctxt, PATHS["grandchild-cell1"], "ping", {})
        self.assertEqual(seen, [("child-cell2", None), ("grandchild-cell1", None)])


@implementer(IMessageReceiver)
class RecordingReceiver:
    """Notes each header's time_left on its way into a runner."""

    def __init__(self, name: str, runner: IMessageReceiver, seen: list[Any]) -> None:
        self.name, self.runner, self.seen = name, runner, seen

    def receive(self, header: bytes, body: bytes, sender: str, from_parent: bool) -> Any:
        self.seen.append((self.name, Header.from_bytes(header).time_left))
        return self.runner.receive(header, body, sender, from_parent)


class HopLimitTests(TreeTestCase):
    """max_hop_count (behaviour §1.4)."""

    def test_targeted_beyond_the_limit(self) -> None:
        """With max_hop_count=2 a child is reached but a grandchild is not:
        CellMaxHopCountReached, and the grandchild never runs anything."""
        self.make_tree(max_hop_count=2)
        r = self.response(self.ping("api-cell", PATHS["child-cell2"]))
        self.assertFalse(r.failure)
        r = self.response(self.ping("api-cell", PATHS["grandchild-cell1"]))
        self.assertEqual(r.cell_name, PATHS["grandchild-cell1"])
        e = self.failure_of(r, CellMaxHopCountReached)
        self.assertEqual(str(e), "Cell message has reached maximum hop count: 2")
        self.assertEqual(self.spy.executed_at(), ["child-cell2"])

    def test_limit_of_the_source_applies(self) -> None:
        """The source's max_hop_count travels with the message; receivers
        do not apply their own."""
        self.tree["api-cell"].max_hop_count = 2
        r = self.response(self.ping("api-cell", PATHS["grandchild-cell1"]))
        self.failure_of(r, CellMaxHopCountReached)
        self.tree["api-cell"].max_hop_count = 10
        self.tree["child-cell2"].max_hop_count = 1
        r = self.response(self.ping("api-cell", PATHS["grandchild-cell1"]))
        self.assertFalse(r.failure)

    def test_limit_of_one(self) -> None:
        """With max_hop_count=1 nothing leaves the source."""
        self.make_tree(max_hop_count=1)
        r = self.response(self.ping("api-cell", PATHS["child-cell1"]))
        e = self.failure_of(r, CellMaxHopCountReached)
        self.assertEqual(str(e), "Cell message has reached maximum hop count: 1")
        self.assertEqual(list(self.responses(self.ping_all())), ["api-cell"])

    def test_broadcast_truncated_silently(self) -> None:
        """A broadcast stops at the limit without an error: with
        max_hop_count=2 the top and its four children answer."""
        self.make_tree(max_hop_count=2)
        rs = self.responses(self.ping_all())
        self.assertEqual(
            sorted(rs), sorted(PATHS[n] for n in ALL if not n.startswith("grandchild"))
        )
        self.assertFalse(any(r.failure for r in rs.values()))


class BroadcastTests(TreeTestCase):
    """Broadcasts: every cell in one direction, each exactly once."""

    def test_down_with_answers(self) -> None:
        """From the top: eight answers, one per cell, the top's own last."""
        rs = self.successResultOf(self.ping_all())
        assert rs is not None
        self.assertEqual(Counter(r.cell_name for r in rs), Counter(PATHS.values()))
        self.assertEqual(rs[-1].cell_name, "api-cell")
        for r in rs:
            self.assertFalse(r.failure, r)
            self.assertEqual(r.value["cell"], r.cell_name)
            self.assertEqual(r.value["hop_count"], r.cell_name.count("!") + 1)
        self.assertEqual(sorted(self.spy.executed_at(BROADCAST)), ALL)

    def test_down_from_the_middle(self) -> None:
        """From a child: itself and its subtree only."""
        rs = self.responses(self.ping_all("child-cell2"))
        self.assertEqual(
            sorted(rs),
            ["child-cell2", "child-cell2!grandchild-cell1", "child-cell2!grandchild-cell2"],
        )

    def test_up_from_a_grandchild(self) -> None:
        """From a grandchild up: three answers, paths starting at the source."""
        rs = self.responses(self.ping_all("grandchild-cell1", UP))
        self.assertEqual(
            sorted(rs),
            [
                "grandchild-cell1",
                "grandchild-cell1!child-cell2",
                "grandchild-cell1!child-cell2!api-cell",
            ],
        )
        self.assertEqual(rs["grandchild-cell1!child-cell2!api-cell"].value["name"], "api-cell")

    def test_run_locally_false_excludes_the_source(self) -> None:
        """run_locally=False: every cell but the source runs and answers."""
        rs = self.responses(self.ping_all(run_locally=False))
        self.assertEqual(sorted(rs), sorted(PATHS[n] for n in ALL[1:]))
        self.assertNotIn("api-cell", self.spy.executed_at())
        rs = self.responses(self.ping_all("grandchild-cell3", UP, run_locally=False))
        self.assertEqual(
            sorted(rs), ["grandchild-cell3!child-cell3", "grandchild-cell3!child-cell3!api-cell"]
        )

    def test_cast_down_executes_everywhere(self) -> None:
        """Without answers the caller gets None, and every cell still runs it once."""
        self.assertIsNone(self.successResultOf(self.ping_all(need_response=False)))
        self.assertEqual(
            sorted((c[0], c[3]) for c in self.spy.calls),
            sorted((n, PATHS[n]) for n in ALL),
        )

    def test_cast_up_and_run_locally(self) -> None:
        """Casts up reach every ancestor; run_locally=False skips the source."""
        self.assertIsNone(
            self.successResultOf(self.ping_all("grandchild-cell3", UP, need_response=False))
        )
        self.assertEqual(
            sorted(self.spy.executed_at()), ["api-cell", "child-cell3", "grandchild-cell3"]
        )
        self.spy.calls.clear()
        d = self.ping_all(need_response=False, run_locally=False)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(sorted(self.spy.executed_at()), ALL[1:])

    def test_unknown_method(self) -> None:
        """An undeclared broadcast method fails at every cell, each reported."""
        for name in ["announce_capabilities", "nope"]:
            d = self.tree["api-cell"].send_broadcast(self.ctxt, name, {}, DOWN, need_response=True)
            rs = self.responses(d)
            self.assertEqual(sorted(rs), sorted(PATHS.values()))
            for r in rs.values():
                e = self.failure_of(r, UnknownMethod)
                self.assertTrue(str(e).startswith(f"Unknown broadcast message method: {name!r}"))

    def test_a_cell_down(self) -> None:
        """A leaf that is down: the other seven answer, plus CellUnreachable
        for its path, at once (no waiting)."""
        for name in ["child-cell4", "grandchild-cell2"]:
            self.tree.network.down = {name}
            rs = self.responses(self.ping_all())
            self.assertEqual(sorted(rs), sorted(PATHS.values()))
            failed = {path for path, r in rs.items() if r.failure}
            self.assertEqual(failed, {PATHS[name]})
            e = self.failure_of(rs[PATHS[name]], CellUnreachable)
            self.assertIn(f"Cell {PATHS[name]} is unreachable", str(e))

    def test_a_cell_down_cast_reaches_the_others(self) -> None:
        """A cast goes on to every other neighbour when one is down (§8.1.4)."""
        self.tree.network.down.add("child-cell1")
        self.assertIsNone(self.successResultOf(self.ping_all(need_response=False)))
        self.assertEqual(sorted(self.spy.executed_at()), [n for n in ALL if n != "child-cell1"])

    def test_blackholed_child(self) -> None:
        """A child that never answers: after the deadline, every other cell's
        answer plus a CellTimeout Response for the silent one."""
        self.tree.network.blackholes.add("child-cell4")
        d = self.ping_all()
        self.clock.advance(TIMEOUT - 2)
        self.assertNoResult(d)
        self.clock.advance(2)
        rs = self.responses(d)
        self.assertEqual(sorted(rs), sorted(PATHS.values()))
        self.assertEqual({p for p, r in rs.items() if r.failure}, {PATHS["child-cell4"]})
        e = self.failure_of(rs[PATHS["child-cell4"]], CellTimeout)
        self.assertEqual(str(e), "Timeout waiting for response from cell api-cell!child-cell4")

    def test_blackholed_grandchild_parent_answers_first(self) -> None:
        """The parent of a silent grandchild answers before the top gives up
        on it: the top gets the whole partial map, with the timeout
        attributed to the grandchild, not a timeout for the parent."""
        self.tree.network.blackholes.add("grandchild-cell1")
        d = self.ping_all()
        self.clock.advance(TIMEOUT - 5)
        self.assertNoResult(d)
        self.clock.advance(3.5)  # the top's own deadline has not come yet
        rs = self.responses(d)
        self.assertEqual(sorted(rs), sorted(PATHS.values()))
        self.assertEqual({p for p, r in rs.items() if r.failure}, {PATHS["grandchild-cell1"]})
        self.failure_of(rs[PATHS["grandchild-cell1"]], CellTimeout)
        self.assertEqual(rs[PATHS["child-cell2"]].value["name"], "child-cell2")
        self.assertEqual(self.tree["child-cell2"].stats["timeouts"], 1)
        self.assertEqual(self.tree["api-cell"].stats["timeouts"], 0)

    def test_hanging_method_in_the_middle(self) -> None:
        """A cell whose own method hangs still passes on its subtree's
        answers in time, with a CellTimeout for itself."""
        self.spy.hang.add("child-cell2")
        d = self.ping_all()
        self.clock.advance(TIMEOUT - 1.5)
        rs = self.responses(d)
        self.assertEqual(sorted(rs), sorted(PATHS.values()))
        self.assertEqual({p for p, r in rs.items() if r.failure}, {PATHS["child-cell2"]})
        self.failure_of(rs[PATHS["child-cell2"]], CellTimeout)
        self.assertEqual(self.tree["child-cell2"].stats["timeouts"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slow_cells(self) -> None:
        """Delays within the deadline only delay the answer; a cell slower
        than the deadline is reported as timed out, and its late arrival
        afterwards changes nothing."""
        self.tree.network.delays.update({"child-cell1": 10, "child-cell4": 100})
        d = self.ping_all()
        self.clock.advance(10)
        self.assertNoResult(d)
        self.clock.advance(TIMEOUT - 10)
        rs = self.responses(d)
        self.assertEqual({p for p, r in rs.items() if r.failure}, {PATHS["child-cell4"]})
        self.failure_of(rs[PATHS["child-cell4"]], CellTimeout)
        self.clock.advance(100)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_kwargs_stay_objects_at_the_source(self) -> None:
        """The source runs its own part after sending, and still sees its
        objects; other cells see their wire form (§8.1.7)."""
        thing = Thing(7)
        d = self.tree["api-cell"].send_broadcast(
            self.ctxt, "ping", {"thing": thing}, DOWN, need_response=True
        )
        self.assertFalse(any(r.failure for r in self.responses(d).values()))
        by_cell = {c[0]: c[4] for c in self.spy.calls}
        self.assertIs(by_cell["api-cell"]["thing"], thing)
        self.assertEqual(by_cell["grandchild-cell1"]["thing"], {"n": 7})

    def test_diamond_each_cell_once(self) -> None:
        """A cell with two parents gets a broadcast twice but runs it once,
        and answers it once; targeted paths through either parent work."""
        diamond = {"top": ["left", "right"], "left": ["bottom"], "right": ["bottom"]}
        self.make_tree(children_of=diamond)
        rs = self.responses(self.ping_all("top"))
        self.assertEqual(len(rs), 4)
        self.assertEqual(
            Counter(self.spy.executed_at()), Counter(["top", "left", "right", "bottom"])
        )
        self.assertEqual(self.tree["bottom"].stats["duplicates"], 1)
        rs = self.responses(self.ping_all("bottom", UP))
        self.assertEqual(sorted(rs), ["bottom", "bottom!left", "bottom!left!top", "bottom!right"])
        for path in ["top!left!bottom", "top!right!bottom"]:
            self.assertEqual(self.response(self.ping("top", path)).cell_name, path)


class Thing:
    """A value with a wire form different from itself."""

    def __init__(self, n: int) -> None:
        self.n = n

    def obj_to_primitive(self) -> dict[str, Any]:
        return {"n": self.n}


class NoDeferredLeftTests(TreeTestCase):
    def test_every_deferred_fires(self) -> None:
        """Whatever the faults, every call gets a result once the deadlines
        have passed, and no timer is left behind."""
        net = self.tree.network
        net.blackholes.update({"grandchild-cell1", "child-cell4"})
        net.down.add("grandchild-cell3")
        net.delays["child-cell1"] = 100
        self.spy.hang.add("grandchild-cell2")
        api = self.tree["api-cell"]
        ds: list[Deferred[Any]] = [
            self.ping_all(),
            self.ping_all(need_response=False),
            self.ping_all("grandchild-cell2", UP),
            self.ping_all("grandchild-cell1", UP, need_response=False),
            api.ask_children_for_capabilities(self.ctxt),
        ]
        for name in ALL:
            ds.append(self.ping("api-cell", PATHS[name]))
            ds.append(api.send_targeted(self.ctxt, PATHS[name], "ping", {}))
        for _ in range(30):
            self.clock.advance(5)
        for d in ds:
            self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def wire(message: Message) -> tuple[bytes, bytes]:
    return message.header.to_bytes(), message.body.to_bytes()


class ReceiveTests(TreeTestCase):
    """MessageRunner.receive: what a link hands in."""

    def message(self, message_type: str, **kwargs: Any) -> tuple[bytes, bytes]:
        kwargs.setdefault("need_response", True)
        kwargs.setdefault("time_left", TIMEOUT)
        return wire(
            build_message(self.ctxt, message_type, "ping", {}, DOWN, "api-cell", 10, **kwargs)
        )

    def test_duplicate_broadcast(self) -> None:
        """The same broadcast delivered twice runs once; the second delivery
        answers with an empty array."""
        header, body = self.message(BROADCAST)
        runner = self.tree["child-cell2"]
        first = self.successResultOf(runner.receive(header, body, "api-cell", True))
        self.assertEqual(
            sorted(r.cell_name for r in decode_responses(first)),
            sorted(PATHS[n] for n in ["child-cell2", "grandchild-cell1", "grandchild-cell2"]),
        )
        second = self.successResultOf(runner.receive(header, body, "api-cell", True))
        self.assertEqual(second, b"[]")
        self.assertEqual(
            sorted(self.spy.executed_at()), ["child-cell2", "grandchild-cell1", "grandchild-cell2"]
        )
        self.assertEqual(runner.stats["duplicates"], 1)
        self.assertEqual(runner.stats["received"], 2)
        self.assertEqual(runner.stats["executed"], 1)

    def test_duplicate_cast_broadcast(self) -> None:
        """A cast broadcast delivered twice also runs once."""
        header, body = self.message(BROADCAST, need_response=False, time_left=None)
        runner = self.tree["child-cell3"]
        for _ in range(2):
            self.assertEqual(
                self.successResultOf(runner.receive(header, body, "api-cell", True)), b"[]"
            )
        self.assertEqual(sorted(self.spy.executed_at()), ["child-cell3", "grandchild-cell3"])

    def test_duplicate_targeted(self) -> None:
        """The same targeted message delivered twice runs once and both
        deliveries get the same Response."""
        header, body = self.message(TARGETED, target_cell=PATHS["child-cell1"])
        runner = self.tree["child-cell1"]
        first = self.successResultOf(runner.receive(header, body, "api-cell", True))
        second = self.successResultOf(runner.receive(header, body, "api-cell", True))
        self.assertEqual(first, second)
        [r] = decode_responses(first)
        self.assertEqual(r.cell_name, PATHS["child-cell1"])
        self.assertEqual(r.value["name"], "child-cell1")
        self.assertEqual(self.spy.executed_at(), ["child-cell1"])
        self.assertEqual(runner.stats["duplicates"], 1)

    def test_duplicate_targeted_while_running(self) -> None:
        """A second copy arriving while the first still runs waits for the
        first's answer instead of running again."""
        self.spy.park.add("grandchild-cell1")
        header, body = self.message(TARGETED, target_cell=PATHS["grandchild-cell1"])
        runner = self.tree["child-cell2"]
        first = runner.receive(header, body, "api-cell", True)
        second = runner.receive(header, body, "api-cell", True)
        self.assertNoResult(first)
        self.assertNoResult(second)
        [parked] = self.spy.parked["grandchild-cell1"]
        parked.callback({"late": True})
        a, b = self.successResultOf(first), self.successResultOf(second)
        self.assertEqual(a, b)
        self.assertEqual([r.value for r in decode_responses(a)], [{"late": True}])
        self.assertEqual(self.spy.executed_at(), ["grandchild-cell1"])

    def test_direction_must_fit_the_link(self) -> None:
        """From a parent a message must travel down, from a child up; anything
        else is refused before it runs."""
        header, body = self.message(BROADCAST)
        runner = self.tree["child-cell2"]
        e = self.assertRaises(MalformedMessage, runner.receive, header, body, "api-cell", False)
        self.assertIn("must travel up, not down", str(e))
        up = Header.from_bytes(header)
        up.direction = UP
        e = self.assertRaises(
            MalformedMessage, runner.receive, up.to_bytes(), body, "api-cell", True
        )
        self.assertIn("must travel down, not up", str(e))
        self.assertEqual(runner.stats["received"], 0)
        self.assertEqual(self.spy.calls, [])

    def test_routing_path_must_end_at_the_sender(self) -> None:
        """A routing path that does not end at the neighbour who sent it is refused."""
        header, body = self.message(BROADCAST)
        runner = self.tree["child-cell2"]
        e = self.assertRaises(MalformedMessage, runner.receive, header, body, "child-cell9", True)
        self.assertIn("does not end at the sender child-cell9", str(e))
        forged = Header.from_bytes(header)
        forged.routing_path = "elsewhere!api-cell2"
        self.assertRaises(
            MalformedMessage, runner.receive, forged.to_bytes(), body, "api-cell", True
        )
        self.assertEqual(self.spy.calls, [])

    def test_malformed_header(self) -> None:
        """Bytes that are not a header are refused with MalformedMessage."""
        runner = self.tree["child-cell1"]
        for bad in [b"", b"{}", b"[]", orjson.dumps({"message_type": "targeted"})]:
            self.assertRaises(MalformedMessage, runner.receive, bad, b"{}", "api-cell", True)

    def test_malformed_body(self) -> None:
        """A body that cannot be decoded fails the execution, reported as a
        MalformedMessage Response; the link is not affected."""
        header, _ = self.message(TARGETED, target_cell=PATHS["child-cell1"])
        answer = self.successResultOf(
            self.tree["child-cell1"].receive(header, b"not json", "api-cell", True)
        )
        [r] = decode_responses(answer)
        self.failure_of(r, MalformedMessage)

    def test_refused_through_a_link(self) -> None:
        """A neighbour that refuses a message is reported as a failure
        Response for that cell, not as a lost call."""
        runner = self.tree["child-cell1"]

        def refuse(*args: Any) -> Any:
            raise MalformedMessage(reason="refused for the test")

        self.patch(runner, "receive", refuse)
        rs = self.responses(self.ping_all())
        e = self.failure_of(rs[PATHS["child-cell1"]], MalformedMessage)
        self.assertIn("refused for the test", str(e))
        self.assertEqual(sum(r.failure for r in rs.values()), 1)


class StatsTests(TreeTestCase):
    def test_counters_move(self) -> None:
        """received, forwarded and executed count what each cell did."""
        self.responses(self.ping_all())
        stats = {n: dict(self.tree[n].stats) for n in ALL}
        self.assertEqual(
            {k: stats["api-cell"][k] for k in ["received", "forwarded", "executed"]},
            {"received": 0, "forwarded": 4, "executed": 1},
        )
        self.assertEqual(
            {k: stats["child-cell2"][k] for k in ["received", "forwarded", "executed"]},
            {"received": 1, "forwarded": 2, "executed": 1},
        )
        self.assertEqual(
            {k: stats["grandchild-cell3"][k] for k in ["received", "forwarded", "executed"]},
            {"received": 1, "forwarded": 0, "executed": 1},
        )
        for n in ALL:
            for k in ["duplicates", "timeouts", "unreachable", "failures"]:
                self.assertEqual(stats[n][k], 0, (n, k))
        self.response(self.ping("api-cell", PATHS["grandchild-cell1"]))
        self.assertEqual(self.tree["api-cell"].stats["forwarded"], 5)
        self.assertEqual(self.tree["child-cell2"].stats["forwarded"], 3)
        self.assertEqual(self.tree["grandchild-cell1"].stats["executed"], 2)

    def test_fault_counters(self) -> None:
        """unreachable and timeouts count at the cell that saw the fault."""
        self.tree.network.down.add("child-cell1")
        self.tree.network.blackholes.add("grandchild-cell3")
        d = self.ping_all()
        self.clock.advance(TIMEOUT)
        self.responses(d)
        self.assertEqual(self.tree["api-cell"].stats["unreachable"], 1)
        self.assertEqual(self.tree["child-cell3"].stats["timeouts"], 1)


class StateMessageTests(TreeTestCase):
    """The state messages of behaviour §5 over the tree."""

    def caps(self, at: str, of: str) -> dict[str, set[str]]:
        state = self.tree[at].state
        cell = state.get_child_cell(of)
        assert cell is not None
        return cell.capabilities

    def test_capabilities_cascade_to_the_top(self) -> None:
        """A grandchild's capabilities reach its parent, which passes on its
        own union (now including the grandchild) to the top."""
        gc = self.tree["grandchild-cell1"]
        self.assertIsNone(self.successResultOf(gc.tell_parents_our_capabilities(self.ctxt)))
        self.assertEqual(
            self.caps("child-cell2", "grandchild-cell1"), {"name": {"grandchild-cell1"}}
        )
        self.assertEqual(
            self.caps("api-cell", "child-cell2"), {"name": {"child-cell2", "grandchild-cell1"}}
        )
        self.assertEqual(
            self.tree["api-cell"].state.get_our_capabilities(),
            {"name": {"api-cell", "child-cell2", "grandchild-cell1"}},
        )

    def test_whole_tree_capabilities(self) -> None:
        """After the children are asked and every grandchild has reported,
        the top's union names all eight cells."""
        api = self.tree["api-cell"]
        self.successResultOf(api.ask_children_for_capabilities(self.ctxt))
        self.assertEqual(
            api.state.get_our_capabilities()["name"],
            {"api-cell", "child-cell1", "child-cell2", "child-cell3", "child-cell4"},
        )
        for name in ["grandchild-cell1", "grandchild-cell2", "grandchild-cell3"]:
            self.successResultOf(self.tree[name].tell_parents_our_capabilities(self.ctxt))
        self.assertEqual(api.state.get_our_capabilities()["name"], set(ALL))

    def test_capacities_cascade(self) -> None:
        """Capacities are summed up the tree as they are reported."""
        for name, mb in [("grandchild-cell1", 100), ("child-cell2", 10)]:
            state = self.tree[name].state
            state.my_cell_state.update_capacities({"ram_free": {"total_mb": mb}}, 0)
        self.successResultOf(self.tree["grandchild-cell1"].tell_parents_our_capacities(self.ctxt))
        api = self.tree["api-cell"].state
        self.assertEqual(api.get_capacities("child-cell2"), {"ram_free": {"total_mb": 110}})
        self.assertEqual(api.get_our_capacities(), {"ram_free": {"total_mb": 110}})

    def test_announce_capacities(self) -> None:
        """Asked by its parent, a child refreshes its own figures and reports."""
        child = self.tree["child-cell4"].state
        child._capacity_source = lambda: {"disk_free": {"total_mb": 7}}
        self.successResultOf(self.tree["api-cell"].ask_children_for_capacities(self.ctxt))
        self.assertEqual(
            self.tree["api-cell"].state.get_capacities("child-cell4"),
            {"disk_free": {"total_mb": 7}},
        )

    def test_update_from_a_stranger_is_ignored(self) -> None:
        """An update naming a cell that is not a neighbour changes nothing
        and goes no further."""
        d = self.tree["api-cell"].send_targeted(
            self.ctxt,
            PATHS["child-cell1"],
            "update_capabilities",
            {"cell_name": "stranger", "capabilities": {"name": ["stranger"]}},
            need_response=True,
        )
        r = self.response(d)
        self.assertFalse(r.failure)
        self.assertIsNone(r.value)
        self.assertEqual(self.caps("api-cell", "child-cell1"), {})
        self.assertEqual(self.tree["child-cell1"].stats["forwarded"], 0)

    def test_mute_child_left_out(self) -> None:
        """A child silent for longer than the mute interval drops out of
        the union the top computes."""
        self.successResultOf(self.tree["api-cell"].ask_children_for_capabilities(self.ctxt))
        self.clock.advance(200)
        self.successResultOf(self.tree["child-cell1"].tell_parents_our_capabilities(self.ctxt))
        self.clock.advance(150)
        self.assertEqual(
            self.tree["api-cell"].state.get_our_capabilities()["name"],
            {"api-cell", "child-cell1"},
        )


@implementer(IMessageReceiver)
class FarCell:
    """A receiver that answers only when told, and notes how it was called.

    Like the runner, it turns a cancellation into an answer: a caller's
    timeout must never reach it.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes, str, bool]] = []
        self.pending: list[Deferred[bytes]] = []

    def receive(self, header: bytes, body: bytes, sender: str, from_parent: bool) -> Any:
        self.calls.append((header, body, sender, from_parent))
        d: Deferred[bytes] = Deferred(lambda d: d.callback(b'["cancelled"]'))
        self.pending.append(d)
        return d


class MemoryLinkTests(SynchronousTestCase):
    """The in-memory link and its injected faults."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.far = FarCell()
        self.net.add("child", self.far)
        self.link = MemoryLink(self.net, "parent", "child", is_parent=False)

    def test_delivers_bytes_and_direction(self) -> None:
        """The far cell gets the bytes, the sender's name, and whether the
        sender is its parent; its answer is the caller's."""
        d = self.link.deliver(b"head", b"body", None)
        self.assertEqual(self.far.calls, [(b"head", b"body", "parent", True)])
        self.far.pending[0].callback(b"[1]")
        self.assertEqual(self.successResultOf(d), b"[1]")
        MemoryLink(self.net, "grandchild", "child", is_parent=True).deliver(b"h", b"b", None)
        self.assertEqual(self.far.calls[1][2:], ("grandchild", False))

    def test_timeout_does_not_reach_the_far_cell(self) -> None:
        """A caller that gives up gets CellTimeout naming the neighbour, and
        the far cell's work is not cancelled (no real link could do that);
        its late answer is dropped quietly."""
        d = self.link.deliver(b"h", b"b", 5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        f = self.failureResultOf(d, CellTimeout)
        self.assertEqual(str(f.value), "Timeout waiting for response from cell child")
        self.assertNoResult(self.far.pending[0])
        self.far.pending[0].callback(b"[]")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_blackhole(self) -> None:
        """A black hole takes the message and never answers: CellTimeout."""
        self.net.blackholes.add("child")
        d = self.link.deliver(b"h", b"b", 3)
        self.assertEqual(self.far.calls, [])
        self.clock.advance(3)
        self.failureResultOf(d, CellTimeout)

    def test_down(self) -> None:
        """A cell that is down has no link, and a delayed delivery to a cell
        that went down meanwhile (sent, then lost on the way) fails with
        CellOutcomeUnknown: the sender cannot know whether it arrived."""
        links = self.net.links_for("parent")
        self.assertIsNotNone(links.link_for("child", False))
        self.assertIsNone(links.link_for("nobody", False))
        self.net.delays["child"] = 2
        d = self.link.deliver(b"h", b"b", 10)
        self.net.down.add("child")
        self.assertIsNone(links.link_for("child", False))
        self.clock.advance(2)
        f = self.failureResultOf(d, CellOutcomeUnknown)
        self.assertIn("connection lost", str(f.value))
        self.assertEqual(self.far.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_delay(self) -> None:
        """A delay holds the message back for that long."""
        self.net.delays["child"] = 2
        d = self.link.deliver(b"h", b"b", 10)
        self.clock.advance(1.9)
        self.assertEqual(self.far.calls, [])
        self.clock.advance(0.1)
        self.far.pending[0].callback(b"[2]")
        self.assertEqual(self.successResultOf(d), b"[2]")
        self.assertEqual(self.net.delivered, 1)
