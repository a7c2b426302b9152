"""The floor: a raw AMP-over-TLS relay tree with no routing logic.

Each node speaks cellsd's own :class:`~cellsd.links.amp.Deliver` command
over the same kind of connection as a cell link: loopback TCP with
TCP_NODELAY, TLS from :func:`cellsd.links.tls.server_options` /
:func:`~cellsd.links.tls.client_options` with the cells' own certificates,
children dialing their parent. A node never decodes a message:

* in a chain, a node with a child re-issues the ``Deliver`` it received,
  header and body unchanged, to that child and answers with the child's
  answer; the last node answers with prepared bytes;
* in a broadcast tree, a node re-issues the ``Deliver`` to each child at
  once, and answers with their answers and its own prepared one joined as
  bytes (:func:`cellsd.messaging.message.join_encoded`, as a cell does).

The prepared answers are the bytes the cells answered in the same run, and
the messages the header and body the cells' runner builds, so both sides
carry the same sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from bench.trees import TOP, Shape
from cellsd.links.amp import Deliver
from cellsd.links.tls import client_options, load_tls, server_options
from cellsd.messaging.message import join_encoded


class FloorNode:
    """One node of the floor tree."""

    def __init__(self, name: str, answer: bytes, broadcast: bool) -> None:
        self.name = name
        #: This node's own answer, as a cell would encode it.
        self.answer = answer
        self.broadcast = broadcast
        #: Connections from children, once their TLS handshake is done.
        self.children: list[FloorProtocol] = []
        self.port: Any = None
        self.dialed: Any = None

    def deliver(self, header: bytes, body: bytes) -> defer.Deferred[dict[str, bytes]]:
        """What a node does with a message (and what the origin sends)."""
        if not self.broadcast:
            if self.children:
                return self.children[0].send(header, body)
            return defer.succeed({"responses": self.answer})
        own = self.answer
        calls = [child.send(header, body) for child in self.children]
        if not calls:
            return defer.succeed({"responses": own})

        def joined(answers: list[dict[str, bytes]]) -> dict[str, bytes]:
            return {"responses": join_encoded([*(a["responses"] for a in answers), own])}

        return defer.gatherResults(calls).addCallback(joined)


@implementer(IHandshakeListener)
class FloorProtocol(amp.AMP):
    def __init__(self, node: FloorNode, accepting: bool) -> None:
        super().__init__()
        self.node = node
        self.accepting = accepting

    def connectionMade(self) -> None:
        super().connectionMade()
        transport: Any = self.transport
        while transport is not None:
            set_no_delay = getattr(transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                set_no_delay(True)
                break
            transport = getattr(transport, "transport", None)

    def handshakeCompleted(self) -> None:
        if self.accepting:
            self.node.children.append(self)

    def send(self, header: bytes, body: bytes) -> defer.Deferred[dict[str, bytes]]:
        return cast(
            "defer.Deferred[dict[str, bytes]]",
            self.callRemote(Deliver, header=header, body=body),
        )

    @Deliver.responder
    def _deliver(self, header: bytes, body: bytes) -> defer.Deferred[dict[str, bytes]]:
        return self.node.deliver(header, body)


class _Factory(ClientFactory):
    def __init__(self, node: FloorNode, accepting: bool) -> None:
        self.node = node
        self.accepting = accepting

    def buildProtocol(self, addr: Any) -> FloorProtocol:
        proto = FloorProtocol(self.node, self.accepting)
        proto.factory = self
        return proto


class FloorTree:
    """The floor for one tree shape, using the certificates under ``pki``."""

    def __init__(
        self,
        reactor: Any,
        pki: Path,
        shape: Shape,
        answers: Mapping[str, bytes],
        broadcast: bool,
    ) -> None:
        self.reactor = reactor
        self.pki = pki
        self.shape = shape
        names = [TOP, *(kid for kids in shape.values() for kid in kids)]
        self.nodes = {name: FloorNode(name, answers.get(name, b"[]"), broadcast) for name in names}

    def _material(self, name: str) -> Any:
        return load_tls(self.pki / "ca.pem", self.pki / f"{name}.pem", self.pki / f"{name}.key")

    @property
    def top(self) -> FloorNode:
        return self.nodes[TOP]

    async def start(self, timeout: float = 30.0) -> None:
        reactor = self.reactor
        parent_of = {kid: parent for parent, kids in self.shape.items() for kid in kids}
        for name, node in self.nodes.items():
            if self.shape.get(name):
                tls = TLSMemoryBIOFactory(
                    server_options(self._material(name)), False, _Factory(node, True)
                )
                node.port = reactor.listenTCP(0, tls, interface="127.0.0.1")
        for name, node in self.nodes.items():
            parent = parent_of.get(name)
            if parent is None:
                continue
            port = self.nodes[parent].port.getHost().port
            tls = TLSMemoryBIOFactory(
                client_options(self._material(name), parent), True, _Factory(node, False)
            )
            node.dialed = reactor.connectTCP("127.0.0.1", port, tls)
        deadline = reactor.seconds() + timeout
        while any(len(self.nodes[p].children) < len(kids) for p, kids in self.shape.items()):
            if reactor.seconds() > deadline:
                raise RuntimeError("the floor tree did not come up")
            await task.deferLater(reactor, 0.02, lambda: None)
        # Children finish their side of the handshake a moment later.
        await task.deferLater(reactor, 0.2, lambda: None)

    async def stop(self) -> None:
        waits = []
        for node in self.nodes.values():
            if node.dialed is not None:
                node.dialed.disconnect()
            if node.port is not None:
                waits.append(defer.maybeDeferred(node.port.stopListening))
            for child in node.children:
                if child.transport is not None:
                    child.transport.loseConnection()
        await defer.gatherResults(waits)
        await task.deferLater(self.reactor, 0.2, lambda: None)
