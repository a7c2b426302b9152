"""``cellsctl call``: any CellsAPI method by name, its arguments as JSON.

    cellsctl -c api-cell.toml call compute_node_stats
    cellsctl -c api-cell.toml call service_get_all '{"filters": {"disabled": false}}'
    cellsctl -c api-cell.toml call get_capacities '{"cell_name": "child-cell1"}'
    cellsctl --version-cap kilo -c api-cell.toml call start_instance \\
        '{"instance": {"uuid": "…", "cell_name": "api-cell!child-cell1"}}'
    cellsctl -c api-cell.toml call call_compute_api_method \\
        '["api-cell!child-cell1", "get_vnc_console", "<uuid>", "novnc"]'

The method is any public method of :class:`cellsd.rpc.api.CellsAPI` (those
of ``RPC_METHODS``). The JSON is an object of keyword arguments or an array
of positional ones (for the ``*args`` of the compute API methods); the
request context is cellsctl's own admin context. Objects are given as plain
dicts and sent as such: the server accepts those forms. The result is
printed as JSON (objects as their plain fields, cell proxies as their wire
dicts, casts as ``null``).
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import textwrap
from collections.abc import Mapping
from typing import Any

import attrs

from cellsd.context import RequestContext
from cellsd.errors import ConfigError
from cellsd.objects.base import CellsObject
from cellsd.rpc.api import RPC_METHODS, CellsAPI
from cellsd.rpc.proxies import CellProxy

EPILOG = """\
examples:
  cellsctl -c api-cell.toml call compute_node_stats
  cellsctl -c api-cell.toml call service_get_all '{"filters": {"disabled": false}}'
  cellsctl -c api-cell.toml call get_host_uptime '{"host_name": "api-cell!child-cell1@host1"}'
  cellsctl --version-cap kilo -c api-cell.toml call sync_instances '{"project_id": "p1"}'

methods:
""" + textwrap.fill(", ".join(sorted(RPC_METHODS)), 78, initial_indent="  ", subsequent_indent="  ")


@attrs.frozen
class PreparedCall:
    """A checked request: the method and the arguments after the context."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    call = sub.add_parser(
        "call",
        parents=parents,
        help="call any CellsAPI method, arguments as JSON",
        description="Call a CellsAPI method by name; print its result as JSON. "
        "ARGUMENTS is a JSON object of keyword arguments (or an array of "
        "positional ones); the request context is added by cellsctl.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("method", metavar="METHOD", help="a CellsAPI method, e.g. service_get_all")
    call.add_argument(
        "arguments", metavar="ARGUMENTS", nargs="?", default=None, help="JSON, e.g. '{\"a\": 1}'"
    )


def prepare(method: str, arguments: str | None) -> PreparedCall:
    """Check the method and its arguments before connecting; ConfigError
    (a usage error) names what is wrong."""
    if method not in RPC_METHODS or not callable(getattr(CellsAPI, method, None)):
        raise ConfigError("call", f"{method!r} is not a CellsAPI method (see call --help)")
    try:
        decoded = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError as e:
        raise ConfigError("call", f"ARGUMENTS is not JSON: {e}") from None
    if isinstance(decoded, Mapping):
        args: tuple[Any, ...] = ()
        kwargs = dict(decoded)
    elif isinstance(decoded, list):
        args, kwargs = tuple(decoded), {}
    else:
        raise ConfigError("call", "ARGUMENTS must be a JSON object (or an array)")
    signature = inspect.signature(getattr(CellsAPI, method))
    try:
        signature.bind(None, None, *args, **kwargs)
    except TypeError as e:
        raise ConfigError("call", f"{method}: {e}") from None
    return PreparedCall(method, args, kwargs)


async def run(api: CellsAPI, ctxt: RequestContext, call: PreparedCall) -> Any:
    """Send the call; its result."""
    return await getattr(api, call.method)(ctxt, *call.args, **call.kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, CellProxy):
        return value.to_wire()
    if isinstance(value, CellsObject):
        return value.to_dict()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return str(value)


def to_json(value: Any) -> str:
    """The result as printed: indented JSON, keys sorted."""
    return json.dumps(value, indent=2, sort_keys=True, default=_jsonable)
