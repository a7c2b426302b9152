"""txamqp, wrapped once in a typed class, and the reconnect loop.

txamqp (0.8) has no type hints and still runs on ``inlineCallbacks``
internally; nothing outside this module touches it. :class:`TxAMQPChannel`
is one connection with one channel in publisher-confirm mode.
:class:`Reconnector` keeps one such channel up: it connects, lets its owner
declare what it needs, and after a loss connects again with backoff (time
from the injected clock), so that a RabbitMQ restart is survived and
everything is declared anew.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import Closed, TwistedDelegate  # type: ignore[import-untyped]  # no hints
from txamqp.content import Content  # type: ignore[import-untyped]  # no hints upstream
from txamqp.protocol import AMQClient  # type: ignore[import-untyped]  # no hints upstream
from txamqp.queue import Closed as QueueClosed  # type: ignore[import-untyped]  # no hints
from txamqp.spec import load as load_spec_file  # type: ignore[import-untyped]  # no hints

from cellsd.errors import NotConnected
from cellsd.rpc.amqp_common import AMQPChannel, AMQPParams, Delivery, NoRoute


@functools.lru_cache(maxsize=4)
def load_spec(path: str) -> Any:
    """txamqp's parsed spec (an untyped object); parsed once per path."""
    return load_spec_file(path)


class _Delegate(TwistedDelegate):
    """Routes what the broker sends unasked to the channel wrapper; the
    stock delegate would put deliveries in queues and does not know
    publisher confirms (a ``basic.ack`` would close the client)."""

    owner: TxAMQPChannel | None = None

    def basic_deliver(self, ch: Any, msg: Any) -> None:
        if self.owner is not None:
            self.owner._delivered(msg)

    def basic_ack(self, ch: Any, msg: Any) -> None:
        if self.owner is not None:
            self.owner._confirmed(msg.delivery_tag, msg.multiple, None)

    def basic_nack(self, ch: Any, msg: Any) -> None:
        if self.owner is not None:
            self.owner._confirmed(msg.delivery_tag, msg.multiple, "nacked by the broker")

    def basic_return_(self, ch: Any, msg: Any) -> None:
        if self.owner is not None:
            self.owner._returned(msg)

    def basic_cancel(self, ch: Any, msg: Any) -> None:
        # The broker cancelled a consumer (its queue was deleted): start over.
        if self.owner is not None:
            self.owner.log.warn("consumer {tag} cancelled by the broker", tag=msg.consumer_tag)
            self.owner.abort()


class _Client(AMQClient):
    lost: Deferred[None]

    def connectionMade(self) -> None:
        self.lost = Deferred()
        # A request, its confirm, the reply and the ack are small writes in
        # both directions: Nagle plus delayed ACKs would add ~40 ms stalls.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    def channel_failed(self, channel: Any, reason: Failure) -> None:
        # The broker closed our channel (a refused declare, a bad ack): the
        # connection is of no use any more; a new one redeclares everything.
        delegate = self.delegate
        if isinstance(delegate, _Delegate) and delegate.owner is not None:
            delegate.owner.log.warn("channel closed by the broker: {reason}", reason=reason.value)
        self.transport.abortConnection()


class _Factory(Factory):
    noisy = False  # one "Starting factory" line per reconnect is noise

    def __init__(self, spec: Any, clock: IReactorTime, vhost: str, heartbeat: int) -> None:
        self.spec, self.clock, self.vhost, self.heartbeat = spec, clock, vhost, heartbeat

    def buildProtocol(self, addr: Any) -> _Client:
        return _Client(
            _Delegate(), self.vhost, self.spec, heartbeat=self.heartbeat, clock=self.clock
        )


