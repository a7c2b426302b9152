"""The AMQP server side: one cellsd worker consuming its cell's queues.

Each request is acknowledged only after its work is done (a call: once its
reply is published and confirmed; a cast: once dispatch has finished), with
a bounded prefetch, so a request held by a worker that dies is delivered
again to another one. Requests are persistent messages on a durable queue,
so they also outlive a broker restart.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cellsd.context import RequestContext
from cellsd.errors import CellsError, MalformedMessage, NotConnected, OutboxFull
from cellsd.rpc.amqp_channel import Reconnector, open_txamqp_channel
from cellsd.rpc.amqp_common import (
    CONTENT_TYPE,
    AMQPChannel,
    Delivery,
    NoRoute,
    Topology,
    check_worker_id,
    decode_request,
    encode_error,
    encode_value,
    find_spec,
    new_worker_id,
    parse_amqp_url,
)


class RPCDispatcher(Protocol):
    """What the server hands requests to: a CellsManager, or a test stub."""

    def dispatch(
        self, ctxt: RequestContext, method: str, version: str, kwargs: dict[str, Any]
    ) -> Deferred[Any]: ...


class AMQPServer(service.Service):
    """Serves CellsAPI requests that reach this worker of ``cell_name``
    through RabbitMQ: the cell's shared queue, its own queue and its
    fanout queue (see :mod:`cellsd.rpc.amqp_common`)."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        cell_name: str,
        manager: RPCDispatcher,
        worker_id: str | None = None,
        *,
        spec: str | os.PathLike[str] | None = None,
        prefetch: int = 32,
        stop_grace: float = 5.0,
        connect: Callable[[], Deferred[AMQPChannel]] | None = None,
    ) -> None:
        self.reactor = reactor
        self.topology = Topology(cell_name)
        self.worker_id = check_worker_id(worker_id or new_worker_id())
        self.manager = manager
        self.prefetch = prefetch
        self.stop_grace = stop_grace
        #: Seconds before a cast refused for a full outbox goes back on the
        #: queue (so that it is not redelivered in a tight loop).
        self.requeue_delay = 1.0
        self.setName(f"amqp-{cell_name}")
        if connect is None:
            # Checked here, so that a missing spec stops a cell at start-up.
            params, spec_path = parse_amqp_url(url), find_spec(spec)

            def connect() -> Deferred[AMQPChannel]:
                return Deferred.fromCoroutine(open_txamqp_channel(reactor, params, spec_path))

        self.reconnector = Reconnector(
            reactor, connect, self._setup, name=f"amqp worker {self.worker_id}"
        )
        #: Counters, for tests and the manhole.
        self.received = 0
        self.executed = 0
        self.replies_dropped = 0
        self._stopping = False
        self._in_flight: set[Deferred[None]] = set()

    # -- service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.reconnector.start()

    def stopService(self) -> Deferred[None]:
        """Stop taking requests, let those in hand finish (up to
        ``stop_grace`` seconds), then close: the broker requeues the rest."""
        super().stopService()
        self._stopping = True
        pending = list(self._in_flight)
        d: Deferred[Any] = defer.DeferredList(pending) if pending else defer.succeed(None)
        d.addTimeout(self.stop_grace, self.reactor)
        d.addErrback(lambda _: None)
        return d.addCallback(lambda _: self.reconnector.stop())

    def when_ready(self) -> Deferred[None]:
        """Fires once the worker is connected and consuming."""
        return self.reconnector.when_connected().addCallback(lambda _: None)

    # -- the broker ----------------------------------------------------------------

    async def _setup(self, ch: AMQPChannel) -> None:
        t, me = self.topology, self.worker_id
        await ch.declare_exchange(t.exchange, "topic", durable=True)
        await ch.declare_exchange(t.fanout_exchange, "fanout", durable=True)
        shared = await ch.declare_queue(
            t.shared_queue, durable=True, exclusive=False, auto_delete=False
        )
        await ch.bind_queue(shared, t.exchange, t.shared_key)
        own = await ch.declare_queue(
            t.worker_queue(me), durable=False, exclusive=True, auto_delete=True
        )
        await ch.bind_queue(own, t.exchange, t.worker_key(me))
        fanout = await ch.declare_queue(
            t.fanout_queue(me), durable=False, exclusive=True, auto_delete=True
        )
        await ch.bind_queue(fanout, t.fanout_exchange, "")
        await ch.qos(self.prefetch)
        for queue in (shared, own, fanout):
            await ch.consume(queue, lambda delivery: self._on_delivery(ch, delivery), no_ack=False)

    def _on_delivery(self, ch: AMQPChannel, delivery: Delivery) -> None:
        if self._stopping:
            return  # left unacknowledged: requeued when we close
        self.received += 1
        d = Deferred.fromCoroutine(self._handle(ch, delivery))
        self._in_flight.add(d)

        def done(result: object) -> None:
            self._in_flight.discard(d)
            if isinstance(result, Failure):
                self.log.failure("handling an AMQP request failed", result)

        d.addBoth(done)

    async def _handle(self, ch: AMQPChannel, delivery: Delivery) -> None:
        props = delivery.properties
        reply_to, correlation_id = props.get("reply-to"), props.get("correlation-id")
        try:
            request = decode_request(delivery.body)
        except MalformedMessage as e:
            self.log.warn("dropping a malformed request: {error}", error=e)
            if reply_to and correlation_id:
                await self._reply(ch, str(reply_to), str(correlation_id), encode_error(e))
            ch.reject(delivery.delivery_tag, requeue=False)
            return
        method = request.method
        d = self.manager.dispatch(request.ctxt, method, request.version, request.kwargs)
        if request.cast or not reply_to:
            try:
                await d
            except OutboxFull as e:
                # Not accepted, so not acknowledged: the broker keeps it and
                # delivers it again once the outbox has had time to drain.
                self.log.warn(
                    "rpc cast {method} put back on the queue: {error}", method=method, error=e
                )
                await task.deferLater(self.reactor, self.requeue_delay, lambda: None)
                ch.reject(delivery.delivery_tag, requeue=True)
                return
            except CellsError as e:
                self.log.warn("rpc cast {method} failed: {error}", method=method, error=e)
            except Exception:
                self.log.failure("rpc cast {method} failed", method=method)
            self.executed += 1
            ch.ack(delivery.delivery_tag)
            return
        try:
            body = encode_value(await d)
        except Exception as e:
            if not isinstance(e, CellsError):
                self.log.failure("rpc {method} failed", method=method)
            body = encode_error(e)
        self.executed += 1
        if await self._reply(ch, str(reply_to), str(correlation_id or ""), body):
            ch.ack(delivery.delivery_tag)

    async def _reply(
        self, ch: AMQPChannel, reply_to: str, correlation_id: str, body: bytes
    ) -> bool:
        """Publish a reply; False when the connection went (the request
        will be delivered again, so it must not be acknowledged)."""
        properties = {
            "correlation_id": correlation_id,
            "content_type": CONTENT_TYPE,
            "message_id": uuid.uuid4().hex,
        }
        try:
            await ch.publish("", reply_to, body, properties, mandatory=True)
        except NoRoute:
            # The caller's reply queue is gone: it gave up or disconnected.
            self.replies_dropped += 1
            self.log.info("reply {id} dropped: caller gone", id=correlation_id)
        except NotConnected:
            return False
        return True
