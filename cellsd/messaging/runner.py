"""The MessageRunner: builds messages, routes them, executes them.

Everything here is asynchronous and takes its collaborators as arguments: a
state manager, the method implementations, the neighbour links and a clock.
Nothing imports a reactor or the link layer, so a tree of runners joined by
in-memory links runs in a unit test.

Answers travel back as the answer of each hop: the Deferred of every hop is
chained to the next, so no hop keeps a wait queue. Every wait has a deadline
that shrinks at each hop, and a hop always answers before its caller gives
up: with what arrived in time plus a CellTimeout (or CellUnreachable)
Response for each neighbour that did not answer.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from cellsd.context import RequestContext
from cellsd.errors import (
    CellMaxHopCountReached,
    CellProtocolTooOld,
    CellsError,
    CellTimeout,
    CellUnreachable,
    InvalidArguments,
    UnknownMethod,
)
from cellsd.interfaces import (
    IBroadcastMessageMethods,
    IMessageReceiver,
    IMessageRelay,
    INeighbourLinks,
    ITargetedMessageMethods,
)
from cellsd.messaging.arguments import ArgumentShape, argument_checks, check_arguments
from cellsd.messaging.durable import DurableMixin
from cellsd.messaging.message import (
    BROADCAST,
    TARGETED,
    Header,
    Message,
    Response,
    build_message,
    decode_responses,
    encode_responses,
    join_encoded,
    received_message,
)
from cellsd.messaging.operations import MessageOperations
from cellsd.messaging.relay import RelayMixin, check_sender, margin_for
from cellsd.messaging.routing import DOWN, UP, next_hop
from cellsd.messaging.versions import required_version
from cellsd.state import CellState, CellStateManager

#: Answers are either this cell's own Response objects or a neighbour's
#: encoded JSON array; kept apart so that a hop never decodes what it relays.
AnswerPart = Response | bytes


def _methods_of(iface: InterfaceClass) -> frozenset[str]:
    return frozenset(
        name
        for name, desc in iface.namesAndDescriptions(all=True)
        if hasattr(desc, "getSignatureInfo")
    )


_TARGETED_NAMES = _methods_of(ITargetedMessageMethods)
_BROADCAST_NAMES = _methods_of(IBroadcastMessageMethods)


class _Seen:
    """Recently seen message uuids, bounded in time and count."""

    def __init__(self, clock: IReactorTime, window: float, limit: int) -> None:
        self.clock, self.window, self.limit = clock, window, limit
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def _expire(self) -> None:
        now = self.clock.seconds()
        entries = self._entries
        while entries:
            key, (expiry, _) = next(iter(entries.items()))
            if expiry > now and len(entries) <= self.limit:
                break
            del entries[key]

    def get(self, key: str) -> tuple[bool, Any]:
        self._expire()
        entry = self._entries.get(key)
        return (entry is not None, entry[1] if entry else None)

    def add(self, key: str, value: Any = None) -> None:
        self._entries[key] = (self.clock.seconds() + self.window, value)
        self._expire()

    def __len__(self) -> int:
        return len(self._entries)


def _as_deferred(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Call ``fn``; its value, Deferred or coroutine, as a Deferred."""
    try:
        result = fn(*args, **kwargs)
    except BaseException:
        return defer.fail(Failure())
    if inspect.iscoroutine(result):
        return Deferred.fromCoroutine(result)
    if isinstance(result, Deferred):
        return result
    return defer.succeed(result)


class RunnerObserver:
    """What a runner reports as it works; metrics and the status page
    (cellsd.ops.metrics) subclass it. Every method does nothing here.
    ``kind`` is "targeted" or "broadcast"; times are clock seconds."""

    def message_received(self, kind: str, method: str, neighbour: str) -> None:
        """A neighbour handed us a message."""

    def message_sent(self, kind: str, method: str, neighbour: str, forwarded: bool) -> None:
        """We handed a message to a neighbour: one we made, or (forwarded)
        one that reached us from another cell."""

    def call_finished(self, kind: str, method: str, seconds: float, responses: list[Any]) -> None:
        """A message made here, whose answer we waited for, was answered."""

    def message_failed(self, kind: str, method: str, uuid: str, path: str, response: Any) -> None:
        """A failure Response for a message (``path``: where it was seen)."""


