"""The contracts between cellsd's parts, as zope interfaces.

One module per area (messages and links, the local RPC transport, the
store, the compute layer, the scheduler); every interface is importable
from here.

A message can invoke only a method declared on :class:`ITargetedMessageMethods`
or :class:`IBroadcastMessageMethods`: the runner looks names up in the
interface, never with ``getattr`` on an arbitrary name. Adding a message
method means declaring it here and writing its body on the implementation.

Every message method receives the :class:`~cellsd.messaging.message.Message`
first (for its context and routing path) and the message's keyword
arguments after it. It may return a plain value, a Deferred or a coroutine.
"""

from cellsd.interfaces.compute import IComputeAPI
from cellsd.interfaces.messages import (
    IBroadcastMessageMethods,
    ICellLink,
    IMessageReceiver,
    IMessageRelay,
    INeighbourLinks,
    ITargetedMessageMethods,
)
from cellsd.interfaces.rpc import IRPCTransport
from cellsd.interfaces.scheduler import ICellFilter, ICellScheduler, ICellWeigher
from cellsd.interfaces.store import ICellStore, IDeliveryStore

__all__ = [
    "IBroadcastMessageMethods",
    "ICellFilter",
    "ICellLink",
    "ICellScheduler",
    "ICellStore",
    "ICellWeigher",
    "IComputeAPI",
    "IDeliveryStore",
    "IMessageReceiver",
    "IMessageRelay",
    "INeighbourLinks",
    "IRPCTransport",
    "ITargetedMessageMethods",
]
