"""The AMQP client side: :class:`AMQPTransport`, an IRPCTransport.

A call is published, persistent and mandatory, with ``reply_to`` (this
client's exclusive reply queue), a ``correlation_id`` and an expiration equal
to its timeout; the answer comes back on the reply queue. Every call is in a
pending map until exactly one of these fires it: its reply, its timeout
(CallTimeout), the loss of the connection it was sent on (NotConnected),
close(), or a refused publish. Replies that come after that are dropped and
counted in ``late_replies``. A cast fires once the broker confirmed it.

Requests made while the connection is down wait for it to come back, within
their timeout.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cellsd.context import RequestContext
from cellsd.errors import CallTimeout, InvalidArguments, NotConnected
from cellsd.interfaces import IRPCTransport
from cellsd.rpc.amqp_channel import Reconnector, open_txamqp_channel
from cellsd.rpc.amqp_common import (
    CONTENT_TYPE,
    PERSISTENT,
    AMQPChannel,
    Delivery,
    Target,
    Topology,
    decode_reply,
    encode_request,
    find_spec,
    parse_amqp_url,
)


@attrs.define
class _Pending:
    method: str
    deferred: Deferred[Any]
    timer: IDelayedCall
    #: The channel the request went out on, once published.
    sent_on: AMQPChannel | None = None
    #: Waiting for a connection, before it was published.
    waiting: Deferred[AMQPChannel] | None = None


class _Link:
    """The connection, the reply queue and the pending calls; shared by
    every AMQPTransport that :meth:`AMQPTransport.prepare` makes."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        topology: Topology,
        connect: Callable[[], Deferred[AMQPChannel]],
    ) -> None:
        self.clock = clock
        self.topology = topology
        self.reconnector = Reconnector(clock, connect, self._setup, name="amqp client")
        self.reconnector.on_lost.append(self._lost)
        self.pending: dict[str, _Pending] = {}
        self.reply_queue: str | None = None
        self.closed = False
        self.late_replies = 0

    async def _setup(self, ch: AMQPChannel) -> None:
        t = self.topology
        await ch.declare_exchange(t.exchange, "topic", durable=True)
        await ch.declare_exchange(t.fanout_exchange, "fanout", durable=True)
        # Declared here too (as the workers do), so that requests sent
        # before any worker ever started wait for one instead of being lost.
        shared = await ch.declare_queue(
            t.shared_queue, durable=True, exclusive=False, auto_delete=False
        )
        await ch.bind_queue(shared, t.exchange, t.shared_key)
        self.reply_queue = await ch.declare_queue(
            "", durable=False, exclusive=True, auto_delete=True
        )
        await ch.consume(self.reply_queue, self._on_reply, no_ack=True)

    # -- calls ---------------------------------------------------------------------

    def call(
        self, method: str, exchange: str, routing_key: str, body: bytes, timeout: float
    ) -> Deferred[Any]:
        cid = uuid.uuid4().hex
        d: Deferred[Any] = Deferred(lambda _: self._forget(cid))
        timer = self.clock.callLater(timeout, self._expire, cid, method, timeout)
        self.pending[cid] = _Pending(method, d, timer)
        sending = Deferred.fromCoroutine(self._send_call(cid, exchange, routing_key, body, timeout))
        sending.addErrback(lambda f: self._finish(cid, f))
        return d

    async def _send_call(
        self, cid: str, exchange: str, routing_key: str, body: bytes, timeout: float
    ) -> None:
        entry = self.pending.get(cid)
        if entry is None:
            return
        entry.waiting = self.reconnector.when_connected()
        try:
            ch = await entry.waiting
        except defer.CancelledError:
            return  # the call ended (timeout, close) while we waited
        entry.waiting = None
        if cid not in self.pending or self.reply_queue is None:
            return
        entry.sent_on = ch
        properties = {
            "reply_to": self.reply_queue,
            "correlation_id": cid,
            "message_id": cid,
            "expiration": str(max(1, int(timeout * 1000))),
            "delivery_mode": PERSISTENT,
            "content_type": CONTENT_TYPE,
        }
        await ch.publish(exchange, routing_key, body, properties, mandatory=True)

    def _on_reply(self, delivery: Delivery) -> None:
        cid = str(delivery.properties.get("correlation-id", ""))
        if cid not in self.pending:
            self.late_replies += 1
            self.log.debug("late reply {id} dropped", id=cid)
            return
        try:
            value = decode_reply(delivery.body)
        except Exception:
            self._finish(cid, Failure())
        else:
            self._finish(cid, value)

    def _expire(self, cid: str, method: str, timeout: float) -> None:
        self._finish(cid, Failure(CallTimeout(method=method, timeout=timeout)))

    def _forget(self, cid: str) -> None:
        """The caller cancelled: Deferred.cancel fires it with CancelledError."""
        entry = self.pending.pop(cid, None)
        if entry is not None:
            self._release(entry)

    def _finish(self, cid: str, result: Any) -> None:
        entry = self.pending.pop(cid, None)
        if entry is None:
            return
        self._release(entry)
        if isinstance(result, Failure):
            entry.deferred.errback(result)
        else:
            entry.deferred.callback(result)

    def _release(self, entry: _Pending) -> None:
        if entry.timer.active():
            entry.timer.cancel()
        if entry.waiting is not None:
            entry.waiting.cancel()

    def _lost(self) -> None:
        """Calls sent on the lost connection can get no answer: their reply
        queue was exclusive to it."""
        self.reply_queue = None
        for cid, entry in list(self.pending.items()):
            if entry.sent_on is not None:
                reason = f"connection to RabbitMQ lost during {entry.method}"
                self._finish(cid, Failure(NotConnected(reason=reason)))

    # -- casts ---------------------------------------------------------------------

    async def cast(self, exchange: str, routing_key: str, body: bytes) -> None:
        ch = await self.reconnector.when_connected()
        properties = {
            "message_id": uuid.uuid4().hex,
            "delivery_mode": PERSISTENT,
            "content_type": CONTENT_TYPE,
        }
        await ch.publish(exchange, routing_key, body, properties, mandatory=True)

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> Deferred[None]:
        self.closed = True
        for cid in list(self.pending):
            self._finish(cid, Failure(NotConnected(reason="transport closed")))
        return self.reconnector.stop()


