"""Messages, headers, bodies and Responses (behaviour §2.1-2.7, §8.1.6-7)."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase

from cellsd.context import RequestContext
from cellsd.errors import (
    CellNotFound,
    CellRoutingInconsistency,
    CellTimeout,
    MalformedMessage,
    RemoteError,
)
from cellsd.messaging.message import (
    BROADCAST,
    RESPONSE,
    TARGETED,
    Body,
    BroadcastMessage,
    Header,
    Response,
    ResponseMessage,
    TargetedMessage,
    build_message,
    decode_responses,
    encode_responses,
    get_message_types,
    join_encoded,
    message_from_json,
    received_message,
)
from cellsd.messaging.routing import DOWN, UP

#: The message keys cells v1 put on the wire (behaviour §2.7).
NOVA_KEYS = {
    "message_type",
    "ctxt",
    "method_name",
    "method_kwargs",
    "direction",
    "need_response",
    "fanout",
    "uuid",
    "routing_path",
    "hop_count",
    "max_hop_count",
}


def header_dict(**overrides: Any) -> dict[str, Any]:
    """A valid targeted header in dict form, with some fields replaced."""
    d: dict[str, Any] = {
        "message_type": TARGETED,
        "uuid": "3f1c7a2e-0000-4000-8000-000000000001",
        "method_name": "ping",
        "direction": DOWN,
        "need_response": True,
        "fanout": False,
        "routing_path": "api-cell",
        "hop_count": 1,
        "max_hop_count": 10,
        "target_cell": "api-cell!child-cell1",
    }
    d.update(overrides)
    return d


class Thing:
    """A value that knows its primitive form (as versioned objects do)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def obj_to_primitive(self) -> dict[str, Any]:
        return {"n": self.n}


class MessageTypesTests(SynchronousTestCase):
    def test_get_message_types(self) -> None:
        """The three message kinds of cells v1, in their wire spelling."""
        self.assertEqual(tuple(get_message_types()), ("targeted", "broadcast", "response"))
        self.assertEqual((TARGETED, BROADCAST, RESPONSE), ("targeted", "broadcast", "response"))