class TxAMQPChannel:
    """:class:`~cellsd.rpc.amqp_common.AMQPChannel` over txamqp."""

    log = Logger()

    def __init__(self, client: Any, channel: Any) -> None:
        self._client = client
        self._channel = channel
        self.lost: Deferred[None] = client.lost
        self._consumers: dict[str, Callable[[Delivery], None]] = {}
        self._next_seq = 1
        self._unconfirmed: dict[int, tuple[str, Deferred[None]]] = {}
        self._returns: dict[str, tuple[str, str]] = {}
        self.lost.addCallback(self._on_lost)

    # -- AMQPChannel ---------------------------------------------------------------

    def declare_exchange(self, name: str, kind: str, durable: bool) -> Deferred[None]:
        d = self._invoke("exchange_declare", exchange=name, type=kind, durable=durable)
        return d.addCallback(lambda _: None)

    def declare_queue(
        self, name: str, *, durable: bool, exclusive: bool, auto_delete: bool
    ) -> Deferred[str]:
        d = self._invoke(
            "queue_declare",
            queue=name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
        )
        return d.addCallback(lambda reply: str(reply.queue))

    def bind_queue(self, queue: str, exchange: str, routing_key: str) -> Deferred[None]:
        d = self._invoke("queue_bind", queue=queue, exchange=exchange, routing_key=routing_key)
        return d.addCallback(lambda _: None)

    def qos(self, prefetch_count: int) -> Deferred[None]:
        d = self._invoke("basic_qos", prefetch_count=prefetch_count)
        return d.addCallback(lambda _: None)

    def consume(
        self, queue: str, on_delivery: Callable[[Delivery], None], no_ack: bool
    ) -> Deferred[str]:
        def consuming(reply: Any) -> str:
            tag = str(reply.consumer_tag)
            self._consumers[tag] = on_delivery
            return tag

        return self._invoke("basic_consume", queue=queue, no_ack=no_ack).addCallback(consuming)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Mapping[str, Any],
        mandatory: bool = True,
    ) -> Deferred[None]:
        if self.lost.called:
            return defer.fail(NotConnected(reason="connection to RabbitMQ lost"))
        props = {k.replace("_", "-"): v for k, v in properties.items()}
        seq = self._next_seq
        self._next_seq += 1
        message_id = str(props.setdefault("message-id", f"m{seq}"))
        d: Deferred[None] = Deferred()
        self._unconfirmed[seq] = (message_id, d)
        sent = self._invoke(
            "basic_publish",
            exchange=exchange,
            routing_key=routing_key,
            mandatory=mandatory,
            content=Content(body, properties=props),
        )
        sent.addErrback(lambda f: self._fail_one(seq, f))
        return d

    def ack(self, delivery_tag: int) -> None:
        self._invoke("basic_ack", delivery_tag=delivery_tag).addErrback(lambda _: None)

    def reject(self, delivery_tag: int, requeue: bool) -> None:
        d = self._invoke("basic_reject", delivery_tag=delivery_tag, requeue=requeue)
        d.addErrback(lambda _: None)

    def delete_queue(self, name: str) -> Deferred[None]:
        return self._invoke("queue_delete", queue=name).addCallback(lambda _: None)

    def delete_exchange(self, name: str) -> Deferred[None]:
        return self._invoke("exchange_delete", exchange=name).addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        if not self.lost.called:
            # Sends connection.close and waits up to 2s for close-ok.
            self._client.close(within=2).addErrback(lambda _: self.abort())
        done: Deferred[None] = Deferred()

        def gone(result: object) -> object:
            done.callback(None)
            return result

        self.lost.addBoth(gone)
        return done

    def abort(self) -> None:
        transport = self._client.transport
        if transport is not None and not self.lost.called:
            transport.abortConnection()

    # -- from the delegate --------------------------------------------------------------

    def _delivered(self, msg: Any) -> None:
        content = msg.content
        delivery = Delivery(
            body=content.body if isinstance(content.body, bytes) else content.body.encode(),
            properties=dict(content.properties),
            delivery_tag=int(msg.delivery_tag),
            redelivered=bool(msg.redelivered),
            exchange=str(msg.exchange),
            routing_key=str(msg.routing_key),
        )
        handler = self._consumers.get(str(msg.consumer_tag))
        if handler is None:
            self.log.warn("delivery for unknown consumer {tag}", tag=msg.consumer_tag)
            return
        try:
            handler(delivery)
        except Exception:
            # An exception here would reach txamqp's worker, which closes the
            # connection; a handler bug must not do that.
            self.log.failure("consumer {tag} failed", tag=msg.consumer_tag)

    def _returned(self, msg: Any) -> None:
        message_id = msg.content.properties.get("message-id")
        if message_id is not None:
            self._returns[str(message_id)] = (str(msg.exchange), str(msg.routing_key))

    def _confirmed(self, tag: int, multiple: bool, refused: str | None) -> None:
        seqs = [s for s in self._unconfirmed if s <= tag] if multiple else [tag]
        for seq in seqs:
            entry = self._unconfirmed.pop(seq, None)
            if entry is None:
                continue
            message_id, d = entry
            returned = self._returns.pop(message_id, None)
            if d.called:
                continue  # the publisher gave up (cancelled) already
            if refused is not None:
                d.errback(NotConnected(reason=f"message {refused}"))
            elif returned is not None:
                d.errback(NoRoute(exchange=returned[0], routing_key=returned[1]))
            else:
                d.callback(None)

    # -- internals ------------------------------------------------------------------

    def _invoke(self, name: str, **kwargs: Any) -> Deferred[Any]:
        """One txamqp channel method; its errors become NotConnected when
        the connection is gone."""
        try:
            d: Deferred[Any] = getattr(self._channel, name)(**kwargs)
        except Exception:
            d = defer.fail()

        def failed(f: Failure) -> Failure:
            if self.lost.called:
                return Failure(NotConnected(reason="connection to RabbitMQ lost"))
            if f.check(Closed, QueueClosed):
                # Closed by the broker (connection.close or channel.close):
                # the reason carries its reply code and text.
                return Failure(NotConnected(reason=f"closed by RabbitMQ: {f.value}"))
            return f

        return d.addErrback(failed)

    def _fail_one(self, seq: int, failure: Failure) -> None:
        entry = self._unconfirmed.pop(seq, None)
        if entry is not None and not entry[1].called:
            entry[1].errback(failure)

    def _on_lost(self, _: None) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        for _id, d in pending.values():
            if not d.called:
                d.errback(NotConnected(reason="connection lost before the confirm"))
        self._consumers.clear()


