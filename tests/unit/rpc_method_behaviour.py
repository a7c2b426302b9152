"""Every CellsAPI method through a transport to the CellsManager, written once.

:class:`RPCMethodBehaviourTests` is a mixin for a trial ``TestCase``. It
serves a CellsManager whose MessageRunner is a :class:`FakeRunner` (which
records each operation and answers canned Responses) and a
:class:`FakeStore`, then runs every CellsAPI method of
:data:`cellsd.rpc.api.RPC_METHODS` (calls and casts) through the transport
under test, asserting for each that

* the request reached the manager, which made exactly the expected runner
  (or store) operations with the expected arguments: objects rebuilt,
  cell paths made full, ``cell@item`` split, older forms brought up to date;
* the caller got the expected result in the expected shape (cell-qualified
  proxies and task logs, summed stats, objects rebuilt), or None for a cast;
* the request context arrived (same user and request id);
* the manager's typed errors come back to the caller as their own class.

It complements tests/unit/rpc_behaviour.py (the transport's own contract,
over a MemoryTree) and uses the same hook, so one class can apply both.

How to apply it to a transport (the in-memory and AMP ones are in
tests/unit/test_rpc_behaviour_memory.py and test_rpc_behaviour_amp.py)::

    class MethodsOverAMQP(RPCMethodBehaviourTests, TestCase):
        def serve(self, manager):
            # Serve `manager` (start a worker dispatching to
            # manager.dispatch), then set self.transport to the client
            # IRPCTransport and self.api = CellsAPI(self.transport).
            # May return a Deferred (trial waits for it in setUp).
            ...

        async def wait(self, d):
            # The outcome of d: its result, or its exception raised, driving
            # the transport as needed (pump a fake connection, or wait on
            # the reactor with a deadline).
            return await d

Casts are accepted before the manager runs them on a real broker: the
assertions wait for the runner's record with ``self.wait(runner.when_called(n))``,
so ``wait`` must give a Deferred time to fire.

The cases are in tests/unit/rpc_cases.py, shared with the version-cap
matrix (tests/unit/test_rpc_version_matrix.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from cellsd.context import RequestContext
from cellsd.errors import (
    CellNotFound,
    CellRoutingInconsistency,
    ComputeHostNotFound,
    InvalidArguments,
    ServiceNotFound,
    UnknownMethod,
)
from cellsd.messaging.message import Response
from cellsd.objects import (
    Instance,
)
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.errors import (
    CellsUpdateUnsupported,
    InstanceUnknownCell,
    KeypairNotFound,
)
from cellsd.rpc.manager import CellsManager
from tests.unit.rpc_cases import (
    C1,
    CASES,
    KEYPAIR,
    ME,
    SERVICE,
    Server,
    api_method_of,
    instance,
    kind_of,
    make_server,
    prepare,
)
from tests.unit.rpc_fakes import calls_of, normalize

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object


# --------------------------------------------------------------------------
# The mixin


class RPCMethodBehaviourTests(_Base):
    """Every CellsAPI method through the transport to the manager (see the
    module docstring for what a subclass provides)."""

    api: CellsAPI
    transport: Any
    server: Server
    ctxt: RequestContext

    def serve(self, manager: CellsManager) -> Deferred[None] | None:
        """Serve ``manager``; set ``self.transport`` and ``self.api``."""
        raise NotImplementedError

    async def wait(self, d: Deferred[Any]) -> Any:
        """The outcome of ``d``: its result, or its exception raised."""
        raise NotImplementedError

    def setUp(self) -> Any:  # None, or serve()'s Deferred (trial waits for it)
        self.server = make_server()
        self.runner = self.server.runner
        self.store = self.server.store
        self.manager = self.server.manager
        self.ctxt = RequestContext(user_id="u1", project_id="p1", is_admin=True)
        return self.serve(self.manager)

    async def fails_with(self, d: Deferred[Any], kind: type[BaseException]) -> BaseException:
        try:
            value = await self.wait(d)
        except kind as e:
            return e
        self.fail(f"expected {kind.__name__}, got the result {value!r}")

    async def check_case(self, name: str) -> None:
        case = CASES[name]
        prepare(self.server, name)
        result = await self.wait(case.invoke(self.api, self.ctxt))
        if case.calls:
            await self.wait(self.runner.when_called(len(case.calls)))
        self.assertEqual(calls_of(self.runner), normalize(case.calls), f"runner calls of {name}")
        self.assertEqual(calls_of(self.store), normalize(case.store_calls), f"store of {name}")
        for call in self.runner.calls:
            self.assertEqual(
                (call.ctxt.user_id, call.ctxt.request_id),
                (self.ctxt.user_id, self.ctxt.request_id),
                f"context of {name}",
            )
        if kind_of(name) == "cast":
            self.assertIsNone(result, name)
        elif case.check is not None:
            case.check(self, result)
        else:
            self.assertEqual(
                normalize(result, changes=False),
                normalize(case.result, changes=False),
                f"result of {name}",
            )

    # -- typed errors, through the transport --------------------------------------

    async def test_service_delete_reports_errors(self) -> None:
        """Fix #11: a failing service_delete (ServiceNotFound in the cell)
        reaches the caller as ServiceNotFound."""
        self.runner.answers["service_delete"] = lambda cell_name, **_: Response(
            cell_name, ServiceNotFound(service_id=7), failure=True
        )
        await self.fails_with(self.api.service_delete(self.ctxt, f"{C1}@7"), ServiceNotFound)

    async def test_keypair_not_found(self) -> None:
        """No cell has the key pair: the caller gets KeypairNotFound."""
        self.runner.answers["get_keypair_at_top"] = [Response(f"{C1}!{ME}", None)]
        err = await self.fails_with(
            self.api.get_keypair_at_top(self.ctxt, "u1", "kp"), KeypairNotFound
        )
        self.assertIn("kp", str(err))

    async def test_keypair_failures_are_not_keypairs(self) -> None:
        """Fix #12: a failure Response is never returned as the key pair; with
        no key pair found, the failure is raised."""
        self.runner.answers["get_keypair_at_top"] = [
            Response("x!top", ComputeHostNotFound(host="h"), failure=True)
        ]
        await self.fails_with(
            self.api.get_keypair_at_top(self.ctxt, "u1", "kp"), ComputeHostNotFound
        )
        self.runner.answers["get_keypair_at_top"] = [
            Response("x!top", ComputeHostNotFound(host="h"), failure=True),
            Response("x!top2", KEYPAIR),
        ]
        found = await self.wait(self.api.get_keypair_at_top(self.ctxt, "u1", "kp"))
        self.assertEqual(found, KEYPAIR)

    async def test_get_migrations_unknown_cell(self) -> None:
        """Fix #10: an unknown cell is CellNotFound, whether this cell sees it
        (no such child: nothing sent) or a cell below does (a routing
        inconsistency in the answer)."""
        err = await self.fails_with(
            self.api.get_migrations(self.ctxt, {"cell_name": "nope"}), CellNotFound
        )
        self.assertIn("api-cell!nope", str(err))
        self.assertEqual(self.runner.calls, [])
        self.runner.answers["get_migrations"] = [
            Response(C1, CellRoutingInconsistency(reason="Unknown child"), failure=True)
        ]
        await self.fails_with(
            self.api.get_migrations(self.ctxt, {"cell_name": f"{C1}!gone"}), CellNotFound
        )

    async def test_one_failing_cell_fails_a_query(self) -> None:
        """service_get_all: one cell's failure fails the call with its error."""
        self.runner.answers["service_get_all"] = [
            Response(ME, [SERVICE]),
            Response(C1, ComputeHostNotFound(host="h9"), failure=True),
        ]
        err = await self.fails_with(self.api.service_get_all(self.ctxt), ComputeHostNotFound)
        self.assertIn("h9", str(err))

    async def test_no_cell_in_host_name(self) -> None:
        """A host or id without ``cell@`` is a routing inconsistency; nothing
        is sent to any cell."""
        await self.fails_with(
            self.api.service_get_by_compute_host(self.ctxt, "h1"), CellRoutingInconsistency
        )
        await self.fails_with(self.api.compute_node_get(self.ctxt, "3"), CellRoutingInconsistency)
        self.assertEqual(self.runner.calls, [])

    async def test_console_port_of_an_instance_without_cell(self) -> None:
        """validate_console_port: an instance with no cell_name in this
        cell's store is InstanceUnknownCell."""
        self.store.instances["inst-2"] = Instance(uuid="inst-2")
        await self.fails_with(
            self.api.validate_console_port(self.ctxt, "inst-2", 5900, "novnc"), InstanceUnknownCell
        )

    async def test_cells_table_without_store(self) -> None:
        """Without a cell store, cell_create is CellsUpdateUnsupported and
        cell_get still answers the configured neighbour."""
        self.manager.store = None
        await self.fails_with(
            self.api.cell_create(self.ctxt, {"name": "x"}), CellsUpdateUnsupported
        )
        cell = await self.wait(self.api.cell_get(self.ctxt, "child-cell2"))
        self.assertEqual((cell.name, cell.is_parent), ("child-cell2", False))
        await self.fails_with(self.api.cell_get(self.ctxt, "nope"), CellNotFound)

    async def test_unknown_method_and_argument(self) -> None:
        """The server names an unknown method and an unknown argument."""
        d = self.transport.call(self.ctxt, "no_such_method", "1.0", {}, 5.0)
        self.assertIn("no_such_method", str(await self.fails_with(d, UnknownMethod)))
        d = self.transport.call(
            self.ctxt, "service_delete", "1.26", {"cell_service_id": f"{C1}@1", "bogus": 1}, 5.0
        )
        self.assertIn("bogus", str(await self.fails_with(d, InvalidArguments)))
        self.assertEqual(self.runner.calls, [])

    async def test_primitive_instance_forms(self) -> None:
        """A 1.34 caller's plain-dict instance reaches the runner as an
        Instance equal to the object form, every field marked changed."""
        d = self.transport.cast(
            self.ctxt, "instance_update_at_top", "1.34", {"instance": instance().to_dict()}
        )
        await self.wait(d)
        await self.wait(self.runner.when_called(1))
        [call] = self.runner.calls
        self.assertEqual(normalize(call.args["instance"]), normalize(instance()))


def _case_test(name: str) -> Callable[[RPCMethodBehaviourTests], Any]:
    async def test(self: RPCMethodBehaviourTests) -> None:
        await self.check_case(name)

    kind = kind_of(name)
    test.__doc__ = (
        f"{api_method_of(name)} ({kind}) reaches the manager, which makes the expected "
        "runner operations; the caller gets the result in its expected shape."
    )
    test.__name__ = "test_" + name.replace(" ", "_").replace("(", "").replace(")", "")
    return test


for _name in CASES:
    _test = _case_test(_name)
    setattr(RPCMethodBehaviourTests, _test.__name__, _test)
