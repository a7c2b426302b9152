"""The AMQP transport's logic in memory: spec lookup, URL, names, wire
format, and the client and server over a fake broker with a Clock.

The fake broker (:class:`FakeBroker`) routes like RabbitMQ for what we use
(default, topic without wildcards, fanout), holds unacknowledged deliveries
per connection and requeues them when it drops, and can hold publisher
confirms back. The real broker is exercised in tests/integration/test_amqp.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cellsd.client import connect_amqp
from cellsd.config import parse_settings
from cellsd.context import RequestContext
from cellsd.errors import (
    CallTimeout,
    CellNotFound,
    ConfigError,
    InvalidArguments,
    MalformedMessage,
    NotConnected,
    OutboxFull,
    UnknownMethod,
)
from cellsd.interfaces import IRPCTransport
from cellsd.rpc.amqp_client import AMQPTransport
from cellsd.rpc.amqp_common import (
    DEBIAN_SPECS,
    Delivery,
    NoRoute,
    Target,
    Topology,
    decode_reply,
    decode_request,
    encode_error,
    encode_request,
    encode_value,
    find_spec,
    parse_amqp_url,
)
from cellsd.rpc.amqp_server import AMQPServer

URL = "amqp://guest:guest@127.0.0.1:5672/"
CTXT = RequestContext(is_admin=True, user_id="u1")


# -- a fake broker ----------------------------------------------------------------


@attrs.define
class _Message:
    body: bytes
    properties: dict[str, Any]
    exchange: str
    routing_key: str
    redelivered: bool = False


@attrs.define
class _Queue:
    name: str
    durable: bool
    owner: FakeChannel | None  # exclusive to this connection
    messages: deque[_Message] = attrs.Factory(deque)
    consumers: list[tuple[FakeChannel, str]] = attrs.Factory(list)
    turn: int = 0


class FakeBroker:
    def __init__(self) -> None:
        self.exchanges: dict[str, str] = {}
        self.queues: dict[str, _Queue] = {}
        self.bindings: list[tuple[str, str, str]] = []  # exchange, key, queue
        self.up = True
        self.hold_confirms = False
        self.held: list[Callable[[], None]] = []
        self.channels: list[FakeChannel] = []
        self.published: list[_Message] = []
        self._names = 0

    def connect(self) -> Deferred[Any]:
        if not self.up:
            return defer.fail(ConnectionRefusedError())
        ch = FakeChannel(self)
        self.channels.append(ch)
        return defer.succeed(ch)

    def release_confirms(self) -> None:
        held, self.held = self.held, []
        for confirm in held:
            confirm()

    def stop(self) -> None:
        """The broker goes away: every connection drops."""
        self.up = False
        for ch in list(self.channels):
            ch.abort()

    def route(self, exchange: str, key: str) -> list[_Queue]:
        if exchange == "":
            return [self.queues[key]] if key in self.queues else []
        kind = self.exchanges[exchange]
        names = [q for e, k, q in self.bindings if e == exchange and (kind == "fanout" or k == key)]
        return [self.queues[n] for n in dict.fromkeys(names) if n in self.queues]

    def pump(self, queue: _Queue) -> None:
        while queue.messages and queue.consumers:
            ch, tag = queue.consumers[queue.turn % len(queue.consumers)]
            queue.turn += 1
            ch.deliver(tag, queue.messages.popleft())

    def drop(self, ch: FakeChannel) -> None:
        self.channels.remove(ch)
        for name, queue in list(self.queues.items()):
            queue.consumers = [c for c in queue.consumers if c[0] is not ch]
            if queue.owner is ch:
                del self.queues[name]
                self.bindings = [b for b in self.bindings if b[2] != name]
        for queue_name, message in ch.unacked.values():
            back = self.queues.get(queue_name)
            if back is not None:
                message.redelivered = True
                back.messages.appendleft(message)
                self.pump(back)


class FakeChannel:
    """An AMQPChannel on the fake broker."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.lost: Deferred[None] = Deferred()
        self.consumers: dict[str, tuple[Callable[[Delivery], None], bool, str]] = {}
        self.unacked: dict[int, tuple[str, _Message]] = {}
        self.acked: list[int] = []
        self.rejected: list[tuple[int, bool]] = []
        self._tags = 0

    def declare_exchange(self, name: str, kind: str, durable: bool) -> Deferred[None]:
        self.broker.exchanges.setdefault(name, kind)
        return defer.succeed(None)

    def declare_queue(
        self, name: str, *, durable: bool, exclusive: bool, auto_delete: bool
    ) -> Deferred[str]:
        if not name:
            self.broker._names += 1
            name = f"amq.gen-{self.broker._names}"
        if name not in self.broker.queues:
            self.broker.queues[name] = _Queue(name, durable, self if exclusive else None)
        return defer.succeed(name)

    def bind_queue(self, queue: str, exchange: str, routing_key: str) -> Deferred[None]:
        if (exchange, routing_key, queue) not in self.broker.bindings:
            self.broker.bindings.append((exchange, routing_key, queue))
        return defer.succeed(None)

    def qos(self, prefetch_count: int) -> Deferred[None]:
        return defer.succeed(None)

    def consume(
        self, queue: str, on_delivery: Callable[[Delivery], None], no_ack: bool
    ) -> Deferred[str]:
        tag = f"ctag{len(self.consumers)}"
        self.consumers[tag] = (on_delivery, no_ack, queue)
        self.broker.queues[queue].consumers.append((self, tag))
        self.broker.pump(self.broker.queues[queue])
        return defer.succeed(tag)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Mapping[str, Any],
        mandatory: bool = True,
    ) -> Deferred[None]:
        if self.lost.called:
            return defer.fail(NotConnected(reason="lost"))
        props = {k.replace("_", "-"): v for k, v in properties.items()}
        message = _Message(body, props, exchange, routing_key)
        self.broker.published.append(message)
        queues = self.broker.route(exchange, routing_key)
        for queue in queues:
            queue.messages.append(attrs.evolve(message))
            self.broker.pump(queue)
        d: Deferred[None] = Deferred()

        def confirm() -> None:
            if d.called:
                return
            if self.lost.called:
                d.errback(NotConnected(reason="lost before the confirm"))
            elif not queues and mandatory:
                d.errback(NoRoute(exchange=exchange, routing_key=routing_key))
            else:
                d.callback(None)

        if self.broker.hold_confirms:
            self.broker.held.append(confirm)
        else:
            confirm()
        return d

    def deliver(self, tag: str, message: _Message) -> None:
        handler, no_ack, queue = self.consumers[tag]
        self._tags += 1
        if not no_ack:
            self.unacked[self._tags] = (queue, message)
        handler(
            Delivery(
                message.body,
                message.properties,
                self._tags,
                message.redelivered,
                message.exchange,
                message.routing_key,
            )
        )

    def ack(self, delivery_tag: int) -> None:
        if not self.lost.called:
            self.unacked.pop(delivery_tag)
            self.acked.append(delivery_tag)

    def reject(self, delivery_tag: int, requeue: bool) -> None:
        if not self.lost.called:
            self.unacked.pop(delivery_tag)
            self.rejected.append((delivery_tag, requeue))

    def delete_queue(self, name: str) -> Deferred[None]:
        self.broker.queues.pop(name, None)
        return defer.succeed(None)

    def delete_exchange(self, name: str) -> Deferred[None]:
        self.broker.exchanges.pop(name, None)
        return defer.succeed(None)

    def close(self) -> Deferred[None]:
        self.abort()
        return defer.succeed(None)

    def abort(self) -> None:
        if not self.lost.called:
            self.broker.drop(self)
            self.lost.callback(None)


