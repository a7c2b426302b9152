"""A CellsAPI call round trip over AMQP, next to a raw txamqp floor.

    python -m bench.amqp_rpc [--url amqp://guest:guest@127.0.0.1:5672/] [-n 2000]

Both go through the same RabbitMQ in the same run, client and server in this
process:

* **CellsAPI**: ``CellsAPI.get_cell_info_for_neighbors`` (answered from the
  state manager, so the figure is the transport's) through
  :class:`~cellsd.rpc.amqp_client.AMQPTransport` to an
  :class:`~cellsd.rpc.amqp_server.AMQPServer` serving a CellsManager: JSON,
  persistent mandatory publishes with publisher confirms, acknowledgement
  after the reply is confirmed;
* **floor**: raw txamqp request/reply: publish to a queue with ``reply_to``
  and ``correlation_id``, a consumer (no acks) publishes the same bytes back,
  the caller matches the correlation id. No confirms, no JSON, no dispatch.

Printed: median and p99 of serial round trips, and calls per second with
32 in flight, each as a ratio to the floor. The two are measured in
alternating blocks so that drift in the machine's speed hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from txamqp.client import TwistedDelegate  # type: ignore[import-untyped]  # no hints upstream
from txamqp.content import Content  # type: ignore[import-untyped]  # no hints upstream
from txamqp.protocol import AMQClient  # type: ignore[import-untyped]  # no hints upstream
from txamqp.spec import load  # type: ignore[import-untyped]  # no hints upstream

from cellsd.context import RequestContext
from cellsd.rpc.amqp_client import AMQPTransport
from cellsd.rpc.amqp_common import Topology, find_spec, parse_amqp_url
from cellsd.rpc.amqp_server import AMQPServer
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.manager import CellsManager
from cellsd.testing import MemoryTree

Call = Callable[[], "Deferred[Any]"]
BODY = b'{"method":"get_cell_info_for_neighbors","version":"1.1","ctxt":{},"kwargs":{}}'


# -- measuring ---------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


async def serial(call: Call, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = perf_counter()
        await call()
        samples.append(perf_counter() - start)
    return samples


async def rate(call: Call, total: int, in_flight: int) -> float:
    """Calls per second with ``in_flight`` outstanding."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start = perf_counter()
    workers = [Deferred.fromCoroutine(worker()) for _ in range(in_flight)]
    await defer.gatherResults(workers)
    return total / (perf_counter() - start)


# -- the raw txamqp floor --------------------------------------------------------------


async def raw_client(reactor: Any, url: str, spec: Any) -> Any:
    params = parse_amqp_url(url)
    endpoint = TCP4ClientEndpoint(reactor, params.host, params.port)
    client: Any = await endpoint.connect(
        _Factory(lambda: AMQClient(TwistedDelegate(), params.vhost, spec, clock=reactor))
    )
    client.transport.setTcpNoDelay(True)  # as cellsd's own connections do
    await client.authenticate(params.username, params.password, mechanism="PLAIN")
    channel = await client.channel(1)
    await channel.channel_open()
    return client, channel


class _Factory(Factory):
    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build

    def buildProtocol(self, addr: Any) -> Any:
        return self.build()


async def serve_floor(client: Any, channel: Any, queue: str) -> None:
    """Echo each request to its reply_to, until the connection closes."""
    await channel.queue_declare(queue=queue, exclusive=True, auto_delete=True)
    reply = await channel.basic_consume(queue=queue, no_ack=True)
    incoming = await client.queue(reply.consumer_tag)
    while True:
        try:
            msg = await incoming.get()
        except Exception:
            return
        props = msg.content.properties
        channel.basic_publish(
            exchange="",
            routing_key=props["reply-to"],
            content=Content(
                msg.content.body, properties={"correlation-id": props["correlation-id"]}
            ),
        )


