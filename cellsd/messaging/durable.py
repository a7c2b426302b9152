"""The MessageRunner's side of durable delivery (:mod:`cellsd.messaging.outbox`).

A mixin of :class:`~cellsd.messaging.runner.MessageRunner`: it sends a
must-deliver message through the outbox instead of straight to the links,
and takes one from a child by queuing it for its own parents (a middle
cell) or applying it once (the top) before confirming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cellsd.context import RequestContext
from cellsd.errors import CellsError, StoreUnavailable
from cellsd.messaging.message import BROADCAST, Header, Message, Response, build_message
from cellsd.messaging.outbox import MUST_DELIVER, Outbox
from cellsd.messaging.routing import UP

if TYPE_CHECKING:
    from cellsd.state import CellStateManager


def _none(_: object) -> None:
    return None


class DurableMixin:
    """Must-deliver messages of a MessageRunner (see the module docstring)."""

    log = Logger()
    #: Set by the service once the cell has a store (None: plain casts).
    outbox: Outbox | None = None

    if TYPE_CHECKING:
        state: CellStateManager
        max_hop_count: int
        stats: dict[str, int]

        @property
        def my_name(self) -> str: ...

        def send_broadcast(
            self,
            ctxt: RequestContext,
            method_name: str,
            method_kwargs: dict[str, Any],
            direction: str = ...,
            need_response: bool = False,
            run_locally: bool = True,
            fanout: bool = False,
            timeout: float | None = None,
        ) -> Deferred[list[Response] | None]: ...

        def _execute(self, msg: Message) -> Deferred[Response]: ...

        def _log_cast_failures(self, parts: list[Any], msg: Message) -> None: ...

    def send_to_top(
        self, ctxt: RequestContext, method_name: str, method_kwargs: dict[str, Any]
    ) -> Deferred[None]:
        """A cast up to every ancestor that only the top acts on. A
        must-deliver method goes through the outbox: the Deferred fires once
        the message is in this cell's store (OutboxFull when it is full);
        any other is sent at once and fires when the parents took it."""
        outbox = self.outbox
        if outbox is None or method_name not in MUST_DELIVER or not self.state.get_parent_cells():
            d = self.send_broadcast(ctxt, method_name, method_kwargs, UP, run_locally=False)
            return d.addCallback(_none)
        msg = build_message(
            ctxt,
            BROADCAST,
            method_name,
            method_kwargs,
            UP,
            self.my_name,
            self.max_hop_count,
            run_locally=False,
        )
        return outbox.put(msg).addCallback(_none)

    @staticmethod
    def is_durable(h: Header) -> bool:
        """Whether a received message takes the durable path."""
        return h.message_type == BROADCAST and h.direction == UP and h.method_name in MUST_DELIVER

    def receive_durable(self, msg: Message, outbox: Outbox) -> Deferred[bytes]:
        """Take a must-deliver message from a child; the answer (the
        child's confirmation) comes once it is safe here. An error answer
        makes the child keep it and send it again."""
        h = msg.header
        if self.state.get_parent_cells():
            if h.hop_count >= h.max_hop_count:
                self.log.error(
                    "{method} uuid={uuid} reached max hop count {n} at {cell}; dropped "
                    "(a loop in the tree's config?)",
                    method=h.method_name,
                    uuid=h.uuid,
                    n=h.hop_count,
                    cell=self.my_name,
                )
                return defer.succeed(b"[]")
            return outbox.put(msg, received=True).addCallback(lambda _: b"[]")

        def apply() -> Deferred[None]:
            return self._execute(msg).addCallback(settle)

        def settle(response: Response) -> None:
            value = response.value
            if response.failure and (
                not isinstance(value, CellsError) or isinstance(value, StoreUnavailable)
            ):
                # Not the message's fault (the store, say): let the child
                # send it again rather than confirm a message not applied.
                raise value
            self._log_cast_failures([response], msg)

        return outbox.apply_once(h.uuid, h.method_name, apply).addCallback(lambda _: b"[]")
