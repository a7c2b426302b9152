"""Every CellsAPI method through the in-memory transport to the CellsManager.

The assertions are in tests/unit/rpc_method_behaviour.py; here the transport
is :func:`cellsd.testing.memory_api` (MemoryRPCTransport, requests handed to
``CellsManager.dispatch``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from cellsd.rpc.manager import CellsManager
from cellsd.testing import memory_api
from tests.unit.rpc_method_behaviour import RPCMethodBehaviourTests


class MethodsInMemoryTests(RPCMethodBehaviourTests, TestCase):
    """The shared method behaviour over the in-memory transport."""

    def serve(self, manager: CellsManager) -> None:
        self.api = memory_api(manager, call_timeout=10.0)
        self.transport = self.api.transport

    async def wait(self, d: Deferred[Any]) -> Any:
        self.assertTrue(d.called, "the in-memory transport answers at once")
        return await d
