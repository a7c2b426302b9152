"""A cellsd AMQP worker in its own process, for the tests that kill one.

    python -m tests.integration.amqp_worker URL CELL WORKER_ID OUT [--delay S] [--prefetch N]

It serves the cell's queues with :class:`CountingDispatcher`: every
``count`` request sleeps ``delay`` seconds, then appends its ``n`` to OUT (one
line, written with a single ``write`` on an O_APPEND file, so a SIGKILL
leaves only whole lines). The message is acknowledged after that, so a kill
can leave an executed message unacknowledged, and RabbitMQ redelivers it: a
duplicate the test counts. Prints ``ready`` once consuming.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from cellsd.context import RequestContext
from cellsd.errors import UnknownMethod
from cellsd.rpc.amqp_server import AMQPServer


class CountingDispatcher:
    """Executes ``count(n)``: records ``n`` (and appends it to ``out``)."""

    def __init__(self, clock: Any, delay: float = 0.0, out: str | None = None) -> None:
        self.clock = clock
        self.delay = delay
        self.executed: list[int] = []
        self._paused: list[Deferred[None]] | None = None
        self._fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if out else None

    def dispatch(
        self, ctxt: RequestContext, method: str, version: str, kwargs: dict[str, Any]
    ) -> Deferred[Any]:
        if method != "count":
            return defer.fail(UnknownMethod(kind="rpc", method_name=method))
        return Deferred.fromCoroutine(self._count(int(kwargs["n"])))

    def pause(self) -> None:
        """Hold every request received from now on (unacknowledged)."""
        if self._paused is None:
            self._paused = []

    def resume(self) -> None:
        paused, self._paused = self._paused or [], None
        for d in paused:
            d.callback(None)

    async def _count(self, n: int) -> int:
        if self._paused is not None:
            held: Deferred[None] = Deferred()
            self._paused.append(held)
            await held
        if self.delay:
            await task.deferLater(self.clock, self.delay)
        self.executed.append(n)
        if self._fd is not None:
            os.write(self._fd, f"{n}\n".encode())
        return n


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("cell")
    parser.add_argument("worker_id")
    parser.add_argument("out")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--prefetch", type=int, default=32)
    args = parser.parse_args(argv)
    dispatcher = CountingDispatcher(reactor, args.delay, args.out)
    server = AMQPServer(
        reactor, args.url, args.cell, dispatcher, args.worker_id, prefetch=args.prefetch
    )
    server.startService()
    await server.when_ready()
    print("ready", flush=True)
    await Deferred()  # until killed


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
