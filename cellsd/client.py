"""Connect a local program to its cell's cellsd.

from cellsd.client import connect
api = await connect(reactor, "unix:/var/lib/cellsd/api/cellsd.sock")
await api.service_get_all(ctxt)
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.protocols import amp
from twisted.python.failure import Failure

from cellsd.errors import NotConnected
from cellsd.rpc.amp_transport import AMPTransport
from cellsd.rpc.api import CellsAPI


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
        endpoint = clientFromString(reactor, endpoint)
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
