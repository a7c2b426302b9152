"""What the AMQP client and server share: spec file, URL, topology, wire format.

Topology (as oslo.messaging lays out a topic, with the cell in every name so
that several cells can share one RabbitMQ):

* the topic exchange ``cells`` (durable);
* the cell's shared queue ``cells.<cell>`` (durable), bound with the routing
  key ``cells.<cell>``: every worker of the cell consumes it, so any worker
  takes a request, and a request waits there while no worker is up;
* a queue per worker ``cells.<cell>.<worker>`` (exclusive, auto-delete), bound
  with ``cells.<cell>.<worker>``: a request for that worker only;
* the fanout exchange ``cells_fanout.<cell>`` (durable), bound to each
  worker's own queue ``cells_fanout.<cell>.<worker>`` (exclusive,
  auto-delete): a fanout request reaches every worker that is up.

A request is one JSON message (:func:`cellsd.messaging.message.dumps`) of
``{"method", "version", "ctxt", "kwargs", "cast"}``; a call also carries
``reply_to`` (the caller's exclusive reply queue) and ``correlation_id``.
The answer is ``{"value": …}`` or ``{"error": <remote exception form>}``, as
over local AMP, and the caller rebuilds errors from the allow-list.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import orjson
from twisted.internet.defer import Deferred

from cellsd.context import RequestContext
from cellsd.errors import (
    ConfigError,
    MalformedMessage,
    NotConnected,
    deserialize_remote_exception,
    serialize_remote_exception,
)
from cellsd.messaging.message import dumps
from cellsd.objects.base import deserialize

# -- the AMQP 0-9-1 spec file -------------------------------------------------

#: Where Debian's ``amqp-specs`` package puts the spec with RabbitMQ's
#: extensions (publisher confirms: ``confirm.select``, ``basic.nack``). The
#: plain ``0-9-1/amqp0-9-1.stripped.xml`` of the same package lacks them.
DEBIAN_SPECS: tuple[str, ...] = (
    "/usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml",
)
#: What a spec must define for this transport to work.
REQUIRED_METHODS = ('<class name="confirm"', '<method name="nack"')


def find_spec(explicit: str | os.PathLike[str] | None = None) -> str:
    """The AMQP 0-9-1 spec XML txamqp loads: ``explicit`` (``[api]
    amqp_spec``) when given, else Debian's location.

    A ConfigError names both places when neither holds a usable file.
    """
    tried: list[str] = []
    candidates: Sequence[str] = (os.fspath(explicit),) if explicit else DEBIAN_SPECS
    for path in candidates:
        tried.append(path)
        if os.path.isfile(path):
            _check_spec(path)
            return path
    where = f"[api] amqp_spec ({tried[0]})" if explicit else "[api] amqp_spec (not set)"
    raise ConfigError(
        "api.amqp_spec",
        f"no AMQP 0-9-1 spec file: looked at {where} and {', '.join(DEBIAN_SPECS)};"
        " install Debian's amqp-specs package (apt-get install amqp-specs)"
        " or set [api] amqp_spec to a copy of amqp0-9-1.stripped.extended.xml",
    )


def _check_spec(path: str) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if '<amqp major="0" minor="9" revision="1"' not in text:
        raise ConfigError("api.amqp_spec", f"{path} is not an AMQP 0-9-1 spec")
    if not all(marker in text for marker in REQUIRED_METHODS):
        raise ConfigError(
            "api.amqp_spec",
            f"{path} lacks RabbitMQ's extensions (confirm.select, basic.nack) that"
            f" publisher confirms need; use {DEBIAN_SPECS[0]} (Debian amqp-specs)",
        )


# -- the URL -------------------------------------------------------------------


@attrs.frozen
class AMQPParams:
    """Where and how to connect, from an ``amqp://`` URL."""

    host: str = "127.0.0.1"
    port: int = 5672
    username: str = "guest"
    password: str = attrs.field(default="guest", repr=False)
    vhost: str = "/"
    tls: bool = False
    heartbeat: int = 30
    connect_timeout: float = 10.0


def parse_amqp_url(url: str) -> AMQPParams:
    """``amqp[s]://user:password@host:port/vhost?heartbeat=30&connection_timeout=10``.

    The vhost is URL-decoded (``%2F`` is ``/``); an empty path means ``/``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigError("api.amqp", "must be an amqp:// or amqps:// URL")
    tls = parts.scheme == "amqps"
    try:
        port = parts.port or (5671 if tls else 5672)
    except ValueError:
        raise ConfigError("api.amqp", f"bad port in {parts.netloc!r}") from None
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        heartbeat = int(query.get("heartbeat", 30))
        timeout = float(query.get("connection_timeout", 10.0))
    except ValueError as e:
        raise ConfigError("api.amqp", f"bad query parameter: {e}") from None
    return AMQPParams(
        host=parts.hostname or "127.0.0.1",
        port=port,
        username=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        vhost=unquote(path) if path else "/",
        tls=tls,
        heartbeat=heartbeat,
        connect_timeout=timeout,
    )


# -- topology ------------------------------------------------------------------

EXCHANGE = "cells"
_WORKER_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def new_worker_id() -> str:
    """A worker id unique enough for one cell: host, pid and a random tag."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", os.uname().nodename)[:40]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@attrs.frozen
