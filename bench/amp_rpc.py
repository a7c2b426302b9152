"""A CellsAPI call round trip over the local AMP transport, next to raw AMP.

    python -m bench.amp_rpc [-n 4000]

Both over a real UNIX socket (the default ``[api] listen``), client and
server in this process, in the same run:

* **CellsAPI**: ``CellsAPI.get_cell_info_for_neighbors`` (answered from the
  state manager, so the figure is the transport's and the manager's
  dispatch) through :func:`cellsd.client.connect` to the
  :class:`~cellsd.rpc.amp_transport.RPCServerFactory` of a CellsManager:
  context and arguments as JSON, version and argument checks, the answer as
  JSON, typed errors rebuilt on the client;
* **floor**: a raw AMP command with the same request and answer sizes,
  answered by a responder that returns prepared bytes.

Printed: median and p99 of serial round trips, and calls per second with 32
in flight, each as a ratio to the floor, measured in alternating blocks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import orjson
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from bench.amqp_rpc import percentile, rate, report, serial
from cellsd.client import connect
from cellsd.context import RequestContext
from cellsd.messaging.message import dumps
from cellsd.rpc.amp_transport import CallMethod, RPCServerFactory
from cellsd.rpc.manager import CellsManager
from cellsd.testing import MemoryTree


class Echo(amp.Command):
    """The floor's command: the same argument shapes as a CellsAPI call."""

    commandName = b"bench-echo"
    arguments = CallMethod.arguments
    response = CallMethod.response


class EchoServer(amp.AMP):
    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer

    @Echo.responder
    def echo(self, method: str, version: str, ctxt: bytes, kwargs: bytes, cast: bool) -> Any:
        return {"result": self.answer}


async def run(reactor: Any, n: int, blocks: int) -> dict[str, float]:
    tree = MemoryTree(reactor, {"bench-cell": ["child-cell1", "child-cell2"]})
    runner = tree["bench-cell"]
    manager = CellsManager(runner, runner.state, reactor)
    ctxt = RequestContext(is_admin=True)
    answer = dumps({"value": manager.get_cell_info_for_neighbors(ctxt)})
    with tempfile.TemporaryDirectory(prefix="cdb") as tmp:
        api_sock, floor_sock = os.path.join(tmp, "api.sock"), os.path.join(tmp, "floor.sock")
        ports = [
            await UNIXServerEndpoint(reactor, api_sock).listen(
                RPCServerFactory(manager, 16 * 1024 * 1024)
            ),
            await UNIXServerEndpoint(reactor, floor_sock).listen(
                Factory.forProtocol(lambda: EchoServer(answer))
            ),
        ]
        api = await connect(reactor, f"unix:{api_sock}", call_timeout=10.0)
        floor_proto = await connectProtocol(UNIXClientEndpoint(reactor, floor_sock), amp.AMP())
        ctxt_bytes, kwargs_bytes = orjson.dumps(ctxt.to_dict()), b"{}"

        def cells_call() -> Deferred[Any]:
            return api.get_cell_info_for_neighbors(ctxt)

        def floor_call() -> Deferred[Any]:
            d: Deferred[Any] = floor_proto.callRemote(
                Echo,
                method="get_cell_info_for_neighbors",
                version="1.1",
                ctxt=ctxt_bytes,
                kwargs=kwargs_bytes,
                cast=False,
            )
            return d.addCallback(lambda r: orjson.loads(r["result"]))

        try:
            for call in (cells_call, floor_call):  # warm up
                await serial(call, 300)
            ours: list[float] = []
            raw: list[float] = []
            for _ in range(blocks):
                ours += await serial(cells_call, n // blocks)
                raw += await serial(floor_call, n // blocks)
            ours_rate = raw_rate = 0.0
            for _ in range(blocks):
                ours_rate += await rate(cells_call, n // blocks, 32) / blocks
                raw_rate += await rate(floor_call, n // blocks, 32) / blocks
        finally:
            api.transport.close()
            assert floor_proto.transport is not None
            floor_proto.transport.loseConnection()
            for port in ports:
                await port.stopListening()
    return {
        "median_ms": percentile(ours, 50) * 1000,
        "p99_ms": percentile(ours, 99) * 1000,
        "floor_median_ms": percentile(raw, 50) * 1000,
        "floor_p99_ms": percentile(raw, 99) * 1000,
        "rate": ours_rate,
        "floor_rate": raw_rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=4000, help="calls per figure (default 4000)")
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args(argv)

    async def go(reactor: Any) -> None:
        title = "CellsAPI round trip over local AMP vs a raw AMP command (same socket kind)"
        print(report(await run(reactor, args.n, args.blocks), title))

    task.react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
