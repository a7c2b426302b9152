"""Every CellsAPI method through RabbitMQ to the CellsManager.

The assertions are tests/unit/rpc_method_behaviour.py's (the same ones run
over the in-memory transport and over AMP on iosim); here the transport is
AMQP against the real RabbitMQ, one worker serving the manager. Guarded by
:func:`tests.services.require_rabbitmq`.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from cellsd.rpc.amqp_channel import open_txamqp_channel
from cellsd.rpc.amqp_client import AMQPTransport
from cellsd.rpc.amqp_common import Topology, find_spec, parse_amqp_url
from cellsd.rpc.amqp_server import AMQPServer
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.manager import CellsManager
from tests.services import require_rabbitmq
from tests.unit.rpc_method_behaviour import RPCMethodBehaviourTests

pytestmark = [
    pytest.mark.integration,
    # txamqp 0.8 still calls defer.returnValue, deprecated since Twisted 24.7.
    pytest.mark.filterwarnings(
        "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"
    ),
]


class MethodsOverAMQPTests(RPCMethodBehaviourTests, TestCase):
    """The shared method behaviour through RabbitMQ."""

    timeout = 30

    def serve(self, manager: CellsManager) -> Deferred[None]:
        return Deferred.fromCoroutine(self._serve(manager))

    async def _serve(self, manager: CellsManager) -> None:
        url = require_rabbitmq()
        cell = f"t-{uuid.uuid4().hex[:10]}"
        self.addCleanup(lambda: Deferred.fromCoroutine(_delete_declared(url, cell)))
        server = AMQPServer(reactor, url, cell, manager)
        server.startService()
        self.addCleanup(server.stopService)
        await server.when_ready()
        self.transport = AMQPTransport(reactor, url, cell)
        self.addCleanup(self.transport.disconnect)
        await self.transport.start()
        self.api = CellsAPI(self.transport, call_timeout=10.0)

    async def wait(self, d: Deferred[Any]) -> Any:
        return await d


async def _delete_declared(url: str, cell: str) -> None:
    t = Topology(cell)
    ch = await open_txamqp_channel(reactor, parse_amqp_url(url), find_spec())
    try:
        await ch.delete_queue(t.shared_queue)
        await ch.delete_exchange(t.fanout_exchange)
    finally:
        await ch.close()
