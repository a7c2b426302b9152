"""Cell messages, their answers, and their wire and JSON forms.

A message crosses the wire as two parts:

* a small routing *header* (type, uuid, method, direction, routing path, hop
  counts, target, time left), read by every hop;
* an opaque *body* (the request context and the method's keyword arguments),
  decoded only by a cell that executes the message.

A hop that only forwards never decodes the body. Encoding always works on a
copy: the message keeps its Python objects for local execution.

The answer to a message is a list of :class:`Response` (one per executing
cell), carried as a JSON array. A broadcast hop joins its neighbours' arrays
and its own without decoding them.
"""

from __future__ import annotations

import sys
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import attrs
import orjson

from cellsd.context import RequestContext
from cellsd.errors import (
    CellMaxHopCountReached,
    CellOutcomeUnknown,
    CellProtocolTooOld,
    CellRoutingInconsistency,
    CellTimeout,
    CellUnreachable,
    MalformedMessage,
    deserialize_remote_exception,
    serialize_remote_exception,
)
from cellsd.messaging.routing import DIRECTIONS
from cellsd.objects.base import deserialize, to_primitive

TARGETED = "targeted"
BROADCAST = "broadcast"
RESPONSE = "response"
MESSAGE_TYPES = (TARGETED, BROADCAST, RESPONSE)


def get_message_types() -> tuple[str, ...]:
    return MESSAGE_TYPES


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=to_primitive)


def new_uuid() -> str:
    return str(uuidlib.uuid4())


# --------------------------------------------------------------------------
# Header


_HEADER_FIELDS: dict[str, tuple[type, ...]] = {
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
_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "target_cell": (str,),
    "time_left": (int, float),
    "response_uuid": (str,),
}


@attrs.define(slots=True)
class Header:
    """The routing part of a message: what every hop reads."""

    message_type: str
    uuid: str
    method_name: str
    direction: str
    need_response: bool
    fanout: bool
    routing_path: str
    hop_count: int
    max_hop_count: int
    target_cell: str | None = None
    #: Seconds the sender will wait for the answer, relative so that clock
    #: skew between cells does not matter. None: the sender does not wait.
    time_left: float | None = None
    response_uuid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "message_type": self.message_type,
            "uuid": self.uuid,
            "method_name": self.method_name,
            "direction": self.direction,
            "need_response": self.need_response,
            "fanout": self.fanout,
            "routing_path": self.routing_path,
            "hop_count": self.hop_count,
            "max_hop_count": self.max_hop_count,
        }
        if self.target_cell is not None:
            d["target_cell"] = self.target_cell
        if self.time_left is not None:
            d["time_left"] = self.time_left
        if self.response_uuid is not None:
            d["response_uuid"] = self.response_uuid
        return d

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Header:
        # Every hop reads a header: the common, valid case is checked in one
        # expression; anything else goes the long way to name what is wrong.
        if type(d) is dict and len(d) >= 9:
            get = d.get
            time_left = get("time_left")
            target_cell = get("target_cell")
            response_uuid = get("response_uuid")
            if (
                type(get("message_type")) is str
                and type(get("uuid")) is str
                and type(get("method_name")) is str
                and type(get("direction")) is str
                and type(get("need_response")) is bool
                and type(get("fanout")) is bool
                and type(get("routing_path")) is str
                and type(get("hop_count")) is int
                and type(get("max_hop_count")) is int
                and (target_cell is None or type(target_cell) is str)
                and (time_left is None or type(time_left) in (int, float))
                and (response_uuid is None or type(response_uuid) is str)
            ):
                header = cls(
                    d["message_type"],
                    d["uuid"],
                    d["method_name"],
                    d["direction"],
                    d["need_response"],
                    d["fanout"],
                    d["routing_path"],
                    d["hop_count"],
                    d["max_hop_count"],
                    target_cell,
                    time_left,
                    response_uuid,
                )
                header.validate()
                return header
        return cls._from_dict_checked(d)

    @classmethod
    def _from_dict_checked(cls, d: Mapping[str, Any]) -> Header:
        if not isinstance(d, Mapping):
            raise MalformedMessage(reason="the header is not a JSON object")
        values: dict[str, Any] = {}
        for name, types in _HEADER_FIELDS.items():
            if name not in d:
                raise MalformedMessage(reason=f"missing header field {name!r}")
            values[name] = _typed(name, d[name], types)
        for name, types in _OPTIONAL_FIELDS.items():
            if d.get(name) is not None:
                values[name] = _typed(name, d[name], types)
        header = cls(**values)
        header.validate()
        return header

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise MalformedMessage(reason=f"the header is not JSON: {e}") from None
        return cls.from_dict(d)

    def validate(self) -> None:
        if self.message_type not in MESSAGE_TYPES:
            raise MalformedMessage(reason=f"unknown message_type {self.message_type!r}")
        if self.direction not in DIRECTIONS:
            raise MalformedMessage(reason=f"unknown direction {self.direction!r}")
        if self.message_type != BROADCAST and not self.target_cell:
            raise MalformedMessage(reason=f"a {self.message_type} message needs target_cell")
        if self.hop_count < 0:
            raise MalformedMessage(reason=f"hop_count {self.hop_count} is negative")
        if self.max_hop_count < 1:
            raise MalformedMessage(reason=f"max_hop_count {self.max_hop_count} is below 1")
        if not self.routing_path:
            raise MalformedMessage(reason="empty routing_path")