class GatedManager:
    """A dispatcher whose answers the test releases: records every request
    and answers ``answers[method]``, or waits on a Deferred in ``gates``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.gates: dict[str, list[Deferred[Any]]] = {}
        self.gated: set[str] = set()

    def dispatch(
        self, ctxt: RequestContext, method: str, version: str, kwargs: dict[str, Any]
    ) -> Deferred[Any]:
        self.requests.append((method, kwargs))
        if method == "missing":
            return defer.fail(CellNotFound(cell_name=kwargs.get("cell_name")))
        if method in self.gated:
            d: Deferred[Any] = Deferred()
            self.gates.setdefault(method, []).append(d)
            return d
        return defer.succeed({"method": method, "kwargs": kwargs, "user": ctxt.user_id})


# -- pure parts ---------------------------------------------------------------------


class SpecTests(SynchronousTestCase):
    def mktemp(self) -> str:
        """A path in a fresh directory outside the work tree, removed after."""
        tmp = tempfile.mkdtemp(prefix="cellsd-amqp-")
        self.addCleanup(shutil.rmtree, tmp, True)
        return os.path.join(tmp, "f")

    def test_explicit_spec_is_used(self) -> None:
        """An explicit spec path that exists and has the RabbitMQ extensions
        is returned as is."""
        path = self.mktemp()
        Path(path).write_text(
            '<amqp major="0" minor="9" revision="1"><class name="confirm" index="85">'
            '<method name="nack"/></class></amqp>'
        )
        self.assertEqual(find_spec(path), path)

    def test_missing_spec_names_both_places(self) -> None:
        """Without a spec the error names the config key, the Debian path
        and the package to install."""
        missing = os.path.join(self.mktemp(), "none.xml")
        err = self.assertRaises(ConfigError, find_spec, missing)
        for text in ("api.amqp_spec", missing, DEBIAN_SPECS[0], "amqp-specs"):
            self.assertIn(text, str(err))

    def test_spec_without_confirms_is_refused(self) -> None:
        """The plain 0-9-1 spec lacks confirm.select: refused with a hint."""
        path = self.mktemp()
        Path(path).write_text('<amqp major="0" minor="9" revision="1"></amqp>')
        err = self.assertRaises(ConfigError, find_spec, path)
        self.assertIn("confirm.select", str(err))

    def test_connect_amqp_fails_with_the_config_error(self) -> None:
        """connect_amqp reports a missing spec as a failed Deferred."""
        missing = os.path.join(self.mktemp(), "none.xml")
        d = connect_amqp(Clock(), URL, "c1", spec=missing)
        self.assertIn("amqp-specs", str(self.failureResultOf(d, ConfigError).value))

    def test_config_key_must_name_a_file(self) -> None:
        """[api] amqp_spec is optional, and checked to exist when given."""
        base = Path(self.mktemp())
        base.mkdir()
        for name in ("ca.pem", "c.pem", "c.key"):
            (base / name).write_text("x")
        data: dict[str, Any] = {
            "cell": {"name": "c"},
            "tls": {"ca": "ca.pem", "cert": "c.pem", "key": "c.key"},
        }
        self.assertIsNone(parse_settings(data, base).api.amqp_spec)
        data["api"] = {"amqp_spec": "nope.xml"}
        err = self.assertRaises(ConfigError, parse_settings, data, base)
        self.assertIn("api.amqp_spec", str(err))
        (base / "spec.xml").write_text("x")
        data["api"] = {"amqp_spec": "spec.xml"}
        self.assertEqual(parse_settings(data, base).api.amqp_spec, base / "spec.xml")


class URLAndNamesTests(SynchronousTestCase):
    def test_url(self) -> None:
        """User, password, vhost (URL-decoded) and query options are read."""
        p = parse_amqp_url("amqp://me:s%40cret@mq.example:5673/cells%2Fprod?heartbeat=5")
        self.assertEqual(
            (p.host, p.port, p.username, p.password), ("mq.example", 5673, "me", "s@cret")
        )
        self.assertEqual((p.vhost, p.heartbeat, p.tls), ("cells/prod", 5, False))
        d = parse_amqp_url("amqps://h")
        self.assertEqual((d.port, d.vhost, d.username, d.tls), (5671, "/", "guest", True))
        self.assertRaises(ConfigError, parse_amqp_url, "http://h/")

    def test_topology_names(self) -> None:
        """The names of the module docstring, with the cell in each."""
        t = Topology("c1")
        self.assertEqual(
            (t.exchange, t.shared_queue, t.shared_key), ("cells", "cells.c1", "cells.c1")
        )
        self.assertEqual(t.worker_queue("w1"), "cells.c1.w1")
        self.assertEqual(
            (t.fanout_exchange, t.fanout_queue("w1")), ("cells_fanout.c1", "cells_fanout.c1.w1")
        )
        self.assertEqual(Target().route(t), ("cells", "cells.c1"))
        self.assertEqual(Target(worker_id="w1").route(t), ("cells", "cells.c1.w1"))
        self.assertEqual(Target(fanout=True).route(t), ("cells_fanout.c1", ""))

    def test_request_round_trip(self) -> None:
        """A request survives the wire: method, version, context, kwargs, cast."""
        body = encode_request(CTXT, "ping", "1.38", {"cell_name": "x"}, cast=True)
        self.assertEqual(
            sorted(orjson.loads(body)), ["cast", "ctxt", "kwargs", "method", "version"]
        )
        request = decode_request(body)
        self.assertEqual((request.method, request.version, request.cast), ("ping", "1.38", True))
        self.assertEqual(request.kwargs, {"cell_name": "x"})
        self.assertEqual(request.ctxt.user_id, "u1")

    def test_malformed_requests(self) -> None:
        """Anything but a request object is a MalformedMessage."""
        for body in (b"nope", b"[]", b'{"method": 1}', b'{"method":"m","version":"1","kwargs":[]}'):
            self.assertRaises(MalformedMessage, decode_request, body)

    def test_replies(self) -> None:
        """A value comes back as is; an error as its own class."""
        self.assertEqual(decode_reply(encode_value({"a": [1]})), {"a": [1]})
        err = self.assertRaises(
            CellNotFound, decode_reply, encode_error(CellNotFound(cell_name="z"))
        )
        self.assertIn("z", str(err))
        self.assertRaises(MalformedMessage, decode_reply, b"]")


# -- client and server over the fake broker ---------------------------------------------


class FakeBrokerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = FakeBroker()
        self.manager = GatedManager()
        self.server = self.worker("w1")
        self.transport = AMQPTransport(self.clock, URL, "c1", connect=self.broker.connect)
        started = self.transport.start()
        self.successResultOf(started)

    def worker(self, worker_id: str) -> AMQPServer:
        server = AMQPServer(
            self.clock, URL, "c1", self.manager, worker_id, connect=self.broker.connect
        )
        server.startService()
        self.successResultOf(server.when_ready())
        return server

    def channel_of(self, server: AMQPServer) -> FakeChannel:
        ch = server.reconnector.current
        assert isinstance(ch, FakeChannel)
        return ch

    def test_contract(self) -> None:
        """AMQPTransport provides IRPCTransport."""
        verifyObject(IRPCTransport, self.transport)

    def test_call_and_errors(self) -> None:
        """A call reaches the worker through the shared queue with reply_to,
        a correlation id, persistence and an expiration; its answer and a
        typed error come back."""
        value = self.successResultOf(self.transport.call(CTXT, "m", "1.0", {"a": 1}, 5.0))
        self.assertEqual(value, {"method": "m", "kwargs": {"a": 1}, "user": "u1"})
        request = self.broker.published[0]
        self.assertEqual((request.exchange, request.routing_key), ("cells", "cells.c1"))
        props = request.properties
        self.assertEqual(props["correlation-id"], props["message-id"])
        self.assertEqual((props["delivery-mode"], props["expiration"]), (2, "5000"))
        self.assertTrue(props["reply-to"].startswith("amq.gen-"))
        f = self.failureResultOf(self.transport.call(CTXT, "missing", "1.0", {"cell_name": "q"}, 5))
        self.assertIsInstance(f.value, CellNotFound)
        self.assertEqual(self.transport.pending_calls, 0)

    def test_timeout_cleans_up_and_late_reply_is_counted(self) -> None:
        """A call without an answer fails with CallTimeout at its deadline and
        leaves the pending map; its reply, when it comes, is dropped and
        counted; the worker still acknowledges the request."""
        self.manager.gated.add("slow")
        d = self.transport.call(CTXT, "slow", "1.0", {}, 2.0)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertIsInstance(self.failureResultOf(d).value, CallTimeout)
        self.assertEqual(self.transport.pending_calls, 0)
        ch = self.channel_of(self.server)
        self.assertEqual(len(ch.unacked), 1)
        self.manager.gates["slow"][0].callback("late")
        self.assertEqual(self.transport.late_replies, 1)
        self.assertEqual(ch.unacked, {})

    def test_cast_fires_on_confirm(self) -> None:
        """A cast fires only once the broker confirmed it."""
        self.broker.hold_confirms = True
        d = self.transport.cast(CTXT, "m", "1.0", {})
        self.assertNoResult(d)
        self.broker.release_confirms()
        self.assertIsNone(self.successResultOf(d))

    def test_ack_only_after_the_work(self) -> None:
        """The worker acknowledges a cast once dispatch has finished, and a
        call once its reply was confirmed: a worker dying before that
        leaves the request to another."""
        self.manager.gated.add("work")
        self.successResultOf(self.transport.cast(CTXT, "work", "1.0", {}))
        ch = self.channel_of(self.server)
        self.assertEqual((len(ch.unacked), ch.acked), (1, []))
        self.manager.gates["work"][0].callback(None)
        self.assertEqual((len(ch.unacked), len(ch.acked)), (0, 1))

        self.broker.hold_confirms = True
        d = self.transport.call(CTXT, "m", "1.0", {}, 5.0)
        _reply_confirm, request_confirm = self.broker.held  # the fake delivers first
        request_confirm()
        self.assertEqual(len(ch.unacked), 1)  # until the reply is confirmed
        self.broker.release_confirms()
        self.assertEqual(ch.unacked, {})
        self.successResultOf(d)

    def test_a_cast_refused_for_a_full_outbox_goes_back_on_the_queue(self) -> None:
        """Injected: the cell's outbox is full when a worker runs a cast. The
        request is not acknowledged (nothing lost): a second later it is
        rejected with requeue, so the broker delivers it again."""
        self.manager.gated.add("instance_update_at_top")
        self.successResultOf(self.transport.cast(CTXT, "instance_update_at_top", "1.35", {}))
        ch = self.channel_of(self.server)
        full = OutboxFull(
            cell_name="c1", count=2, limit=2, method="instance_update_at_top", neighbour="top"
        )
        self.manager.gates["instance_update_at_top"][0].errback(full)
        self.assertEqual((len(ch.unacked), ch.acked, ch.rejected), (1, [], []))
        self.clock.advance(self.server.requeue_delay)
        self.assertEqual((ch.unacked, ch.acked), ({}, []))
        self.assertEqual([requeue for _, requeue in ch.rejected], [True])

    def test_unacked_request_goes_to_another_worker(self) -> None:
        """A request held by a worker whose connection dies is redelivered to
        the other worker of the cell and executed there."""
        other = self.worker("w2")
        self.manager.gated.add("work")
        for _ in range(2):
            self.successResultOf(self.transport.cast(CTXT, "work", "1.0", {}))
        self.assertEqual((self.server.received, other.received), (1, 1))
        self.channel_of(self.server).abort()
        self.assertEqual(other.received, 2)
        for gate in self.manager.gates["work"]:
            gate.callback(None)
        self.assertEqual(self.channel_of(other).unacked, {})
        self.successResultOf(self.server.stopService())

    def test_fanout_and_one_worker(self) -> None:
        """A fanout cast reaches every worker; a targeted call one worker; a
        call on a fanout target is refused; a missing worker is NoRoute."""
        other = self.worker("w2")
        self.successResultOf(self.transport.prepare(fanout=True).cast(CTXT, "m", "1.0", {}))
        self.assertEqual((self.server.executed, other.executed), (1, 1))
        self.successResultOf(self.transport.prepare("w2").call(CTXT, "m", "1.0", {}, 5))
        self.assertEqual((self.server.executed, other.executed), (1, 2))
        d = self.transport.prepare(fanout=True).call(CTXT, "m", "1.0", {}, 5)
        self.assertIsInstance(self.failureResultOf(d).value, InvalidArguments)
        d = self.transport.prepare("nobody").call(CTXT, "m", "1.0", {}, 5)
        self.assertIsInstance(self.failureResultOf(d).value, NoRoute)
        self.assertEqual(self.transport.pending_calls, 0)

    def test_malformed_request_is_rejected_with_an_answer(self) -> None:
        """A request that does not decode is rejected (not requeued), and a
        caller waiting for it gets MalformedMessage."""
        ch = self.channel_of(self.server)
        link = self.transport._link
        d = link.call("m", "cells", "cells.c1", b"not json", 5.0)
        self.assertIsInstance(self.failureResultOf(d).value, MalformedMessage)
        self.assertEqual(ch.rejected, [(1, False)])
        self.assertEqual(self.manager.requests, [])

    def test_lost_connection_fails_calls_in_flight_then_recovers(self) -> None:
        """When the broker goes, calls in flight fail with NotConnected at
        once; calls made while it is down wait; both sides reconnect with
        backoff, redeclare, and the waiting call goes through."""
        self.manager.gated.add("slow")
        in_flight = self.transport.call(CTXT, "slow", "1.0", {}, 30.0)
        self.broker.stop()
        self.assertIsInstance(self.failureResultOf(in_flight).value, NotConnected)
        waiting = self.transport.call(CTXT, "m", "1.0", {}, 30.0)
        self.clock.advance(1.0)
        self.assertNoResult(waiting)
        self.broker.up = True
        self.clock.advance(3.0)
        self.assertEqual(self.successResultOf(waiting)["method"], "m")
        self.assertEqual(self.server.reconnector.connections, 2)
        self.assertIn("cells.c1.w1", self.broker.queues)
        # The "slow" request was requeued when the worker's connection went,
        # and is executed again now.
        self.assertEqual([m for m, _ in self.manager.requests].count("slow"), 2)

    def test_waiting_call_times_out(self) -> None:
        """A call made while the broker is down fails with CallTimeout at
        its deadline, with nothing left pending."""
        self.broker.stop()
        d = self.transport.call(CTXT, "m", "1.0", {}, 2.0)
        self.clock.advance(2.5)
        self.assertIsInstance(self.failureResultOf(d).value, CallTimeout)
        self.assertEqual(self.transport.pending_calls, 0)
        self.assertEqual(self.transport._link.reconnector._waiters, [])

    def test_close(self) -> None:
        """close() fails the calls in flight with NotConnected, later calls
        at once, and stops reconnecting."""
        self.manager.gated.add("slow")
        d = self.transport.call(CTXT, "slow", "1.0", {}, 30.0)
        self.transport.close()
        self.assertIsInstance(self.failureResultOf(d).value, NotConnected)
        d = self.transport.cast(CTXT, "m", "1.0", {})
        self.assertIsInstance(self.failureResultOf(d).value, NotConnected)
        self.assertIsNone(self.transport._link.reconnector.current)

    def test_unknown_method_answer(self) -> None:
        """Whatever the dispatcher raises comes back typed (here from a
        stub raising UnknownMethod through a CellsManager-like dispatch)."""

        class Refusing(GatedManager):
            def dispatch(self, ctxt: Any, method: str, version: str, kwargs: Any) -> Any:
                return defer.fail(UnknownMethod(kind="rpc", method_name=method))

        self.server.manager = Refusing()
        d = self.transport.call(CTXT, "nope", "1.0", {}, 5)
        self.assertIn("nope", str(self.failureResultOf(d, UnknownMethod).value))
