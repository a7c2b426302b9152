"""The listener's guard against unauthenticated connections (issue 7, item 6:
an unauthenticated client, a stalled handshake and a connection flood).

A :class:`HandshakeGuard` wraps the real accepting stack (TLS with our
server options, then CellLinkProtocol) exactly as NeighbourLinks listens.
Idle and stalled clients are StringTransports; real children handshake over
iosim. Time is a task.Clock.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import ConnectionCompleter, IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from cellsd.config import parse_settings
from cellsd.errors import ConfigError
from cellsd.links import guard as guard_module
from cellsd.links.guard import HandshakeGuard
from cellsd.links.neighbours import NeighbourLinks
from cellsd.links.protocol import CellLinkProtocol
from cellsd.links.tls import client_options, server_options
from tests.unit.link_settings import CellName as _Cell
from tests.unit.link_settings import Cells, Neighbour, Settings
from tests.unit.links_pki import CA, FakeReceiver, _Build, header


def _closing(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if "unauthenticated connection" in formatEvent(e)]


class _Stack:
    """A parent's accepting stack behind a guard, and ways to connect to it."""

    ca = CA.make()

    def __init__(self, timeout: float = 10.0, max_pending: int = 64) -> None:
        self.clock = Clock()
        self.receiver = FakeReceiver("api")
        self.accepted: list[CellLinkProtocol] = []
        tls = TLSMemoryBIOFactory(
            server_options(self.ca.material("api")), False, _Build(self._accept), clock=self.clock
        )
        self.guard = HandshakeGuard(
            tls, self.clock, timeout=timeout, max_pending=max_pending, cell_name="api"
        )
        self._port = 40000

    def _accept(self) -> CellLinkProtocol:
        proto = CellLinkProtocol(
            self.receiver, ["child1"], False, self.clock, cell_name="api", ca=self.ca.cert
        )
        self.accepted.append(proto)
        return proto

    def idle(self) -> StringTransport:
        """A client that connects and sends nothing."""
        self._port += 1
        peer = IPv4Address("TCP", "192.0.2.7", self._port)
        transport = StringTransport(peerAddress=peer)
        proto = self.guard.buildProtocol(peer)
        proto.makeConnection(transport)
        transport.protocol = proto  # type: ignore[attr-defined]  # for send()
        return transport

    def child(self, name: str = "child1") -> tuple[CellLinkProtocol, IOPump]:
        """A real child dialing over TLS in memory (not yet pumped)."""
        built: list[CellLinkProtocol] = []

        def make() -> CellLinkProtocol:
            built.append(
                CellLinkProtocol(FakeReceiver(name), ["api"], True, self.clock, cell_name=name)
            )
            return built[-1]

        client = TLSMemoryBIOFactory(
            client_options(self.ca.material(name), "api"), True, _Build(make), clock=self.clock
        )
        _, _, pump = connectedServerAndClient(
            lambda: self.guard.buildProtocol(None),
            lambda: client.buildProtocol(None),
            clock=self.clock,
            greet=False,
        )
        return built[0], pump


def _client_hello() -> bytes:
    """The first bytes a real TLS client sends (its ClientHello)."""
    transport = StringTransport()
    tls = TLSMemoryBIOFactory(
        client_options(CA.make().material("child1"), "api"),
        True,
        _Build(lambda: CellLinkProtocol(FakeReceiver(), ["api"], True, Clock())),
    ).buildProtocol(None)
    tls.makeConnection(transport)
    hello = transport.value()
    assert hello[:1] == b"\x16", "not a TLS handshake record"
    return hello