class Topology:
    """The names one cell uses on the broker (see the module docstring)."""

    cell_name: str

    @property
    def exchange(self) -> str:
        return EXCHANGE

    @property
    def shared_queue(self) -> str:
        return f"{EXCHANGE}.{self.cell_name}"

    @property
    def shared_key(self) -> str:
        return f"{EXCHANGE}.{self.cell_name}"

    @property
    def fanout_exchange(self) -> str:
        return f"{EXCHANGE}_fanout.{self.cell_name}"

    def worker_key(self, worker_id: str) -> str:
        return f"{EXCHANGE}.{self.cell_name}.{worker_id}"

    def worker_queue(self, worker_id: str) -> str:
        return self.worker_key(worker_id)

    def fanout_queue(self, worker_id: str) -> str:
        return f"{self.fanout_exchange}.{worker_id}"


def check_worker_id(worker_id: str) -> str:
    """Worker ids become routing-key words: no dots, no spaces."""
    if not _WORKER_ID.match(worker_id):
        raise ConfigError("worker_id", "letters, digits, '_' and '-' only (1-100)")
    return worker_id


@attrs.frozen
class Target:
    """Where a client's requests go: the shared topic (any worker), one
    worker, or every worker (fanout; casts only)."""

    worker_id: str | None = None
    fanout: bool = False

    def route(self, topology: Topology) -> tuple[str, str]:
        """(exchange, routing key)."""
        if self.fanout:
            return topology.fanout_exchange, ""
        if self.worker_id is not None:
            return topology.exchange, topology.worker_key(self.worker_id)
        return topology.exchange, topology.shared_key


# -- the wire format -------------------------------------------------------------

CONTENT_TYPE = "application/json"
PERSISTENT = 2


@attrs.frozen
class Request:
    ctxt: RequestContext
    method: str
    version: str
    kwargs: dict[str, Any]
    cast: bool


def encode_request(
    ctxt: RequestContext, method: str, version: str, kwargs: Mapping[str, Any], cast: bool
) -> bytes:
    return dumps(
        {
            "method": method,
            "version": version,
            "ctxt": ctxt.to_dict(),
            "kwargs": kwargs,
            "cast": cast,
        }
    )


def decode_request(body: bytes) -> Request:
    """The request in ``body``; MalformedMessage when it is not one."""
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise MalformedMessage(reason="a request must be a JSON object")
        method, version = data.get("method"), data.get("version")
        if not isinstance(method, str) or not isinstance(version, str):
            raise MalformedMessage(reason="method and version must be strings")
        ctxt, kwargs = data.get("ctxt", {}), data.get("kwargs", {})
        if not isinstance(ctxt, dict) or not isinstance(kwargs, dict):
            raise MalformedMessage(reason="ctxt and kwargs must be JSON objects")
        args = deserialize(kwargs)
        if not isinstance(args, dict):
            raise MalformedMessage(reason="kwargs must be a JSON object")
        return Request(
            RequestContext.from_dict(ctxt), method, version, args, bool(data.get("cast"))
        )
    except (orjson.JSONDecodeError, TypeError, ValueError) as e:
        raise MalformedMessage(reason=str(e)) from None


def encode_value(value: Any) -> bytes:
    return dumps({"value": value})


def encode_error(exc: BaseException) -> bytes:
    return dumps({"error": serialize_remote_exception(exc)})


def decode_reply(body: bytes) -> Any:
    """The value of a reply, or raise the rebuilt remote error."""
    try:
        result = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedMessage(reason=f"reply: {e}") from None
    if not isinstance(result, dict):
        raise MalformedMessage(reason="a reply must be a JSON object")
    if "error" in result:
        raise deserialize_remote_exception(result["error"])
    return deserialize(result.get("value"))


# -- the broker, as the client and the server see it ---------------------------------


class NoRoute(NotConnected):
    """The broker had no queue for a message (published as mandatory)."""

    msg_fmt = "Not connected to cellsd: no queue takes {routing_key!r} on {exchange!r}"


@attrs.frozen
class Delivery:
    """One message handed to a consumer."""

    body: bytes
    properties: Mapping[str, Any]
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str


class AMQPChannel(Protocol):
    """One AMQP connection with one channel in confirm mode: all that the
    client and server use of it (txamqp's untyped API is wrapped once, in
    :class:`cellsd.rpc.amqp_channel.TxAMQPChannel`; tests use a fake)."""

    #: Fires (with None) when the connection is gone, for whatever reason.
    lost: Deferred[None]

    def declare_exchange(self, name: str, kind: str, durable: bool) -> Deferred[None]: ...

    def declare_queue(
        self, name: str, *, durable: bool, exclusive: bool, auto_delete: bool
    ) -> Deferred[str]: ...

    def bind_queue(self, queue: str, exchange: str, routing_key: str) -> Deferred[None]: ...

    def qos(self, prefetch_count: int) -> Deferred[None]: ...

    def consume(
        self, queue: str, on_delivery: Callable[[Delivery], None], no_ack: bool
    ) -> Deferred[str]: ...

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Mapping[str, Any],
        mandatory: bool = True,
    ) -> Deferred[None]:
        """Fires once the broker confirmed the message; NoRoute when it was
        returned, NotConnected when nacked or when the connection is lost."""
        ...

    def ack(self, delivery_tag: int) -> None: ...

    def reject(self, delivery_tag: int, requeue: bool) -> None: ...

    def delete_queue(self, name: str) -> Deferred[None]: ...

    def delete_exchange(self, name: str) -> Deferred[None]: ...

    def close(self) -> Deferred[None]:
        """Close cleanly; fires once the connection is gone."""
        ...

    def abort(self) -> None: ...
