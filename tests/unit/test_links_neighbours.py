"""NeighbourLinks: dialing with reconnects, accepting, and the registry.

A MemoryReactorClock stands in for the reactor: the endpoint strings become
recorded connectTCP/listenTCP calls, ConnectionCompleter fails or completes
them (over real TLS in memory), and time moves only when told.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.test.iosim import ConnectionCompleter, IOPump
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cellsd.errors import CellUnreachable
from cellsd.interfaces import INeighbourLinks
from cellsd.links.neighbours import NeighbourLinks
from tests.unit.link_settings import CellName as Cell
from tests.unit.link_settings import Cells, Neighbour, Settings
from tests.unit.links_pki import CA, FakeReceiver, header

PARENT_PORT = 7101


class _Case(SynchronousTestCase):
    ca = CA.make()

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.completer = ConnectionCompleter(self.reactor)

    def parent(self, children: tuple[str, ...] = ("child1",)) -> NeighbourLinks:
        """The api cell, listening for the given children."""
        settings = Settings(
            cell=Cell("api"),
            cells=Cells(listen=f"tcp:{PARENT_PORT}:interface=127.0.0.1"),
            children=tuple(Neighbour(name) for name in children),
        )
        links = NeighbourLinks(self.reactor, settings, self.ca.material("api"), FakeReceiver("api"))
        links.startService()
        self.addCleanup(links.stopService)
        return links

    def child(self, name: str = "child1", **cells: Any) -> NeighbourLinks:
        """A child cell dialing the api cell."""
        settings = Settings(
            cell=Cell(name),
            cells=Cells(**cells),
            parents=(Neighbour("api", f"tcp:127.0.0.1:{PARENT_PORT}", True),),
        )
        links = NeighbourLinks(
            self.reactor,
            settings,
            self.ca.material(name),
            FakeReceiver(name),
            jitter=lambda: 0.0,
        )
        links.startService()
        self.addCleanup(links.stopService)
        return links

    def complete(self) -> IOPump:
        pump = self.completer.succeedOnce()
        assert pump is not None, "no connection to complete"
        pump.flush()
        return pump


class DialTests(_Case):
    """The child dials its parent and keeps dialing."""

    def test_provides_interface(self) -> None:
        """NeighbourLinks provides INeighbourLinks."""
        verifyObject(INeighbourLinks, self.child())

    def test_receiver_set_later(self) -> None:
        """The receiver may be given after construction (the runner needs the
        links too), but the service refuses to start without one."""
        settings = Settings(
            cell=Cell("child1"),
            cells=Cells(),
            parents=(Neighbour("api", f"tcp:127.0.0.1:{PARENT_PORT}", True),),
        )
        links = NeighbourLinks(self.reactor, settings, self.ca.material("child1"))
        self.assertRaises(RuntimeError, links.startService)
        self.assertEqual(self.reactor.tcpClients, [])
        links.receiver = FakeReceiver("child1")
        links.startService()
        self.addCleanup(links.stopService)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_parent_without_endpoint(self) -> None:
        """A parent with no endpoint is not dialed, and the log says so."""
        settings = Settings(
            cell=Cell("child1"), cells=Cells(), parents=(Neighbour("api", None, True),)
        )
        with capturedLogs() as events:
            links = NeighbourLinks(
                self.reactor, settings, self.ca.material("child1"), FakeReceiver()
            )
        links.startService()
        self.addCleanup(links.stopService)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertTrue(any(e.get("neighbour") == "api" for e in events))
        self.assertFalse(links.link_states()["parents"]["api"]["up"])

    def test_dials_parent_endpoint(self) -> None:
        """Starting the service dials the parent's endpoint at once."""
        self.child()
        ((host, port, *_),) = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", PARENT_PORT))

    def test_reconnects_after_failed_attempt(self) -> None:
        """A refused connection is retried after the backoff delay, growing
        with each failure, and counted; once the parent listens the link
        comes up on both sides."""
        child = self.child()
        self.completer.failOnce()
        self.assertEqual(child.link_states()["parents"]["api"]["failed_attempts"], 1)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(1.4)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.2)  # first retry after 1.5 s
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.completer.failOnce()
        self.reactor.advance(2.2)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.1)  # then after 2.25 s
        self.assertEqual(len(self.reactor.tcpClients), 1)

        parent = self.parent()
        self.complete()
        state = child.link_states()["parents"]["api"]
        self.assertEqual(
            {k: state[k] for k in ("up", "links", "failed_attempts", "reconnects")},
            {"up": True, "links": 1, "failed_attempts": 2, "reconnects": 0},
        )
        self.assertEqual(state["since"], self.reactor.seconds())
        self.assertTrue(parent.link_states()["children"]["child1"]["up"])

    def test_max_delay(self) -> None:
        """The delay between attempts stops growing at reconnect_max_delay."""
        self.child(reconnect_max_delay=3.0)
        for _ in range(6):
            self.completer.failOnce()
            self.reactor.advance(3.0)
            self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_reconnects_after_link_lost(self) -> None:
        """When a live link drops, the child dials again, and the registry
        records the time and the reconnect."""
        child = self.child()
        self.parent()
        pump = self.complete()
        pump.clientIO.loseConnection()
        pump.flush()
        state = child.link_states()["parents"]["api"]
        self.assertFalse(state["up"])
        self.assertIsNone(child.link_for("api", True))
        self.reactor.advance(2)
        self.complete()
        state = child.link_states()["parents"]["api"]
        self.assertTrue(state["up"])
        self.assertEqual(state["reconnects"], 1)

    def test_deliver_through_registry(self) -> None:
        """link_for gives a live link that carries a message both ways."""
        child = self.child()
        parent = self.parent()
        pump = self.complete()
        up = child.link_for("api", True)
        assert up is not None
        d = up.deliver(header(), b"{}", 5)
        pump.flush()
        self.assertEqual(orjson.loads(self.successResultOf(d))[0]["value"], ["child1", 2])
        down = parent.link_for("child1", False)
        assert down is not None
        d = down.deliver(header(), b"{}", 5)
        pump.flush()
        self.assertEqual(orjson.loads(self.successResultOf(d))[0]["value"], ["api", 2])

    def test_stop_closes_links(self) -> None:
        """Stopping the parent closes the links its children made; stopping
        the child stops dialing."""
        child = self.child()
        parent = self.parent()
        pump = self.complete()
        parent.stopService()
        pump.flush()
        self.assertEqual(parent.links(), [])
        self.assertFalse(child.link_states()["parents"]["api"]["up"])
        child.stopService()
        self.reactor.advance(60)
        self.assertEqual(self.reactor.tcpClients, [])


