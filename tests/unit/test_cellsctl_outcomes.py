"""``cellsctl call`` of a state-changing broadcast with per-cell outcomes
(``instance_delete_everywhere_outcomes``): the JSON rows, the summary on
stderr and the exit code, against a CellsManager served in memory."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

import cellsd.client
from cellsd.cli import cellsctl
from cellsd.errors import CellOutcomeUnknown, CellUnreachable
from cellsd.messaging.message import Response
from cellsd.rpc.api import CellsAPI
from cellsd.testing import memory_api
from tests.unit.rpc_cases import C1, C2, C3, make_server

DELETE = json.dumps({"instance": {"uuid": "inst-1"}, "delete_type": "hard"})


class CellsctlOutcomeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = make_server()

        def connect(
            reactor: Any, endpoint: Any, version_cap: str | None = None, call_timeout: float = 60
        ) -> Deferred[CellsAPI]:
            return defer.succeed(memory_api(self.server.manager, version_cap, call_timeout))

        def react(main: Any, argv: Any = ()) -> None:
            self.assertTrue(main(object()).called, "cellsctl did not finish")

        self.patch(cellsd.client, "connect", connect)
        self.patch(task, "react", react)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def cellsctl(self, *argv: str) -> int:
        return cellsctl.main(["--connect", "unix:/x.sock", *argv])

    def test_every_cell_ok(self) -> None:
        """Every row ok: the rows as JSON, nothing on stderr, exit 0."""
        self.server.runner.answers["send_broadcast"] = [Response(C1, None), Response(C2, None)]
        code = self.cellsctl("call", "instance_delete_everywhere_outcomes", DELETE)
        self.assertEqual(code, 0)
        rows = json.loads(self.out.getvalue())
        self.assertEqual(
            rows,
            [
                {"cell": C1, "outcome": "ok", "error": None},
                {"cell": C2, "outcome": "ok", "error": None},
            ],
        )
        self.assertEqual(self.err.getvalue(), "")

    def test_unknown_and_unreachable_are_reported(self) -> None:
        """A cell whose link was cut after sending (unknown) and one never
        reached (unreachable): the JSON rows say so per cell, stderr names
        both with what each means and that a re-run is safe, exit 1."""
        self.server.runner.answers["send_broadcast"] = [
            Response(C1, None),
            Response.from_failure(C2, CellOutcomeUnknown(cell_name=C2, reason="link cut")),
            Response.from_failure(C3, CellUnreachable(cell_name=C3, reason="child-cell3 is down")),
        ]
        code = self.cellsctl("call", "instance_delete_everywhere_outcomes", DELETE)
        self.assertEqual(code, cellsctl.EXIT_CELL_FAILED)
        rows = {r["cell"]: r for r in json.loads(self.out.getvalue())}
        self.assertEqual(
            {cell: r["outcome"] for cell, r in rows.items()},
            {C1: "ok", C2: "unknown", C3: "unreachable"},
        )
        self.assertTrue(rows[C2]["error"].startswith("CellOutcomeUnknown: "))
        self.assertIn("child-cell3 is down", rows[C3]["error"])
        err = self.err.getvalue()
        self.assertIn("1 of 3 cells ok", err)
        self.assertIn(f"unknown      {C2}", err)
        self.assertIn(f"unreachable  {C3}", err)
        self.assertIn("may have been applied", err)
        self.assertIn("Re-run", err)

    def test_refused_under_a_liberty_cap(self) -> None:
        """The 1.39 method under --version-cap liberty is refused before
        sending (exit 2), like any method newer than the cap."""
        code = self.cellsctl(
            "--version-cap", "liberty", "call", "instance_delete_everywhere_outcomes", DELETE
        )
        self.assertEqual(code, cellsctl.EXIT_USAGE)
        self.assertIn("1.39", self.err.getvalue())
        self.assertEqual(self.server.runner.calls, [])
