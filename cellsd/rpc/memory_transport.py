"""An in-memory :class:`~cellsd.interfaces.IRPCTransport`.

It records every request exactly as it would cross the wire (the keyword
arguments after a JSON round trip through :func:`cellsd.messaging.message.dumps`)
and hands it to a target object, normally a CellsManager, as
``target.<method>(ctxt, **kwargs)``. What the target receives has been through
the same round trip: a fresh context, registered objects rebuilt from their
primitive form. Results and errors come back the same way, so a caller sees
what it would see over AMP or AMQP, minus the network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from cellsd.context import RequestContext
from cellsd.errors import (
    NotConnected,
    UnknownMethod,
    deserialize_remote_exception,
    serialize_remote_exception,
)
from cellsd.interfaces import IRPCTransport
from cellsd.messaging.message import dumps
from cellsd.objects.base import deserialize

CALL = "call"
CAST = "cast"


@attrs.frozen
class SentRequest:
    """One request as it crossed the (in-memory) wire."""

    kind: str  # "call" or "cast"
    method: str
    version: str
    kwargs: dict[str, Any]  # the JSON form: objects are primitives
    ctxt: dict[str, Any]
    timeout: float | None = None


def round_trip(value: Any) -> Any:
    """``value`` as the far side decodes it: JSON, objects as primitives."""
    return orjson.loads(dumps(value))


@implementer(IRPCTransport)
class MemoryRPCTransport:
    """Records requests and delivers them to ``target`` in memory.

    ``target`` None only records: calls fire with None. With ``interface``,
    only the methods it declares can be invoked (anything else fails with
    UnknownMethod, as a server would answer); without it, any public method
    of the target can. With ``rebuild_objects`` false, the target receives
    the JSON form as is instead of rebuilt objects.

    A cast is accepted at once: its Deferred fires with None whatever the
    target does with it, and a failure in the target is only logged.
    """

    _log = Logger()

    def __init__(
        self,
        target: object | None = None,
        *,
        interface: InterfaceClass | None = None,
        rebuild_objects: bool = True,
    ) -> None:
        self.target = target
        self.interface = interface
        self.rebuild_objects = rebuild_objects
        self.sent: list[SentRequest] = []
        self.closed = False

    # -- IRPCTransport -------------------------------------------------------

    def close(self) -> None:
        self.closed = True

    def call(
        self,
        ctxt: RequestContext,
        method: str,
        version: str,
        kwargs: dict[str, Any],
        timeout: float,
    ) -> Deferred[Any]:
        if self.closed:
            return defer.fail(NotConnected(reason="transport closed"))
        wire = self._record(CALL, ctxt, method, version, kwargs, timeout)
        if self.target is None:
            return defer.succeed(None)
        d = self._deliver(ctxt, method, wire)
        d.addCallbacks(self._result, _across_the_wire)
        return d

    def cast(
        self, ctxt: RequestContext, method: str, version: str, kwargs: dict[str, Any]
    ) -> Deferred[None]:
        if self.closed:
            return defer.fail(NotConnected(reason="transport closed"))
        wire = self._record(CAST, ctxt, method, version, kwargs, None)
        if self.target is not None:
            d = self._deliver(ctxt, method, wire)
            d.addErrback(self._cast_failed, method)
        return defer.succeed(None)

    # -- inspection ------------------------------------------------------------

    def methods(self) -> list[str]:
        """The RPC names of every request so far, in order."""
        return [r.method for r in self.sent]

    def clear(self) -> None:
        self.sent.clear()

    # -- internals -------------------------------------------------------------

    def _record(
        self,
        kind: str,
        ctxt: RequestContext,
        method: str,
        version: str,
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> dict[str, Any]:
        # Encoding errors surface here, synchronously, as they would in a
        # real transport's call/cast (the CellsAPI turns them into failures).
        wire = round_trip(kwargs)
        request = SentRequest(kind, method, version, wire, round_trip(ctxt.to_dict()), timeout)
        self.sent.append(request)
        return wire

    def _deliver(self, ctxt: RequestContext, method: str, wire: dict[str, Any]) -> Deferred[Any]:
        handler = self._handler(method)
        if handler is None:
            return defer.fail(UnknownMethod(kind="rpc", method_name=method))
        far_ctxt = RequestContext.from_dict(round_trip(ctxt.to_dict()))
        try:
            kwargs = deserialize(wire) if self.rebuild_objects else wire
        except Exception:
            return defer.fail()
        return defer.maybeDeferred(handler, far_ctxt, **kwargs)

    def _result(self, value: Any) -> Any:
        wire = round_trip(value)
        return deserialize(wire) if self.rebuild_objects else wire

    def _handler(self, method: str) -> Callable[..., Any] | None:
        if method.startswith("_"):
            return None
        if self.interface is not None and method not in self.interface.names(all=True):
            return None
        handler = getattr(self.target, method, None)
        return handler if callable(handler) else None

    def _cast_failed(self, failure: Failure, method: str) -> None:
        self._log.failure("Cast {method} failed in its target", failure, method=method)


def _across_the_wire(failure: Failure) -> Failure:
    """The error as the caller would see it: serialised, then rebuilt."""
    exc = failure.value
    assert isinstance(exc, BaseException)
    rebuilt = deserialize_remote_exception(
        round_trip(serialize_remote_exception(exc, failure.getTracebackObject()))
    )
    return Failure(rebuilt)