def _typed(name: str, value: Any, types: tuple[type, ...]) -> Any:
    # bool is an int in Python; refuse it where a number is expected.
    if isinstance(value, bool) and bool not in types:
        raise MalformedMessage(reason=f"header field {name!r} must be {types[0].__name__}")
    if not isinstance(value, types):
        raise MalformedMessage(reason=f"header field {name!r} must be {types[0].__name__}")
    return value


# --------------------------------------------------------------------------
# Body


class Body:
    """The context and keyword arguments, as objects, bytes, or both.

    Built from objects at the source, from bytes on receipt; each form is
    made from the other only when asked for, and never in place.
    """

    __slots__ = ("_ctxt", "_data", "_kwargs")

    def __init__(
        self,
        data: bytes | None = None,
        ctxt: RequestContext | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._data = data
        self._ctxt = ctxt
        self._kwargs = kwargs

    @classmethod
    def of(cls, ctxt: RequestContext, kwargs: Mapping[str, Any]) -> Body:
        return cls(ctxt=ctxt, kwargs=dict(kwargs))

    def to_bytes(self) -> bytes:
        if self._data is None:
            assert self._ctxt is not None and self._kwargs is not None
            self._data = dumps({"ctxt": self._ctxt.to_dict(), "method_kwargs": self._kwargs})
        return self._data

    def _decode(self) -> None:
        assert self._data is not None
        try:
            d = orjson.loads(self._data)
        except orjson.JSONDecodeError as e:
            raise MalformedMessage(reason=f"the body is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise MalformedMessage(reason="the body is not a JSON object")
        ctxt, kwargs = d.get("ctxt"), d.get("method_kwargs")
        if not isinstance(ctxt, dict):
            raise MalformedMessage(reason="ctxt must be a JSON object")
        if not isinstance(kwargs, dict):
            raise MalformedMessage(reason="method_kwargs must be a JSON object")
        try:
            self._ctxt = RequestContext.from_dict(ctxt)
        except (TypeError, ValueError) as e:
            raise MalformedMessage(reason=f"bad ctxt: {e}") from None
        self._kwargs = deserialize(kwargs)

    @property
    def ctxt(self) -> RequestContext:
        if self._ctxt is None:
            self._decode()
        assert self._ctxt is not None
        return self._ctxt

    @property
    def kwargs(self) -> dict[str, Any]:
        if self._kwargs is None:
            self._decode()
        assert self._kwargs is not None
        return self._kwargs


# --------------------------------------------------------------------------
# Messages


class Message:
    """A message as one cell sees it: header, body, and local-only flags."""

    __slots__ = ("body", "header", "run_locally")

    message_type: str = ""

    def __init__(self, header: Header, body: Body, run_locally: bool = True) -> None:
        self.header = header
        self.body = body
        #: Only meaningful at a broadcast's source; every receiver executes.
        self.run_locally = run_locally

    # Nova's attribute names, read-only views of the header and body.
    @property
    def uuid(self) -> str:
        return self.header.uuid

    @property
    def method_name(self) -> str:
        return self.header.method_name

    @property
    def direction(self) -> str:
        return self.header.direction

    @property
    def need_response(self) -> bool:
        return self.header.need_response

    @property
    def fanout(self) -> bool:
        return self.header.fanout

    @property
    def routing_path(self) -> str:
        return self.header.routing_path

    @property
    def hop_count(self) -> int:
        return self.header.hop_count

    @property
    def max_hop_count(self) -> int:
        return self.header.max_hop_count

    @property
    def ctxt(self) -> RequestContext:
        return self.body.ctxt

    @property
    def method_kwargs(self) -> dict[str, Any]:
        return self.body.kwargs

    @property
    def is_broadcast(self) -> bool:
        return self.header.message_type == BROADCAST

    def to_dict(self) -> dict[str, Any]:
        """The full JSON form with the field names Nova used."""
        d = self.header.to_dict()
        d["ctxt"] = self.ctxt.to_dict()
        d["method_kwargs"] = self.method_kwargs
        return d

    def to_json(self) -> str:
        return dumps(self.to_dict()).decode()

    def __repr__(self) -> str:
        h = self.header
        return (
            f"<{type(self).__name__} {h.method_name} uuid={h.uuid} "
            f"path={h.routing_path} target={h.target_cell}>"
        )


class TargetedMessage(Message):
    __slots__ = ()
    message_type = TARGETED

    @property
    def target_cell(self) -> str:
        assert self.header.target_cell is not None
        return self.header.target_cell


class BroadcastMessage(Message):
    __slots__ = ()
    message_type = BROADCAST


class ResponseMessage(Message):
    """The JSON form of an answer: only the correlation id and responses.

    Unlike cells v1 it does not embed the original message.
    """

    __slots__ = ()
    message_type = RESPONSE

    @property
    def response_uuid(self) -> str:
        assert self.header.response_uuid is not None
        return self.header.response_uuid

    @property
    def responses(self) -> list[Response]:
        raw = self.method_kwargs.get("responses", [])
        return [Response.from_dict(r) for r in raw]


_CLASSES: dict[str, type[Message]] = {
    TARGETED: TargetedMessage,
    BROADCAST: BroadcastMessage,
    RESPONSE: ResponseMessage,
}


def build_message(
    ctxt: RequestContext,
    message_type: str,
    method_name: str,
    method_kwargs: Mapping[str, Any],
    direction: str,
    my_name: str,
    max_hop_count: int,
    target_cell: str | None = None,
    need_response: bool = False,
    fanout: bool = False,
    run_locally: bool = True,
    time_left: float | None = None,
) -> Message:
    """A new message at its source, with this cell as its first hop."""
    if message_type != BROADCAST and not target_cell:
        raise CellRoutingInconsistency(reason="No cell given in routing path.")
    header = Header(
        message_type=message_type,
        uuid=new_uuid(),
        method_name=method_name,
        direction=direction,
        need_response=need_response,
        fanout=fanout,
        routing_path=my_name,
        hop_count=1,
        max_hop_count=max_hop_count,
        target_cell=target_cell,
        time_left=time_left,
    )
    header.validate()
    return _CLASSES[message_type](header, Body.of(ctxt, method_kwargs), run_locally)


def received_message(header: Header, body: bytes, my_name: str) -> Message:
    """A message as received from a neighbour: this cell appends itself."""
    header.routing_path = f"{header.routing_path}!{my_name}"
    header.hop_count += 1
    return _CLASSES[header.message_type](header, Body(data=body))


def message_from_json(json_message: str | bytes, my_name: str) -> Message:
    """Rebuild a message from its full JSON form, appending this cell."""
    try:
        d = orjson.loads(json_message)
    except orjson.JSONDecodeError as e:
        raise MalformedMessage(reason=f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise MalformedMessage(reason="a message is a JSON object")
    header = Header.from_dict(d)
    body = dumps({"ctxt": d.get("ctxt"), "method_kwargs": d.get("method_kwargs")})
    msg = received_message(header, body, my_name)
    msg.body.ctxt  # noqa: B018 - validate the body now, not at first use
    return msg


# --------------------------------------------------------------------------
# Responses


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

#: What a caller knows of a message's effect at one cell (Response.outcome):
#: the cell answered (OK) or answered with an error (FAILED); the message
#: provably never reached it (UNREACHABLE: no link, refused before sending),
#: so nothing happened there; or it was sent and no answer came back
#: (UNKNOWN: the link was cut or the deadline passed), so it may or may not
#: have been applied. A failed or unknown Response for a neighbour that
#: leads to other cells stands for its whole subtree.
OK, FAILED, UNKNOWN, UNREACHABLE = "ok", "failed", "unknown", "unreachable"
OUTCOMES = (OK, FAILED, UNKNOWN, UNREACHABLE)
#: Errors meaning the message was never handed to the next hop.
_NOT_SENT: tuple[type[BaseException], ...] = (
    CellUnreachable,
    CellProtocolTooOld,
    CellMaxHopCountReached,
)
#: Errors meaning the message was (or may have been) sent, but not answered.
_IN_DOUBT: tuple[type[BaseException], ...] = (CellTimeout, CellOutcomeUnknown)


def outcome_of(error: object) -> str:
    """The outcome (UNKNOWN, UNREACHABLE or FAILED) of a failure value."""
    if isinstance(error, _IN_DOUBT):
        return UNKNOWN
    if isinstance(error, _NOT_SENT):
        return UNREACHABLE
    return FAILED


@attrs.define
class Response:
    """One cell's answer: its path from the asking cell, a value, a flag."""

    cell_name: str
    value: Any
    failure: bool = False

    @classmethod
    def from_failure(cls, cell_name: str, exc: BaseException) -> Response:
        return cls(cell_name, exc, failure=True)

    @property
    def outcome(self) -> str:
        """OK, FAILED, UNKNOWN or UNREACHABLE (see :data:`OUTCOMES`)."""
        return outcome_of(self.value) if self.failure else OK

    def value_or_raise(self) -> Any:
        if self.failure:
            exc = self.value
            if not isinstance(exc, BaseException):
                exc = deserialize_remote_exception(exc)
            raise exc
        return self.value

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        if self.failure and isinstance(value, BaseException):
            value = serialize_remote_exception(value)
        return {"cell_name": self.cell_name, "value": value, "failure": self.failure}

    @classmethod
    def from_dict(cls, d: Any) -> Response:
        if not isinstance(d, dict) or not isinstance(d.get("cell_name"), str):
            raise MalformedMessage(reason="a response needs a cell_name")
        failure = bool(d.get("failure", False))
        value = d.get("value")
        if failure:
            if isinstance(value, (str, bytes)):
                # The double-encoded form cells v1 sent.
                try:
                    value = orjson.loads(value)
                except orjson.JSONDecodeError as e:
                    raise MalformedMessage(reason=f"a failure value is not JSON: {e}") from None
            value = deserialize_remote_exception(value if isinstance(value, dict) else {})
        else:
            value = deserialize(value)
        return cls(d["cell_name"], value, failure)

    def to_json(self) -> str:
        return dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, data: str | bytes) -> Response:
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise MalformedMessage(reason=f"a response is not JSON: {e}") from None
        return cls.from_dict(d)


def encode_responses(responses: Iterable[Response]) -> bytes:
    """A JSON array of responses, the form answers travel in."""
    return dumps([r.to_dict() for r in responses])


def decode_responses(data: bytes) -> list[Response]:
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise MalformedMessage(reason=f"responses are not JSON: {e}") from None
    if not isinstance(items, list):
        raise MalformedMessage(reason="responses must be a JSON array")
    return [Response.from_dict(item) for item in items]


def join_encoded(parts: Iterable[bytes]) -> bytes:
    """Concatenate JSON arrays without decoding them."""
    inner = [p[1:-1].strip() for p in parts]
    return b"[" + b",".join(i for i in inner if i) + b"]"


def current_exc_response(cell_name: str) -> Response:
    """A failure Response for the exception being handled."""
    exc = sys.exc_info()[1]
    assert exc is not None
    return Response.from_failure(cell_name, exc)
