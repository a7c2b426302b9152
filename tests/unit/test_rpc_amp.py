"""The local RPC API over AMP, in memory: CellsAPI -> AMP -> CellsManager -> tree.

The assertions every transport shares are in tests/unit/rpc_behaviour.py;
here are those that need iosim and a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cellsd.client import client_endpoint_for
from cellsd.context import RequestContext
from cellsd.errors import (
    CallTimeout,
    NotConnected,
)
from cellsd.rpc.amp_transport import AMPTransport, RPCServerFactory
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.manager import CellsManager
from cellsd.testing import MemoryTree
from tests.unit.rpc_behaviour import RPCBehaviourTests


class RPCOverAMPTests(RPCBehaviourTests, TestCase):
    """The shared RPC behaviour over AMP on iosim, time from a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tree = MemoryTree(self.clock)
        runner = self.tree["api-cell"]
        self.manager = CellsManager(runner, runner.state, self.clock)
        factory = RPCServerFactory(self.manager, 16 * 1024 * 1024)
        self.client_proto, self.server_proto, self.pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), amp.AMP, clock=self.clock
        )
        self.transport = AMPTransport(self.client_proto, self.clock)
        self.api = CellsAPI(self.transport, call_timeout=10.0)
        self.ctxt = RequestContext(is_admin=True)

    async def wait(self, d: Deferred[Any]) -> Any:
        self.pump.flush()
        self.assertTrue(d.called, "no answer after flushing the connection")
        return await d

    def test_call_timeout(self) -> None:
        """A call that gets no answer fails with CallTimeout at its deadline."""
        self.tree.network.blackholes.add("child-cell1")
        d = self.transport.call(self.ctxt, "ping", "1.38", {"cell_name": "child-cell1"}, 2.0)
        self.pump.flush()
        self.assertNoResult(d)
        self.clock.advance(2.1)
        self.assertIsInstance(self.failureResultOf(d).value, CallTimeout)

    def test_connection_lost_fails_calls(self) -> None:
        """A call in flight when the connection drops fails, it does not hang."""
        self.tree.network.blackholes.add("child-cell1")
        d = self.transport.call(self.ctxt, "ping", "1.38", {"cell_name": "child-cell1"}, 30.0)
        self.pump.flush()
        self.transport.close()
        self.pump.flush()
        self.assertIsInstance(self.failureResultOf(d).value, NotConnected)


class ClientEndpointTests(SynchronousTestCase):
    def test_server_strings_become_client_strings(self) -> None:
        """cellsctl -c turns [api] listen into something it can dial."""
        self.assertEqual(client_endpoint_for("unix:/run/c.sock:mode=600"), "unix:/run/c.sock")
        self.assertEqual(client_endpoint_for("tcp:7101:interface=127.0.0.1"), "tcp:127.0.0.1:7101")
        self.assertEqual(client_endpoint_for("tcp:8000"), "tcp:127.0.0.1:8000")
        self.assertEqual(client_endpoint_for("tcp:10.0.0.1:900"), "tcp:10.0.0.1:900")
        self.assertEqual(client_endpoint_for("unix:/x:timeout=3:lockfile=0"), "unix:/x:timeout=3")