class HeaderTests(SynchronousTestCase):
    """Header.from_dict / from_bytes refuse every malformed header."""

    def assert_malformed(self, d: Any, *words: str) -> MalformedMessage:
        e = self.assertRaises(MalformedMessage, Header.from_dict, d)
        self.assertTrue(str(e).startswith("Malformed cell message: "), str(e))
        for word in words:
            self.assertIn(word, str(e))
        self.assertEqual(e.code, 400)
        return e

    def test_valid_round_trip(self) -> None:
        """A valid header survives to_bytes/from_bytes unchanged."""
        h = Header.from_dict(header_dict(time_left=12.5))
        self.assertEqual(Header.from_bytes(h.to_bytes()), h)
        self.assertEqual(h.to_dict(), header_dict(time_left=12.5))

    def test_optional_fields_absent_from_dict_form(self) -> None:
        """Optional fields that are not set are not put on the wire."""
        d = Header.from_dict(header_dict(message_type=BROADCAST, target_cell=None)).to_dict()
        self.assertNotIn("target_cell", d)
        self.assertNotIn("time_left", d)
        self.assertNotIn("response_uuid", d)

    def test_time_left_int_or_float(self) -> None:
        """time_left may be an integer or a float number of seconds."""
        self.assertEqual(Header.from_dict(header_dict(time_left=5)).time_left, 5)
        self.assertEqual(Header.from_dict(header_dict(time_left=0.25)).time_left, 0.25)

    def test_not_an_object(self) -> None:
        """A header must be a JSON object."""
        self.assert_malformed(["message_type"], "not a JSON object")
        e = self.assertRaises(MalformedMessage, Header.from_bytes, b"[1, 2]")
        self.assertIn("not a JSON object", str(e))

    def test_not_json(self) -> None:
        """Bytes that are not JSON are refused as malformed, not with a parser error."""
        e = self.assertRaises(MalformedMessage, Header.from_bytes, b"{not json")
        self.assertIn("not JSON", str(e))

    def test_every_missing_field_is_named(self) -> None:
        """Each required field, when missing, is named in the error."""
        for name in [
            "message_type",
            "uuid",
            "method_name",
            "direction",
            "need_response",
            "fanout",
            "routing_path",
            "hop_count",
            "max_hop_count",
        ]:
            d = header_dict()
            del d[name]
            self.assert_malformed(d, f"missing header field {name!r}")

    def test_every_wrongly_typed_field_is_named(self) -> None:
        """A field of the wrong JSON type is named, with the type it must be."""
        cases: list[tuple[str, Any, str]] = [
            ("message_type", 1, "str"),
            ("uuid", 7, "str"),
            ("method_name", None, "str"),
            ("direction", ["down"], "str"),
            ("need_response", "yes", "bool"),
            ("need_response", 1, "bool"),
            ("fanout", 0, "bool"),
            ("routing_path", {"a": 1}, "str"),
            ("hop_count", "1", "int"),
            ("hop_count", 1.5, "int"),
            ("max_hop_count", "10", "int"),
            ("target_cell", 3, "str"),
            ("time_left", "60", "int"),
            ("response_uuid", 5, "str"),
        ]
        for name, value, type_name in cases:
            self.assert_malformed(
                header_dict(**{name: value}), f"header field {name!r} must be {type_name}"
            )

    def test_bool_refused_where_int_expected(self) -> None:
        """JSON true is not a hop count nor a time (bool is an int in Python)."""
        for name in ["hop_count", "max_hop_count", "time_left"]:
            self.assert_malformed(header_dict(**{name: True}), repr(name))

    def test_unknown_message_type(self) -> None:
        """Only targeted, broadcast and response messages exist."""
        self.assert_malformed(header_dict(message_type="multicast"), "message_type", "multicast")

    def test_unknown_direction(self) -> None:
        """Only up and down are directions."""
        self.assert_malformed(header_dict(direction="sideways"), "direction", "sideways")

    def test_targeted_and_response_need_target_cell(self) -> None:
        """Targeted and response messages must say where they go."""
        self.assert_malformed(header_dict(target_cell=None), "target_cell")
        self.assert_malformed(header_dict(target_cell=""), "target_cell")
        self.assert_malformed(
            header_dict(message_type=RESPONSE, target_cell=None, response_uuid="u"),
            "target_cell",
        )

    def test_broadcast_needs_no_target_cell(self) -> None:
        """A broadcast goes everywhere and has no target."""
        h = Header.from_dict(header_dict(message_type=BROADCAST, target_cell=None))
        self.assertIsNone(h.target_cell)

    def test_negative_hop_count(self) -> None:
        """A negative hop_count is refused, naming hop_count."""
        self.assert_malformed(header_dict(hop_count=-1), "hop_count")

    def test_max_hop_count_below_one(self) -> None:
        """A max_hop_count below 1 is refused, naming max_hop_count."""
        self.assert_malformed(header_dict(max_hop_count=0), "max_hop_count")

    def test_empty_routing_path(self) -> None:
        """A message has always been handled by at least its source."""
        self.assert_malformed(header_dict(routing_path=""), "routing_path")