@implementer(IMessageReceiver, IMessageRelay)
class MessageRunner(MessageOperations, DurableMixin, RelayMixin):
    """Creates, routes and executes cell messages for one cell."""

    log = Logger()

    def __init__(
        self,
        state: CellStateManager,
        links: INeighbourLinks,
        clock: IReactorTime,
        max_hop_count: int = 10,
        call_timeout: float = 60.0,
        dedupe_window: float = 300.0,
        dedupe_limit: int = 100_000,
    ) -> None:
        self.state = state
        self.links = links
        self.clock = clock
        self.max_hop_count = max_hop_count
        self.call_timeout = call_timeout
        self._seen = _Seen(clock, dedupe_window, dedupe_limit)
        self._methods: dict[str, Any] = {}
        self._signatures: dict[tuple[str, str], ArgumentShape] = {}
        #: Counters an operator can read (metrics export them).
        self.stats: dict[str, int] = {
            "received": 0,
            "forwarded": 0,
            "executed": 0,
            "duplicates": 0,
            "timeouts": 0,
            "unreachable": 0,
            "failures": 0,
        }
        #: Told about every message (metrics, the status page).
        self.observer = RunnerObserver()
        #: The level of the per-message lines (received, forwarding,
        #: executing: each with uuid=); info makes one grep follow a message.
        #: None emits none: at thousands of messages a second, building log
        #: events nobody keeps costs a third of a relay's CPU (bench/README.md).
        self.message_log_level: LogLevel | None = None

    @property
    def my_name(self) -> str:
        return self.state.my_name

    def install_methods(self, targeted: Any, broadcast: Any) -> None:
        """The implementations of the two message contracts."""
        self._methods = {TARGETED: targeted, BROADCAST: broadcast}

    # -- the public API: building messages -------------------------------------

    def send_targeted(
        self,
        ctxt: RequestContext,
        target_cell: str,
        method_name: str,
        method_kwargs: dict[str, Any],
        direction: str = DOWN,
        need_response: bool = False,
        fanout: bool = False,
        timeout: float | None = None,
    ) -> Deferred[Response | None]:
        """Send a message to one cell; fires with its Response, or None
        when no answer is wanted (once the first hop has accepted it)."""
        msg = build_message(
            ctxt,
            TARGETED,
            method_name,
            method_kwargs,
            direction,
            self.my_name,
            self.max_hop_count,
            target_cell=target_cell,
            need_response=need_response,
            fanout=fanout,
            time_left=(timeout or self.call_timeout) if need_response else None,
        )
        d = self._process(msg)
        if not need_response:
            return d.addCallback(self._log_cast_failures, msg)
        return d.addCallback(self._answered, msg, self.clock.seconds()).addCallback(lambda r: r[0])

    def send_broadcast(
        self,
        ctxt: RequestContext,
        method_name: str,
        method_kwargs: dict[str, Any],
        direction: str = DOWN,
        need_response: bool = False,
        run_locally: bool = True,
        fanout: bool = False,
        timeout: float | None = None,
    ) -> Deferred[list[Response] | None]:
        """Send a message to every cell in one direction; fires with one
        Response per cell (those that did not answer in time included as
        failures), or None when no answer is wanted."""
        msg = build_message(
            ctxt,
            BROADCAST,
            method_name,
            method_kwargs,
            direction,
            self.my_name,
            self.max_hop_count,
            need_response=need_response,
            fanout=fanout,
            run_locally=run_locally,
            time_left=(timeout or self.call_timeout) if need_response else None,
        )
        d = self._process(msg)
        if not need_response:
            return d.addCallback(self._log_cast_failures, msg)
        return d.addCallback(self._answered, msg, self.clock.seconds())

    def _answered(self, parts: list[AnswerPart], msg: Message, start: float) -> list[Response]:
        responses = self._decode(parts)
        kind, method = msg.message_type, msg.method_name
        self.observer.call_finished(kind, method, self.clock.seconds() - start, responses)
        for r in responses:
            if r.failure:
                self.observer.message_failed(kind, method, msg.uuid, msg.routing_path, r)
        return responses

    def _decode(self, parts: list[AnswerPart]) -> list[Response]:
        out: list[Response] = []
        for part in parts:
            if isinstance(part, bytes):
                out.extend(decode_responses(part))
            else:
                out.append(part)
        return out

    # -- IMessageReceiver: messages from neighbours --------------------------------

    def receive(
        self, header: bytes, body: bytes, sender: str, from_parent: bool
    ) -> Deferred[bytes]:
        """Process a message a neighbour sent; fires with the encoded answer.

        Raises MalformedMessage (before anything runs) for a header that is
        not valid or does not fit the link it came on.
        """
        h = Header.from_bytes(header)
        check_sender(h, sender, from_parent)
        self.stats["received"] += 1
        self.observer.message_received(h.message_type, h.method_name, sender)
        msg = received_message(h, body, self.my_name)
        if self.message_log_level is not None:
            self.log.emit(
                self.message_log_level,
                "received {method} uuid={uuid} path={path}",
                method=h.method_name,
                uuid=h.uuid,
                path=h.routing_path,
                cell=self.my_name,
            )
        if self.outbox is not None and self.is_durable(h):
            return self.receive_durable(msg, self.outbox)
        d = self._process(msg)
        if not h.need_response:
            # A cast is accepted now and processed on its own; its failures
            # are logged here, where they happen.
            d.addCallback(self._log_cast_failures, msg)
            return defer.succeed(b"[]")
        return d.addCallback(self._encode)

    def _encode(self, parts: list[AnswerPart]) -> bytes:
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        local = [p for p in parts if isinstance(p, Response)]
        remote = [p for p in parts if isinstance(p, bytes)]
        if not remote:
            return encode_responses(local)
        return join_encoded([*remote, encode_responses(local)])

    def _log_cast_failures(self, parts: list[AnswerPart], msg: Message) -> None:
        """Nobody waits for a cast's answer: report its failures here."""
        for part in parts:
            if isinstance(part, Response) and part.failure:
                self.observer.message_failed(
                    msg.message_type, msg.method_name, msg.uuid, msg.routing_path, part
                )
                self.log.warn(
                    "cast {method} uuid={uuid} failed at {cell}: {error}",
                    method=msg.method_name,
                    uuid=msg.uuid,
                    cell=part.cell_name,
                    error=part.value,
                )

    # -- processing ------------------------------------------------------------------

    def _process(self, msg: Message) -> Deferred[list[AnswerPart]]:
        if msg.is_broadcast:
            return self._process_broadcast(msg)
        return self._process_targeted(msg)

    def _process_targeted(self, msg: Message) -> Deferred[list[AnswerPart]]:
        h = msg.header
        assert h.target_cell is not None
        neighbours = self.state.parent_cells if h.direction == UP else self.state.child_cells
        try:
            hop = next_hop(h.target_cell, h.routing_path, h.direction, neighbours)
        except CellsError as e:
            return defer.succeed([Response.from_failure(h.routing_path, e)])
        if hop is None:
            return self._execute_once(msg).addCallback(lambda r: [r])
        return self._forward(msg, neighbours[hop], h.target_cell)

    def _forward(self, msg: Message, cell: CellState, blame: str) -> Deferred[list[AnswerPart]]:
        """Send to one neighbour; a failure Response blamed on ``blame`` if
        it cannot be delivered or does not answer in time."""
        h = msg.header
        if h.hop_count >= h.max_hop_count:
            exc: CellsError = CellMaxHopCountReached(hop_count=h.hop_count)
            return defer.succeed([Response.from_failure(blame, exc)])
        link = self.links.link_for(cell.name, cell.is_parent)
        if link is None:
            self.stats["unreachable"] += 1
            explain = getattr(self.links, "unreachable_reason", None)
            why = explain(cell.name, cell.is_parent) if explain else f"no link to {cell.name} is up"
            exc = CellUnreachable(cell_name=blame, reason=why)
            return defer.succeed([Response.from_failure(blame, exc)])
        too_old = self.version_refusal(link, h.method_name, cell.name)
        if too_old is not None:
            return defer.succeed([Response.from_failure(blame, too_old)])
        wait: float | None
        if h.time_left is None:
            # A cast: wait only for the neighbour to accept it.
            wait, out_header = self.call_timeout, h
        else:
            m = margin_for(h.time_left)
            wait = h.time_left - m
            out_header = attrs.evolve(h, time_left=h.time_left - 2 * m)
            if out_header.time_left is not None and out_header.time_left <= 0:
                self.stats["timeouts"] += 1
                return defer.succeed([Response.from_failure(blame, CellTimeout(cell_name=blame))])
        self.stats["forwarded"] += 1
        self.observer.message_sent(h.message_type, h.method_name, cell.name, h.hop_count > 1)
        if self.message_log_level is not None:
            self.log.emit(
                self.message_log_level,
                "forwarding {method} uuid={uuid} to {neighbour}",
                method=h.method_name,
                uuid=h.uuid,
                neighbour=cell.name,
                cell=self.my_name,
            )
        try:
            d = link.deliver(out_header.to_bytes(), msg.body.to_bytes(), wait)
        except BaseException:
            d = defer.fail(Failure())

        def failed(f: Failure) -> list[AnswerPart]:
            return [self.delivery_failure(f, blame, cell.name)]

        return d.addCallbacks(lambda answer: [answer], failed)

    @staticmethod
    def version_refusal(link: Any, method: str, neighbour: str) -> CellsError | None:
        """CellProtocolTooOld if ``link`` negotiated an older inter-cell
        protocol version than ``method`` needs (links that do not say
        speak every version)."""
        need = required_version(method)
        have = getattr(link, "protocol_version", None)
        if need <= 1 or have is None or have >= need:
            return None
        return CellProtocolTooOld(method=method, cell_name=neighbour, needed=need, have=have)

    def _process_broadcast(self, msg: Message) -> Deferred[list[AnswerPart]]:
        h = msg.header
        seen, _ = self._seen.get(h.uuid)
        if seen:
            # Reached us twice (several parents, a loop, a redelivery): the
            # first arrival answers for this cell and its subtree.
            self.stats["duplicates"] += 1
            self.log.info("duplicate broadcast uuid={uuid} dropped", uuid=h.uuid)
            return defer.succeed([])
        self._seen.add(h.uuid)
        if h.hop_count >= h.max_hop_count:
            self.log.warn(
                "broadcast {method} uuid={uuid} reached max hop count {n}; not forwarded",
                method=h.method_name,
                uuid=h.uuid,
                n=h.hop_count,
            )
            targets: list[CellState] = []
        elif h.direction == DOWN:
            targets = self.state.get_child_cells()
        else:
            targets = self.state.get_parent_cells()
        is_source = h.hop_count == 1
        sends = [self._forward(msg, cell, f"{h.routing_path}!{cell.name}") for cell in targets]
        parts: list[Deferred[list[AnswerPart]]] = list(sends)
        if msg.run_locally or not is_source:
            parts.append(self._execute(msg).addCallback(lambda r: [r]))

        def gather(results: list[list[AnswerPart]]) -> list[AnswerPart]:
            return [part for result in results for part in result]

        # No part ever fails: every failure is already a Response.
        return defer.gatherResults(parts).addCallback(gather)

    # -- execution ------------------------------------------------------------------

    def _execute_once(self, msg: Message) -> Deferred[Response]:
        """Execute a targeted message, or share the answer of its first
        arrival when the same uuid reaches this cell again."""
        seen, earlier = self._seen.get(msg.uuid)
        if seen:
            self.stats["duplicates"] += 1
            self.log.info("duplicate message uuid={uuid}: not executed again", uuid=msg.uuid)
            if isinstance(earlier, Response):
                return defer.succeed(earlier)
            waiter: Deferred[Response] = Deferred()
            earlier.append(waiter)
            return waiter
        waiters: list[Deferred[Response]] = []
        self._seen.add(msg.uuid, waiters)

        def done(response: Response) -> Response:
            self._seen.add(msg.uuid, response)
            for w in waiters:
                w.callback(response)
            return response

        return self._execute(msg).addCallback(done)

    def _execute(self, msg: Message) -> Deferred[Response]:
        """Run the message's method here; always fires with a Response."""
        kind = BROADCAST if msg.is_broadcast else TARGETED
        name = msg.method_name
        cell_name = msg.routing_path
        allowed = _BROADCAST_NAMES if kind == BROADCAST else _TARGETED_NAMES
        impl = self._methods.get(kind)
        if name not in allowed or impl is None:
            return defer.succeed(
                Response.from_failure(cell_name, UnknownMethod(kind=kind, method_name=name))
            )
        try:
            kwargs = msg.method_kwargs
            fn = getattr(impl, name)
            self._check_arguments(kind, name, fn, kwargs)
        except CellsError as e:
            return defer.succeed(Response.from_failure(cell_name, e))
        self.stats["executed"] += 1
        if self.message_log_level is not None:
            self.log.emit(
                self.message_log_level,
                "executing {kind} {method} uuid={uuid} path={path}",
                kind=kind,
                method=name,
                uuid=msg.uuid,
                path=cell_name,
                cell=self.my_name,
            )

        def failed(f: Failure) -> Response:
            self.stats["failures"] += 1
            if not isinstance(f.value, CellsError):
                self.log.failure(
                    "{method} uuid={uuid} failed at {cell}",
                    f,
                    method=name,
                    uuid=msg.uuid,
                    cell=cell_name,
                )
            assert f.value is not None
            return Response.from_failure(cell_name, f.value)

        d = _as_deferred(fn, msg, **kwargs)
        time_left = msg.header.time_left
        if time_left is not None and not d.called:
            # Answer before the caller gives up, even when the method does not.
            def too_late(result: object, timeout: float) -> NoReturn:
                self.stats["timeouts"] += 1
                raise CellTimeout(cell_name=cell_name)

            wait = max(0.0, time_left - margin_for(time_left))
            d.addTimeout(wait, self.clock, onTimeoutCancel=too_late)
        return d.addCallbacks(lambda value: Response(cell_name, value), failed)

    def _check_arguments(self, kind: str, name: str, fn: Any, kwargs: dict[str, Any]) -> None:
        shape = self._signatures.get((kind, name))
        if shape is None:
            shape = ArgumentShape(inspect.signature(fn), argument_checks(fn))
            self._signatures[(kind, name)] = shape
        if not shape.fits(kwargs):
            try:
                shape.signature.bind(None, **kwargs)
            except TypeError as e:
                raise InvalidArguments(method_name=name, reason=str(e)) from None
        if shape.checks:
            check_arguments(name, shape.checks, kwargs)

    # -- state messages (behaviour §5) -------------------------------------------

    def ask_children_for_capabilities(
        self, ctxt: RequestContext, children: list[CellState] | None = None
    ) -> Deferred[None]:
        cells = self.state.get_child_cells() if children is None else children
        return self._to_each(ctxt, cells, DOWN, "announce_capabilities", {})

    def ask_children_for_capacities(
        self, ctxt: RequestContext, children: list[CellState] | None = None
    ) -> Deferred[None]:
        cells = self.state.get_child_cells() if children is None else children
        return self._to_each(ctxt, cells, DOWN, "announce_capacities", {})

    def tell_parents_our_capabilities(
        self, ctxt: RequestContext, parents: list[CellState] | None = None
    ) -> Deferred[None]:
        caps = {k: sorted(v) for k, v in self.state.get_our_capabilities().items()}
        kwargs = {"cell_name": self.my_name, "capabilities": caps}
        cells = self.state.get_parent_cells() if parents is None else parents
        return self._to_each(ctxt, cells, UP, "update_capabilities", kwargs, fanout=True)

    def tell_parents_our_capacities(
        self, ctxt: RequestContext, parents: list[CellState] | None = None
    ) -> Deferred[None]:
        kwargs = {"cell_name": self.my_name, "capacities": self.state.get_our_capacities()}
        cells = self.state.get_parent_cells() if parents is None else parents
        return self._to_each(ctxt, cells, UP, "update_capacities", kwargs, fanout=True)

    def _to_each(
        self,
        ctxt: RequestContext,
        cells: list[CellState],
        direction: str,
        method_name: str,
        kwargs: dict[str, Any],
        fanout: bool = False,
    ) -> Deferred[None]:
        """A cast to each neighbour on its own: one failing does not stop
        the others (each failure is logged where it happens)."""
        ds = [
            self.send_targeted(
                ctxt,
                f"{self.my_name}!{cell.name}",
                method_name,
                kwargs,
                direction,
                fanout=fanout,
            )
            for cell in cells
        ]
        return defer.gatherResults(ds).addCallback(lambda _: None)
