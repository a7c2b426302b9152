"""The AMP commands spoken between neighbour cells, and chunked values.

Commands only: the responders live in :mod:`cellsd.links.protocol`. Both
directions speak the same command, :class:`Deliver`: a message goes up or
down the tree as its routing header and its opaque body, and its answer (a
JSON array of responses) comes back as the AMP answer. The dialing side
opens each connection with :class:`Hello`.

AMP caps one value at 65,535 bytes. :class:`Chunked` carries larger values
split across several keys, and refuses on receipt a value larger than the
receiving protocol's ``max_message_bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict, TypeVar, cast

from twisted.internet.defer import Deferred, fail
from twisted.protocols import amp

from cellsd.errors import (
    CellMaxHopCountReached,
    CellRoutingInconsistency,
    MalformedMessage,
    MessageTooLarge,
    UnknownMethod,
)

_T = TypeVar("_T")

#: The default limit on one message (header plus body) and on one answer.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: The largest value AMP carries under one key; also the header's limit.
MAX_VALUE_BYTES = amp.MAX_VALUE_LENGTH

#: Put into a received box by a protocol that stopped storing its values
#: because the box outgrew the limit (the value: bytes received so far).
OVER_LIMIT_KEY = b"_cellsd-over-limit"


def _python_name(name: bytes) -> str:
    # AMP's own mapping (private in amp.py) for the simple names we use.
    return name.decode("ascii").replace("-", "_")


def max_message_bytes_of(proto: object) -> int:
    """The receiving protocol's limit, or the default for a plain AMP."""
    limit = getattr(proto, "max_message_bytes", None)
    return limit if isinstance(limit, int) else DEFAULT_MAX_MESSAGE_BYTES


class Chunked(amp.Argument):
    """Bytes of any length, sent as ``name``, ``name.1``, ``name.2`` …

    ``name.n`` holds the number of chunks. On receipt the chunks are joined
    and the total is checked against the protocol's ``max_message_bytes``:
    a larger value raises :class:`MessageTooLarge`, as does a box marked
    with :data:`OVER_LIMIT_KEY`; missing chunks raise
    :class:`MalformedMessage`.
    """

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: object,
    ) -> None:
        value = self.retrieve(objects, _python_name(name), proto)
        if not isinstance(value, bytes):
            raise TypeError(f"{name!r} must be bytes, not {type(value).__name__}")
        step = MAX_VALUE_BYTES
        chunks = [value[i : i + step] for i in range(0, len(value), step)] or [b""]
        strings[name] = chunks[0]
        for index, chunk in enumerate(chunks[1:], 1):
            strings[b"%s.%d" % (name, index)] = chunk
        strings[name + b".n"] = b"%d" % len(chunks)

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: object,
    ) -> None:
        limit = max_message_bytes_of(proto)
        over = strings.get(OVER_LIMIT_KEY)
        if over is not None:
            size = int(over) if over.isdigit() else limit + 1
            raise MessageTooLarge(
                f"Message of more than {size} bytes exceeds the limit of {limit} bytes",
                size=size,
                limit=limit,
            )
        raw_count = strings.pop(name + b".n", None)
        if raw_count is None or not raw_count.isdigit():
            raise MalformedMessage(reason=f"{name!r} has no valid chunk count")
        count = int(raw_count)
        if count < 1:
            raise MalformedMessage(reason=f"{name!r} has a chunk count of {count}")
        # Refuse before joining: every chunk but the last is full size.
        if (count - 1) * MAX_VALUE_BYTES > limit:
            raise MessageTooLarge(size=(count - 1) * MAX_VALUE_BYTES, limit=limit)
        keys = [name] + [b"%s.%d" % (name, i) for i in range(1, count)]
        try:
            parts = [strings.pop(key) for key in keys]
        except KeyError as e:
            raise MalformedMessage(reason=f"chunk {e.args[0]!r} is missing") from None
        size = sum(len(part) for part in parts)
        if size > limit:
            raise MessageTooLarge(size=size, limit=limit)
        objects[_python_name(name)] = b"".join(parts)


class DeliverResponse(TypedDict):
    """The answer to :class:`Deliver`."""

    #: A JSON array of responses (``b"[]"`` when no answer is wanted).
    responses: bytes


