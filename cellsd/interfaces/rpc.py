"""The local RPC transport contract (CellsAPI <-> the local cellsd)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from cellsd.context import RequestContext


class IRPCTransport(Interface):
    """Carries CellsAPI requests to the local cellsd (AMP, AMQP, in memory).

    ``kwargs`` are encoded with :func:`cellsd.messaging.message.dumps` (objects
    in their versioned primitive form). ``method`` is the RPC name and
    ``version`` the API version the request is sent as; the CellsAPI has
    already checked it against the caller's version cap.
    """

    def call(
        ctxt: RequestContext,
        method: str,
        version: str,
        kwargs: dict[str, Any],
        timeout: float,
    ) -> Deferred[Any]:
        """Send a request and fire with the server's result.

        Fails with the server's (rebuilt) exception, or with a timeout error
        when no answer arrives within ``timeout`` seconds.
        """

    def cast(
        ctxt: RequestContext, method: str, version: str, kwargs: dict[str, Any]
    ) -> Deferred[None]:
        """Send a request without waiting for its result; fire with None once
        the transport has accepted the message."""

    def close() -> None:
        """Release the connection; later requests fail with NotConnected."""
