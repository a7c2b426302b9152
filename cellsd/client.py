"""Connect a local program to its cell's cellsd.

from cellsd.client import connect
api = await connect(reactor, "unix:/var/lib/cellsd/api/cellsd.sock")
await api.service_get_all(ctxt)
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.protocols import amp
from twisted.python.failure import Failure

from cellsd.errors import ConfigError, NotConnected
from cellsd.rpc.amp_transport import AMPTransport
from cellsd.rpc.amqp_client import AMQPTransport
from cellsd.rpc.api import CellsAPI


def client_endpoint_for(listen: str) -> str:
    """The client endpoint string that reaches a server endpoint string
    (``[api] listen``): ``unix:PATH:mode=600`` -> ``unix:PATH``,
    ``tcp:PORT:interface=H`` -> ``tcp:H:PORT``."""
    kind, _, rest = listen.partition(":")
    parts = _split_endpoint(rest)
    positional = [p for p in parts if "=" not in p]
    named = dict(p.split("=", 1) for p in parts if "=" in p)
    if kind == "unix":
        path = positional[0] if positional else named.get("address", "")
        keep = [f"{k}={v}" for k, v in named.items() if k in ("timeout", "checkPID")]
        return ":".join(["unix", path, *keep])
    if kind in ("tcp", "tcp6") and len(positional) >= 2:
        return listen  # already HOST:PORT, a client string
    if kind in ("tcp", "tcp6"):
        port = positional[0] if positional else named.get("port", "")
        host = named.get("interface") or ("::1" if kind == "tcp6" else "127.0.0.1")
        if ":" in host:
            host = host.replace(":", "\\:")
        return f"tcp:{host}:{port}"
    return listen


def _split_endpoint(rest: str) -> list[str]:
    """Split on ':' but not on escaped '\\:'."""
    parts, current, escaped = [], "", False
    for ch in rest:
        if escaped:
            current += "\\" + ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def connect(
    reactor: Any,
    endpoint: str | IStreamClientEndpoint,
    version_cap: str | None = None,
    call_timeout: float = 60.0,
    connect_timeout: float = 10.0,
) -> Deferred[CellsAPI]:
    """A Deferred firing with a CellsAPI connected over local AMP.

    ``endpoint`` is an endpoint string (``unix:PATH``, ``tcp:HOST:PORT``) or
    an endpoint object. Fails with NotConnected when the connection cannot be
    made within ``connect_timeout`` seconds.
    """
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, client_endpoint_for(endpoint))
    clock: IReactorTime = reactor
    d: Deferred[amp.AMP] = connectProtocol(endpoint, amp.AMP())
    d.addTimeout(connect_timeout, clock)

    def connected(proto: amp.AMP) -> CellsAPI:
        return CellsAPI(
            AMPTransport(proto, clock), version_cap=version_cap, call_timeout=call_timeout
        )

    def failed(f: Failure) -> Failure:
        if f.check(TimeoutError):
            raise NotConnected(reason=f"no connection within {connect_timeout} seconds")
        raise NotConnected(reason=str(f.value))

    return d.addCallbacks(connected, failed)


def connect_amqp(
    reactor: Any,
    url: str,
    cell_name: str,
    version_cap: str | None = None,
    call_timeout: float = 60.0,
    *,
    spec: str | os.PathLike[str] | None = None,
    connect_timeout: float = 10.0,
) -> Deferred[CellsAPI]:
    """A Deferred firing with a CellsAPI that reaches the workers of
    ``cell_name`` through RabbitMQ at ``url`` (``amqp://guest:guest@host/``).

    Fails with NotConnected when no connection is made within
    ``connect_timeout`` seconds, and with ConfigError when the AMQP spec file
    is missing. ``api.transport.close()`` disconnects.
    """
    try:
        transport = AMQPTransport(reactor, url, cell_name, spec=spec)
    except ConfigError:
        return defer.fail()
    d = transport.start(connect_timeout)
    return d.addCallback(
        lambda _: CellsAPI(transport, version_cap=version_cap, call_timeout=call_timeout)
    )
