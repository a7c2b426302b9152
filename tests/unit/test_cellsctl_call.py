"""``cellsctl call METHOD '{json}'`` and ``--version-cap``: the whole command,
its checks and its exit codes, against a CellsManager served in memory."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

import cellsd.client
from cellsd.cli import call_cmd, cellsctl
from cellsd.errors import ConfigError, ServiceNotFound
from cellsd.messaging.message import Response
from cellsd.objects import Instance
from cellsd.rpc.api import CellsAPI
from cellsd.testing import memory_api
from tests.unit.rpc_cases import C1, ME, make_server


class CellsctlCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = make_server()
        self.runner = self.server.runner
        self.apis: list[CellsAPI] = []
        self.caps: list[str | None] = []

        def connect(
            reactor: Any, endpoint: Any, version_cap: str | None = None, call_timeout: float = 60
        ) -> Deferred[CellsAPI]:
            self.caps.append(version_cap)
            api = memory_api(self.server.manager, version_cap, call_timeout)
            self.apis.append(api)
            return defer.succeed(api)

        def react(main: Any, argv: Any = ()) -> None:
            # The command runs synchronously against the in-memory server.
            d = main(object())
            self.assertTrue(d.called, "cellsctl did not finish")

        self.patch(cellsd.client, "connect", connect)
        self.patch(task, "react", react)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def cellsctl(self, *argv: str) -> int:
        return cellsctl.main(["--connect", "unix:/x.sock", *argv])

    def sent(self) -> list[Any]:
        return [s for api in self.apis for s in api.transport.sent]  # type: ignore[attr-defined]

    def test_call_prints_the_result_as_json(self) -> None:
        """A call's result is printed as JSON; exit 0."""
        self.runner.answers["compute_node_stats"] = [
            Response(ME, {"count": 1, "vcpus": 2}),
            Response(C1, {"count": 1}),
        ]
        self.assertEqual(self.cellsctl("call", "compute_node_stats"), 0)
        self.assertEqual(json.loads(self.out.getvalue()), {"count": 2, "vcpus": 2})

    def test_keyword_and_positional_arguments(self) -> None:
        """A JSON object gives keyword arguments; an array positional ones,
        as the ``*args`` of call_compute_api_method need."""
        self.runner.answers["run_compute_api_method"] = Response(C1, {"url": "u"})
        args = json.dumps([C1, "get_vnc_console", "inst-1", "novnc"])
        self.assertEqual(self.cellsctl("call", "call_compute_api_method", args), 0)
        self.assertEqual(json.loads(self.out.getvalue()), {"url": "u"})
        info = self.runner.calls[0].args["method_info"]
        self.assertEqual(info["method_args"], ["inst-1", "novnc"])
        instance = json.dumps({"instance": {"uuid": "i", "cell_name": C1}})
        self.assertEqual(self.cellsctl("call", "actions_get", instance), 0)
        self.assertEqual(self.runner.calls[1].args, {"cell_name": C1, "instance_uuid": "i"})

    def test_objects_as_plain_dicts_under_a_cap(self) -> None:
        """With --version-cap kilo, a plain-dict instance is sent in the kilo
        form and reaches the runner as an Instance; a cast prints null."""
        arg = json.dumps({"instance": {"uuid": "inst-7", "cell_name": C1}})
        self.assertEqual(self.cellsctl("--version-cap", "kilo", "call", "start_instance", arg), 0)
        self.assertEqual(self.caps, ["kilo"])
        self.assertEqual(json.loads(self.out.getvalue()), None)
        [sent] = self.sent()
        self.assertEqual(sent.version, "1.12")
        instance = self.runner.calls[0].args["instance"]
        self.assertIsInstance(instance, Instance)
        self.assertEqual(instance.uuid, "inst-7")

    def test_method_newer_than_the_cap(self) -> None:
        """A method newer than --version-cap is refused before sending: the
        message names the cap, exit 2, nothing sent."""
        arg = json.dumps({"user_id": "u1", "name": "kp"})
        code = self.cellsctl("--version-cap", "kilo", "call", "get_keypair_at_top", arg)
        self.assertEqual(code, 2)
        self.assertIn("1.34", self.err.getvalue())
        self.assertEqual(self.sent(), [])
        self.assertEqual(self.runner.calls, [])

    def test_remote_error_exits_4(self) -> None:
        """An error the server answers is printed with its class; exit 4."""
        self.runner.answers["service_delete"] = lambda cell_name, **_: Response(
            cell_name, ServiceNotFound(service_id=7), failure=True
        )
        code = self.cellsctl("call", "service_delete", '{"cell_service_id": "child-cell1@7"}')
        self.assertEqual(code, 4)
        self.assertIn("ServiceNotFound", self.err.getvalue())

    def test_usage_errors_exit_2_without_connecting(self) -> None:
        """An unknown or private method, arguments that are not JSON, not an
        object or array, or do not fit the method, and a bad version cap:
        exit 2, before any connection."""
        for argv in (
            ("call", "no_such_method"),
            ("call", "_send"),
            ("call", "can_send_version", '["1.0"]'),
            ("call", "ping", "{bad"),
            ("call", "ping", "3"),
            ("call", "ping", '{"bogus": 1}'),
            ("call", "service_update", '{"host_name": "x@h"}'),
            ("--version-cap", "bogus", "call", "ping"),
        ):
            self.assertEqual(self.cellsctl(*argv), 2, argv)
        self.assertEqual(self.caps, [])

    def test_prepare_names_the_problem(self) -> None:
        """prepare() says which method or argument is wrong."""
        err = self.assertRaises(ConfigError, call_cmd.prepare, "service_update", "{}")
        self.assertIn("host_name", str(err))
        call = call_cmd.prepare("ping", '{"cell_name": "child-cell1"}')
        self.assertEqual(call, call_cmd.PreparedCall("ping", (), {"cell_name": "child-cell1"}))

    def test_help_documents_call_and_version_cap(self) -> None:
        """--help shows --version-cap with an example, and call's help lists
        examples and every method."""
        parser = cellsctl.build_parser()
        text = parser.format_help()
        self.assertIn("--version-cap", text)
        self.assertIn("--version-cap kilo", text)
        self.assertIn("call", text)
        self.assertIn("grizzly", text)
        self.assertIn("compute_node_stats", call_cmd.EPILOG)
        self.assertIn("get_keypair_at_top", call_cmd.EPILOG)

    def test_json_of_objects_and_proxies(self) -> None:
        """Objects print as their plain fields; service proxies as their
        wire dicts with ``cell@`` ids and hosts."""
        from cellsd.objects import Service

        self.runner.answers["service_get_all"] = [Response(C1, [Service(id=1, host="h1")])]
        self.assertEqual(self.cellsctl("call", "service_get_all"), 0)
        [row] = json.loads(self.out.getvalue())
        self.assertEqual((row["id"], row["host"]), (f"{C1}@1", f"{C1}@h1"))
        self.assertEqual(json.loads(call_cmd.to_json(Instance(uuid="u"))), {"uuid": "u"})