class BuildMessageTests(SynchronousTestCase):
    """build_message: a new message at its source."""

    def setUp(self) -> None:
        self.ctxt = RequestContext(user_id="u", project_id="p", request_id="req-1")

    def test_targeted_defaults(self) -> None:
        """The source is the first hop: routing_path is its name, hop_count 1."""
        msg = build_message(
            self.ctxt,
            TARGETED,
            "ping",
            {},
            DOWN,
            "api-cell",
            10,
            target_cell="api-cell!child-cell1",
        )
        self.assertIsInstance(msg, TargetedMessage)
        assert isinstance(msg, TargetedMessage)
        self.assertEqual(msg.routing_path, "api-cell")
        self.assertEqual(msg.hop_count, 1)
        self.assertEqual(msg.max_hop_count, 10)
        self.assertEqual(msg.target_cell, "api-cell!child-cell1")
        self.assertFalse(msg.need_response)
        self.assertFalse(msg.fanout)
        self.assertFalse(msg.is_broadcast)
        self.assertTrue(msg.run_locally)
        self.assertEqual(msg.direction, DOWN)
        self.assertEqual(msg.method_name, "ping")
        self.assertIs(msg.ctxt, self.ctxt)

    def test_fresh_uuid_each_time(self) -> None:
        """Every message gets its own uuid."""
        uuids = {
            build_message(self.ctxt, BROADCAST, "ping", {}, DOWN, "api-cell", 10).uuid
            for _ in range(5)
        }
        self.assertEqual(len(uuids), 5)

    def test_broadcast(self) -> None:
        """A broadcast needs no target and carries run_locally (source only)."""
        msg = build_message(
            self.ctxt, BROADCAST, "ping", {}, UP, "gc", 3, need_response=True, run_locally=False
        )
        self.assertIsInstance(msg, BroadcastMessage)
        self.assertTrue(msg.is_broadcast)
        self.assertFalse(msg.run_locally)
        self.assertIsNone(msg.header.target_cell)
        self.assertNotIn("run_locally", msg.to_dict())

    def test_no_target_raises_synchronously(self) -> None:
        """A targeted message without a target fails at once, not as a Response."""
        for target in [None, ""]:
            e = self.assertRaises(
                CellRoutingInconsistency,
                build_message,
                self.ctxt,
                TARGETED,
                "ping",
                {},
                DOWN,
                "api-cell",
                10,
                target_cell=target,
            )
            self.assertEqual(
                str(e), "Inconsistency in cell routing: No cell given in routing path."
            )

    def test_caller_kwargs_dict_is_copied(self) -> None:
        """The message does not share the caller's kwargs dict."""
        kwargs = {"a": 1}
        msg = build_message(self.ctxt, BROADCAST, "ping", kwargs, DOWN, "api-cell", 10)
        kwargs["a"] = 2
        self.assertEqual(msg.method_kwargs, {"a": 1})

    def test_encoding_works_on_a_copy(self) -> None:
        """Encoding the body leaves the message's kwargs as Python objects
        (cells v1 replaced them with primitives in place, §8.1.7)."""
        thing = Thing(3)
        tags = {"b", "a"}
        stamp = (1, 2)
        msg = build_message(
            self.ctxt,
            BROADCAST,
            "ping",
            {"thing": thing, "tags": tags, "stamp": stamp},
            DOWN,
            "api-cell",
            10,
        )
        data = orjson.loads(msg.body.to_bytes())
        js = orjson.loads(msg.to_json())
        self.assertEqual(data["method_kwargs"]["thing"], {"n": 3})
        self.assertEqual(sorted(data["method_kwargs"]["tags"]), ["a", "b"])
        self.assertEqual(js["method_kwargs"]["stamp"], [1, 2])
        kwargs = msg.method_kwargs
        self.assertIs(kwargs["thing"], thing)
        self.assertIs(kwargs["tags"], tags)
        self.assertEqual(tags, {"a", "b"})
        self.assertIs(kwargs["stamp"], stamp)
        self.assertIs(msg.ctxt, self.ctxt)

    def test_unencodable_value_is_refused(self) -> None:
        """A value with no wire form fails to encode, naming its type."""
        msg = build_message(self.ctxt, BROADCAST, "ping", {"x": object()}, DOWN, "api-cell", 10)
        e = self.assertRaises(TypeError, msg.body.to_bytes)
        self.assertIn("object", str(e))


