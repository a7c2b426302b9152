"""Property-based fuzzing of what a cell receives (issue 7, item 6).

Oversized, malformed and wrongly typed input is fed to each receiving layer:

* :meth:`Header.from_bytes` (the routing header every hop reads) and
  :class:`Body` (the context and keyword arguments an executing cell
  decodes);
* :meth:`MessageRunner.receive` of a real runner with the cell methods
  installed (the message's header, context and keyword arguments fuzzed,
  among them wrongly typed fields and wrongly typed method arguments);
* the Deliver responder of a real link (raw AMP boxes over TLS in memory,
  to a real runner): missing or extra keys, broken chunking, garbage bytes,
  oversized values.

The properties: every input is either processed or answered with a typed
error (a CellsError subclass: MalformedMessage, MessageTooLarge,
InvalidArguments, UnknownMethod, ...) that says what was wrong; nothing
raises or logs an untyped exception; every Deferred fires; the link stays
up and a valid message after the garbage still works.

Hypothesis runs derandomized (the same examples on every run, so CI is
reproducible) with no example database, at most 200 examples a test.
"""

from __future__ import annotations

import inspect
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.protocols import amp

from cellsd.context import RequestContext
from cellsd.errors import CellsError, MalformedMessage, RemoteError
from cellsd.links.amp import Deliver
from cellsd.messaging.message import Body, Header, decode_responses
from cellsd.messaging.methods import (
    BroadcastMessageMethods,
    TargetedMessageMethods,
    install_cell_methods,
)
from cellsd.messaging.runner import _BROADCAST_NAMES, _TARGETED_NAMES, MessageRunner
from cellsd.state import CellStateManager
from cellsd.testing import Neighbour
from tests.unit.cell_support import TreeCase, sleep
from tests.unit.links_pki import CA, LinkPair, connect_link

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------
# Strategies

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
#: Any JSON value orjson can write.
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

#: The header fields and the JSON types each accepts (the wire contract,
#: written out here independently of cellsd.messaging.message).
REQUIRED: dict[str, tuple[type, ...]] = {
    "message_type": (str,),
    "uuid": (str,),
    "method_name": (str,),
    "direction": (str,),
    "need_response": (bool,),
    "fanout": (bool,),
    "routing_path": (str,),
    "hop_count": (int,),
    "max_hop_count": (int,),
}
OPTIONAL: dict[str, tuple[type, ...]] = {
    "target_cell": (str,),
    "time_left": (int, float),
    "response_uuid": (str,),
}

METHODS = sorted(_TARGETED_NAMES | _BROADCAST_NAMES)


