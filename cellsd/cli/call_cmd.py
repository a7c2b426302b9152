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

The broadcasts that change state have forms that report each cell's outcome
(``instance_delete_everywhere_outcomes``, ``sync_instances_outcomes``): one
row ``{"cell", "outcome", "error"}`` per cell, outcome ``ok``, ``failed``,
``unknown`` (sent, no answer: it may have been applied) or ``unreachable``
(never reached the cell). When a row is not ok, a summary goes to stderr
and cellsctl exits 1; re-running such a request is safe (it applies once).
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
  cellsctl -c api-cell.toml call instance_delete_everywhere_outcomes \\
      '{"instance": {"uuid": "<uuid>"}, "delete_type": "hard"}'

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


def outcome_rows(result: Any) -> list[dict[str, Any]] | None:
    """The rows of a result that reports per-cell outcomes, else None."""
    if not isinstance(result, list) or not result:
        return None
    if not all(isinstance(r, Mapping) and "outcome" in r and "cell" in r for r in result):
        return None
    return result


def outcome_summary(rows: list[dict[str, Any]]) -> str | None:
    """What a user should know of the rows that are not ok, or None."""
    bad = [r for r in rows if r["outcome"] != "ok"]
    if not bad:
        return None
    lines = [f"{len(rows) - len(bad)} of {len(rows)} cells ok"]
    for r in bad:
        lines.append(f"  {r['outcome']:<11}  {r['cell']}: {r.get('error') or ''}")
    outcomes = {r["outcome"] for r in bad}
    if outcomes & {"unknown", "unreachable"}:
        lines.append(
            "unknown: sent, but no answer came (it may have been applied); unreachable: it "
            "never reached the cell. A row stands for the cells below it too. Re-run once "
            "the cells are reachable: the request applies only where it has not been."
        )
    return "\n".join(lines)


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