class Deliver(amp.Command):
    """Hand one message to the neighbour; answered with its responses."""

    commandName = b"cellsd-deliver"
    arguments = [
        (b"header", amp.String()),  # the routing header (JSON), < 64 KiB
        (b"body", Chunked()),  # ctxt and method_kwargs, opaque to relays
    ]
    response = [(b"responses", Chunked())]
    #: Every exception allowed to cross the wire; anything else arrives as
    #: an UnknownRemoteError carrying no detail.
    errors = {
        MessageTooLarge: b"TOO_LARGE",
        MalformedMessage: b"MALFORMED",
        CellRoutingInconsistency: b"ROUTING",
        CellMaxHopCountReached: b"HOP_LIMIT",
        UnknownMethod: b"UNKNOWN_METHOD",
    }


class HelloResponse(TypedDict, total=False):
    """The answer to :class:`Hello`."""

    cell: str
    #: The protocol versions the answering cell speaks (absent: only 1).
    versions: list[int] | None


class Hello(amp.Command):
    """The dialing side's first call: answered once the accepting side has
    verified the dialer's certificate name.

    Under TLS 1.3 a client's handshake completes before the server has
    checked the client's certificate, so the dialing side counts its link as
    up only when this answer arrives.
    """

    commandName = b"cellsd-hello"
    #: Both optional: a peer from before negotiation sends and answers
    #: none, and AMP ignores keys a command does not declare.
    arguments = [(b"versions", amp.ListOf(amp.Integer(), optional=True))]
    response = [
        (b"cell", amp.Unicode()),  # the answering cell's name
        (b"versions", amp.ListOf(amp.Integer(), optional=True)),
    ]


#: The typed error for each error code of :class:`Deliver`.
DELIVER_ERRORS: dict[bytes, type[Exception]] = {code: cls for cls, code in Deliver.errors.items()}


def responses_box(responses: bytes) -> amp.AmpBox:
    """The answer box of :class:`Deliver` for already-encoded responses."""
    box = amp.AmpBox()
    Chunked().toBox(b"responses", box, {"responses": responses}, None)
    return box


#: The commands a link answers; nothing else is dispatched.
COMMANDS: dict[bytes, type[amp.Command]] = {
    Deliver.commandName: Deliver,
    Hello.commandName: Hello,
}


class LinkClient:
    """Typed calls to the neighbour: the one place ``callRemote`` is used."""

    def __init__(self, proto: amp.AMP) -> None:
        self._proto = proto

    def deliver(self, header: bytes, body: bytes) -> Deferred[bytes]:
        """Send :class:`Deliver`; fires with the encoded responses.

        Never raises: a failure to encode or send fails the Deferred.
        """
        try:
            # callRemote is untyped; Deliver's response schema fixes the type.
            d = cast(
                "Deferred[DeliverResponse]",
                self._proto.callRemote(Deliver, header=header, body=body),
            )
        except Exception:
            return fail()
        return detached(d).addCallback(lambda answer: answer["responses"])

    def hello(self, versions: Sequence[int] | None = None) -> Deferred[HelloResponse]:
        """Send :class:`Hello` stating ``versions`` (None: state none, as a
        cell from before negotiation); fires with the answer."""
        try:
            # callRemote is untyped; Hello's response schema fixes the type.
            d = cast(
                "Deferred[HelloResponse]",
                self._proto.callRemote(
                    Hello, versions=list(versions) if versions is not None else None
                ),
            )
        except Exception:
            return fail()
        return detached(d)


def detached(inner: Deferred[_T]) -> Deferred[_T]:
    """A new Deferred that fires as ``inner`` does.

    AMP appends its ``unhandledError`` (which drops the connection) to the
    call's own Deferred when the answer arrives, so a failure not yet
    handled by then, say a MessageTooLarge raised while decoding the answer
    before the caller attached an errback, would end the link. ``inner``
    always ends handled here; the caller's Deferred carries the outcome.
    Cancelling the new Deferred (as ``addTimeout`` does) cancels ``inner``.
    """
    outer: Deferred[_T] = Deferred(lambda _: inner.cancel())
    inner.addCallbacks(outer.callback, outer.errback)
    return outer