def _fits(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def valid_header(method: str = "ping", broadcast: bool = False) -> dict[str, Any]:
    """A header child1 may send its parent api: up, ending at the sender."""
    h: dict[str, Any] = {
        "message_type": "broadcast" if broadcast else "targeted",
        "uuid": str(uuidlib.uuid4()),
        "method_name": method,
        "direction": "up",
        "need_response": True,
        "fanout": False,
        "routing_path": "child1",
        "hop_count": 1,
        "max_hop_count": 10,
        "time_left": 30.0,
    }
    if not broadcast:
        h["target_cell"] = "child1!api"
    return h


#: Method names: nine in ten real ones, else anything.
method_names = st.sampled_from([True] * 9 + [False]).flatmap(
    lambda real: st.sampled_from(METHODS) if real else st.text(max_size=12)
)


@st.composite
def headers(draw: st.DrawFn, method: str | None = None) -> tuple[dict[str, Any], str | None]:
    """A valid header for a method (of the message type it is, mostly),
    then nothing changed, one field given any JSON value, one field
    removed, or an unknown field added; with the name of the field changed
    (None: none)."""
    if method is None:
        method = draw(method_names)
    broadcast = method in _BROADCAST_NAMES and method not in _TARGETED_NAMES
    if draw(st.sampled_from([False] * 9 + [True])):
        broadcast = not broadcast
    h = valid_header(method, broadcast=broadcast)
    fields = sorted(REQUIRED | OPTIONAL)
    change = draw(st.sampled_from(["none", "none", "retype", "remove", "extra"]))
    if change == "retype":
        name = draw(st.sampled_from(fields))
        h[name] = draw(json_values)
        return h, name
    if change == "remove":
        name = draw(st.sampled_from(fields))
        h.pop(name, None)
        return h, name
    if change == "extra":
        h[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return h, None


#: Values of the wrong type for almost any argument.
wrong_values = (
    st.sampled_from(
        [None, 0, -1, 2**40, 1.5, True, "", "x", "child1!api", [], [1, "a"], {}, {"uuid": 5}]
    )
    | json_values
)


@st.composite
def bodies(draw: st.DrawFn, method: str) -> bytes:
    """The body of a call of ``method``: its context valid or fuzzed, its
    keyword arguments named after the method's parameters (and others) with
    values of any type; or not a valid body at all."""
    kind = draw(st.sampled_from(["call", "call", "call", "garbage", "json"]))
    if kind == "garbage":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return orjson.dumps(draw(json_values))
    ctxt: Any = RequestContext(user_id="u1", project_id="p1", is_admin=True).to_dict()
    if draw(st.integers(0, 3)) == 0:
        ctxt[draw(st.sampled_from([*ctxt, "other"]))] = draw(wrong_values)
    if draw(st.integers(0, 19)) == 0:
        ctxt = draw(json_values)
    # Every required argument, with a value of any type; some optional
    # ones; now and then one missing or one unknown.
    required, optional = _parameters(method)
    kwargs = {name: draw(wrong_values) for name in required}
    for name in optional:
        if draw(st.booleans()):
            kwargs[name] = draw(wrong_values)
    if required and draw(st.integers(0, 9)) == 0:
        kwargs.pop(draw(st.sampled_from(required)))
    if draw(st.integers(0, 9)) == 0:
        kwargs[draw(st.text(max_size=8))] = draw(wrong_values)
    return orjson.dumps({"ctxt": ctxt, "method_kwargs": kwargs})


def _parameters(method: str) -> tuple[list[str], list[str]]:
    """The required and the optional keyword arguments of ``method`` (of
    either contract)."""
    required: list[str] = []
    optional: list[str] = []
    for cls in (TargetedMessageMethods, BroadcastMessageMethods):
        fn = getattr(cls, method, None) if method in METHODS else None
        if not callable(fn):
            continue
        for p in list(inspect.signature(fn).parameters.values())[2:]:  # self, message
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            (required if p.default is p.empty else optional).append(p.name)
    return sorted(set(required)), sorted(set(optional) - set(required))


# --------------------------------------------------------------------------
# Fixtures


def _runner(name: str, neighbours: list[Neighbour], clock: Clock) -> MessageRunner:
    """A runner with the cell methods (no store, compute or links)."""
    state = CellStateManager(name, neighbours, clock, capabilities={"name": [name]})
    runner = MessageRunner(state, _NoLinks(), clock, call_timeout=30.0)  # type: ignore[arg-type]  # link_for is all it uses here
    install_cell_methods(runner, None, None, None, None)
    return runner


class _NoLinks:
    def link_for(self, name: str, is_parent: bool) -> None:
        return None


@contextmanager
def no_untyped_failures() -> Iterator[Sequence[LogEvent]]:
    """Fails if anything logged a traceback (an untyped exception)."""
    with capturedLogs() as events:
        yield events
    failures = [
        formatEvent(e) + "\n" + e["log_failure"].getTraceback()
        for e in events
        if "log_failure" in e
    ]
    assert failures == [], "\n".join(failures)


def assert_typed(exc: BaseException) -> None:
    """A CellsError (not a RemoteError wrapping some other exception) whose
    message says something."""
    assert isinstance(exc, CellsError), f"untyped {type(exc).__name__}: {exc}"
    assert not isinstance(exc, RemoteError), f"an untyped error crossed: {exc}"
    assert str(exc).strip(), f"{type(exc).__name__} with no message"


# --------------------------------------------------------------------------
# Header and Body


@FUZZ
@given(st.binary(max_size=200))
def test_header_from_any_bytes(data: bytes) -> None:
    """Any bytes as a header: a Header, or MalformedMessage."""
    try:
        Header.from_bytes(data)
    except MalformedMessage as e:
        assert_typed(e)


@FUZZ
@given(json_values)
def test_header_from_any_json(value: Any) -> None:
    """Any JSON value as a header: a Header, or MalformedMessage."""
    try:
        Header.from_bytes(orjson.dumps(value))
    except MalformedMessage as e:
        assert_typed(e)


@FUZZ
@given(headers())
def test_header_field_retyped_or_missing(case: tuple[dict[str, Any], str | None]) -> None:
    """A valid header with one field given another JSON value, removed, or
    an unknown field added: a required field missing or any field of the
    wrong type is refused with MalformedMessage naming the field; anything
    else decodes or is refused with MalformedMessage."""
    h, changed = case
    wrong = changed is not None and (
        (changed in REQUIRED and (changed not in h or not _fits(h[changed], REQUIRED[changed])))
        or (
            changed in OPTIONAL
            and h.get(changed) is not None
            and not _fits(h[changed], OPTIONAL[changed])
        )
    )
    try:
        header = Header.from_bytes(orjson.dumps(h))
    except MalformedMessage as e:
        assert_typed(e)
        if wrong:
            assert repr(changed) in str(e), str(e)
        return
    assert not wrong, f"accepted {changed}={h.get(changed or '')!r}"
    assert header.method_name == h["method_name"]


@FUZZ
@given(st.sampled_from(METHODS).flatmap(bodies))
def test_body_decode(data: bytes) -> None:
    """Any body: its context and keyword arguments decode, or decoding
    raises a typed error."""
    body = Body(data=data)
    try:
        body.ctxt  # noqa: B018 - decoding is the point
        body.kwargs  # noqa: B018
    except Exception as e:
        assert_typed(e)


# --------------------------------------------------------------------------
# MessageRunner.receive


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, bytes]:
    method = draw(method_names)
    h, _ = draw(headers(method))
    body = draw(bodies(method))
    return orjson.dumps(h), body


def _answered(runner_clock: Clock, result: Any) -> bytes:
    """The Deferred's result once time has passed; fails if it never fired."""
    fired: list[Any] = []
    result.addBoth(fired.append)
    runner_clock.advance(60)
    runner_clock.advance(60)
    assert fired, "the Deferred never fired"
    if isinstance(fired[0], BaseException) or hasattr(fired[0], "value"):
        value = getattr(fired[0], "value", fired[0])
        assert_typed(value)
        return b""
    assert isinstance(fired[0], bytes)
    return fired[0]


def _check_answer(encoded: bytes) -> None:
    for response in decode_responses(encoded):
        if response.failure:
            assert_typed(response.value)


@FUZZ
@given(messages())
def test_runner_receive(message: tuple[bytes, bytes]) -> None:
    """A message from child1 to api with a fuzzed header and body: receive()
    refuses it at once with MalformedMessage, or answers; every failure in
    the answer is a typed error; the answer always comes (the Deferred
    fires); nothing logs a traceback; a ping afterwards is answered."""
    clock = Clock()
    runner = _runner("api", [Neighbour("child1", False)], clock)
    header, body = message
    with no_untyped_failures():
        try:
            d = runner.receive(header, body, sender="child1", from_parent=False)
        except CellsError as e:
            assert_typed(e)
        else:
            _check_answer(_answered(clock, d))
        ping = orjson.dumps(valid_header("ping"))
        good = orjson.dumps({"ctxt": {}, "method_kwargs": {}})
        (response,) = decode_responses(
            _answered(clock, runner.receive(ping, good, "child1", False))
        )
        assert response.failure is False and response.value["name"] == "api"


# --------------------------------------------------------------------------
# The Deliver responder of a real link

ALLOWED_CODES = set(Deliver.errors.values()) | {amp.UNHANDLED_ERROR_CODE}


@st.composite
def boxes(draw: st.DrawFn) -> dict[str, bytes]:
    """The keys and values of a Deliver box, valid or not."""
    header, body = draw(messages())
    box: dict[str, bytes] = {}
    header_kind = draw(st.sampled_from(["ok", "ok", "missing", "garbage", "huge"]))
    if header_kind == "ok":
        box["header"] = header
    elif header_kind == "garbage":
        box["header"] = draw(st.binary(max_size=64))
    elif header_kind == "huge":
        box["header"] = header + b" " * (65_535 - len(header))
    body_kind = draw(st.sampled_from(["ok", "ok", "missing", "count", "chunks", "over"]))
    if body_kind in ("ok", "count", "chunks", "over"):
        box["body"] = body
        box["body.n"] = b"1"
    if body_kind == "count":
        box["body.n"] = draw(st.sampled_from([b"", b"0", b"-1", b"x", b"2", b"99999999999999"]))
    elif body_kind == "chunks":
        box["body.n"] = b"3"
        box["body.2"] = draw(st.binary(max_size=16))
    elif body_kind == "over":
        box["body.n"] = b"%d" % (2**25 // 65_535 + 2)
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.text(alphabet="abcdefgh.-_", min_size=1, max_size=6))
        box.setdefault(key, draw(st.binary(max_size=16)))
    return box


_CA = CA.make()


def _link() -> tuple[LinkPair, MessageRunner]:
    """child1 linked to api over TLS in memory; api's end answers with a
    real runner."""
    pair = connect_link(parent_material=_CA.material("api"), child_material=_CA.material("child1"))
    runner = _runner("api", [Neighbour("child1", False)], pair.clock)
    pair.parent.receiver = runner
    return pair, runner


@FUZZ
@given(boxes())
def test_deliver_responder(box: dict[str, bytes]) -> None:
    """A Deliver box with a fuzzed header, body, chunking and extra keys,
    from child1 to api: api answers with the responses or an AMP error
    whose code is one of Deliver's typed errors (never the generic
    'internal error'); the answer comes; nothing logs a traceback; the link
    stays up and a valid ping over it afterwards is answered."""
    pair, _ = _link()
    with no_untyped_failures():
        d = pair.child.callRemoteString(Deliver.commandName, **box)
        fired: list[Any] = []
        d.addBoth(fired.append)
        pair.flush()
        pair.clock.advance(60)
        pair.flush()
        assert fired, "no answer"
        result = fired[0]
        if isinstance(result, dict):
            responses = result.get(b"responses")
            if responses is not None and result.get(b"responses.n") == b"1":
                _check_answer(responses)
        else:
            error = result.value
            assert isinstance(error, amp.RemoteAmpError), repr(error)
            assert error.errorCode in ALLOWED_CODES, f"{error.errorCode!r}: {error}"
            assert str(error).strip()
        assert pair.child.ready and pair.parent.ready, "the link went down"
        ping = pair.child.deliver(
            orjson.dumps(valid_header("ping")), orjson.dumps({"ctxt": {}, "method_kwargs": {}}), 5
        )
        pair.flush()
        answered: list[Any] = []
        ping.addBoth(answered.append)
        (response,) = decode_responses(answered[0])
        assert response.value["name"] == "api"


def test_link_survives_all_garbage_in_a_row() -> None:
    """Injected: forty fuzzed boxes one after another on ONE link, then a
    valid ping. Seen: each is answered, the link stays up, the ping works."""
    pair, _ = _link()
    examples: list[dict[str, bytes]] = []

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(boxes())
    def collect(box: dict[str, bytes]) -> None:
        examples.append(box)

    collect()
    with no_untyped_failures():
        answers: list[Any] = []
        for box in examples:
            pair.child.callRemoteString(Deliver.commandName, **box).addBoth(answers.append)
        pair.flush()
        pair.clock.advance(60)
        pair.flush()
        assert len(answers) == len(examples)
        assert pair.child.ready and pair.parent.ready
        ping = pair.child.deliver(
            orjson.dumps(valid_header("ping")), orjson.dumps({"ctxt": {}, "method_kwargs": {}}), 5
        )
        pair.flush()
    answered: list[bytes] = []
    ping.addCallback(answered.append)
    (response,) = decode_responses(answered[0])
    assert response.value["name"] == "api"


# --------------------------------------------------------------------------
# MessageRunner.receive with a store, compute hosts and a scheduler


def _examples(count: int) -> list[tuple[bytes, bytes]]:
    """``count`` fuzzed messages, the same on every run (derandomized)."""
    found: list[tuple[bytes, bytes]] = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None)
    @given(messages())
    def collect(message: tuple[bytes, bytes]) -> None:
        found.append(message)

    collect()
    return found


