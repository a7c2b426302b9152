"""Errors and their remote form (behaviour §2.5, §2.8)."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase

from cellsd import errors
from cellsd.errors import (
    ALLOWED_MODULES,
    CellMaxHopCountReached,
    CellNotFound,
    CellRoutingInconsistency,
    CellsError,
    CellTimeout,
    CellUnreachable,
    RemoteError,
    allow_remote_module,
    deserialize_remote_exception,
    serialize_remote_exception,
)


class LocalBoom(Exception):
    """An exception from a module that is not on the allowed list."""


def raised(exc: BaseException) -> BaseException:
    """``exc`` after it has been raised, so it carries a traceback."""
    try:
        raise exc
    except BaseException as e:
        return e


def over_the_wire(exc: BaseException) -> BaseException:
    """Serialize, pass through JSON, and rebuild, as a neighbour would."""
    data = orjson.loads(orjson.dumps(serialize_remote_exception(exc)))
    return deserialize_remote_exception(data)


class MessageTests(SynchronousTestCase):
    """CellsError messages come from a template and keyword arguments."""

    def test_templates(self) -> None:
        """The routing errors read as the reference says (§2.2, §2.5)."""
        self.assertEqual(
            str(CellRoutingInconsistency(reason="r")), "Inconsistency in cell routing: r"
        )
        self.assertEqual(
            str(CellMaxHopCountReached(hop_count=3)),
            "Cell message has reached maximum hop count: 3",
        )
        self.assertEqual(
            str(CellTimeout(cell_name="a!b")), "Timeout waiting for response from cell a!b"
        )
        self.assertEqual(str(CellNotFound(cell_name="x")), "Cell x doesn't exist.")

    def test_codes(self) -> None:
        """Status codes: a timeout is a gateway timeout (504), not a 404 (§8.1.3)."""
        self.assertEqual(CellTimeout.code, 504)
        self.assertEqual(CellUnreachable.code, 503)
        self.assertEqual(CellNotFound.code, 404)
        self.assertEqual(CellRoutingInconsistency.code, 500)

    def test_explicit_message_wins(self) -> None:
        """A message given explicitly replaces the template."""
        e = CellNotFound("custom text", cell_name="x")
        self.assertEqual(str(e), "custom text")
        self.assertEqual(e.kwargs, {"cell_name": "x"})

    def test_missing_template_argument(self) -> None:
        """A missing template argument does not raise; the template is kept."""
        e = CellNotFound()
        self.assertIn("Cell {cell_name} doesn't exist.", str(e))


class RemoteExceptionTests(SynchronousTestCase):
    """Exceptions rebuilt from the wire: allow-listed classes only."""

    def test_cells_error_round_trip(self) -> None:
        """A cellsd error comes back as its own class, with its message,
        arguments and code, and the remote traceback in its string form."""
        exc = raised(CellNotFound(cell_name="child-cell9"))
        data = serialize_remote_exception(exc)
        self.assertEqual(data["class"], "CellNotFound")
        self.assertEqual(data["module"], "cellsd.errors")
        self.assertEqual(data["message"], "Cell child-cell9 doesn't exist.")
        self.assertEqual(data["kwargs"], {"cell_name": "child-cell9", "code": 404})
        self.assertTrue(data["tb"])

        got = over_the_wire(exc)
        self.assertIsInstance(got, CellNotFound)
        self.assertIsInstance(got, CellsError)
        assert isinstance(got, CellNotFound)
        self.assertEqual(got.message, "Cell child-cell9 doesn't exist.")
        self.assertEqual(got.kwargs, {"cell_name": "child-cell9"})
        self.assertEqual(got.code, 404)
        self.assertEqual(type(got).__name__, "CellNotFound_Remote")
        self.assertEqual(type(got).__module__, "cellsd.errors_Remote")
        text = str(got)
        self.assertTrue(text.startswith("Cell child-cell9 doesn't exist.\n"), text)
        self.assertIn("Traceback (most recent call last)", text)
        self.assertIn("test_errors.py", text)

    def test_every_routing_error_round_trips(self) -> None:
        """Each routing error keeps its class and message across the wire."""
        for exc in [
            CellRoutingInconsistency(reason="Unknown child when routing to a!b"),
            CellMaxHopCountReached(hop_count=10),
            CellTimeout(cell_name="a!b"),
            CellUnreachable(cell_name="a!b", reason="connection lost"),
        ]:
            got = over_the_wire(exc)
            self.assertIsInstance(got, type(exc))
            self.assertEqual(str(got), str(exc))

    def test_builtin_round_trip(self) -> None:
        """A builtin exception comes back as the builtin, message kept,
        remote traceback attached."""
        got = over_the_wire(raised(ValueError("bad flavor")))
        self.assertIsInstance(got, ValueError)
        self.assertTrue(str(got).startswith("bad flavor"))
        self.assertIn("Traceback", "".join(got.remote_traceback))  # type: ignore[attr-defined]

    def test_builtin_with_several_args(self) -> None:
        """A builtin's arguments are all kept."""
        got = over_the_wire(OSError(2, "No such file"))
        self.assertIsInstance(got, OSError)
        assert isinstance(got, OSError)
        self.assertEqual(got.errno, 2)
        self.assertEqual(got.strerror, "No such file")
        key = over_the_wire(KeyError("instance-1"))
        self.assertIsInstance(key, KeyError)
        self.assertEqual(key.args, ("instance-1",))

    def test_module_not_allowed_is_a_remote_error(self) -> None:
        """A class from a module that is not allowed becomes a RemoteError
        naming the class and carrying the message and remote traceback."""
        exc = raised(LocalBoom("kaboom"))
        data = serialize_remote_exception(exc)
        self.assertEqual(data["module"], __name__)
        self.assertNotIn(__name__, ALLOWED_MODULES)
        got = deserialize_remote_exception(data)
        self.assertIsInstance(got, RemoteError)
        self.assertNotIsInstance(got, LocalBoom)
        assert isinstance(got, RemoteError)
        self.assertEqual(got.exc_type, "LocalBoom")
        self.assertEqual(got.value, "kaboom")
        self.assertIn("Traceback", got.traceback)
        self.assertTrue(str(got).startswith("Remote error: LocalBoom kaboom\n"), str(got))

    def test_allow_remote_module(self) -> None:
        """Once its module is allowed, a class is rebuilt as itself."""
        self.addCleanup(ALLOWED_MODULES.discard, __name__)
        allow_remote_module(__name__)
        got = over_the_wire(raised(LocalBoom("kaboom")))
        self.assertIsInstance(got, LocalBoom)
        self.assertEqual(type(got).__name__, "LocalBoom_Remote")
        self.assertTrue(str(got).startswith("kaboom\n"))
        self.assertIn("Traceback", str(got))

    def test_nothing_else_is_rebuilt(self) -> None:
        """Names that are not Exception classes of an allowed, loaded module
        are never imported or instantiated: they become RemoteError."""
        cases: list[dict[str, Any]] = [
            {"class": "system", "module": "os", "message": "rm -rf"},
            {"class": "SystemExit", "module": "builtins", "message": "bye"},
            {"class": "KeyboardInterrupt", "module": "builtins", "message": "^C"},
            {"class": "ALLOWED_MODULES", "module": "cellsd.errors", "message": "x"},
            {"class": "allow_remote_module", "module": "cellsd.errors", "message": "x"},
            {"class": "NoSuchError", "module": "cellsd.errors", "message": "x"},
            {"class": "open", "module": "builtins", "message": "x"},
            {},
        ]
        for data in cases:
            got = deserialize_remote_exception(data)
            self.assertIsInstance(got, RemoteError, data)
            assert isinstance(got, RemoteError)
            self.assertEqual(got.exc_type, data.get("class", "Unknown"))

    def test_allowed_but_not_loaded_module(self) -> None:
        """An allowed module that is not loaded is not imported from the wire."""
        self.addCleanup(ALLOWED_MODULES.discard, "cellsd_no_such_module")
        allow_remote_module("cellsd_no_such_module")
        got = deserialize_remote_exception(
            {"class": "Boom", "module": "cellsd_no_such_module", "message": "m"}
        )
        self.assertIsInstance(got, RemoteError)

    def test_bad_constructor_arguments(self) -> None:
        """A class that cannot be built from the arguments sent is a RemoteError."""
        got = deserialize_remote_exception(
            {"class": "UnicodeDecodeError", "module": "builtins", "message": "m", "args": [1]}
        )
        self.assertIsInstance(got, RemoteError)

    def test_remote_suffix_stripped_across_hops(self) -> None:
        """Re-serializing a rebuilt error names the original class and module,
        so after several hops it is still the original type (not
        ``_Remote_Remote``) and the first cell's traceback is kept."""
        first = raised(CellTimeout(cell_name="api-cell!child-cell2!grandchild-cell1"))
        hop1 = over_the_wire(first)
        data = serialize_remote_exception(hop1)
        self.assertEqual(data["class"], "CellTimeout")
        self.assertEqual(data["module"], "cellsd.errors")
        hop2 = deserialize_remote_exception(data)
        hop3 = over_the_wire(raised(hop2))
        for got in [hop2, hop3]:
            self.assertIsInstance(got, CellTimeout)
            self.assertEqual(type(got).__name__, "CellTimeout_Remote")
            self.assertEqual(type(got).__module__, "cellsd.errors_Remote")
            self.assertTrue(
                str(got).startswith(
                    "Timeout waiting for response from cell api-cell!child-cell2!grandchild-cell1"
                )
            )
            self.assertIn("test_errors.py", str(got))
        # The raise at the second hop added its own traceback after the first.
        self.assertGreater(
            len(hop3.remote_traceback),  # type: ignore[attr-defined]
            len(hop2.remote_traceback),  # type: ignore[attr-defined]
        )

    def test_remote_error_across_hops(self) -> None:
        """A RemoteError relayed further keeps naming the original class."""
        hop1 = over_the_wire(raised(LocalBoom("kaboom")))
        hop2 = over_the_wire(hop1)
        self.assertIsInstance(hop2, RemoteError)
        assert isinstance(hop2, RemoteError)
        self.assertEqual(hop2.exc_type, "LocalBoom")
        self.assertEqual(hop2.value, "kaboom")

    def test_unjsonable_arguments(self) -> None:
        """Arguments with no JSON form are sent as strings, never dropped."""
        data = serialize_remote_exception(ValueError(object(), {1, 2}))
        orjson.dumps(data)
        self.assertEqual(len(data["args"]), 2)
        e = CellNotFound(cell_name=("a", "b"))
        self.assertEqual(serialize_remote_exception(e)["kwargs"]["cell_name"], ["a", "b"])

    def test_module_attribute(self) -> None:
        """The errors module itself is on the allowed list by default."""
        self.assertIn(errors.__name__, ALLOWED_MODULES)
        self.assertIn("builtins", ALLOWED_MODULES)
