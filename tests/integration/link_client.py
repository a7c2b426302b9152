"""A stand-in child cell that dials a real parent and speaks AMP directly.

Run as a script (the integration tests run it as a subprocess, so each run
has a fresh reactor)::

    python -m tests.integration.link_client SPEC_JSON

SPEC_JSON is an object:

``host``, ``port``
    the parent's ``[cells] listen`` address.
``tls``
    false: plaintext TCP (no TLS at all).
``ca``, ``server_name``
    to verify the parent's certificate (always our tree's CA).
``cert``, ``key``
    the certificate presented as client certificate; null: none.
``me``, ``parent``
    the child name the messages claim to come from, and the parent's name.
``steps``
    what to do, in order, over ONE connection: ``hello``, ``ping``,
    ``malformed``, ``unknown_method``, ``oversized`` (just over the limit
    given as ``max_message_bytes``) or ``oversized_huge`` (several times it).
``timeout``
    seconds to wait for each answer.

Prints one JSON object: ``handshake`` (did TLS complete on our side),
``steps`` (one result per step: ``outcome`` is ``answer``, ``error`` (an
AMP error answer), ``lost`` (the connection ended) or ``timeout``, with
``type``, ``message`` and, for Deliver answers, the decoded ``responses``),
``local_port`` of each step's connection, and ``lost`` (why the connection
ended, if it did).
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
from twisted.internet import defer, endpoints, ssl, task
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from cellsd.context import get_admin_context
from cellsd.links.amp import Deliver, DeliverResponse, Hello


def ping_header(me: str, parent: str, method: str = "ping") -> bytes:
    """A targeted message from child ``me`` up to its parent, as the real
    child would send it: routing_path ends with the sender, direction up."""
    return orjson.dumps(
        {
            "message_type": "targeted",
            "uuid": str(uuid.uuid4()),
            "method_name": method,
            "direction": "up",
            "need_response": True,
            "fanout": False,
            "routing_path": me,
            "hop_count": 1,
            "max_hop_count": 10,
            "target_cell": f"{me}!{parent}",
            "time_left": 5.0,
        }
    )


def body(pad: int = 0) -> bytes:
    kwargs: dict[str, Any] = {"pad": "x" * pad} if pad else {}
    return orjson.dumps({"ctxt": get_admin_context().to_dict(), "method_kwargs": kwargs})


@implementer(IHandshakeListener)
class Child(amp.AMP):
    """Our end of the link: answers the parent's casts with an empty list."""

    def __init__(self) -> None:
        super().__init__()
        self.handshake = False
        self.made: defer.Deferred[None] = defer.Deferred()
        self.lost_reason: Failure | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.made.callback(None)

    def handshakeCompleted(self) -> None:
        self.handshake = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)

    @Deliver.responder
    def _deliver(self, header: bytes, body: bytes) -> DeliverResponse:
        return {"responses": b"[]"}


def _describe(failure: Failure) -> dict[str, Any]:
    exc = failure.value
    if isinstance(exc, defer.TimeoutError | defer.CancelledError):
        outcome = "timeout"
    elif isinstance(exc, amp.RemoteAmpError) or type(exc).__module__.startswith("cellsd"):
        outcome = "error"  # the peer answered with an AMP error box
    else:
        outcome = "lost"
    return {"outcome": outcome, "type": type(exc).__name__, "message": str(exc)}


def _request(spec: dict[str, Any], step: str) -> tuple[type[amp.Command], dict[str, Any]]:
    me, parent = spec["me"], spec["parent"]
    limit = int(spec.get("max_message_bytes", 16 * 1024 * 1024))
    if step == "hello":
        return Hello, {}
    if step == "ping":
        return Deliver, {"header": ping_header(me, parent), "body": body()}
    if step == "malformed":
        return Deliver, {"header": b'{"message_type": "targeted", "uuid": ', "body": body()}
    if step == "unknown_method":
        return Deliver, {"header": ping_header(me, parent, "no_such_method"), "body": body()}
    if step == "oversized":
        return Deliver, {"header": ping_header(me, parent), "body": body(limit + 1000)}
    if step == "oversized_huge":
        return Deliver, {"header": ping_header(me, parent), "body": body(limit * 8)}
    raise SystemExit(f"link_client: unknown step {step!r}")


async def run(reactor: Any, spec: dict[str, Any]) -> dict[str, Any]:
    endpoint: Any = endpoints.TCP4ClientEndpoint(reactor, spec["host"], spec["port"], timeout=5)
    if spec.get("tls", True):
        ca = ssl.Certificate.loadPEM(Path(spec["ca"]).read_bytes())
        client_cert = None
        if spec.get("cert"):
            pem = Path(spec["cert"]).read_bytes() + Path(spec["key"]).read_bytes()
            client_cert = ssl.PrivateCertificate.loadPEM(pem)
        options = ssl.optionsForClientTLS(
            spec["server_name"], trustRoot=ca, clientCertificate=client_cert
        )
        endpoint = endpoints.wrapClientTLS(options, endpoint)
    timeout = float(spec.get("timeout", 5.0))
    result: dict[str, Any] = {"steps": [], "handshake": False, "lost": None}
    proto: Child = await endpoints.connectProtocol(endpoint, Child())
    await proto.made
    for step in spec["steps"]:
        command, kwargs = _request(spec, step)
        row: dict[str, Any] = {"step": step}
        host = proto.transport.getHost() if proto.transport is not None else None
        row["local_port"] = getattr(host, "port", None)
        try:
            d = proto.callRemote(command, **kwargs)
            d.addTimeout(timeout, reactor)
            answer = await d
        except Exception:
            row.update(_describe(Failure()))
        else:
            row["outcome"] = "answer"
            if command is Deliver:
                row["responses"] = orjson.loads(answer["responses"])
            else:
                row["answer"] = {k: str(v) for k, v in answer.items()}
        result["steps"].append(row)
    result["handshake"] = proto.handshake
    if proto.lost_reason is not None:
        result["lost"] = f"{type(proto.lost_reason.value).__name__}: {proto.lost_reason.value}"
    elif proto.transport is not None:
        proto.transport.loseConnection()
    return result


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])

    async def go(reactor: Any) -> None:
        try:
            result = await run(reactor, spec)
        except Exception as e:
            result = {"connect_error": f"{type(e).__name__}: {e}", "steps": [], "lost": None}
        print(json.dumps(result))

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    main(sys.argv)
