"""The local RPC API over AMP, in memory: CellsAPI -> AMP -> CellsManager -> tree.

The assertions every transport shares are in tests/unit/rpc_behaviour.py;
here are those that need iosim and a Clock.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cellsd.client import client_endpoint_for
from cellsd.context import RequestContext
from cellsd.errors import (
    CallTimeout,
    NotConnected,
    OutboxFull,
)
from cellsd.objects import Instance
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


class DurableCastTests(SynchronousTestCase):
    def test_a_cast_the_cell_cannot_store_fails_for_the_caller(self) -> None:
        """Injected: the outbox of child-cell1 is full. An
        instance_update_at_top cast over AMP fails with OutboxFull naming
        the limit (it is acknowledged only once stored), while an ordinary
        cast is still acknowledged on receipt."""
        clock = Clock()
        tree = MemoryTree(clock)
        runner = tree["child-cell1"]
        full = OutboxFull(
            cell_name="child-cell1", count=5, limit=5, method="m", neighbour="api-cell"
        )
        runner.outbox = cast(Any, FullOutbox(full))
        factory = RPCServerFactory(CellsManager(runner, runner.state, clock), 1 << 20)
        client, _server, pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), amp.AMP, clock=clock
        )
        api = CellsAPI(AMPTransport(client, clock), call_timeout=10.0)
        ctxt = RequestContext(is_admin=True)
        instance = Instance(uuid="0b3c2f6e-1111-4a5a-9c1e-2f1d6a7b8c9d", cell_name="x")
        d = api.instance_update_at_top(ctxt, instance)
        pump.flush()
        err = self.failureResultOf(d).value
        self.assertIsInstance(err, OutboxFull)
        self.assertIn("limit 5", str(err))
        d = api.instance_fault_create_at_top(ctxt, {"instance_uuid": instance.uuid, "code": 1})
        pump.flush()
        self.assertIsInstance(self.failureResultOf(d).value, OutboxFull)
        # Not a must-deliver message: acknowledged on receipt as before.
        d = api.stop_instance(ctxt, instance)
        pump.flush()
        self.assertIsNone(self.successResultOf(d))


class FullOutbox:
    """An outbox at its limit."""

    def __init__(self, error: OutboxFull) -> None:
        self.error = error

    def put(self, msg: Any, received: bool = False) -> Deferred[bool]:
        return fail(self.error)


class ClientEndpointTests(SynchronousTestCase):
    def test_server_strings_become_client_strings(self) -> None:
        """cellsctl -c turns [api] listen into something it can dial."""
        self.assertEqual(client_endpoint_for("unix:/run/c.sock:mode=600"), "unix:/run/c.sock")
        self.assertEqual(client_endpoint_for("tcp:7101:interface=127.0.0.1"), "tcp:127.0.0.1:7101")
        self.assertEqual(client_endpoint_for("tcp:8000"), "tcp:127.0.0.1:8000")
        self.assertEqual(client_endpoint_for("tcp:10.0.0.1:900"), "tcp:10.0.0.1:900")
        self.assertEqual(client_endpoint_for("unix:/x:timeout=3:lockfile=0"), "unix:/x:timeout=3")
