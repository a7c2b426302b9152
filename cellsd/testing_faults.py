"""Fault tools: a fault proxy for real cellsd processes (tests and soak
runs), and a skewed clock for cells in memory.

:class:`FaultProxy` listens on loopback and forwards every connection to a
target address, typically a cell's ``[cells] listen`` port: point a child's
``[[parents]] endpoint`` at :attr:`FaultProxy.port` and every byte of that
link crosses the proxy. It runs in a thread of its own (plain sockets and a
selector), so a test driving processes with subprocess needs no reactor.

Faults, settable at any time from the test's thread:

* ``delay``: seconds each write waits before it is forwarded;
* ``drop_rate``: the probability that a whole write is discarded;
* ``duplicate``: every write is forwarded twice;
* ``refuse``: new connections are closed at once;
* :meth:`FaultProxy.cut`: close every open connection now.

The links run TLS, so a dropped or duplicated write corrupts the record
stream and the peer ends the connection: between real processes these
amount to a cut. Frame-level duplication and drops are exercised in memory
(:class:`cellsd.links.memory.MemoryNetwork`'s ``duplicates``,
``drop_rates`` and ``jitter``; partitions with its ``cut`` and ``heal``).

:class:`SkewedClock` is a cell's wall clock set ``offset`` seconds off
another clock: give one to each cell of a MemoryTree (its ``clocks``) to
run cells whose clocks disagree.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that injects faults (see the module doc)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.drop_rate = 0.0
        self.duplicate = False
        self.refuse = False
        #: Counters: connections accepted, writes forwarded/dropped, cuts.
        self.stats = {"accepted": 0, "forwarded": 0, "dropped": 0, "cuts": 0}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        #: Each socket's peer (both directions of every connection).
        self._peer: dict[socket.socket, socket.socket] = {}
        self._queue: list[tuple[float, int, socket.socket, bytes]] = []
        self._seq = itertools.count()
        self._cut_requested = False
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    # -- control (any thread) ------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(timeout=5)

    def cut(self) -> None:
        """Close every connection open now (new ones are still accepted
        unless ``refuse`` is set)."""
        with self._lock:
            self._cut_requested = True
        self._wake()

    def connections(self) -> int:
        with self._lock:
            return len(self._peer) // 2

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the proxy thread ----------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                timeout = None
                if self._queue:
                    timeout = max(0.0, self._queue[0][0] - time.monotonic())
                for key, _ in self._selector.select(timeout):
                    sock: Any = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            sock.recv(4096)
                    else:
                        self._read(sock)
                with self._lock:
                    cut, self._cut_requested = self._cut_requested, False
                if cut:
                    self.stats["cuts"] += 1
                    for s in list(self._peer):
                        self._close(s)
                self._flush_due()
        finally:
            for s in list(self._peer):
                self._close(s)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        if self.refuse:
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self.stats["accepted"] += 1
        for s in (client, upstream):
            s.setblocking(True)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(s, selectors.EVENT_READ, None)
        with self._lock:
            self._peer[client], self._peer[upstream] = upstream, client

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        dest = self._peer.get(sock)
        if dest is None:
            return
        if self._random.random() < self.drop_rate:
            self.stats["dropped"] += 1
            return
        copies = 2 if self.duplicate else 1
        due = time.monotonic() + self.delay
        for _ in range(copies):
            heapq.heappush(self._queue, (due, next(self._seq), dest, data))
        self._flush_due()

    def _flush_due(self) -> None:
        now = time.monotonic()
        while self._queue and self._queue[0][0] <= now:
            _, _, dest, data = heapq.heappop(self._queue)
            if dest not in self._peer:
                continue  # closed meanwhile
            try:
                dest.sendall(data)
                self.stats["forwarded"] += 1
            except OSError:
                self._close(dest)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            other = self._peer.pop(sock, None)
            if other is not None:
                self._peer.pop(other, None)
        for s in (sock, other):
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            s.close()


@implementer(IReactorTime)
class SkewedClock:
    """``base`` read ``offset`` seconds off: what a cell whose wall clock
    is wrong by ``offset`` sees. Time passes at the same rate, so delays
    (callLater) are handed to ``base`` unchanged."""

    def __init__(self, base: IReactorTime, offset: float) -> None:
        self.base = base
        self.offset = offset

    def seconds(self) -> float:
        return self.base.seconds() + self.offset

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> IDelayedCall:
        return self.base.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return list(self.base.getDelayedCalls())