@implementer(IRPCTransport)
class AMQPTransport:
    """IRPCTransport through RabbitMQ to the workers of ``cell_name``.

    Requests go to the cell's shared queue (any worker takes each);
    :meth:`prepare` gives a transport that sends to one worker, or to every
    worker (fanout, casts only), over the same connection.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        cell_name: str,
        *,
        spec: str | os.PathLike[str] | None = None,
        cast_timeout: float = 60.0,
        connect: Callable[[], Deferred[AMQPChannel]] | None = None,
        _link: _Link | None = None,
        _target: Target | None = None,
    ) -> None:
        self.clock: IReactorTime = reactor
        self.topology = Topology(cell_name)
        self.cast_timeout = cast_timeout
        self.target = _target or Target()
        if _link is None:
            if connect is None:
                params, spec_path = parse_amqp_url(url), find_spec(spec)

                def connect() -> Deferred[AMQPChannel]:
                    return Deferred.fromCoroutine(open_txamqp_channel(reactor, params, spec_path))

            _link = _Link(reactor, self.topology, connect)
        self._link = _link
        self._url = url

    @property
    def late_replies(self) -> int:
        """Replies that came after their call had ended, and were dropped."""
        return self._link.late_replies

    @property
    def pending_calls(self) -> int:
        return len(self._link.pending)

    def prepare(self, worker_id: str | None = None, fanout: bool = False) -> AMQPTransport:
        """A transport over the same connection to one worker, or (fanout)
        to all of them."""
        return AMQPTransport(
            self.clock,
            self._url,
            self.topology.cell_name,
            cast_timeout=self.cast_timeout,
            _link=self._link,
            _target=Target(worker_id=worker_id, fanout=fanout),
        )

    def start(self, timeout: float = 10.0) -> Deferred[None]:
        """Connect; fires once connected, or fails with NotConnected after
        ``timeout`` seconds (and stops trying)."""
        self._link.reconnector.start()
        d = self._link.reconnector.when_connected()
        d.addTimeout(timeout, self.clock)

        def failed(f: Failure) -> Failure:
            self.close()
            if f.check(defer.TimeoutError, defer.CancelledError):
                return Failure(NotConnected(reason=f"no RabbitMQ connection within {timeout}s"))
            return f

        return d.addCallbacks(lambda _: None, failed)

    # -- IRPCTransport ---------------------------------------------------------------

    def call(
        self,
        ctxt: RequestContext,
        method: str,
        version: str,
        kwargs: dict[str, Any],
        timeout: float,
    ) -> Deferred[Any]:
        if self._link.closed:
            return defer.fail(NotConnected(reason="transport closed"))
        if self.target.fanout:
            reason = "a fanout target takes casts only"
            return defer.fail(InvalidArguments(method_name=method, reason=reason))
        try:
            body = encode_request(ctxt, method, version, kwargs, cast=False)
        except Exception:
            return defer.fail()
        exchange, key = self.target.route(self.topology)
        return self._link.call(method, exchange, key, body, timeout)

    def cast(
        self, ctxt: RequestContext, method: str, version: str, kwargs: dict[str, Any]
    ) -> Deferred[None]:
        if self._link.closed:
            return defer.fail(NotConnected(reason="transport closed"))
        try:
            body = encode_request(ctxt, method, version, kwargs, cast=True)
        except Exception:
            return defer.fail()
        exchange, key = self.target.route(self.topology)
        d = Deferred.fromCoroutine(self._link.cast(exchange, key, body))
        d.addTimeout(self.cast_timeout, self.clock)

        def failed(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                return Failure(CallTimeout(method=method, timeout=self.cast_timeout))
            return f

        return d.addErrback(failed)

    def close(self) -> None:
        self.disconnect().addErrback(lambda _: None)

    def disconnect(self) -> Deferred[None]:
        """close(), with a Deferred that fires once the connection is gone."""
        return self._link.close()
