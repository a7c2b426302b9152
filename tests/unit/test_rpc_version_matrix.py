"""The version-cap matrix against a current server.

Every CellsAPI method (the cases of tests/unit/rpc_cases.py) under every
release alias, and under no cap, is sent to a current CellsManager (over a
FakeRunner) through the in-memory transport. Under each cap the call either

* has the effect of the uncapped call: the manager made the same runner and
  store operations with equivalent arguments (a 1.34 caller's plain-dict
  instance is rebuilt into an Instance equal to the object one, changed
  fields included) and the caller got the same result; the message sent
  carried a version within the cap; or
* fails on the caller's side with RPCVersionCapError, and nothing was sent
  and nothing reached the manager; this happens exactly when even the
  method's oldest form is newer than the cap.

The one difference allowed is an argument the capped version cannot carry
(:data:`DROPPED`: clean_shutdown before 1.31/1.33, delete_type before 1.36):
the manager then applies that argument's default, as an older server
would, and the matrix expects exactly that.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cellsd.context import RequestContext
from cellsd.rpc.api import RPC_METHODS, VERSION_ALIASES
from cellsd.rpc.api_backports import can_send_version
from cellsd.rpc.errors import RPCVersionCapError
from cellsd.testing import memory_api
from tests.unit.rpc_cases import CASES, api_method_of, make_server, prepare
from tests.unit.rpc_fakes import calls_of, normalize

CAPS: list[str | None] = [None, *VERSION_ALIASES]
#: Caps between the aliases, where the backports step (build_instances at
#: 1.32 and 1.30, stop at 1.31, resize at 1.33, terminate at 1.36).
BETWEEN = ["1.8", "1.30", "1.31", "1.32", "1.33", "1.35", "1.36"]

#: The oldest form of the methods that step down under a cap (behaviour
#: §4.2); every other method has one form, its RPC_METHODS version.
OLDEST = {
    "build_instances": "1.8",
    "instance_update_at_top": "1.34",
    "instance_destroy_at_top": "1.34",
    "instance_info_cache_update_at_top": "1.34",
    "instance_delete_everywhere": "1.0",
    "bdm_update_or_create_at_top": "1.10",
    "stop_instance": "1.12",
    "terminate_instance": "1.18",
    "resize_instance": "1.20",
}


#: (CellsAPI method, argument, version that added it, the server's default)
DROPPED = [
    ("stop_instance", "clean_shutdown", "1.31", True),
    ("resize_instance", "clean_shutdown", "1.33", True),
    ("terminate_instance", "delete_type", "1.36", "delete"),
]


def expected_calls(name: str, baseline: list[Any], version: str) -> list[Any]:
    """The uncapped runner calls, with the arguments ``version`` cannot
    carry at their defaults."""
    calls = copy.deepcopy(baseline)
    for method, arg, since, default in DROPPED:
        if api_method_of(name) == method and not can_send_version(since, version):
            for call in calls:
                call[1][arg] = default
    return calls


def oldest(name: str) -> str:
    method = api_method_of(name)
    return OLDEST.get(method, RPC_METHODS[method].version)


class VersionCapMatrixTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ctxt = RequestContext(user_id="u1", project_id="p1", is_admin=True)

    def outcome(self, name: str, cap: str | None) -> dict[str, Any]:
        """Run one case under ``cap`` against a fresh current server."""
        server = make_server()
        prepare(server, name)
        api = memory_api(server.manager, version_cap=cap)
        d = CASES[name].invoke(api, self.ctxt)
        failures: list[Failure] = []

        def failed(f: Failure) -> None:
            failures.append(f)

        d.addErrback(failed)
        self.assertTrue(d.called, f"{name} under {cap!r} did not finish")
        result = None if failures else self.successResultOf(d)
        return {
            "sent": api.transport.sent,  # type: ignore[attr-defined]
            "runner": calls_of(server.runner),
            "store": calls_of(server.store),
            "error": failures[0].value if failures else None,
            "result": result,
        }

    def check(self, name: str, caps: list[str | None]) -> None:
        case = CASES[name]
        baseline = self.outcome(name, None)
        self.assertIsNone(baseline["error"], f"{name} uncapped failed: {baseline['error']!r}")
        for cap in caps:
            where = f"{name} under cap {cap!r}"
            resolved = VERSION_ALIASES.get(cap, cap) if cap else None
            got = self.outcome(name, cap)
            if not can_send_version(oldest(name), resolved):
                self.assertIsInstance(got["error"], RPCVersionCapError, where)
                self.assertEqual(got["error"].cap, resolved, where)
                self.assertEqual((got["sent"], got["runner"], got["store"]), ([], [], []), where)
                continue
            self.assertIsNone(got["error"], where)
            [sent] = got["sent"]
            self.assertTrue(can_send_version(sent.version, resolved), where)
            self.assertEqual(
                got["runner"], expected_calls(name, baseline["runner"], sent.version), where
            )
            self.assertEqual(got["store"], baseline["store"], where)
            if case.check is not None:
                case.check(self, got["result"])
            else:
                self.assertEqual(
                    normalize(got["result"], changes=False),
                    normalize(baseline["result"], changes=False),
                    where,
                )

    def test_every_method_under_every_alias(self) -> None:
        """Every method x (no cap + every alias): the uncapped effect at a
        current manager, or RPCVersionCapError with nothing sent."""
        for name in sorted(CASES):
            self.check(name, CAPS)

    def test_caps_between_the_aliases(self) -> None:
        """The same at the caps where the backports take their other steps."""
        for name in sorted(CASES):
            self.check(name, list(BETWEEN))

    def test_the_matrix_refuses_and_accepts(self) -> None:
        """The matrix is not vacuous: grizzly refuses most methods, liberty
        refuses only cellsd's own methods (1.38 and 1.39), kilo sends older
        forms."""
        refused = {
            cap: sorted(n for n in CASES if not can_send_version(oldest(n), VERSION_ALIASES[cap]))
            for cap in VERSION_ALIASES
        }
        self.assertEqual(
            refused["liberty"],
            [
                "instance_delete_everywhere_outcomes",
                "instance_list",
                "ping",
                "ping_all",
                "sync_instances_outcomes",
                "tree",
            ],
        )
        self.assertIn("build_instances", refused["grizzly"])
        self.assertIn("get_keypair_at_top", refused["kilo"])
        sent = self.outcome("instance_update_at_top", "kilo")["sent"]
        self.assertEqual(sent[0].version, "1.34")
        self.assertNotIn("nova_object.name", sent[0].kwargs["instance"])
        stop = self.outcome("stop_instance", "juno")
        self.assertEqual(stop["sent"][0].version, "1.12")
        self.assertTrue(stop["runner"][0][1]["clean_shutdown"])