class DeadlineTests(SynchronousTestCase):
    """A connection that does not authenticate in time is closed."""

    def test_client_that_sends_nothing(self) -> None:
        """Injected: a client connects and never sends a ClientHello.
        Seen: it is aborted at the handshake deadline (not before), the log
        names its address, that it sent nothing, and the config key; the
        guard counts it as timed out; nothing reached the receiver."""
        stack = _Stack(timeout=10.0)
        with capturedLogs() as events:
            transport = stack.idle()
            stack.clock.advance(9.9)
            self.assertFalse(transport.disconnecting)
            self.assertEqual(stack.guard.stats()["pending"], 1)
            stack.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        (line,) = _closing(events)
        self.assertIn("api: closed an unauthenticated connection from 192.0.2.7:40001", line)
        self.assertIn("(sent nothing)", line)
        self.assertIn("not authenticated within 10s ([cells] handshake_timeout)", line)
        self.assertEqual(
            stack.guard.stats(), {"pending": 0, "timed_out": 1, "evicted": 0, "authenticated": 0}
        )
        self.assertEqual(stack.receiver.calls, [])

    def test_stalled_mid_handshake(self) -> None:
        """Injected: a client sends the first half of a real ClientHello and
        stalls. Seen: it is aborted at the deadline; the log says it stalled
        after sending how many bytes."""
        hello = _client_hello()
        stack = _Stack(timeout=5.0)
        with capturedLogs() as events:
            transport = stack.idle()
            transport.protocol.dataReceived(hello[: len(hello) // 2])  # type: ignore[attr-defined]
            stack.clock.advance(5.0)
        self.assertTrue(transport.disconnecting)
        (line,) = _closing(events)
        self.assertIn(f"stalled after sending {len(hello) // 2} bytes", line)
        self.assertEqual(stack.guard.stats()["timed_out"], 1)

    def test_stalled_after_server_hello(self) -> None:
        """Injected: a client sends a whole ClientHello, gets the server's
        answer, and never finishes. Seen: closed at the deadline too."""
        stack = _Stack(timeout=5.0)
        with capturedLogs():
            transport = stack.idle()
            transport.protocol.dataReceived(_client_hello())  # type: ignore[attr-defined]
            self.assertNotEqual(transport.value(), b"", "the server answered the ClientHello")
            stack.clock.advance(5.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(stack.accepted[0].ready, False)

    def test_authenticated_link_outlives_the_deadline(self) -> None:
        """Injected: nothing (a real child). Seen: its link comes up, the
        guard counts it authenticated and no longer pending, and it is not
        closed when the deadline would have passed: a message crosses it a
        minute later."""
        stack = _Stack(timeout=10.0)
        child, pump = stack.child()
        pump.flush()
        self.assertTrue(child.ready)
        self.assertEqual(
            stack.guard.stats(), {"pending": 0, "timed_out": 0, "evicted": 0, "authenticated": 1}
        )
        stack.clock.advance(60)
        pump.flush()
        d = child.deliver(header(), b"{}", 5)
        pump.flush()
        self.assertEqual(orjson.loads(self.successResultOf(d))[0]["value"], ["child1", 2])

    def test_refused_child_is_not_pending(self) -> None:
        """Injected: a sibling's certificate. Seen: the link protocol refuses
        it at once; the guard forgets it (nothing left pending, no timeout
        logged later)."""
        stack = _Stack(timeout=10.0)
        with capturedLogs() as events:
            child, pump = stack.child("sibling")
            pump.flush()
            stack.clock.advance(30)
        self.assertFalse(child.ready)
        self.assertEqual(stack.guard.stats()["pending"], 0)
        self.assertEqual(stack.guard.stats()["timed_out"], 0)
        self.assertEqual(_closing(events), [])


class FloodTests(SynchronousTestCase):
    """A flood of connections that never authenticate does not keep a real
    child out, and is bounded."""

    def test_bound_evicts_the_oldest(self) -> None:
        """Injected: 10 idle connections against max_pending_handshakes 4.
        Seen: the 6 oldest are aborted as the newer ones arrive, 4 stay
        pending; the guard counts 6 evictions; the log says why (naming the
        config key) in one line, the rest counted, not logged."""
        stack = _Stack(max_pending=4)
        with capturedLogs() as events:
            idle = [stack.idle() for _ in range(10)]
        self.assertEqual([t.disconnecting for t in idle], [True] * 6 + [False] * 4)
        self.assertEqual(stack.guard.stats()["pending"], 4)
        self.assertEqual(stack.guard.stats()["evicted"], 6)
        (line,) = _closing(events)
        self.assertIn("4 connections were already waiting to authenticate", line)
        self.assertIn("[cells] max_pending_handshakes", line)

    def test_real_child_links_up_during_a_flood(self) -> None:
        """Injected: 200 idle connections (bound 64), then a real child,
        then 30 more idle connections arriving while the child handshakes.
        Seen: the child's link comes up and carries a message; at most 64
        connections were ever pending; at the deadline every idle one is
        closed and the child's link stays up."""
        stack = _Stack(timeout=10.0, max_pending=64)
        with capturedLogs():
            idle = [stack.idle() for _ in range(200)]
            self.assertEqual(stack.guard.stats()["pending"], 64)
            child, pump = stack.child()
            pump.pump()  # ClientHello in, ServerHello out
            idle += [stack.idle() for _ in range(30)]
            pump.flush()
            self.assertTrue(child.ready)
            self.assertEqual([p.neighbour for p in stack.accepted if p.ready], ["child1"])
            self.assertLessEqual(stack.guard.stats()["pending"], 64)
            stack.clock.advance(10)
            pump.flush()
        self.assertTrue(all(t.disconnecting for t in idle))
        self.assertEqual(stack.guard.stats()["pending"], 0)
        self.assertTrue(child.ready)
        d = child.deliver(header(), b"{}", 5)
        pump.flush()
        self.successResultOf(d)
        self.assertEqual(len(stack.receiver.calls), 1)

    def test_log_is_throttled(self) -> None:
        """Injected: 50 idle connections timing out together, then 5 more
        after LOG_EVERY seconds. Seen: one log line for the first 50, and
        the next one says how many were not logged in between."""
        stack = _Stack(timeout=1.0, max_pending=1000)
        with capturedLogs() as events:
            for _ in range(50):
                stack.idle()
            stack.clock.advance(1.0)
            stack.clock.advance(guard_module.LOG_EVERY)
            for _ in range(5):
                stack.idle()
            stack.clock.advance(1.0)
        lines = _closing(events)
        self.assertEqual(len(lines), 2)
        self.assertIn("(49 more since the last such line)", lines[1])
        self.assertEqual(stack.guard.stats()["timed_out"], 55)


# --------------------------------------------------------------------------
# Wired into NeighbourLinks, configured from [cells]


_Child = Neighbour
_Cells = functools.partial(
    Cells,
    listen="tcp:7301:interface=127.0.0.1",
    handshake_timeout=3.0,
    max_pending_handshakes=2,
)
_Settings = functools.partial(Settings, children=(Neighbour("child1"),))


class NeighbourLinksTests(SynchronousTestCase):
    """NeighbourLinks listens through the guard, with the [cells] values."""

    def test_listener_is_guarded(self) -> None:
        """Injected: three idle connections to a NeighbourLinks listening
        with handshake_timeout 3 and max_pending_handshakes 2. Seen: the
        oldest is evicted at once, the others closed after 3 s, and
        link_states reports it under "handshakes"."""
        reactor = MemoryReactorClock()
        links = NeighbourLinks(
            reactor, _Settings(_Cell("api"), _Cells()), CA.make().material("api"), FakeReceiver()
        )
        links.startService()
        self.addCleanup(links.stopService)
        ((_, factory, _, _),) = reactor.tcpServers
        transports = []
        with capturedLogs():
            for port in range(3):
                peer = IPv4Address("TCP", "192.0.2.9", port)
                transports.append(StringTransport(peerAddress=peer))
                proto = factory.buildProtocol(peer)
                assert proto is not None
                proto.makeConnection(transports[-1])
            self.assertEqual([t.disconnecting for t in transports], [True, False, False])
            reactor.advance(2.9)
            self.assertFalse(transports[2].disconnecting)
            reactor.advance(0.2)
        self.assertTrue(all(t.disconnecting for t in transports))
        self.assertEqual(
            links.link_states()["handshakes"],
            {"pending": 0, "timed_out": 2, "evicted": 1, "authenticated": 0},
        )

    def test_parent_that_never_handshakes(self) -> None:
        """Injected: the parent's port accepts TCP but never speaks (a
        stopped process, a black hole). Seen: the child gives up after
        handshake_timeout (3 s), logs it, its link_states reason and
        unreachable_reason say the parent did not complete the handshake
        within 3 s, and it dials again after its back-off."""
        reactor = MemoryReactorClock()
        reactor.listenTCP(7302, Factory.forProtocol(Protocol))  # silent
        settings = _Settings(
            _Cell("child1"),
            _Cells(listen=None),
            parents=(_Child("api", "tcp:127.0.0.1:7302", True),),
            children=(),
        )
        links = NeighbourLinks(
            reactor, settings, CA.make().material("child1"), FakeReceiver(), jitter=lambda: 0.0
        )
        links.startService()
        self.addCleanup(links.stopService)
        completer = ConnectionCompleter(reactor)
        with capturedLogs() as events:
            pump = completer.succeedOnce()
            assert pump is not None
            pump.flush()
            reactor.advance(2.9)
            pump.flush()
            self.assertEqual(links.link_states()["parents"]["api"]["failed_attempts"], 0)
            self.assertFalse(pump.clientIO.disconnecting)
            reactor.advance(0.2)
            pump.flush()
        self.assertTrue(pump.clientIO.disconnecting)
        why = "the parent did not complete the TLS handshake and Hello: not authenticated within 3s"
        self.assertIn(why, links.link_states()["parents"]["api"]["reason"])
        self.assertIn(why, links.unreachable_reason("api", True))
        (line,) = [formatEvent(e) for e in events if "gave up the connection" in formatEvent(e)]
        self.assertIn("child1: gave up the connection to", line)
        self.assertIn("[cells] handshake_timeout", line)
        self.assertEqual(reactor.tcpClients, [])
        reactor.advance(2)  # the back-off
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_no_listener_no_handshakes(self) -> None:
        """A cell that does not listen reports no "handshakes"."""
        links = NeighbourLinks(
            MemoryReactorClock(),
            _Settings(_Cell("leaf"), _Cells(listen=None), children=()),
            CA.make().material("leaf"),
            FakeReceiver(),
        )
        self.assertNotIn("handshakes", links.link_states())


# --------------------------------------------------------------------------
# Config


def _config(tmp_path: Path, cells: dict[str, Any]) -> Any:
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("not checked here\n")
    data = {
        "cell": {"name": "c"},
        "tls": {"ca": "ca.pem", "cert": "c.pem", "key": "c.key"},
        "cells": copy.deepcopy(cells),
    }
    return parse_settings(data, tmp_path)


def test_config_defaults(tmp_path: Path) -> None:
    """Without the keys: 10 s and 64 connections."""
    cells = _config(tmp_path, {}).cells
    assert (cells.handshake_timeout, cells.max_pending_handshakes) == (10.0, 64)


def test_config_values(tmp_path: Path) -> None:
    """The keys are read from [cells]."""
    cells = _config(tmp_path, {"handshake_timeout": 2.5, "max_pending_handshakes": 8}).cells
    assert (cells.handshake_timeout, cells.max_pending_handshakes) == (2.5, 8)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("handshake_timeout", 0, "greater than 0"),
        ("max_pending_handshakes", 0, "at least 1"),
        ("max_pending_handshakes", 2.5, "must be an integer"),
    ],
)
def test_config_refused(tmp_path: Path, key: str, value: Any, says: str) -> None:
    """A bad value is refused naming the key and the rule."""
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, {key: value})
    assert f"cells.{key}" in str(caught.value)
    assert says in str(caught.value)
