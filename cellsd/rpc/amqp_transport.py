"""The local RPC API through RabbitMQ (txamqp), for a pool of cellsd workers.

Many services talk to the workers of one cell through the AMQP ``cells``
topic: any worker takes a request from the cell's shared queue, and a fanout
reaches all of them. The pieces live in three modules; this one gathers the
public names:

* :mod:`cellsd.rpc.amqp_common`: spec file lookup (:func:`find_spec`), the
  URL, the topology's names, the JSON wire format;
* :mod:`cellsd.rpc.amqp_channel`: txamqp wrapped in a typed class, with
  publisher confirms, and the reconnect loop;
* :mod:`cellsd.rpc.amqp_server`: :class:`AMQPServer`, one worker;
* :mod:`cellsd.rpc.amqp_client`: :class:`AMQPTransport`, an IRPCTransport
  (``cellsd.client.connect_amqp`` wraps it in a CellsAPI).
"""

from __future__ import annotations

from cellsd.rpc.amqp_client import AMQPTransport
from cellsd.rpc.amqp_common import (
    DEBIAN_SPECS,
    AMQPParams,
    NoRoute,
    Topology,
    find_spec,
    parse_amqp_url,
)
from cellsd.rpc.amqp_server import AMQPServer, RPCDispatcher

__all__ = [
    "DEBIAN_SPECS",
    "AMQPParams",
    "AMQPServer",
    "AMQPTransport",
    "NoRoute",
    "RPCDispatcher",
    "Topology",
    "find_spec",
    "parse_amqp_url",
]
