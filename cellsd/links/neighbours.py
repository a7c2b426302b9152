"""Dial the parents, accept the children, and keep a registry of live links.

:class:`NeighbourLinks` is the service that owns every link of one cell
worker:

* When ``[cells] listen`` is set it listens there (TLS with client
  certificates, :func:`~cellsd.links.tls.server_options`) and accepts a
  connection only from a configured child.
* For each parent it runs a :class:`~twisted.application.internet.ClientService`
  that dials the parent's endpoint and reconnects forever, with exponential
  backoff and jitter. A connection counts as a link only once both sides
  have accepted each other's certificate name.
* :meth:`NeighbourLinks.link_for` hands out a live link. A neighbour cell may
  run several workers, hence hold several live links for one name; calls
  are spread over them round-robin.
* A configuration reload (:mod:`cellsd.ops.reload`) changes it while it
  runs: :meth:`~NeighbourLinks.add_neighbour` (joining until its link is
  up), :meth:`~NeighbourLinks.remove_neighbour` (closed once its calls in
  flight are answered), :meth:`~NeighbourLinks.set_disabled`, and
  :meth:`~NeighbourLinks.set_tls` (new connections only).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.application import service
from twisted.application.internet import (
    ClientService,
    StreamServerEndpointService,
    backoffPolicy,
)
from twisted.internet import defer, endpoints, task
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from cellsd.interfaces import ICellLink, IMessageReceiver, INeighbourLinks
from cellsd.links.guard import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PENDING,
    GuardedEndpoint,
    HandshakeGuard,
)
from cellsd.links.health import Health, HealthThresholds, NeighbourHealth
from cellsd.links.protocol import CellLinkProtocol
from cellsd.links.tls import LinkTLS, TLSMaterial

# --------------------------------------------------------------------------
# What we read from cellsd.config.Settings (structural, so tests can pass
# any object of this shape).


class NeighbourSettings(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def endpoint(self) -> str | None: ...
    @property
    def is_parent(self) -> bool: ...

    # ``enabled: bool`` (default True) is read with getattr: a neighbour
    # configured with ``enabled = false`` starts disabled.


class CellSettings(Protocol):
    @property
    def name(self) -> str: ...


class CellsSettings(Protocol):
    @property
    def listen(self) -> str | None: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def reconnect_max_delay(self) -> float: ...


class LinkSettings(Protocol):
    @property
    def cell(self) -> CellSettings: ...
    @property
    def cells(self) -> CellsSettings: ...
    @property
    def parents(self) -> Sequence[NeighbourSettings]: ...
    @property
    def children(self) -> Sequence[NeighbourSettings]: ...


#: Seconds between checks for a removed neighbour's calls in flight.
DRAIN_POLL = 0.1
#: Why a neighbour disabled by ``enabled = false`` is not used.
DISABLED_REASON = "disabled by configuration (enabled = false)"

#: How many distinct names of refused certificates link_states keeps apart;
#: the rest are counted together (the names come from unverified peers).
MAX_REFUSED_NAMES = 64

# --------------------------------------------------------------------------


@attrs.define
class _State:
    """What the registry knows about one neighbour (one name, one direction)."""

    links: list[CellLinkProtocol] = attrs.field(factory=list)
    since: float | None = None
    ups: int = 0
    refused: int = 0
    failed_attempts: int = 0
    #: Attempts since the last link came up (connect failures and refusals).
    failing: int = 0
    turn: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "up": bool(self.links),
            "links": len(self.links),
            "since": self.since,
            "reconnects": max(0, self.ups - 1),
            "refused": self.refused,
            "failed_attempts": self.failed_attempts,
        }


class _LinkFactory(Factory):
    """Builds the link protocols of one side (accepting or dialing)."""

    def __init__(self, build: Callable[[], CellLinkProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> CellLinkProtocol:
        proto = self._build()
        proto.factory = self
        return proto


@implementer(IStreamClientEndpoint)
class _CountingEndpoint:
    """Reports each failed connection attempt (before TLS even starts)."""

    def __init__(self, inner: IStreamClientEndpoint, on_failure: Callable[[Failure], None]) -> None:
        self._inner = inner
        self._on_failure = on_failure

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        def failed(reason: Failure) -> Failure:
            self._on_failure(reason)
            return reason

        d: defer.Deferred[Any] = self._inner.connect(protocolFactory)
        return d.addErrback(failed)


@implementer(INeighbourLinks)
class NeighbourLinks(service.MultiService):
    """All links of this cell worker to its parents and children."""

    log = Logger()
    #: The listener's endpoint, which bounds unauthenticated connections.
    _listener: GuardedEndpoint | None = None

    def __init__(
        self,
        reactor: Any,
        settings: LinkSettings,
        material: TLSMaterial,
        receiver: IMessageReceiver | None = None,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        # reactor: IReactorTime plus whatever the endpoint strings need
        # (IReactorTCP, IReactorUNIX …); zope interfaces cannot be intersected.
        super().__init__()
        self._reactor = reactor
        #: What incoming messages are handed to; may be set after construction
        #: (the runner and the links need each other) but before starting.
        self.receiver = receiver
        #: Called with (neighbour name, is_parent) whenever a neighbour's
        #: first live link comes up, e.g. to exchange state at once.
        self.link_up_observers: list[Callable[[str, bool], object]] = []
        self.cell_name = settings.cell.name
        #: The TLS contexts new connections use (replaced by set_tls).
        self.tls = LinkTLS(material)
        self._ca = material.ca.original.to_cryptography()
        self._max = settings.cells.max_message_bytes
        self._children = tuple(child.name for child in settings.children)
        self._states: dict[tuple[str, bool], _State] = {}
        #: Neighbours being removed: disabled, refused new links, closed
        #: once their calls in flight are answered.
        self._leaving: set[tuple[str, bool]] = set()
        self._refused_unknown: Counter[str] = Counter()
        #: Why the last of those connections was refused, per name.
        self._last_refusals: dict[str, str] = {}
        #: Per neighbour: up, suspect, down or disabled, and why (health.py).
        self._health: dict[tuple[str, bool], NeighbourHealth] = {}
        self._thresholds = HealthThresholds.from_settings(settings.cells)
        self._handshake_timeout: float = getattr(
            settings.cells, "handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT
        )
        for neighbour in (*settings.parents, *settings.children):
            self._states[(neighbour.name, neighbour.is_parent)] = _State()
            if not getattr(neighbour, "enabled", True):
                self.health_of(neighbour.name, neighbour.is_parent).disable(DISABLED_REASON)

        listen = settings.cells.listen
        if listen is not None:
            server = endpoints.wrapServerTLS(
                self.tls.server_creator(),
                self._guarded(endpoints.serverFromString(reactor, listen), settings.cells),
                clock=reactor,
            )
            accepting = StreamServerEndpointService(server, self.accept_factory())
            accepting.setName("cells-listen")
            accepting.setServiceParent(self)

        max_delay = settings.cells.reconnect_max_delay
        self._policy = backoffPolicy(
            initialDelay=min(1.0, max_delay), maxDelay=max_delay, jitter=jitter
        )
        for parent in settings.parents:
            self._dial(parent)

    def _dial(self, parent: NeighbourSettings) -> None:
        """Add the service that keeps dialing ``parent`` (started at once
        when we run)."""
        if parent.endpoint is None:
            self.log.warn(
                "{cell}: parent {neighbour} has no endpoint; not dialing it",
                cell=self.cell_name,
                neighbour=parent.name,
            )
            return
        dialing = ClientService(
            _CountingEndpoint(
                endpoints.clientFromString(self._reactor, parent.endpoint),
                self._attempt_failed(parent.name),
            ),
            # TLS goes inside the factory, not in the endpoint: ClientService
            # wraps protocols in a proxy that hides IHandshakeListener, and
            # our protocol must sit directly under the TLS protocol. The
            # guard outside TLS gives up on a parent that accepts TCP but
            # does not complete the handshake and Hello in time.
            HandshakeGuard(
                TLSMemoryBIOFactory(
                    self.tls.client_creator(parent.name),
                    True,
                    self.dial_factory(parent.name),
                    clock=self._reactor,
                ),
                self._reactor,
                timeout=self._handshake_timeout,
                cell_name=self.cell_name,
                dialing=True,
            ),
            retryPolicy=self._retry_policy(parent.name, self._policy),
            clock=self._reactor,
        )
        dialing.setName(f"cells-parent-{parent.name}")
        dialing.setServiceParent(self)

    def _guarded(self, inner: IStreamServerEndpoint, cells: CellsSettings) -> GuardedEndpoint:
        """``inner`` with connections that do not authenticate in time, or
        beyond the bound, closed (cellsd.links.guard; outside TLS)."""
        self._listener = GuardedEndpoint(
            inner,
            self._reactor,
            timeout=self._handshake_timeout,
            max_pending=getattr(cells, "max_pending_handshakes", DEFAULT_MAX_PENDING),
            cell_name=self.cell_name,
        )
        return self._listener

    # ------------------------------------------------------------------
    # Protocol factories (plain; TLS is added around them)

    def _protocol(self, candidates: Sequence[str], is_parent: bool) -> CellLinkProtocol:
        assert self.receiver is not None, "started without a receiver"
        return CellLinkProtocol(
            self.receiver,
            candidates,
            is_parent,
            self._reactor,
            max_message_bytes=self._max,
            on_ready=self._link_ready,
            on_lost=self._link_lost,
            cell_name=self.cell_name,
            ca=self._ca,
        )

    def accept_factory(self) -> Factory:
        """Protocols for connections from children (any configured child)."""
        return _LinkFactory(lambda: self._protocol(self._children, False))

    def dial_factory(self, parent_name: str) -> Factory:
        """Protocols for connections to the parent ``parent_name``."""
        return _LinkFactory(lambda: self._protocol((parent_name,), True))

    # ------------------------------------------------------------------
    # Registry

    def _state(self, name: str, is_parent: bool) -> _State:
        return self._states.setdefault((name, is_parent), _State())

    def _retry_policy(self, name: str, policy: Callable[[int], float]) -> Callable[[int], float]:
        """ClientService's policy, counting refused handshakes as failures.

        ClientService counts a connection as made once TCP connects, and
        resets its count then; a parent that refuses our certificate would
        be redialed at the shortest delay forever. Its prepareConnection
        hook cannot help: a connection lost while being prepared has no
        transition in ClientService's state machine (Twisted 26.10).
        """
        state = self._state(name, True)
        return lambda attempt: policy(max(attempt, state.failing))

    def _attempt_failed(self, name: str) -> Callable[[Failure], None]:
        def failed(reason: Failure) -> None:
            if reason.check(defer.CancelledError) or (name, True) not in self._states:
                return  # stopped while connecting, or removed
            state = self._state(name, True)
            state.failed_attempts += 1
            state.failing += 1
            self.health_of(name, True).attempt_failed(
                f"could not connect: {reason.getErrorMessage()}"
            )
            self.log.info(
                "{cell}: could not connect to parent {neighbour}: {why}",
                cell=self.cell_name,
                neighbour=name,
                why=reason.getErrorMessage(),
            )

        return failed

    def _link_ready(self, proto: CellLinkProtocol) -> None:
        assert proto.neighbour is not None
        key = (proto.neighbour, proto.is_parent)
        if key in self._leaving or key not in self._states:
            self.log.info(
                "{cell}: closing a new link to {neighbour}: it is being removed",
                cell=self.cell_name,
                neighbour=proto.neighbour,
            )
            proto.transport.loseConnection()  # type: ignore[union-attr]  # a ready link has one
            return
        state = self._states[key]
        first = not state.links
        if first:
            state.since = self._reactor.seconds()
        state.links.append(proto)
        state.ups += 1
        state.failing = 0
        if first:
            self.health_of(proto.neighbour, proto.is_parent).link_up()
        self.log.info(
            "{cell}: link to {direction} {neighbour} is up ({count} live)",
            cell=self.cell_name,
            neighbour=proto.neighbour,
            direction="parent" if proto.is_parent else "child",
            count=len(state.links),
        )
        if first:
            for observer in self.link_up_observers:
                try:
                    observer(proto.neighbour, proto.is_parent)
                except Exception:
                    self.log.failure("link-up observer failed")

    def _link_lost(self, proto: CellLinkProtocol) -> None:
        direction = "parent" if proto.is_parent else "child"
        name = proto.neighbour or (proto.candidates[0] if proto.is_parent else None)
        if name is not None and (name, proto.is_parent) not in self._states:
            return  # a neighbour removed by a reload
        if proto.neighbour is not None:
            state = self._state(proto.neighbour, proto.is_parent)
            if proto in state.links:
                state.links.remove(proto)
                if not state.links:
                    state.since = self._reactor.seconds()
                    self.health_of(proto.neighbour, proto.is_parent).link_lost(
                        "the last live link was lost"
                    )
                log = self.log.info if state.links else self.log.warn
                log(
                    "{cell}: link to {direction} {neighbour} is down ({count} live)",
                    cell=self.cell_name,
                    neighbour=proto.neighbour,
                    direction=direction,
                    count=len(state.links),
                )
                return
        # A connection that never became a link; the protocol logged why.
        if proto.is_parent:
            state = self._state(proto.candidates[0], True)
            state.failing += 1
            self.health_of(proto.candidates[0], True).attempt_failed(
                proto.refusal or "the connection ended before the link was up"
            )
            if proto.refusal is not None:
                state.refused += 1
        elif proto.refusal is not None:
            if proto.neighbour is not None:
                self._state(proto.neighbour, False).refused += 1
                self.health_of(proto.neighbour, False).attempt_failed(proto.refusal)
            else:
                # The name is the peer's claim, not verified: bound how many
                # distinct ones are kept (a metrics label each).
                label = proto.presented[0] if proto.presented else "(no certificate name)"
                if label not in self._refused_unknown and (
                    len(self._refused_unknown) >= MAX_REFUSED_NAMES
                ):
                    label = "(other names)"
                self._refused_unknown[label] += 1
                self._last_refusals[label] = proto.refusal

    def link_for(self, name: str, is_parent: bool) -> ICellLink | None:
        """A live link to the named neighbour, round-robin over its links."""
        state = self._states.get((name, is_parent))
        if state is None or not state.links:
            return None
        if self.health_of(name, is_parent).state() is Health.DISABLED:
            return None
        state.turn = (state.turn + 1) % len(state.links)
        link: ICellLink = state.links[state.turn]
        return link

    def links(self) -> list[CellLinkProtocol]:
        """Every live link."""
        return [p for state in self._states.values() for p in state.links]

    def link_states(self) -> dict[str, Any]:
        """For diagnostics: per neighbour, whether it is up, since when (clock
        seconds of the last change), how often it came back, and how many
        handshakes were refused, its health ``state`` (up, suspect, down,
        disabled) and the ``reason``; plus connections refused before they
        were matched to a configured neighbour, counted by the name their
        certificate presented (``refused_unknown``), with the last reason
        for each (``last_refusals``); and, when listening, the connections
        not authenticated yet (``handshakes``: pending, timed_out, evicted,
        authenticated; cellsd.links.guard)."""
        parents = {n: self._as_dict(n, up, s) for (n, up), s in self._states.items() if up}
        children = {n: self._as_dict(n, up, s) for (n, up), s in self._states.items() if not up}
        return {
            "cell": self.cell_name,
            "parents": parents,
            "children": children,
            "refused_unknown": dict(self._refused_unknown),
            "last_refusals": dict(self._last_refusals),
            **self._handshakes(),
        }

    def _handshakes(self) -> dict[str, Any]:
        """The listener's unauthenticated connections (pending now, timed
        out, evicted), when it listens."""
        guard = self._listener.guard if self._listener is not None else None
        return {"handshakes": guard.stats()} if guard is not None else {}

    def _as_dict(self, name: str, is_parent: bool, state: _State) -> dict[str, Any]:
        versions = {"protocol_version": state.links[0].protocol_version} if state.links else {}
        return {**state.as_dict(), **self.health_of(name, is_parent).as_dict(), **versions}

    # ------------------------------------------------------------------
    # Health (cellsd.links.health)

    def health_of(self, name: str, is_parent: bool) -> NeighbourHealth:
        """The health state machine of one neighbour."""
        health = self._health.get((name, is_parent))
        if health is None:
            health = self._health[(name, is_parent)] = NeighbourHealth(
                self._reactor, self._thresholds
            )
        return health

    def usable(self, name: str, is_parent: bool) -> bool:
        """Whether the scheduler may pick the neighbour (not down or
        disabled)."""
        return self.health_of(name, is_parent).usable()

    def unreachable_reason(self, name: str, is_parent: bool) -> str:
        """Why no link to the neighbour is handed out: its state and why."""
        state, reason = self.health_of(name, is_parent).evaluate()
        return f"{name} is {state.value}: {reason}"

    def set_disabled(self, name: str, is_parent: bool, reason: str | None) -> None:
        """Disable the neighbour (no calls, not scheduled) with ``reason``,
        or enable it again with None."""
        health = self.health_of(name, is_parent)
        if reason is None:
            health.enable()
        else:
            health.disable(reason)

    # ------------------------------------------------------------------
    # Changes while running (cellsd.ops.reload)

    def add_neighbour(self, neighbour: NeighbourSettings) -> None:
        """Start linking with a neighbour added by a reload: it is
        *joining* (disabled: no calls, not scheduled) until its first link
        is up; a parent is dialed at once, a child accepted from now on. A
        neighbour configured with ``enabled = false`` stays disabled."""
        key = (neighbour.name, neighbour.is_parent)
        if key in self._states:
            raise ValueError(f"{neighbour.name} is already a neighbour")
        self._states[key] = _State()
        health = self._health[key] = NeighbourHealth(self._reactor, self._thresholds)
        health.join()
        if not getattr(neighbour, "enabled", True):
            health.disable(DISABLED_REASON)
        if neighbour.is_parent:
            self._dial(neighbour)
        else:
            self._children = (*self._children, neighbour.name)

    async def remove_neighbour(self, name: str, is_parent: bool, grace: float) -> int:
        """Stop linking with a neighbour removed by a reload; how many live
        links were closed.

        At once: it is disabled (no new calls), no new link with it is
        accepted, and a parent is no longer redialed after a drop. Its links
        are closed once every call in flight on them has been answered, or
        after ``grace`` seconds (the longest a call may wait), whichever
        comes first; then it is forgotten."""
        key = (name, is_parent)
        if key not in self._states:
            return 0
        self._leaving.add(key)
        self.health_of(name, is_parent).disable("being removed by a configuration reload")
        if not is_parent:
            self._children = tuple(c for c in self._children if c != name)
        deadline = self._reactor.seconds() + grace
        while self._reactor.seconds() < deadline and any(
            p.in_flight() for p in self._states[key].links
        ):
            await task.deferLater(self._reactor, DRAIN_POLL, lambda: None)
        links = list(self._states[key].links)
        # Forget it first: the links' on_lost then finds nothing to update.
        del self._states[key]
        self._health.pop(key, None)
        self._leaving.discard(key)
        if is_parent:
            try:
                dialing = self.getServiceNamed(f"cells-parent-{name}")
            except KeyError:
                dialing = None
            if dialing is not None:
                # Stopping a ClientService closes its connection.
                await defer.maybeDeferred(dialing.disownServiceParent)
        for proto in links:
            if proto.transport is not None:
                proto.transport.loseConnection()
        self.log.info(
            "{cell}: {direction} {neighbour} removed ({count} links closed)",
            cell=self.cell_name,
            direction="parent" if is_parent else "child",
            neighbour=name,
            count=len(links),
        )
        return len(links)

    def set_tls(self, material: TLSMaterial) -> None:
        """Use ``material`` (new certificate, key or CA) for every new
        connection, accepted or dialed; live links keep their session."""
        self.tls.replace(material)
        self._ca = material.ca.original.to_cryptography()

    def startService(self) -> None:
        if self.receiver is None:
            raise RuntimeError("NeighbourLinks.receiver must be set before starting")
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        """Stop dialing and listening, and close the links children made."""
        d: defer.Deferred[None] = defer.maybeDeferred(super().stopService)
        for proto in self.links():
            if not proto.is_parent and proto.transport is not None:
                proto.transport.loseConnection()
        return d
