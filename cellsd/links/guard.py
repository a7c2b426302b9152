"""Bounds on connections to the cell listener that have not authenticated.

Children dial ``[cells] listen``. Until a connection's peer has completed
the TLS handshake *and* been matched to a configured child (the link
protocol's :meth:`~cellsd.links.protocol.CellLinkProtocol.when_ready`), it
is *pending*: it costs a socket, TLS state and buffers, and nothing it
sends is processed. :class:`HandshakeGuard` wraps the listener's factory,
outside TLS, and bounds pending connections two ways:

* **a deadline** (``[cells] handshake_timeout``, default 10 s): a pending
  connection is aborted when it expires, whether the client sent nothing
  (not even a ClientHello) or stalled in the middle of the handshake;
* **a count** (``[cells] max_pending_handshakes``, default 64): a new
  connection beyond it aborts the *oldest* pending one.

Why the oldest and not the newcomer: refusing newcomers lets a flood of
idle connections hold every slot for a whole deadline, renewing them as
they expire, so a real child would almost never get in. Evicting the oldest
means a flood can only push out a real child if it opens
``max_pending_handshakes`` connections during that child's handshake, which
takes a few milliseconds; the attacker's own idle connections are the ones
that go. Either way the number of sockets and TLS states held is bounded.

Each timeout and eviction is counted (:meth:`HandshakeGuard.stats`, shown
in ``link_states``) and logged, at most one line per kind every
:data:`LOG_EVERY` seconds with the number of others since, so a flood
cannot flood the log too.

The dialing side uses the same guard (``dialing=True``) with the deadline
only: a parent that accepts TCP but never completes the handshake and its
answer to Hello (a stopped process, a black hole) is given up after
``handshake_timeout``, the link is told why (its health reason), and the
child dials again after its back-off.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

#: Defaults of ``[cells] handshake_timeout`` and ``max_pending_handshakes``.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_PENDING = 64
#: Seconds between two log lines of one kind (timeouts, evictions).
LOG_EVERY = 10.0


def _link_of(protocol: object) -> Any:
    """The protocol below TLS that has ``when_ready()`` (the link), or None."""
    seen = 0
    while protocol is not None and seen < 8:
        if callable(getattr(protocol, "when_ready", None)):
            return protocol
        protocol = getattr(protocol, "wrappedProtocol", None)
        seen += 1
    return None


class _Guarded(ProtocolWrapper):
    """One accepted connection, pending until its peer is authenticated."""

    factory: HandshakeGuard
    _deadline: IDelayedCall | None = None
    _received = 0
    pending = False
    #: The link protocol below TLS (the one with ``when_ready``), if any.
    link: Any = None

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.factory.admit(self)
        self.link = _link_of(self.wrappedProtocol)
        ready = self.link.when_ready() if self.link is not None else None
        if ready is not None:
            # A failure means the connection ended: connectionLost handles it.
            ready.addCallbacks(lambda _: self.factory.authenticated(self), lambda _: None)

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.forget(self)
        super().connectionLost(reason)

    def describe(self) -> str:
        """Where the connection is from and how far it got, for the log."""
        peer = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        address = f"{host}:{port}" if host is not None else str(peer)
        if self._received == 0:
            return f"{address} (sent nothing)"
        return f"{address} (stalled after sending {self._received} bytes)"


class _Throttled:
    """Log one line now, then at most one per LOG_EVERY seconds with the
    number of events in between."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._last: float | None = None
        self._quiet = 0

    def due(self) -> int | None:
        """None: stay quiet; else how many were not logged since the last."""
        now = self._clock.seconds()
        if self._last is not None and now - self._last < LOG_EVERY:
            self._quiet += 1
            return None
        self._last, quiet, self._quiet = now, self._quiet, 0
        return quiet


