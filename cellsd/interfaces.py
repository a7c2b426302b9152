"""The contracts between cellsd's parts, as zope interfaces.

A message can invoke only a method declared on :class:`ITargetedMessageMethods`
or :class:`IBroadcastMessageMethods`: the runner looks names up in the
interface, never with ``getattr`` on an arbitrary name. Adding a message
method means declaring it here and writing its body on the implementation.

Every message method receives the :class:`~cellsd.messaging.message.Message`
first (for its context and routing path) and the message's keyword
arguments after it. It may return a plain value, a Deferred or a coroutine.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class ITargetedMessageMethods(Interface):
    """Work done when a targeted message reaches its target cell."""

    def ping(message: Any) -> Any:
        """Diagnostic: answer with this cell's name, path and hop count."""

    def update_capabilities(message: Any, cell_name: str, capabilities: Any) -> Any:
        """A neighbour reports its capabilities (name -> list of values)."""

    def update_capacities(message: Any, cell_name: str, capacities: Any) -> Any:
        """A neighbour reports its aggregated capacities."""

    def announce_capabilities(message: Any) -> Any:
        """A parent asks this cell to push its capabilities upward."""

    def announce_capacities(message: Any) -> Any:
        """A parent asks this cell to push its capacities upward."""


class IBroadcastMessageMethods(Interface):
    """Work done at every cell a broadcast reaches."""

    def ping(message: Any) -> Any:
        """Diagnostic: answer with this cell's name, path and hop count."""


class ICellLink(Interface):
    """A live connection to one neighbour cell."""

    neighbour = Attribute("The neighbour's short name.")
    is_parent = Attribute("True when the neighbour is our parent.")

    def deliver(header: bytes, body: bytes, timeout: float | None) -> Any:
        """Send one message; a Deferred firing with the encoded responses
        (a JSON array) when an answer is wanted, or ``b"[]"``.

        Fails with CellTimeout after ``timeout`` seconds, CellUnreachable when
        the connection is lost, and MessageTooLarge when the message exceeds
        the link's limit (nothing is sent then).
        """


class INeighbourLinks(Interface):
    """Finds the live link to a neighbour; what the runner sends through."""

    def link_for(name: str, is_parent: bool) -> ICellLink | None:
        """A live link to the named parent or child, or None when none is up."""


class IMessageReceiver(Interface):
    """What a link hands incoming messages to (the MessageRunner)."""

    def receive(header: bytes, body: bytes, sender: str, from_parent: bool) -> Any:
        """Process a message from a neighbour; a Deferred firing with the
        encoded responses (a JSON array, ``b"[]"`` when none are wanted)."""


# --------------------------------------------------------------------------
# Local RPC API (CellsAPI <-> the local cellsd)

# Appended after the other contracts, so these imports sit here rather than
# at the top; annotations are lazy, the names are only for type checkers.
from typing import TYPE_CHECKING  # noqa: E402

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
