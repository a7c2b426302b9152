"""The local RPC API over AMP, in memory: CellsAPI -> AMP -> CellsManager -> tree."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cellsd.client import client_endpoint_for
from cellsd.context import RequestContext
from cellsd.errors import (
    CallTimeout,
    CellNotFound,
    InvalidArguments,
    NotConnected,
    UnknownMethod,
)
from cellsd.interfaces import IRPCTransport
from cellsd.rpc.amp_transport import AMPTransport, RPCServerFactory
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.errors import RPCVersionCapError
from cellsd.rpc.manager import CellsManager
from cellsd.testing import MemoryTree


class RPCOverAMPTests(SynchronousTestCase):
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

    def result(self, d: Any) -> Any:
        self.pump.flush()
        return self.successResultOf(d)

    def failure(self, d: Any) -> Any:
        self.pump.flush()
        return self.failureResultOf(d)

    def test_transport_contract(self) -> None:
        """The AMP transport provides IRPCTransport."""
        verifyObject(IRPCTransport, self.transport)

    def test_ping_a_grandchild(self) -> None:
        """ping answers with the full path seen from the connected cell."""
        row = self.result(self.api.ping(self.ctxt, "child-cell2!grandchild-cell1"))
        self.assertEqual(row["cell"], "api-cell!child-cell2!grandchild-cell1")
        self.assertTrue(row["ok"])
        self.assertIsNone(row["error"])
        self.assertIsInstance(row["ms"], float)

    def test_ping_all_down_and_up(self) -> None:
        """ping_all lists every cell below, the connected one included."""
        rows = self.result(self.api.ping_all(self.ctxt))
        self.assertEqual(len(rows), 8)
        self.assertTrue(all(r["ok"] for r in rows))
        self.assertIn("api-cell", [r["cell"] for r in rows])

    def test_ping_all_reports_a_dead_cell(self) -> None:
        """A cell that is down is one failed row; the rest answer."""
        self.tree.network.down.add("child-cell4")
        rows = self.result(self.api.ping_all(self.ctxt))
        failed = [r for r in rows if not r["ok"]]
        self.assertEqual([r["cell"] for r in failed], ["api-cell!child-cell4"])
        self.assertIn("CellUnreachable", failed[0]["error"])
        self.assertEqual(len(rows), 8)

    def test_tree(self) -> None:
        """tree lists every cell with its children and the neighbours' state."""
        tree = self.result(self.api.tree(self.ctxt))
        self.assertEqual(tree["cell"], "api-cell")
        self.assertEqual(len(tree["cells"]), 8)
        names = [n["name"] for n in tree["neighbours"]]
        self.assertEqual(names, ["child-cell1", "child-cell2", "child-cell3", "child-cell4"])

    def test_remote_errors_keep_their_type(self) -> None:
        """A server-side error arrives as its own class."""
        f = self.failure(self.api.get_capacities(self.ctxt, "no-such-cell"))
        self.assertIsInstance(f.value, CellNotFound)

    def test_unknown_method_and_bad_arguments(self) -> None:
        """The server refuses methods it does not serve and arguments that
        do not fit, naming them."""
        d = self.transport.call(self.ctxt, "no_such_method", "1.0", {}, 5.0)
        self.assertIsInstance(self.failure(d).value, UnknownMethod)
        d = self.transport.call(self.ctxt, "ping", "1.38", {"bogus": 1}, 5.0)
        err = self.failure(d).value
        self.assertIsInstance(err, InvalidArguments)
        self.assertIn("bogus", str(err))
        d = self.transport.call(self.ctxt, "ping", "2.0", {}, 5.0)
        self.assertIsInstance(self.failure(d).value, InvalidArguments)

    def test_version_cap_refuses_diagnostics_on_the_callers_side(self) -> None:
        """Under a liberty cap the 1.38 diagnostics are refused before sending."""
        api = CellsAPI(self.transport, version_cap="liberty")
        f = self.failure(api.ping(self.ctxt))
        self.assertIsInstance(f.value, RPCVersionCapError)

    def test_call_timeout(self) -> None:
        """A call that gets no answer fails with CallTimeout at its deadline."""
        self.tree.network.blackholes.add("child-cell1")
        d = self.transport.call(self.ctxt, "ping", "1.38", {"cell_name": "child-cell1"}, 2.0)
        self.pump.flush()
        self.assertNoResult(d)
        self.clock.advance(2.1)
        self.assertIsInstance(self.failureResultOf(d).value, CallTimeout)

    def test_cast_is_accepted_at_once(self) -> None:
        """A cast fires with None once cellsd has accepted it."""
        d = self.transport.cast(self.ctxt, "ping", "1.38", {})
        self.assertIsNone(self.result(d))

    def test_closed_transport(self) -> None:
        """After close(), calls fail with NotConnected instead of hanging."""
        self.transport.close()
        d = self.transport.call(self.ctxt, "ping", "1.38", {}, 5.0)
        self.assertIsInstance(self.failureResultOf(d).value, NotConnected)

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
