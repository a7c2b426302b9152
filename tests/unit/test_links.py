"""The link protocol: chunked values, Deliver, errors, deadlines, loss.

Everything runs in memory: two CellLinkProtocols over real TLS
(TLSMemoryBIOFactory) over iosim, time from task.Clock.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cellsd.errors import (
    CellMaxHopCountReached,
    CellOutcomeUnknown,
    CellRoutingInconsistency,
    CellTimeout,
    CellUnreachable,
    MalformedMessage,
    MessageTooLarge,
    RemoteError,
    UnknownMethod,
)
from cellsd.interfaces import ICellLink
from cellsd.links.amp import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_VALUE_BYTES,
    OVER_LIMIT_KEY,
    Chunked,
    Deliver,
)
from cellsd.links.protocol import CellLinkProtocol
from tests.unit.links_pki import CA, FakeReceiver, LinkPair, connect_link, header

MiB = 1024 * 1024


class _Proto:
    """Just what Chunked reads from a protocol."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes


def _to_box(value: bytes) -> dict[bytes, bytes]:
    strings: dict[bytes, bytes] = {}
    Chunked().toBox(b"body", strings, {"body": value}, _Proto())
    return strings


def _from_box(strings: dict[bytes, bytes], limit: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    objects: dict[str, Any] = {}
    Chunked().fromBox(b"body", dict(strings), objects, _Proto(limit))
    return objects["body"]


class ChunkedTests(SynchronousTestCase):
    """Chunked splits values over AMP's 65,535-byte limit and joins them."""

    def test_round_trip_sizes(self) -> None:
        """0 bytes, exactly one full value, one byte more, and 1 MiB all come
        back identical, through AMP's own wire encoding."""
        for size in (0, MAX_VALUE_BYTES, MAX_VALUE_BYTES + 1, MiB):
            value = bytes(i % 251 for i in range(size))
            strings = _to_box(value)
            self.assertTrue(all(len(v) <= MAX_VALUE_BYTES for v in strings.values()))
            wire = amp.AmpBox(strings).serialize()
            (parsed,) = amp.parseString(wire)
            self.assertEqual(_from_box(parsed), value, size)

    def test_chunk_layout(self) -> None:
        """A value that fits uses one key; one byte more adds ``body.1``; the
        count is recorded in ``body.n``."""
        self.assertEqual(_to_box(b"x" * MAX_VALUE_BYTES).keys(), {b"body", b"body.n"})
        strings = _to_box(b"x" * (MAX_VALUE_BYTES + 1))
        self.assertEqual(strings[b"body.n"], b"2")
        self.assertEqual(strings[b"body.1"], b"x")

    def test_over_limit_on_receipt(self) -> None:
        """A value larger than the receiving protocol's limit is refused."""
        strings = _to_box(b"x" * 1000)
        e = self.assertRaises(MessageTooLarge, _from_box, strings, 999)
        self.assertIn("1000 bytes exceeds the limit of 999", str(e))
        self.assertEqual(_from_box(strings, 1000), b"x" * 1000)

    def test_chunk_count_over_limit(self) -> None:
        """A chunk count that cannot fit the limit is refused before joining."""
        strings = {b"body": b"", b"body.n": b"1000"}
        self.assertRaises(MessageTooLarge, _from_box, strings, MiB)

    def test_marked_box_refused(self) -> None:
        """A box the protocol marked as over the limit is refused."""
        strings = _to_box(b"x")
        strings[OVER_LIMIT_KEY] = b"123456"
        e = self.assertRaises(MessageTooLarge, _from_box, strings, 1000)
        self.assertIn("more than 123456 bytes", str(e))

    def test_missing_chunk(self) -> None:
        """A missing chunk or count is a malformed message, not a short one."""
        strings = _to_box(b"x" * (MAX_VALUE_BYTES + 1))
        del strings[b"body.1"]
        self.assertRaises(MalformedMessage, _from_box, strings)
        self.assertRaises(MalformedMessage, _from_box, {b"body": b"x"})

    def test_not_bytes(self) -> None:
        """Only bytes are sent; a str is a programming error."""
        self.assertRaises(TypeError, _to_box, "text")

    def test_deliver_declares_errors(self) -> None:
        """Every exception allowed across the wire has its code."""
        self.assertEqual(
            Deliver.errors,
            {
                MessageTooLarge: b"TOO_LARGE",
                MalformedMessage: b"MALFORMED",
                CellRoutingInconsistency: b"ROUTING",
                CellMaxHopCountReached: b"HOP_LIMIT",
                UnknownMethod: b"UNKNOWN_METHOD",
            },
        )


class _LinkCase(SynchronousTestCase):
    ca = CA.make()

    def link(self, **kwargs: Any) -> LinkPair:
        pair = connect_link(
            parent_material=self.ca.material("api"),
            child_material=self.ca.material("child1"),
            **kwargs,
        )
        self.assertTrue(pair.child.ready and pair.parent.ready)
        return pair

    def call(
        self,
        pair: LinkPair,
        proto: CellLinkProtocol,
        body: bytes = b"{}",
        hdr: bytes | None = None,
    ) -> Any:
        d = proto.deliver(header() if hdr is None else hdr, body, 30)
        pair.flush()
        return d

    def assert_works(self, pair: LinkPair) -> None:
        """The link still carries a call."""
        d = self.call(pair, pair.child, b"{}")
        answer = orjson.loads(self.successResultOf(d))
        self.assertEqual(answer[0]["value"], ["child1", 2])


class DeliverTests(_LinkCase):
    """Messages cross a link both ways and come back with their answers."""

    def test_provides_icelllink(self) -> None:
        """Both ends provide ICellLink, with neighbour and is_parent set."""
        pair = self.link()
        verifyObject(ICellLink, pair.child)
        verifyObject(ICellLink, pair.parent)
        self.assertEqual((pair.child.neighbour, pair.child.is_parent), ("api", True))
        self.assertEqual((pair.parent.neighbour, pair.parent.is_parent), ("child1", False))

    def test_child_to_parent(self) -> None:
        """A child's message reaches the parent's receiver marked as coming
        from the child (not from a parent); the answer returns as bytes."""
        pair = self.link()
        d = self.call(pair, pair.child, b'{"a": 1}')
        self.assertEqual(
            orjson.loads(self.successResultOf(d)),
            [{"cell_name": "api", "value": ["child1", 8], "failure": False}],
        )
        ((hdr, body, sender, from_parent),) = pair.parent_receiver.calls
        self.assertEqual((hdr, body, sender, from_parent), (header(), b'{"a": 1}', "child1", False))

    def test_parent_to_child(self) -> None:
        """A parent's message reaches the child marked as from its parent."""
        pair = self.link()
        self.successResultOf(self.call(pair, pair.parent))
        ((_, _, sender, from_parent),) = pair.child_receiver.calls
        self.assertEqual((sender, from_parent), ("api", True))

    def test_large_round_trip(self) -> None:
        """A 1 MiB body and a 1 MiB answer cross intact (chunked both ways)."""
        pair = self.link()
        body = b"b" * MiB
        answer = b"[" + b" " * MiB + b"]"
        pair.parent_receiver.hold = True
        d = pair.child.deliver(header(), body, 30)
        pair.flush()
        self.assertEqual(pair.parent_receiver.calls[0][1], body)
        pair.parent_receiver.pending[0].callback(answer)
        pair.flush()
        self.assertEqual(self.successResultOf(d), answer)


class ErrorTests(_LinkCase):
    """Errors come back typed, and the link stays up after each."""

    def test_malformed_header(self) -> None:
        """A header that is not JSON comes back as MalformedMessage."""
        pair = self.link()
        f = self.failureResultOf(self.call(pair, pair.child, hdr=b"{not json"), MalformedMessage)
        self.assertIn("not JSON", f.getErrorMessage())
        self.assert_works(pair)

    def test_unknown_method(self) -> None:
        """A method the contract does not declare comes back as UnknownMethod."""
        pair = self.link()
        d = self.call(pair, pair.child, hdr=header("no_such_method"))
        f = self.failureResultOf(d, UnknownMethod)
        self.assertIn("no_such_method", f.getErrorMessage())
        self.assert_works(pair)

    def test_every_declared_error(self) -> None:
        """Each exception in Deliver.errors, raised by the receiver, arrives
        as the same class with its message."""
        pair = self.link()
        for exc in (
            MessageTooLarge(size=1, limit=0),
            MalformedMessage(reason="bad"),
            CellRoutingInconsistency(reason="loop"),
            CellMaxHopCountReached(hop_count=11),
            UnknownMethod(kind="broadcast", method_name="x"),
        ):
            pair.parent_receiver.raises = exc
            f = self.failureResultOf(self.call(pair, pair.child), type(exc))
            self.assertEqual(f.getErrorMessage(), str(exc))
        pair.parent_receiver.raises = None
        self.assert_works(pair)

    def test_unexpected_error(self) -> None:
        """Any other exception is logged where it happened, crosses as a
        RemoteError without its details, and does not drop the link."""
        pair = self.link()
        pair.parent_receiver.raises = KeyError("secret")
        f = self.failureResultOf(self.call(pair, pair.child), RemoteError)
        self.assertIn("internal error in cell api", f.getErrorMessage())
        self.assertNotIn("secret", f.getErrorMessage())
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        pair.parent_receiver.raises = None
        self.assert_works(pair)

    def test_unknown_command(self) -> None:
        """A command we do not answer (here AMP's built-in StartTLS name) is
        refused without dropping the link."""

        class StartTLS(amp.Command):
            commandName = b"StartTLS"

        pair = self.link()
        failures: list[Failure] = []
        # A raw callRemote: its errback must be attached before the answer.
        pair.child.callRemote(StartTLS).addErrback(failures.append)
        pair.flush()
        failures[0].trap(amp.UnhandledCommand)
        self.assert_works(pair)

    def test_too_large_refused_locally(self) -> None:
        """Over the sender's limit, nothing is sent: MessageTooLarge at once."""
        pair = self.link(child_max=1000)
        d = pair.child.deliver(header(), b"x" * 1000, 30)
        f = self.failureResultOf(d, MessageTooLarge)
        self.assertIn("exceeds the limit of 1000 bytes", f.getErrorMessage())
        self.assertFalse(pair.pump.pump(), "something was sent")
        self.assertEqual(pair.parent_receiver.calls, [])

    def test_header_too_large_refused_locally(self) -> None:
        """A routing header over AMP's value limit is refused locally too."""
        pair = self.link()
        hdr = header(padding="p" * MAX_VALUE_BYTES)
        f = self.failureResultOf(pair.child.deliver(hdr, b"{}", 30), MessageTooLarge)
        self.assertIn("Routing header", f.getErrorMessage())
        self.assertFalse(pair.pump.pump())

    def test_too_large_refused_on_receipt(self) -> None:
        """Over the receiver's (smaller) limit: MessageTooLarge from the far
        side, the receiver never called, and the link still works."""
        pair = self.link(parent_max=MiB)
        f = self.failureResultOf(self.call(pair, pair.child, b"x" * (MiB + 1)), MessageTooLarge)
        self.assertIn(f"limit of {MiB} bytes", f.getErrorMessage())
        self.assertEqual(pair.parent_receiver.calls, [])
        self.assert_works(pair)

    def test_far_over_limit_not_buffered(self) -> None:
        """A box far over the receiver's limit is refused too, and its values
        past the budget are dropped while it arrives, not held."""
        pair = self.link(parent_max=100_000)
        seen: list[int] = []
        original = pair.parent.ampBoxReceived

        def spy(box: amp.AmpBox) -> None:
            seen.append(sum(len(v) for v in box.values()))
            original(box)

        pair.parent.ampBoxReceived = spy  # type: ignore[method-assign]  # test spy
        d = self.call(pair, pair.child, b"x" * (2 * MiB))
        self.failureResultOf(d, MessageTooLarge)
        self.assertLess(seen[0], 100_000 + 3 * MAX_VALUE_BYTES)
        self.assert_works(pair)

    def test_answer_too_large(self) -> None:
        """An answer over the answering side's limit comes back as
        MessageTooLarge rather than being sent."""
        pair = self.link(parent_max=1000)
        pair.parent_receiver.hold = True
        d = self.call(pair, pair.child)
        pair.parent_receiver.pending[0].callback(b"[" + b" " * 2000 + b"]")
        pair.flush()
        f = self.failureResultOf(d, MessageTooLarge)
        self.assertIn("Answer of 2002 bytes", f.getErrorMessage())

    def test_answer_over_callers_limit(self) -> None:
        """An answer over the *caller's* limit is refused on arrival."""
        pair = self.link(child_max=1000)
        pair.parent_receiver.hold = True
        d = self.call(pair, pair.child)
        pair.parent_receiver.pending[0].callback(b"[" + b" " * 2000 + b"]")
        pair.flush()
        self.failureResultOf(d, MessageTooLarge)
        pair.parent_receiver.hold = False
        self.assert_works(pair)


class DeadlineTests(_LinkCase):
    """Every call ends: with an answer, CellTimeout, or CellUnreachable."""

    def test_timeout(self) -> None:
        """A receiver that never answers: CellTimeout naming the neighbour
        once the clock passes the timeout, not before."""
        pair = self.link()
        pair.parent_receiver.hold = True
        d = pair.child.deliver(header(), b"{}", 5)
        pair.flush()
        pair.clock.advance(4.9)
        self.assertNoResult(d)
        pair.clock.advance(0.2)
        f = self.failureResultOf(d, CellTimeout)
        self.assertEqual(f.value.kwargs, {"cell_name": "api"})

    def test_late_answer_ignored(self) -> None:
        """An answer arriving after the timeout is dropped quietly and the
        link keeps working."""
        pair = self.link()
        pair.parent_receiver.hold = True
        d = pair.child.deliver(header(), b"{}", 5)
        pair.flush()
        pair.clock.advance(6)
        self.failureResultOf(d, CellTimeout)
        pair.parent_receiver.pending[0].callback(b"[]")
        pair.flush()
        pair.parent_receiver.hold = False
        self.assert_works(pair)

    def test_no_timeout(self) -> None:
        """timeout=None waits for as long as it takes."""
        pair = self.link()
        pair.parent_receiver.hold = True
        d = pair.child.deliver(header(), b"{}", None)
        pair.flush()
        pair.clock.advance(10_000)
        self.assertNoResult(d)
        pair.parent_receiver.pending[0].callback(b"[]")
        pair.flush()
        self.assertEqual(self.successResultOf(d), b"[]")

    def test_connection_lost(self) -> None:
        """Losing the connection fails the outstanding call (it reached the
        parent, which holds it) with CellOutcomeUnknown: it may have been
        applied. Later calls fail at once with CellUnreachable (not sent)."""
        pair = self.link()
        pair.parent_receiver.hold = True
        d = pair.child.deliver(header(), b"{}", 30)
        pair.flush()
        pair.disconnect()
        f = self.failureResultOf(d, CellOutcomeUnknown)
        self.assertEqual(f.value.kwargs["cell_name"], "api")
        self.failureResultOf(pair.child.deliver(header(), b"{}", 30), CellUnreachable)
        self.assertEqual(set(pair.lost), {pair.child, pair.parent})
        self.assertFalse(pair.child.ready or pair.parent.ready)


class UnverifiedPeerTests(SynchronousTestCase):
    """Nothing is processed from a peer whose identity is not verified."""

    def test_box_before_handshake_aborts(self) -> None:
        """A box arriving before handshakeCompleted matched aborts the
        connection and never reaches the receiver."""
        receiver = FakeReceiver()
        lost: list[CellLinkProtocol] = []
        proto = CellLinkProtocol(receiver, ["child1"], False, task.Clock(), on_lost=lost.append)
        transport = StringTransport()
        proto.makeConnection(transport)
        box = amp.AmpBox({b"_command": b"cellsd-deliver", b"_ask": b"1", b"header": header()})
        proto.dataReceived(box.serialize())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(receiver.calls, [])
        self.assertEqual(transport.value(), b"", "answered an unverified peer")
        self.assertIsNone(proto.neighbour)
        proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(lost, [proto])
        self.assertFalse(proto.ready)