class HandshakeGuard(WrappingFactory[_Guarded]):
    """Wraps the listener's (TLS) factory; see the module doc."""

    protocol = _Guarded
    log = Logger()

    def __init__(
        self,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
        *,
        timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        cell_name: str = "",
        dialing: bool = False,
    ) -> None:
        """``dialing``: the connections are ours, to a parent (the
        deadline then also covers its answer to Hello, and the link is
        told why it was given up)."""
        super().__init__(wrapped)
        self.clock = clock
        self.dialing = dialing
        self.timeout = timeout
        self.max_pending = max_pending
        self.cell_name = cell_name
        self._pending: OrderedDict[_Guarded, None] = OrderedDict()
        self._counts = {"timed_out": 0, "evicted": 0, "authenticated": 0}
        self._throttles = {kind: _Throttled(clock) for kind in ("timed_out", "evicted")}

    def buildProtocol(self, addr: IAddress | None) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)

    def stats(self) -> dict[str, int]:
        """Connections pending now; totals timed out, evicted, and
        authenticated."""
        return {"pending": len(self._pending), **self._counts}

    # -- called by the protocols ------------------------------------------------

    def admit(self, conn: _Guarded) -> None:
        """A new connection: evict the oldest pending one if at the bound,
        then start its deadline."""
        while len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending))
            self.forget(oldest)
            self._close(
                oldest,
                "evicted",
                f"{self.max_pending} connections were already waiting to authenticate "
                "([cells] max_pending_handshakes); closed the oldest",
            )
        conn.pending = True
        self._pending[conn] = None
        conn._deadline = self.clock.callLater(self.timeout, self._expire, conn)

    def authenticated(self, conn: _Guarded) -> None:
        if conn.pending:
            self._counts["authenticated"] += 1
        self.forget(conn)

    def forget(self, conn: _Guarded) -> None:
        """``conn`` is no longer pending (authenticated, closed, evicted)."""
        conn.pending = False
        self._pending.pop(conn, None)
        deadline, conn._deadline = conn._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expire(self, conn: _Guarded) -> None:
        conn._deadline = None
        self.forget(conn)
        why = f"not authenticated within {self.timeout:g}s ([cells] handshake_timeout)"
        if self.dialing and conn.link is not None and conn.link.refusal is None:
            conn.link.refusal = f"the parent did not complete the TLS handshake and Hello: {why}"
        self._close(conn, "timed_out", why)

    def _close(self, conn: _Guarded, kind: str, why: str) -> None:
        self._counts[kind] += 1
        quiet = self._throttles[kind].due()
        if quiet is not None:
            others = f" ({quiet} more since the last such line)" if quiet else ""
            self.log.warn(
                "{cell}: gave up the connection to {who}: {why}{others}"
                if self.dialing
                else "{cell}: closed an unauthenticated connection from {who}: {why}{others}",
                cell=self.cell_name,
                who=conn.describe(),
                why=why,
                others=others,
            )
        transport: Any = conn.transport  # a TCP transport: it can abort
        if transport is not None:
            transport.abortConnection()


@implementer(IStreamServerEndpoint)
class GuardedEndpoint:
    """A server endpoint whose factory is wrapped in a :class:`HandshakeGuard`
    (outside TLS when it is the endpoint ``wrapServerTLS`` wraps)."""

    def __init__(
        self,
        inner: IStreamServerEndpoint,
        clock: IReactorTime,
        *,
        timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        cell_name: str = "",
    ) -> None:
        self._inner = inner
        self._clock = clock
        self._timeout = timeout
        self._max_pending = max_pending
        self._cell_name = cell_name
        #: The guard of the last listen() (what link_states reports).
        self.guard: HandshakeGuard | None = None

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        self.guard = HandshakeGuard(
            protocolFactory,
            self._clock,
            timeout=self._timeout,
            max_pending=self._max_pending,
            cell_name=self._cell_name,
        )
        d: defer.Deferred[IListeningPort] = self._inner.listen(self.guard)
        return d
