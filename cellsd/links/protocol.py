"""The link protocol: AMP between two neighbour cells, over mutual TLS.

One :class:`CellLinkProtocol` per connection, on either side:

* It checks *which* cell the peer is when the TLS handshake completes
  (:meth:`~CellLinkProtocol.handshakeCompleted`): the certificate must name
  one of the neighbours this side may talk to (the configured children when
  accepting, the one parent when dialing). Any other name is refused and
  logged, and no AMP box is processed before the check has passed.
* The dialing side then sends :class:`~cellsd.links.amp.Hello`; its link
  is up when the answer arrives (the parent has then accepted our name too).
* It answers :class:`~cellsd.links.amp.Deliver` by handing the message to
  the :class:`~cellsd.interfaces.IMessageReceiver`, and sends messages with
  :meth:`~CellLinkProtocol.deliver` (:class:`~cellsd.interfaces.ICellLink`).

Errors listed in ``Deliver.errors`` cross as AMP errors and leave the link
up; any other error in a responder is logged here and crosses as a generic
non-fatal error, so that one bad message never drops a link.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from cellsd.errors import (
    CellOutcomeUnknown,
    CellsError,
    CellTimeout,
    CellUnreachable,
    MalformedMessage,
    MessageTooLarge,
    RemoteError,
)
from cellsd.interfaces import ICellLink, IMessageReceiver, IMessageRelay
from cellsd.links.amp import (
    COMMANDS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DELIVER_ERRORS,
    MAX_VALUE_BYTES,
    OVER_LIMIT_KEY,
    Deliver,
    DeliverResponse,
    Hello,
    HelloResponse,
    LinkClient,
    detached,
    responses_box,
)
from cellsd.links.tls import (
    certificate_names,
    explain_tls_failure,
    match_peer,
    refused_names,
    wildcard_refusal,
)
from cellsd.messaging.versions import PROTOCOL_VERSIONS, common_version

LinkCallback = Callable[["CellLinkProtocol"], object]

#: Seconds the dialing side waits for the answer to Hello.
DEFAULT_HELLO_TIMEOUT = 30.0


@implementer(IHandshakeListener, ICellLink)
class CellLinkProtocol(amp.AMP):
    """One connection to a neighbour cell.

    ``candidates`` are the names the peer may have; ``is_parent`` says
    whether the peer is our parent (then we are the dialing side).
    ``on_ready`` is called once the link is usable, ``on_lost`` once for
    every connection when it ends (ready or not; see :attr:`refusal`).
    """

    log = Logger()

    #: The neighbour's name, once its certificate has been matched.
    neighbour: str | None = None
    #: True from the moment the link is usable until it is lost.
    ready = False
    #: Why the link was refused (by us or by TLS), if it was.
    refusal: str | None = None
    #: The DNS names the peer's certificate presented.
    presented: tuple[str, ...] = ()
    #: The clock's time when the link became usable.
    ready_at: float | None = None
    #: The inter-cell protocol version negotiated by Hello: the dialing side
    #: knows it before the link is up; the accepting side counts 1 until the
    #: dialer's Hello arrives (right after the TLS handshake).
    protocol_version: int = 1

    def __init__(
        self,
        receiver: IMessageReceiver,
        candidates: Iterable[str],
        is_parent: bool,
        clock: IReactorTime,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_ready: LinkCallback | None = None,
        on_lost: LinkCallback | None = None,
        *,
        cell_name: str = "",
        ca: x509.Certificate | None = None,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        versions: Sequence[int] | None = PROTOCOL_VERSIONS,
    ) -> None:
        """``versions``: the inter-cell protocol versions this side states
        in Hello; None states none, as a cell from before negotiation
        (which speaks version 1 only)."""
        super().__init__()
        self.versions = tuple(versions) if versions is not None else None
        self.receiver = receiver
        self.candidates = tuple(candidates)
        self.is_parent = is_parent
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.cell_name = cell_name
        self._ca = ca
        self._hello_timeout = hello_timeout
        self._client = LinkClient(self)
        self._verified = False
        self._lost = False
        self._waiting: list[defer.Deferred[CellLinkProtocol]] = []
        self._box_bytes = 0
        #: Calls from the peer we have not answered yet (see in_flight).
        self._answering = 0
        # A box may hold the limit plus the header and a chunk's slack; past
        # that its values are dropped as they arrive (see proto_value).
        self._box_budget = max_message_bytes + 2 * MAX_VALUE_BYTES

    def __repr__(self) -> str:
        who = self.neighbour or "/".join(self.candidates)
        kind = "parent" if self.is_parent else "child"
        return f"<CellLinkProtocol {kind} {who} ready={self.ready}>"

    # ------------------------------------------------------------------
    # Identity

    def _transport(self) -> Any:
        # The transport is a TLSMemoryBIOProtocol (ISSLTransport plus
        # abortConnection and getHandle); ITransport knows neither.
        return self.transport

    def _address(self) -> str:
        peer = getattr(self, "_transportPeer", None)
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        return f"{host}:{port}" if host is not None else str(peer)

    def _direction(self) -> str:
        return "parent" if self.is_parent else "child"

    def connectionMade(self) -> None:
        super().connectionMade()
        # Small request/answer boxes: without TCP_NODELAY, Nagle's algorithm
        # and delayed ACKs add ~40 ms to every second hop.
        transport: Any = self.transport
        while transport is not None:
            set_no_delay = getattr(transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                set_no_delay(True)
                break
            transport = getattr(transport, "transport", None)

    def handshakeCompleted(self) -> None:
        """Check the peer's certificate name; abort the link if it is not
        one of our candidates."""
        transport = self._transport()
        peer = transport.getPeerCertificate()
        cert = peer.to_cryptography() if peer is not None else None
        if cert is not None:
            self.presented = tuple(certificate_names(cert))
        name = match_peer(cert, self.candidates) if cert is not None else None
        if name is None:
            wild = wildcard_refusal(self.presented)
            names = f"carries {wild}" if wild else f"names {list(self.presented)}"
            self.refusal = (
                f"its certificate {names}, expected "
                f"{self._direction()} {' or '.join(self.candidates) or '(none)'}"
            )
            self.log.warn(
                "{cell}: refused a link from {address}: {why}",
                cell=self.cell_name,
                address=self._address(),
                why=self.refusal,
                peer=list(self.presented),
                expected=list(self.candidates),
            )
            transport.abortConnection()
            return
        self.neighbour = name
        self._verified = True
        if self.is_parent:
            # Our parent may still refuse our certificate (TLS 1.3 finishes
            # the client's handshake first): wait for its answer.
            self._say_hello()
        else:
            self._become_ready()

    def _say_hello(self) -> None:
        d = self._client.hello(self.versions).addTimeout(self._hello_timeout, self.clock)

        def answered(answer: HelloResponse) -> None:
            self.protocol_version = common_version(self._speaks(), answer.get("versions"))
            if not self._lost:
                self._become_ready()

        def failed(reason: Failure) -> None:
            if self._lost:
                return
            self.refusal = f"no answer to hello: {reason.getErrorMessage()}"
            self.log.warn(
                "{cell}: parent {neighbour} did not accept the link: {why}",
                cell=self.cell_name,
                neighbour=self.neighbour,
                why=reason.getErrorMessage(),
            )
            self._transport().abortConnection()

        d.addCallbacks(answered, failed)

    def _become_ready(self) -> None:
        self.ready = True
        self.ready_at = self.clock.seconds()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)
        if self.on_ready is not None:
            self.on_ready(self)

    def when_ready(self) -> defer.Deferred[CellLinkProtocol]:
        """Fires with this protocol once the link is up; fails with
        CellUnreachable if the connection ends first."""
        if self.ready:
            return defer.succeed(self)
        if self._lost:
            return defer.fail(self._unreachable("the link was refused or lost"))
        d: defer.Deferred[CellLinkProtocol] = defer.Deferred()
        self._waiting.append(d)
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was_ready = self.ready
        self.ready = False
        self._lost = True
        if not was_ready and self.refusal is None:
            self.refusal = self._explain_setup_failure(reason)
            if self.refusal is not None:
                self.log.warn(
                    "{cell}: {direction} link with {address} failed to set up: {why}",
                    cell=self.cell_name,
                    direction=self._direction(),
                    address=self._address(),
                    neighbour=self.neighbour or "/".join(self.candidates),
                    why=self.refusal,
                )
        super().connectionLost(reason)  # fails every outstanding call
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(self._unreachable(self.refusal or reason.getErrorMessage()))
        if self.on_lost is not None:
            self.on_lost(self)

    def _explain_setup_failure(self, reason: Failure) -> str | None:
        exc = reason.value
        if isinstance(exc, SSL.Error | VerificationError):
            handle = getattr(self._transport(), "getHandle", None)
            expected = self.candidates[0] if self.is_parent else ""
            connection = handle() if handle else None
            self.presented = self.presented or refused_names(connection)
            return explain_tls_failure(exc, connection, self._ca, expected)
        if self._verified and self.is_parent:
            return (
                "the parent closed the link before accepting it; check that "
                "its [[children]] lists this cell and see its log"
            )
        return None

    # ------------------------------------------------------------------
    # Receiving

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """Refuse every box until the peer's identity has been verified."""
        if not self._verified:
            self.log.warn(
                "{cell}: {address} sent an AMP box before its identity was verified; aborting",
                cell=self.cell_name,
                address=self._address(),
            )
            self.refusal = self.refusal or "AMP box before identity was verified"
            transport = self._transport()
            if transport is not None:
                transport.abortConnection()
            return
        super().ampBoxReceived(box)

    def proto_value(self, string: bytes) -> str:
        """Store a value of the box being parsed, unless the box has outgrown
        the limit: then keep only AMP's control keys and mark the box, so
        that the command is refused with MessageTooLarge without holding an
        arbitrary amount of memory and the link stays up."""
        self._box_bytes += len(string)
        if self._box_bytes > self._box_budget:
            box = self._currentBox
            if box is not None:
                box[OVER_LIMIT_KEY] = b"%d" % self._box_bytes
                if not (self._currentKey or b"").startswith(b"_"):
                    string = b""
        result: str = super().proto_value(string)
        return result

    def proto_key(self, string: bytes) -> str:
        if not string:  # the end of a box
            self._box_bytes = 0
        result: str = super().proto_key(string)
        return result

    def _wrapWithSerialization(
        self, aCallable: Callable[..., Any], command: type[amp.Command]
    ) -> Callable[[amp.AmpBox], Any]:
        """AMP's responder for ``command``, with arguments that cannot be
        decoded refused as MalformedMessage naming them (AMP raises a bare
        KeyError for a missing one, or whatever the argument type raises).

        The only thing AMP's wrapper does before calling ``aCallable`` is
        decoding the arguments, and it calls ``aCallable`` through
        maybeDeferred: so what it raises at once is a decoding error."""
        respond = super()._wrapWithSerialization(aCallable, command)
        what = command.commandName.decode()

        def decoded(box: amp.AmpBox) -> Any:
            try:
                return respond(box)
            except CellsError:
                raise
            except KeyError as e:
                missing = e.args[0].decode(errors="replace") if e.args else "?"
                raise MalformedMessage(reason=f"{what} without its {missing!r} argument") from None
            except Exception as e:
                reason = f"{what} with an argument AMP cannot decode: {e}"
                raise MalformedMessage(reason=reason) from None

        return decoded

    def locateResponder(self, name: bytes) -> Any:
        """Only our commands are answered (not AMP's built-in StartTLS);
        errors while decoding arguments are answered like the responder's."""
        command = COMMANDS.get(name)
        responder = super().locateResponder(name) if command is not None else None
        if command is None or responder is None:
            return None

        def guarded(box: amp.AmpBox) -> defer.Deferred[Any]:
            return defer.maybeDeferred(responder, box).addErrback(self._as_amp_error, command)

        if command is Deliver and IMessageRelay.providedBy(self.receiver):
            return self._counted(lambda box: self._relay_or(guarded, box))
        return self._counted(guarded)

    def _counted(self, responder: Callable[[amp.AmpBox], Any]) -> Callable[[amp.AmpBox], Any]:
        """``responder``, counting the calls it has not answered yet."""

        def answered(result: object) -> object:
            self._answering -= 1
            return result

        def counted(box: amp.AmpBox) -> Any:
            self._answering += 1
            try:
                result = responder(box)
            except BaseException:
                self._answering -= 1
                raise
            if isinstance(result, defer.Deferred):
                return result.addBoth(answered)
            self._answering -= 1
            return result

        return counted

    def in_flight(self) -> int:
        """Calls on this link still in flight: ours waiting for the peer's
        answer, and the peer's we have not answered yet. A link being
        removed by a reload is closed once this is 0 (or at the deadline)."""
        return len(self._outstandingRequests or ()) + self._answering

    def _relay_or(self, full: Callable[[amp.AmpBox], Any], box: amp.AmpBox) -> Any:
        """Forward a passing message as the raw box it came in, or hand it
        to ``full`` (decode the arguments, call the receiver)."""
        header = box.get(b"header")
        if header is None or OVER_LIMIT_KEY in box:
            return full(box)
        relayer = IMessageRelay(self.receiver)
        try:
            relay = relayer.relay(header, self.neighbour or "", self.is_parent)
        except MalformedMessage as e:
            return defer.fail(amp.RemoteAmpError(b"MALFORMED", str(e)))
        if relay is None or not isinstance(relay.link, CellLinkProtocol):
            return full(box)
        out = amp.AmpBox({k: v for k, v in box.items() if not k.startswith(b"_")})
        out[b"header"] = relay.header

        def answered(answer: amp.AmpBox) -> amp.AmpBox:
            if OVER_LIMIT_KEY in answer:
                raise MessageTooLarge(
                    size=int(answer[OVER_LIMIT_KEY]), limit=self.max_message_bytes
                )
            return amp.AmpBox({k: v for k, v in answer.items() if not k.startswith(b"_")})

        def failed(f: Failure) -> amp.AmpBox:
            return responses_box(relayer.relay_failed(relay, f))

        return relay.link.forward_box(out, relay.wait).addCallback(answered).addErrback(failed)

    def forward_box(self, box: amp.AmpBox, timeout: float) -> defer.Deferred[amp.AmpBox]:
        """Send a Deliver box received on another link, unchanged but for
        its header; fires with the raw answer box."""
        if self._lost or self.transport is None:
            return defer.fail(self._unreachable("the link is down"))
        d = detached(self._sendBoxCommand(Deliver.commandName, box))
        d.addTimeout(timeout, self.clock)
        return d.addErrback(self._translate_raw)

    def _translate_raw(self, failure: Failure) -> Failure:
        """As :meth:`_translate`, and error boxes to their typed errors."""
        if failure.check(amp.RemoteAmpError):
            assert isinstance(failure.value, amp.RemoteAmpError)
            cls = DELIVER_ERRORS.get(failure.value.errorCode)
            if cls is not None:
                return Failure(cls(failure.value.description))
        return self._translate(failure)

    def _as_amp_error(self, failure: Failure, command: type[amp.Command]) -> Failure:
        if failure.check(amp.RemoteAmpError):
            return failure
        known = failure.check(*command.errors)
        if known is not None:
            code = command.errors[known]
            return Failure(amp.RemoteAmpError(code, failure.getErrorMessage(), local=failure))
        self.log.failure(
            "{cell}: unexpected error answering {command} from {neighbour}",
            failure,
            cell=self.cell_name,
            command=command.commandName.decode(),
            neighbour=self.neighbour,
        )
        return Failure(
            amp.RemoteAmpError(
                amp.UNKNOWN_ERROR_CODE,
                f"internal error in cell {self.cell_name or '?'}",
                local=failure,
            )
        )

    def _speaks(self) -> tuple[int, ...]:
        return self.versions or (1,)

    @Hello.responder
    def _hello(self, versions: list[int] | None = None) -> HelloResponse:
        self.protocol_version = common_version(self._speaks(), versions)
        if self.versions is None:  # as a cell from before negotiation
            return {"cell": self.cell_name}
        return {"cell": self.cell_name, "versions": list(self.versions)}

    @Deliver.responder
    def _deliver(self, header: bytes, body: bytes) -> defer.Deferred[DeliverResponse]:
        # A plain Deferred chain, not a coroutine: this runs for every
        # message a cell executes or answers for.
        assert self.neighbour is not None  # boxes wait for verification
        limit = self.max_message_bytes
        size = len(header) + len(body)
        if size > limit:
            return defer.fail(MessageTooLarge(size=size, limit=limit))

        def answer(result: object) -> DeliverResponse:
            if not isinstance(result, bytes):
                raise TypeError(f"receive() returned {type(result).__name__}, not bytes")
            if len(result) > limit:
                raise MessageTooLarge(
                    f"Answer of {len(result)} bytes exceeds the limit of {limit} bytes",
                    size=len(result),
                    limit=limit,
                )
            return {"responses": result}

        return defer.maybeDeferred(
            self.receiver.receive,
            header,
            body,
            sender=self.neighbour,
            from_parent=self.is_parent,
        ).addCallback(answer)

    # ------------------------------------------------------------------
    # Sending (ICellLink)

    def _unreachable(self, reason: str) -> CellUnreachable:
        return CellUnreachable(cell_name=self.neighbour or "/".join(self.candidates), reason=reason)

    def deliver(self, header: bytes, body: bytes, timeout: float | None) -> defer.Deferred[bytes]:
        """Send one message; see :meth:`ICellLink.deliver`."""
        limit = self.max_message_bytes
        size = len(header) + len(body)
        if size > limit:
            return defer.fail(MessageTooLarge(size=size, limit=limit))
        if len(header) > MAX_VALUE_BYTES:
            return defer.fail(
                MessageTooLarge(
                    f"Routing header of {len(header)} bytes exceeds the limit of "
                    f"{MAX_VALUE_BYTES} bytes",
                    size=len(header),
                    limit=MAX_VALUE_BYTES,
                )
            )
        if self._lost or self.transport is None:
            return defer.fail(self._unreachable("the link is down"))
        d = self._client.deliver(header, body)
        if timeout is not None:
            d.addTimeout(timeout, self.clock)
        return d.addErrback(self._translate)

    def _translate(self, failure: Failure) -> Failure:
        """Local exceptions for what went wrong on the way."""
        cell = self.neighbour or "/".join(self.candidates)
        if failure.check(defer.TimeoutError, defer.CancelledError):
            return Failure(CellTimeout(cell_name=cell))
        if failure.check(error.ConnectionClosed, SSL.Error, amp.ProtocolSwitched):
            # The box was written before the link went: it may have arrived.
            why = failure.getErrorMessage()
            return Failure(CellOutcomeUnknown(cell_name=cell, reason=why))
        if failure.check(amp.UnknownRemoteError, amp.UnhandledCommand):
            return Failure(RemoteError(type(failure.value).__name__, failure.getErrorMessage()))
        return failure