class FloorCaller:
    def __init__(self, client: Any, channel: Any, queue: str) -> None:
        self.client, self.channel, self.queue = client, channel, queue
        self.pending: dict[str, Deferred[bytes]] = {}
        self.reply_to = ""

    async def start(self) -> None:
        declared = await self.channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        self.reply_to = declared.queue
        reply = await self.channel.basic_consume(queue=self.reply_to, no_ack=True)
        incoming = await self.client.queue(reply.consumer_tag)
        Deferred.fromCoroutine(self._replies(incoming))

    async def _replies(self, incoming: Any) -> None:
        while True:
            try:
                msg = await incoming.get()
            except Exception:
                return
            d = self.pending.pop(msg.content.properties["correlation-id"], None)
            if d is not None:
                d.callback(msg.content.body)

    def call(self) -> Deferred[bytes]:
        cid = uuid.uuid4().hex
        d: Deferred[bytes] = Deferred()
        self.pending[cid] = d
        self.channel.basic_publish(
            exchange="",
            routing_key=self.queue,
            content=Content(BODY, properties={"reply-to": self.reply_to, "correlation-id": cid}),
        )
        return d


# -- the run -----------------------------------------------------------------------


async def run(reactor: Any, url: str, n: int, blocks: int) -> dict[str, float]:
    spec_path = find_spec()
    cell = f"bench-{uuid.uuid4().hex[:8]}"
    tree = MemoryTree(reactor, {cell: []})
    runner = tree[cell]
    server = AMQPServer(reactor, url, cell, CellsManager(runner, runner.state, reactor))
    server.startService()
    await server.when_ready()
    transport = AMQPTransport(reactor, url, cell)
    await transport.start()
    api = CellsAPI(transport, call_timeout=10.0)
    ctxt = RequestContext(is_admin=True)

    spec = load(spec_path)
    floor_queue = f"bench-floor.{cell}"
    s_client, s_channel = await raw_client(reactor, url, spec)
    serving = Deferred.fromCoroutine(serve_floor(s_client, s_channel, floor_queue))
    c_client, c_channel = await raw_client(reactor, url, spec)
    floor = FloorCaller(c_client, c_channel, floor_queue)
    await floor.start()

    def cells_call() -> Deferred[Any]:
        return api.get_cell_info_for_neighbors(ctxt)

    try:
        for call in (cells_call, floor.call):  # warm up
            await serial(call, 200)
        ours: list[float] = []
        raw: list[float] = []
        for _ in range(blocks):
            ours += await serial(cells_call, n // blocks)
            raw += await serial(floor.call, n // blocks)
        ours_rate = raw_rate = 0.0
        for _ in range(blocks):
            ours_rate += await rate(cells_call, n // blocks, 32) / blocks
            raw_rate += await rate(floor.call, n // blocks, 32) / blocks
    finally:
        await transport.disconnect()
        await server.stopService()
        for client in (s_client, c_client):
            await client.close(within=2)
        await serving
        cleanup, ch = await raw_client(reactor, url, spec)
        await ch.queue_delete(queue=Topology(cell).shared_queue)
        await ch.exchange_delete(exchange=Topology(cell).fanout_exchange)
        await cleanup.close(within=2)
    return {
        "median_ms": percentile(ours, 50) * 1000,
        "p99_ms": percentile(ours, 99) * 1000,
        "floor_median_ms": percentile(raw, 50) * 1000,
        "floor_p99_ms": percentile(raw, 99) * 1000,
        "rate": ours_rate,
        "floor_rate": raw_rate,
    }


def report(
    r: dict[str, float],
    title: str = "CellsAPI round trip over AMQP vs raw txamqp request/reply "
    "(same broker, same run)",
) -> str:
    return "\n".join(
        [
            title,
            f"  serial median  {r['median_ms']:7.3f} ms   floor {r['floor_median_ms']:7.3f} ms"
            f"   ratio {r['median_ms'] / r['floor_median_ms']:5.2f}x",
            f"  serial p99     {r['p99_ms']:7.3f} ms   floor {r['floor_p99_ms']:7.3f} ms"
            f"   ratio {r['p99_ms'] / r['floor_p99_ms']:5.2f}x",
            f"  32 in flight   {r['rate']:7.0f} /s   floor {r['floor_rate']:7.0f} /s"
            f"   ratio {r['floor_rate'] / r['rate']:5.2f}x slower",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("-n", type=int, default=2000, help="calls per figure (default 2000)")
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args(argv)

    async def go(reactor: Any) -> None:
        print(report(await run(reactor, args.url, args.n, args.blocks)))

    task.react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