def _addressed(header: bytes, to_top: bool) -> bytes:
    """The fuzzed header as sent by c1: up to the top, or down to g1 (the
    fuzzed fields stay as they are)."""
    try:
        h = orjson.loads(header)
    except orjson.JSONDecodeError:
        return header
    if not isinstance(h, dict):
        return header
    h["routing_path"] = "c1"
    h["direction"] = "up" if to_top else "down"
    if h.get("target_cell") == "child1!api":
        h["target_cell"] = "c1!top" if to_top else "c1!g1"
    return orjson.dumps(h)


class StoreBackedReceiveTests(TreeCase):
    """The same fuzzed messages, received by cells with real (SQLite)
    stores: the top (from its child c1, going up) and the leaf g1 (from its
    parent c1, going down), which has compute hosts."""

    async def _deliver(self, where: str, header: bytes, body: bytes) -> bytes | None:
        """receive() at ``where``; the answer, or None if refused at once.
        Fails if the answer never comes (the tree's clock is advanced while
        waiting) or is not bytes."""
        from_parent = where == "g1"
        try:
            d = self.tree[where].receive(header, body, "c1", from_parent)
        except CellsError as e:
            assert_typed(e)
            return None
        fired: list[Any] = []
        d.addBoth(fired.append)
        for _ in range(200):
            if fired:
                break
            await sleep(0.002)
            self.clock.advance(1)
        self.assertTrue(fired, f"no answer from {where} to {header!r} {body!r}")
        self.assertIsInstance(fired[0], bytes, f"{where} failed {header!r} {body!r}: {fired[0]}")
        return fired[0]

    async def test_fuzzed_messages(self) -> None:
        """Injected: 60 fuzzed messages (wrongly typed header fields,
        contexts and method arguments among them), each to the top and to
        g1. Seen: each is refused at once with MalformedMessage or
        answered; every failure answered is a typed error; no traceback is
        logged; a ping to each still answers afterwards."""
        with no_untyped_failures():
            for header, body in _examples(60):
                for where in ("top", "g1"):
                    answer = await self._deliver(where, _addressed(header, where == "top"), body)
                    if answer is not None:
                        _check_answer(answer)
            await self.settle()
            for where in ("top", "g1"):
                ping = _addressed(orjson.dumps(valid_header("ping")), where == "top")
                answer = await self._deliver(
                    where, ping, orjson.dumps({"ctxt": {}, "method_kwargs": {}})
                )
                assert answer is not None
                (response,) = decode_responses(answer)
                self.assertEqual(response.value["name"], where)
