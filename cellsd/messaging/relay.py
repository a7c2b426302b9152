"""The relay fast path: a message that only passes through this cell.

Most hops of a targeted call are relays: the cell is neither the source nor
the target. Such a hop needs only the routing header: it appends itself,
shrinks the deadline and picks the next link. :meth:`RelayMixin.relay` does
that from the header bytes alone, so a link can forward the message's body
(and later its answer) as the raw values it received, without decoding,
re-encoding or re-chunking them (DESIGN.md, "Wire"; bench/README.md has the
figures). Anything else — the target, broadcasts, casts, errors — takes the
full path through :meth:`MessageRunner.receive`, which builds Responses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from cellsd.errors import (
    CellOutcomeUnknown,
    CellsError,
    CellTimeout,
    CellUnreachable,
    MalformedMessage,
)
from cellsd.interfaces import ICellLink, INeighbourLinks
from cellsd.messaging.message import TARGETED, Header, Response, encode_responses
from cellsd.messaging.routing import DOWN, UP, next_hop
from cellsd.messaging.versions import required_version

if TYPE_CHECKING:
    from cellsd.state import CellStateManager


def margin_for(time_left: float) -> float:
    """How much earlier than its caller a hop must give up waiting."""
    return min(1.0, max(0.005, time_left * 0.05))


def check_sender(h: Header, sender: str, from_parent: bool) -> None:
    """Refuse a header that does not fit the link it came on."""
    expected = DOWN if from_parent else UP
    if h.direction != expected:
        raise MalformedMessage(
            reason=f"a message from {'parent' if from_parent else 'child'} "
            f"{sender} must travel {expected}, not {h.direction}"
        )
    if h.routing_path.rsplit("!", 1)[-1] != sender:
        raise MalformedMessage(
            reason=f"routing_path {h.routing_path} does not end at the sender {sender}"
        )


@attrs.frozen
class Relay:
    """Where a passing message goes next, and how long to wait for it."""

    link: ICellLink
    #: The header to send on: this cell appended, the deadline shrunk.
    header: bytes
    #: Seconds to wait for the next hop's answer.
    wait: float
    #: The cell a failure is blamed on (the target).
    blame: str
    neighbour: str


class RelayMixin:
    """Mixin of :class:`~cellsd.messaging.runner.MessageRunner`."""

    log = Logger()

    if TYPE_CHECKING:
        state: CellStateManager
        links: INeighbourLinks
        stats: dict[str, int]
        observer: Any
        message_log_level: LogLevel | None

        @property
        def my_name(self) -> str: ...

    def relay(self, header: bytes, sender: str, from_parent: bool) -> Relay | None:
        """The next hop of a targeted call that only passes through here,
        or None when this cell must process the message itself.

        Raises MalformedMessage for a header that is not valid or does not
        fit the link it came on, exactly as ``receive`` would.
        """
        h = Header.from_bytes(header)
        check_sender(h, sender, from_parent)
        if h.message_type != TARGETED or not h.need_response or h.time_left is None:
            return None
        here = f"{h.routing_path}!{self.my_name}"
        up = h.direction == UP
        neighbours = self.state.parent_cells if up else self.state.child_cells
        assert h.target_cell is not None
        try:
            hop = next_hop(h.target_cell, here, h.direction, neighbours)
        except CellsError:
            return None  # the full path answers with the routing error
        if hop is None or h.hop_count + 1 >= h.max_hop_count:
            return None
        link = self.links.link_for(hop, up)
        m = margin_for(h.time_left)
        if link is None or h.time_left - 2 * m <= 0:
            return None
        if getattr(link, "protocol_version", 1) < required_version(h.method_name):
            return None  # the full path refuses it with CellProtocolTooOld
        wait = h.time_left - m
        h.routing_path, h.hop_count, h.time_left = here, h.hop_count + 1, h.time_left - 2 * m
        self.stats["received"] += 1
        self.stats["forwarded"] += 1
        self.observer.message_received(h.message_type, h.method_name, sender)
        self.observer.message_sent(h.message_type, h.method_name, hop, True)
        if self.message_log_level is not None:
            self.log.emit(
                self.message_log_level,
                "relaying {method} uuid={uuid} path={path} to {neighbour}",
                method=h.method_name,
                uuid=h.uuid,
                path=here,
                neighbour=hop,
                cell=self.my_name,
            )
        return Relay(link, h.to_bytes(), wait, h.target_cell, hop)

    def relay_failed(self, relay: Relay, failure: Failure) -> bytes:
        """The encoded answer for a relayed message that did not get one."""
        return encode_responses([self.delivery_failure(failure, relay.blame, relay.neighbour)])

    def delivery_failure(self, f: Failure, blame: str, neighbour: str) -> Response:
        """A failure Response blamed on ``blame`` for a message that could
        not be delivered to ``neighbour`` or got no answer in time.

        The link says which: CellUnreachable when the message never left
        (outcome "unreachable"), CellOutcomeUnknown when the link was lost
        after it was sent and CellTimeout when no answer came in time (both
        "unknown": it may have been applied).
        """
        exc = f.value
        assert exc is not None
        if isinstance(exc, CellTimeout):
            self.stats["timeouts"] += 1
            exc = CellTimeout(cell_name=blame)
        elif isinstance(exc, CellOutcomeUnknown):
            self.stats["outcome_unknown"] = self.stats.get("outcome_unknown", 0) + 1
            exc = CellOutcomeUnknown(cell_name=blame, reason=exc.kwargs.get("reason", str(exc)))
        elif isinstance(exc, CellUnreachable):
            self.stats["unreachable"] += 1
            exc = CellUnreachable(cell_name=blame, reason=exc.kwargs.get("reason", str(exc)))
        elif not isinstance(exc, CellsError):
            self.log.failure("sending to {neighbour} failed", f, neighbour=neighbour)
        return Response.from_failure(blame, exc)