async def open_txamqp_channel(reactor: Any, params: AMQPParams, spec_path: str) -> TxAMQPChannel:
    """Connect, log in, open channel 1 and put it in confirm mode."""
    endpoint: Any = HostnameEndpoint(
        reactor, params.host, params.port, timeout=params.connect_timeout
    )
    if params.tls:
        endpoint = wrapClientTLS(optionsForClientTLS(params.host), endpoint)
    factory = _Factory(load_spec(spec_path), reactor, params.vhost, params.heartbeat)
    client: _Client = await endpoint.connect(factory)
    # The handshake gets the same deadline as the TCP connect.
    timer = reactor.callLater(params.connect_timeout, client.transport.abortConnection)
    try:
        await client.authenticate(params.username, params.password, mechanism="PLAIN")
        channel = await client.channel(1)
        await channel.channel_open()
        wrapper = TxAMQPChannel(client, channel)
        client.delegate.owner = wrapper
        await channel.confirm_select()
        return wrapper
    except Exception as e:
        client.transport.abortConnection()
        raise NotConnected(reason=f"AMQP handshake with {params.host}:{params.port}: {e!r}") from e
    finally:
        if timer.active():
            timer.cancel()


class Reconnector:
    """Keeps one AMQPChannel up: connect, ``setup(channel)``, wait for the
    loss, and again, with exponential backoff between failed attempts.

    ``current`` is the channel while it is up and set up; ``on_lost``
    observers run when it goes (the client fails its calls in flight).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        connect: Callable[[], Awaitable[AMQPChannel]],
        setup: Callable[[AMQPChannel], Awaitable[None]],
        name: str,
        initial_delay: float = 0.2,
        max_delay: float = 10.0,
    ) -> None:
        self.clock = clock
        self._connect = connect
        self._setup = setup
        self.name = name
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.current: AMQPChannel | None = None
        self.connections = 0
        self.on_lost: list[Callable[[], None]] = []
        self._running = False
        self._waiters: list[Deferred[AMQPChannel]] = []
        self._step: Deferred[Any] | None = None
        self._attempt: AMQPChannel | None = None
        self._loop: Deferred[None] | None = None

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(
            lambda f: self.log.failure("{name}: reconnect loop", f, name=self.name)
        )

    def when_connected(self) -> Deferred[AMQPChannel]:
        """The channel now, or when it is next up; cancel to stop waiting."""
        if self.current is not None:
            return defer.succeed(self.current)
        d: Deferred[AMQPChannel] = Deferred(self._forget_waiter)
        self._waiters.append(d)
        return d

    def _forget_waiter(self, d: Deferred[AMQPChannel]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the channel; fires when it is gone."""
        self._running = False
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.errback(NotConnected(reason=f"{self.name} stopped"))
        if self._step is not None:
            self._step.cancel()
        if self._attempt is not None:
            self._attempt.abort()
        channel, self.current = self.current, None
        closing = channel.close() if channel is not None else defer.succeed(None)
        loop = self._loop if self._loop is not None else defer.succeed(None)
        return defer.gatherResults([closing, loop]).addCallback(lambda _: None)

    def _delay(self, failures: int) -> float:
        delay = min(self.initial_delay * 2 ** (failures - 1), self.max_delay)
        return delay * random.uniform(0.8, 1.2)  # jitter: workers do not reconnect in step

    async def _run(self) -> None:
        failures = 0
        while self._running:
            channel: AMQPChannel | None = None
            try:
                self._step = Deferred.fromCoroutine(_awaited(self._connect()))
                channel = self._attempt = await self._step
                self._step = Deferred.fromCoroutine(_awaited(self._setup(channel)))
                await self._step
            except Exception as e:
                self._attempt = None
                if channel is not None:
                    channel.abort()
                if not self._running:
                    return
                failures += 1
                delay = self._delay(failures)
                self.log.warn(
                    "{name}: cannot connect to RabbitMQ ({error}); retry {n} in {delay:.2f}s",
                    name=self.name, error=e, n=failures, delay=delay,
                )  # fmt: skip
                if not await self._sleep(delay):
                    return
                continue
            self._attempt = None
            failures = 0
            self.connections += 1
            self.current = channel
            self.log.info("{name}: connected to RabbitMQ", name=self.name)
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(channel)
            await channel.lost
            if self.current is channel:
                self.current = None
            for observer in list(self.on_lost):
                observer()
            if self._running:
                self.log.warn("{name}: connection to RabbitMQ lost", name=self.name)
                if not await self._sleep(self._delay(1)):
                    return

    async def _sleep(self, delay: float) -> bool:
        """False when stopped while sleeping."""
        self._step = task.deferLater(self.clock, delay)
        try:
            await self._step
        except defer.CancelledError:
            return False
        finally:
            self._step = None
        return self._running


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value
