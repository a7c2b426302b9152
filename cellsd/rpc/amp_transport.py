"""The local RPC API over AMP: the default transport.

Local programs connect to ``[api] listen`` (a UNIX socket, mode 0600, by
default). One AMP command carries a request: method, version, context and
keyword arguments as JSON. The answer is JSON too: ``{"value": …}`` or
``{"error": <remote exception form>}``, so that the client rebuilds the
server's typed error from the allow-list (nothing is imported from the wire).
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from twisted.internet import defer
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from cellsd.context import RequestContext
from cellsd.errors import (
    CallTimeout,
    CellsError,
    MalformedMessage,
    NotConnected,
    deserialize_remote_exception,
    serialize_remote_exception,
)
from cellsd.interfaces import IRPCTransport
from cellsd.links.amp import Chunked, detached
from cellsd.messaging.message import dumps
from cellsd.messaging.outbox import MUST_DELIVER
from cellsd.objects.base import deserialize
from cellsd.rpc.manager import CellsManager


class CallMethod(amp.Command):
    """One CellsAPI request to the local cellsd."""

    commandName = b"cellsd-rpc-call"
    arguments = [
        (b"method", amp.Unicode()),
        (b"version", amp.Unicode()),
        (b"ctxt", amp.String()),
        (b"kwargs", Chunked()),
        (b"cast", amp.Boolean()),
    ]
    response = [(b"result", Chunked())]


#: Casts acknowledged only once the cell has made them durable (written to
#: its store), so that the caller hears of a failure such as OutboxFull
#: (PendingBuildsFull for a build) instead of losing the message; every
#: other cast is acknowledged on receipt.
DURABLE_CASTS = MUST_DELIVER | {"build_instances"}


class RPCServerProtocol(amp.AMP):
    """Serves CellsAPI requests from local programs."""

    log = Logger()

    def __init__(self, manager: CellsManager, max_message_bytes: int) -> None:
        super().__init__()
        self.manager = manager
        self.max_message_bytes = max_message_bytes

    @CallMethod.responder
    def call_method(
        self, method: str, version: str, ctxt: bytes, kwargs: bytes, cast: bool
    ) -> Deferred[dict[str, bytes]]:
        try:
            context = RequestContext.from_dict(orjson.loads(ctxt))
            args = deserialize(orjson.loads(kwargs))
            if not isinstance(args, dict):
                raise MalformedMessage(reason="kwargs must be a JSON object")
        except (orjson.JSONDecodeError, TypeError, ValueError) as e:
            return defer.succeed(_error(MalformedMessage(reason=str(e))))
        except CellsError as e:
            return defer.succeed(_error(e))
        d = self.manager.dispatch(context, method, version, args)
        if cast and method not in DURABLE_CASTS:
            d.addErrback(self._cast_failed, method)
            return defer.succeed({"result": b'{"value":null}'})

        def failed(f: Failure) -> dict[str, bytes]:
            if not isinstance(f.value, CellsError):
                self.log.failure("rpc {method} failed", f, method=method)
            assert f.value is not None
            return _error(f.value)

        return d.addCallbacks(lambda value: {"result": dumps({"value": value})}, failed)

    def _cast_failed(self, f: Failure, method: str) -> None:
        self.log.failure("rpc cast {method} failed", f, method=method)


def _error(exc: BaseException) -> dict[str, bytes]:
    return {"result": dumps({"error": serialize_remote_exception(exc)})}


class RPCServerFactory(Factory):
    def __init__(self, manager: CellsManager, max_message_bytes: int) -> None:
        self.manager = manager
        self.max_message_bytes = max_message_bytes

    def buildProtocol(self, addr: Any) -> RPCServerProtocol:
        proto = RPCServerProtocol(self.manager, self.max_message_bytes)
        proto.factory = self
        return proto


@implementer(IRPCTransport)
class AMPTransport:
    """IRPCTransport over one AMP connection to the local cellsd."""

    def __init__(self, protocol: amp.AMP, clock: IReactorTime, cast_timeout: float = 60.0) -> None:
        self.protocol = protocol
        self.clock = clock
        self.cast_timeout = cast_timeout
        self._closed = False

    def _send(
        self,
        ctxt: RequestContext,
        method: str,
        version: str,
        kwargs: dict[str, Any],
        is_cast: bool,
        timeout: float,
    ) -> Deferred[Any]:
        if self._closed:
            return defer.fail(NotConnected(reason="transport closed"))
        try:
            # callRemote is untyped; CallMethod's response schema fixes the type.
            sent = cast(
                "Deferred[dict[str, bytes]]",
                self.protocol.callRemote(
                    CallMethod,
                    method=method,
                    version=version,
                    ctxt=dumps(ctxt.to_dict()),
                    kwargs=dumps(kwargs),
                    cast=is_cast,
                ),
            )
        except Exception:
            return defer.fail()
        d = detached(sent)
        d.addTimeout(timeout, self.clock)

        def unpack(answer: dict[str, bytes]) -> Any:
            result = orjson.loads(answer["result"])
            if "error" in result:
                raise deserialize_remote_exception(result["error"])
            return deserialize(result.get("value"))

        def failed(f: Failure) -> Any:
            if f.check(TimeoutError, defer.CancelledError):
                raise CallTimeout(method=method, timeout=timeout)
            if f.check(ConnectionClosed):
                raise NotConnected(reason=str(f.value))
            return f

        return d.addCallbacks(unpack, failed)

    def call(
        self,
        ctxt: RequestContext,
        method: str,
        version: str,
        kwargs: dict[str, Any],
        timeout: float,
    ) -> Deferred[Any]:
        return self._send(ctxt, method, version, kwargs, False, timeout)

    def cast(
        self, ctxt: RequestContext, method: str, version: str, kwargs: dict[str, Any]
    ) -> Deferred[None]:
        d = self._send(ctxt, method, version, kwargs, True, self.cast_timeout)
        return d.addCallback(lambda _: None)

    def close(self) -> None:
        self._closed = True
        if self.protocol.transport is not None:
            self.protocol.transport.loseConnection()
