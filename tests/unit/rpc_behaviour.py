"""The behaviour every IRPCTransport shares, written once.

:class:`RPCBehaviourTests` is a mixin for a trial ``TestCase``: the same
assertions run over AMP on iosim (tests/unit/test_rpc_amp.py) and over AMQP
against a real RabbitMQ (tests/integration/test_amqp.py). A subclass serves
a :class:`~cellsd.rpc.manager.CellsManager` over the eight-cell
:class:`~cellsd.testing.MemoryTree` and sets ``self.tree``, ``self.transport``
(the client side) and ``self.api`` (a CellsAPI over it), and implements
:meth:`wait`. Checks that only make sense for one transport (fake-clock
timeouts, a dropped iosim connection, a broker restart) stay in that
transport's own test module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from cellsd.context import RequestContext
from cellsd.errors import CellNotFound, InvalidArguments, NotConnected, UnknownMethod
from cellsd.interfaces import IRPCTransport
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.errors import RPCVersionCapError
from cellsd.testing import MemoryTree

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object


class RPCBehaviourTests(_Base):
    tree: MemoryTree
    transport: Any
    api: CellsAPI
    ctxt = RequestContext(is_admin=True)

    async def wait(self, d: Deferred[Any]) -> Any:
        """The outcome of ``d``: its result, or its exception raised."""
        raise NotImplementedError

    async def fails_with(self, d: Deferred[Any], kind: type[BaseException]) -> BaseException:
        try:
            value = await self.wait(d)
        except kind as e:
            return e
        self.fail(f"expected {kind.__name__}, got the result {value!r}")

    def test_transport_contract(self) -> None:
        """The transport provides IRPCTransport (call, cast, close)."""
        verifyObject(IRPCTransport, self.transport)

    async def test_ping_a_grandchild(self) -> None:
        """ping answers with the full path seen from the served cell."""
        row = await self.wait(self.api.ping(self.ctxt, "child-cell2!grandchild-cell1"))
        self.assertEqual(row["cell"], "api-cell!child-cell2!grandchild-cell1")
        self.assertTrue(row["ok"])
        self.assertIsNone(row["error"])
        self.assertIsInstance(row["ms"], float)

    async def test_ping_all(self) -> None:
        """ping_all lists every cell below, the served one included."""
        rows = await self.wait(self.api.ping_all(self.ctxt))
        self.assertEqual(len(rows), 8)
        self.assertTrue(all(r["ok"] for r in rows))
        self.assertIn("api-cell", [r["cell"] for r in rows])

    async def test_ping_all_reports_a_dead_cell(self) -> None:
        """A cell that is down is one failed row; the rest answer."""
        self.tree.network.down.add("child-cell4")
        rows = await self.wait(self.api.ping_all(self.ctxt))
        failed = [r for r in rows if not r["ok"]]
        self.assertEqual([r["cell"] for r in failed], ["api-cell!child-cell4"])
        self.assertIn("CellUnreachable", failed[0]["error"])
        self.assertEqual(len(rows), 8)

    async def test_tree(self) -> None:
        """tree lists every cell with its children and the neighbours' state."""
        tree = await self.wait(self.api.tree(self.ctxt))
        self.assertEqual(tree["cell"], "api-cell")
        self.assertEqual(len(tree["cells"]), 8)
        names = [n["name"] for n in tree["neighbours"]]
        self.assertEqual(names, ["child-cell1", "child-cell2", "child-cell3", "child-cell4"])

    async def test_remote_errors_keep_their_type(self) -> None:
        """A server-side error (get_capacities of an unknown cell) arrives as
        its own class, rebuilt from the allow-list."""
        err = await self.fails_with(
            self.api.get_capacities(self.ctxt, "no-such-cell"), CellNotFound
        )
        self.assertIn("no-such-cell", str(err))

    async def test_unknown_method_and_bad_arguments(self) -> None:
        """The server refuses methods it does not serve and arguments that
        do not fit, naming them."""
        d = self.transport.call(self.ctxt, "no_such_method", "1.0", {}, 5.0)
        err = await self.fails_with(d, UnknownMethod)
        self.assertIn("no_such_method", str(err))
        d = self.transport.call(self.ctxt, "ping", "1.38", {"bogus": 1}, 5.0)
        err = await self.fails_with(d, InvalidArguments)
        self.assertIn("bogus", str(err))
        d = self.transport.call(self.ctxt, "ping", "2.0", {}, 5.0)
        await self.fails_with(d, InvalidArguments)

    async def test_version_cap_refuses_diagnostics_on_the_callers_side(self) -> None:
        """Under a liberty cap the 1.38 diagnostics are refused before sending."""
        api = CellsAPI(self.transport, version_cap="liberty")
        await self.fails_with(api.ping(self.ctxt), RPCVersionCapError)

    async def test_cast_is_accepted(self) -> None:
        """A cast fires with None once the transport has accepted it."""
        self.assertIsNone(await self.wait(self.transport.cast(self.ctxt, "ping", "1.38", {})))

    async def test_closed_transport(self) -> None:
        """After close(), calls and casts fail with NotConnected at once."""
        self.transport.close()
        d = self.transport.call(self.ctxt, "ping", "1.38", {}, 5.0)
        await self.fails_with(d, NotConnected)
        await self.fails_with(self.transport.cast(self.ctxt, "ping", "1.38", {}), NotConnected)