class MessageFromJsonTests(SynchronousTestCase):
    """message_from_json: the full JSON form with Nova's field names."""

    def setUp(self) -> None:
        self.ctxt = RequestContext(
            user_id="u", project_id="p", is_admin=True, request_id="req-42", roles=["admin"]
        )

    def test_targeted_round_trip_appends_own_hop(self) -> None:
        """A receiver appends itself to routing_path and counts one more hop;
        everything else arrives as sent."""
        msg = build_message(
            self.ctxt,
            TARGETED,
            "update_capabilities",
            {"cell_name": "api-cell", "capabilities": {"hypervisor": ["kvm"]}},
            DOWN,
            "api-cell",
            7,
            target_cell="api-cell!child-cell2!grandchild-cell1",
            need_response=True,
            fanout=True,
        )
        d = orjson.loads(msg.to_json())
        self.assertLessEqual(NOVA_KEYS | {"target_cell"}, set(d))
        self.assertEqual(d["routing_path"], "api-cell")
        self.assertEqual(d["hop_count"], 1)
        self.assertEqual(d["ctxt"]["request_id"], "req-42")

        got = message_from_json(msg.to_json(), "child-cell2")
        self.assertIsInstance(got, TargetedMessage)
        assert isinstance(got, TargetedMessage)
        self.assertEqual(got.routing_path, "api-cell!child-cell2")
        self.assertEqual(got.hop_count, 2)
        self.assertEqual(got.uuid, msg.uuid)
        self.assertEqual(got.max_hop_count, 7)
        self.assertEqual(got.target_cell, "api-cell!child-cell2!grandchild-cell1")
        self.assertTrue(got.need_response)
        self.assertTrue(got.fanout)
        self.assertEqual(got.direction, DOWN)
        self.assertEqual(got.method_name, "update_capabilities")
        self.assertEqual(
            got.method_kwargs,
            {"cell_name": "api-cell", "capabilities": {"hypervisor": ["kvm"]}},
        )
        self.assertEqual(got.ctxt, self.ctxt)

        # The receiver's own JSON form carries the extended path on.
        again = message_from_json(got.to_json(), "grandchild-cell1")
        self.assertEqual(again.routing_path, "api-cell!child-cell2!grandchild-cell1")
        self.assertEqual(again.hop_count, 3)

    def test_broadcast_round_trip(self) -> None:
        """A broadcast's JSON form has no target_cell and rebuilds as a broadcast."""
        msg = build_message(self.ctxt, BROADCAST, "ping", {}, UP, "grandchild-cell1", 10)
        d = orjson.loads(msg.to_json())
        self.assertEqual(set(d), NOVA_KEYS)
        got = message_from_json(msg.to_json().encode(), "child-cell2")
        self.assertIsInstance(got, BroadcastMessage)
        self.assertEqual(got.routing_path, "grandchild-cell1!child-cell2")
        self.assertEqual(got.direction, UP)

    def test_response_message(self) -> None:
        """A response message carries its responses and the uuid it answers,
        not the original message (§8.1.6)."""
        answers = [
            Response("gc!child", {"ok": 1}),
            Response.from_failure("gc!child", CellNotFound(cell_name="x")),
        ]
        d = header_dict(
            message_type=RESPONSE,
            method_name="parse_responses",
            direction=UP,
            routing_path="grandchild-cell1",
            target_cell="grandchild-cell1!child-cell2",
            response_uuid="abc",
            need_response=False,
        )
        d["ctxt"] = self.ctxt.to_dict()
        d["method_kwargs"] = {"responses": [r.to_dict() for r in answers]}
        got = message_from_json(orjson.dumps(d), "child-cell2")
        self.assertIsInstance(got, ResponseMessage)
        assert isinstance(got, ResponseMessage)
        self.assertEqual(got.response_uuid, "abc")
        self.assertNotIn("orig_message", got.method_kwargs)
        responses = got.responses
        self.assertEqual(responses[0], Response("gc!child", {"ok": 1}))
        self.assertTrue(responses[1].failure)
        self.assertIsInstance(responses[1].value, CellNotFound)

    def test_malformed_json(self) -> None:
        """Not JSON, not an object, or a bad header: MalformedMessage."""
        for bad in [b"{", b"[]", b'"x"', orjson.dumps(header_dict(direction="left"))]:
            self.assertRaises(MalformedMessage, message_from_json, bad, "child-cell1")

    def test_body_is_validated_on_receipt(self) -> None:
        """A missing or wrongly typed ctxt or method_kwargs is refused at once."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"method_kwargs": {}}, "ctxt"),
            ({"ctxt": "me", "method_kwargs": {}}, "ctxt"),
            ({"ctxt": {}, "method_kwargs": [1]}, "method_kwargs"),
            ({"ctxt": {}}, "method_kwargs"),
            ({"ctxt": {"read_deleted": "sometimes"}, "method_kwargs": {}}, "ctxt"),
        ]
        for extra, word in cases:
            d = header_dict()
            d.update(extra)
            e = self.assertRaises(MalformedMessage, message_from_json, orjson.dumps(d), "c1")
            self.assertIn(word, str(e))


class ReceivedMessageTests(SynchronousTestCase):
    """received_message: the header/body form that links carry."""

    def test_body_decoded_only_when_read(self) -> None:
        """A hop that only forwards never decodes the body; bytes pass through."""
        h = Header.from_dict(header_dict())
        msg = received_message(h, b"not json at all", "child-cell1")
        self.assertEqual(msg.routing_path, "api-cell!child-cell1")
        self.assertEqual(msg.hop_count, 2)
        self.assertEqual(msg.body.to_bytes(), b"not json at all")
        self.assertRaises(MalformedMessage, lambda: msg.method_kwargs)

    def test_body_round_trip(self) -> None:
        """A body encoded at one cell decodes to the same context and kwargs."""
        ctxt = RequestContext(user_id="u", request_id="req-9")
        body = Body.of(ctxt, {"a": [1, 2], "b": {"c": None}})
        got = Body(data=body.to_bytes())
        self.assertEqual(got.ctxt, ctxt)
        self.assertEqual(got.kwargs, {"a": [1, 2], "b": {"c": None}})


class ResponseTests(SynchronousTestCase):
    """Response: one cell's answer, and its JSON form."""

    def test_success(self) -> None:
        """A success Response gives its value back."""
        r = Response("api-cell!child-cell1", {"x": [1, 2]})
        self.assertEqual(r.value_or_raise(), {"x": [1, 2]})
        self.assertEqual(
            r.to_dict(),
            {"cell_name": "api-cell!child-cell1", "value": {"x": [1, 2]}, "failure": False},
        )
        self.assertEqual(Response.from_json(r.to_json()), r)

    def test_local_failure_raises_the_exception(self) -> None:
        """A local failure re-raises the very exception it holds."""
        exc = CellTimeout(cell_name="api-cell!child-cell1")
        r = Response.from_failure("api-cell!child-cell1", exc)
        self.assertTrue(r.failure)
        raised = self.assertRaises(CellTimeout, r.value_or_raise)
        self.assertIs(raised, exc)

    def test_failure_round_trip(self) -> None:
        """A failure crosses the wire and is rebuilt as the same error class."""
        try:
            raise CellNotFound(cell_name="nowhere")
        except CellNotFound as e:
            r = Response.from_failure("api-cell!child-cell2", e)
        d = orjson.loads(r.to_json())
        self.assertTrue(d["failure"])
        self.assertEqual(d["value"]["class"], "CellNotFound")
        self.assertEqual(d["value"]["module"], "cellsd.errors")
        self.assertEqual(d["value"]["message"], "Cell nowhere doesn't exist.")
        self.assertEqual(d["value"]["kwargs"], {"cell_name": "nowhere", "code": 404})

        got = Response.from_json(r.to_json())
        self.assertEqual(got.cell_name, "api-cell!child-cell2")
        self.assertTrue(got.failure)
        raised = self.assertRaises(CellNotFound, got.value_or_raise)
        self.assertEqual(raised.message, "Cell nowhere doesn't exist.")
        self.assertIn("Traceback", str(raised))

    def test_double_encoded_failure(self) -> None:
        """The cells v1 form, where a failure's value is itself a JSON string,
        is understood too (as str or bytes)."""
        value = orjson.dumps(
            {
                "class": "CellTimeout",
                "module": "cellsd.errors",
                "message": "Timeout waiting for response from cell c",
                "tb": ["Traceback (most recent call last):\n", "  boom\n"],
                "args": [],
                "kwargs": {"cell_name": "c", "code": 504},
            }
        )
        for v in [value, value.decode()]:
            r = Response.from_dict({"cell_name": "a!c", "value": v, "failure": True})
            e = self.assertRaises(CellTimeout, r.value_or_raise)
            self.assertEqual(e.message, "Timeout waiting for response from cell c")
            self.assertIn("  boom", str(e))

    def test_double_encoded_failure_not_json(self) -> None:
        """A response, or a failure value string, that is not JSON is a
        malformed answer (not a parser error escaping to the caller)."""
        self.assertRaises(
            MalformedMessage,
            Response.from_dict,
            {"cell_name": "a!c", "value": "{nope", "failure": True},
        )
        self.assertRaises(MalformedMessage, Response.from_json, b"{nope")

    def test_failure_with_unusable_value(self) -> None:
        """A failure whose value is not an error description still fails,
        as a generic RemoteError."""
        r = Response.from_dict({"cell_name": "a!c", "value": None, "failure": True})
        self.assertRaises(RemoteError, r.value_or_raise)

    def test_missing_cell_name(self) -> None:
        """An answer that does not say which cell gave it is malformed."""
        for bad in [[], {"value": 1}, {"cell_name": 3, "value": 1}]:
            self.assertRaises(MalformedMessage, Response.from_dict, bad)

    def test_encode_decode_responses(self) -> None:
        """A list of Responses travels as one JSON array."""
        rs = [Response("a", 1), Response("a!b", [2]), Response.from_failure("a!c", ValueError("v"))]
        got = decode_responses(encode_responses(rs))
        self.assertEqual(got[:2], rs[:2])
        self.assertIsInstance(got[2].value, ValueError)
        self.assertEqual(decode_responses(encode_responses([])), [])

    def test_decode_responses_malformed(self) -> None:
        """Answers that are not a JSON array of responses are malformed."""
        for bad in [b"{", b"{}", b"[1]"]:
            self.assertRaises(MalformedMessage, decode_responses, bad)


class JoinEncodedTests(SynchronousTestCase):
    """join_encoded: a broadcast hop joins arrays without decoding them."""

    def test_join(self) -> None:
        """Arrays are concatenated in order; empty ones vanish."""
        self.assertEqual(join_encoded([b"[1,2]", b"[]", b"[3]"]), b"[1,2,3]")
        self.assertEqual(join_encoded([b"[ ]", b'[{"a":1}]']), b'[{"a":1}]')
        self.assertEqual(join_encoded([]), b"[]")
        self.assertEqual(join_encoded([b"[]", b"[]"]), b"[]")

    def test_joined_responses_decode(self) -> None:
        """Joined encoded responses decode to every Response, in order."""
        a = encode_responses([Response("x!a", 1), Response("x!b", 2)])
        b = encode_responses([Response("x", 3)])
        got = decode_responses(join_encoded([a, encode_responses([]), b]))
        self.assertEqual([r.cell_name for r in got], ["x!a", "x!b", "x"])
        self.assertEqual([r.value for r in got], [1, 2, 3])