class RegistryTests(_Case):
    """link_for, round robin, and link_states."""

    def test_round_robin_over_workers(self) -> None:
        """Two workers of one child cell hold two links; the parent spreads
        calls over both, in turn."""
        parent = self.parent()
        self.child()
        self.child()
        self.complete()
        self.complete()
        picks = [parent.link_for("child1", False) for _ in range(4)]
        self.assertEqual(len(set(map(id, picks))), 2)
        self.assertIs(picks[0], picks[2])
        self.assertIs(picks[1], picks[3])
        self.assertEqual(parent.link_states()["children"]["child1"]["links"], 2)

    def test_no_link(self) -> None:
        """No link for an unknown neighbour, a known one that is down, or the
        right name in the wrong direction."""
        parent = self.parent(children=("child1", "child2"))
        self.child()
        self.complete()
        self.assertIsNone(parent.link_for("child2", False))
        self.assertIsNone(parent.link_for("nobody", False))
        self.assertIsNone(parent.link_for("child1", True))
        self.assertIsNotNone(parent.link_for("child1", False))

    def test_states_before_any_connection(self) -> None:
        """Every configured neighbour is listed, down, from the start."""
        parent = self.parent(children=("child1", "child2"))
        self.assertEqual(
            parent.link_states(),
            {
                "cell": "api",
                "parents": {},
                "children": {
                    name: {
                        "up": False,
                        "links": 0,
                        "since": None,
                        "reconnects": 0,
                        "refused": 0,
                        "failed_attempts": 0,
                        "state": "down",
                        "reason": "not connected yet",
                    }
                    for name in ("child1", "child2")
                },
                "refused_unknown": {},
                "last_refusals": {},
                "handshakes": {"pending": 0, "timed_out": 0, "evicted": 0, "authenticated": 0},
            },
        )

    def test_refusals_counted(self) -> None:
        """A sibling dialing the parent is refused: the parent counts it
        under the name it presented, the sibling under its parent, and the
        sibling keeps retrying with backoff."""
        parent = self.parent()
        sibling = self.child("sibling")
        self.complete()
        self.assertEqual(parent.link_states()["refused_unknown"], {"sibling": 1})
        self.assertEqual(parent.links(), [])
        self.assertEqual(sibling.link_states()["parents"]["api"]["refused"], 1)
        self.assertIsNone(sibling.link_for("api", True))
        self.reactor.advance(1.6)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.complete()
        self.assertEqual(sibling.link_states()["parents"]["api"]["refused"], 2)
        # Though TCP connected each time, the delay grows: 2.25 s now.
        self.reactor.advance(2.2)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_link_down_fails_calls(self) -> None:
        """A link handed out before it dropped fails calls as unreachable."""
        child = self.child()
        self.parent()
        pump = self.complete()
        link = child.link_for("api", True)
        assert link is not None
        pump.clientIO.loseConnection()
        pump.flush()
        self.failureResultOf(link.deliver(header(), b"{}", 5), CellUnreachable)
