"""Every CellsAPI method over AMP (on iosim) to the CellsManager.

The assertions are in tests/unit/rpc_method_behaviour.py; here the transport
is the local AMP one, client and server joined by an in-memory connection
whose bytes are pumped by :meth:`wait`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import TestCase

from cellsd.rpc.amp_transport import AMPTransport, RPCServerFactory
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.manager import CellsManager
from tests.unit.rpc_method_behaviour import RPCMethodBehaviourTests


class MethodsOverAMPTests(RPCMethodBehaviourTests, TestCase):
    """The shared method behaviour over AMP on iosim."""

    def serve(self, manager: CellsManager) -> None:
        self.clock = Clock()
        factory = RPCServerFactory(manager, 16 * 1024 * 1024)
        client, _server, self.pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), amp.AMP, clock=self.clock
        )
        self.transport = AMPTransport(client, self.clock)
        self.api = CellsAPI(self.transport, call_timeout=10.0)

    async def wait(self, d: Deferred[Any]) -> Any:
        self.pump.flush()
        self.assertTrue(d.called, "no answer after flushing the connection")
        return await d
