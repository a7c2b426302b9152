"""Neighbour links inside one process, for tests and benchmarks.

A :class:`MemoryNetwork` joins any number of receivers (MessageRunners) by
name. Messages cross as bytes, exactly as they would over AMP, so a tree of
runners in memory exercises the same encoding and routing as real daemons.
Faults can be injected per cell: down (no link), a black hole (accepts and
never answers), or a delay; and per frame: duplicated (every message to the
cell delivered twice, the caller gets the first answer), dropped (with a
probability: the frame is lost and the caller's deadline ends the wait) and
reordered (a random extra delay of up to ``jitter[cell]`` seconds per
frame). The randomness comes from ``network.random`` (seeded).

A partition is per link: :meth:`MemoryNetwork.cut` ends the link between
two cells as a lost connection would. Every message in flight on it fails
at once with CellOutcomeUnknown (one held back by a delay is lost; one that
arrived goes on being processed, but its answer is lost), and neither cell
has a link to the other until :meth:`MemoryNetwork.heal`.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from cellsd.errors import CellOutcomeUnknown, CellTimeout, CellUnreachable
from cellsd.interfaces import ICellLink, IMessageReceiver, INeighbourLinks


class MemoryNetwork:
    """Receivers by cell name, and the faults injected between them."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.receivers: dict[str, IMessageReceiver] = {}
        self.down: set[str] = set()
        self.blackholes: set[str] = set()
        self.delays: dict[str, float] = {}
        #: Cells every frame to which is delivered twice.
        self.duplicates: set[str] = set()
        #: Per cell, the probability that a frame to it is lost.
        self.drop_rates: dict[str, float] = {}
        #: Per cell, the largest random extra delay of a frame (reordering).
        self.jitter: dict[str, float] = {}
        self.random = random.Random(0)
        self.delivered = 0
        self.dropped = 0
        self.duplicated = 0
        #: Links cut by cut(), each as the pair of cell names.
        self.cuts: set[frozenset[str]] = set()
        #: Per link, the answers its callers are waiting for (and from whom).
        self._in_flight: dict[frozenset[str], dict[Deferred[bytes], str]] = {}

    def add(self, name: str, receiver: IMessageReceiver) -> None:
        self.receivers[name] = receiver

    def cut(self, a: str, b: str) -> None:
        """Cut the link between cells ``a`` and ``b`` (see the module doc)."""
        pair = frozenset((a, b))
        self.cuts.add(pair)
        for d, neighbour in list(self._in_flight.pop(pair, {}).items()):
            if not d.called:
                d.errback(CellOutcomeUnknown(cell_name=neighbour, reason="link cut"))

    def heal(self, a: str, b: str) -> None:
        """Restore the link between ``a`` and ``b``."""
        self.cuts.discard(frozenset((a, b)))

    def is_cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self.cuts

    def links_for(self, name: str) -> MemoryLinks:
        return MemoryLinks(self, name)


@implementer(ICellLink)
class MemoryLink:
    def __init__(
        self, network: MemoryNetwork, sender: str, neighbour: str, is_parent: bool
    ) -> None:
        self.network = network
        self.sender = sender
        self.neighbour = neighbour
        self.is_parent = is_parent

    def deliver(self, header: bytes, body: bytes, timeout: float | None) -> Deferred[bytes]:
        net = self.network
        receiver = net.receivers[self.neighbour]
        pair = frozenset((self.sender, self.neighbour))
        if pair in net.cuts:
            return defer.fail(CellUnreachable(cell_name=self.neighbour, reason="link cut"))
        net.delivered += 1
        header, body = bytes(header), bytes(body)
        dropped = net.random.random() < net.drop_rates.get(self.neighbour, 0.0)
        if dropped:
            net.dropped += 1
        if self.neighbour in net.blackholes or dropped:
            d: Deferred[bytes] = Deferred()
        else:

            def call() -> Deferred[bytes]:
                if self.neighbour in net.down:
                    # Sent while the link was up: lost on the way.
                    return defer.fail(
                        CellOutcomeUnknown(cell_name=self.neighbour, reason="connection lost")
                    )
                if pair in net.cuts:
                    return Deferred()  # lost with the link (its caller was told)
                return defer.maybeDeferred(
                    receiver.receive, header, body, self.sender, not self.is_parent
                )

            delay = net.delays.get(self.neighbour, 0.0)
            jitter = net.jitter.get(self.neighbour, 0.0)
            if jitter:
                delay += net.random.uniform(0.0, jitter)
            if self.neighbour in net.duplicates:
                # The copy arrives too (after the original); its answer is lost.
                net.duplicated += 1
                net.clock.callLater(delay, lambda: call().addErrback(lambda _: None))
            # A Deferred of our own: a caller that gives up (the timeout
            # cancels it) must not cancel the far cell's work, which no real
            # link can reach into.
            d = Deferred()
            in_flight = net._in_flight.setdefault(pair, {})
            in_flight[d] = self.neighbour

            def forget(result: Any) -> Any:
                in_flight.pop(d, None)
                return result

            d.addBoth(forget)

            def answer(result: Any) -> None:
                if d.called:
                    return  # the link was cut: the answer is lost
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)

            if delay:
                net.clock.callLater(delay, lambda: call().addBoth(answer))
            else:
                call().addBoth(answer)
        if timeout is not None:
            d.addTimeout(timeout, net.clock)

        def timed_out(f: Failure) -> Any:
            f.trap(TimeoutError)
            raise CellTimeout(cell_name=self.neighbour)

        return d.addErrback(timed_out)


@implementer(INeighbourLinks)
class MemoryLinks:
    def __init__(self, network: MemoryNetwork, name: str) -> None:
        self.network = network
        self.name = name

    def link_for(self, name: str, is_parent: bool) -> ICellLink | None:
        net = self.network
        if name in net.down or name not in net.receivers or net.is_cut(self.name, name):
            return None
        return MemoryLink(self.network, self.name, name, is_parent)
