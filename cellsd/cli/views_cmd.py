"""``cellsctl instances`` and ``cellsctl services``: what the connected cell
(normally the top) sees.

    cellsctl -c api-cell.toml instances            # the top's copy of each
    cellsctl -c api-cell.toml instances --cell child-cell2!grandchild-cell1
    cellsctl -c api-cell.toml services --json

``instances`` asks the cell's own view through CellsAPI.instance_list (1.38);
``services`` gathers every cell's services with the seed's
``service_get_all``. With ``--json`` each prints a JSON list of objects
carrying every field of the records; an instance has
at least uuid, vm_state, task_state, host, cell_name, project_id, user_id
and flavor, a service its cell's path as ``cell_name``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from cellsd.context import RequestContext
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.proxies import CellProxy, rebuild_proxies

COMMANDS = ("instances", "services")


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    instances = sub.add_parser(
        "instances",
        parents=parents,
        help="list the instances this cell keeps (at the top: every cell's)",
        description="List the instances the connected cell keeps: at the top, "
        "its copy of every instance of the tree, each with the path of the cell "
        "that owns it; with --cell, those of another cell.",
        epilog="example: cellsctl -c api-cell.toml instances --json",
    )
    instances.add_argument("--cell", help="a cell's path (from this cell, or below it)")
    instances.add_argument("--deleted", action="store_true", help="deleted ones too")
    sub.add_parser(
        "services",
        parents=parents,
        help="list the services of every cell below this one",
        description="List the services of this cell and every cell below it, "
        "each with its cell's path.",
        epilog="example: cellsctl -c api-cell.toml services --json",
    )


async def instance_list(
    api: CellsAPI, ctxt: RequestContext, cell_name: str | None = None, deleted: bool = False
) -> list[dict[str, Any]]:
    """The connected cell's instances (CellsAPI.instance_list, 1.38)."""
    rows: list[dict[str, Any]] = await api.instance_list(
        ctxt, cell_name, {"deleted": None} if deleted else {}
    )
    return rows


async def service_list(api: CellsAPI, ctxt: RequestContext) -> list[dict[str, Any]]:
    """Every cell's services (the seed's service_get_all), each a plain
    dict of the record plus its cell's path and ``cell@host`` name."""
    rows = []
    for proxy in rebuild_proxies(await api.service_get_all(ctxt)):
        if not isinstance(proxy, CellProxy):
            continue
        record = proxy.record
        row = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        row["cell_name"] = proxy.cell_path
        row["cell_host"] = proxy.host
        rows.append(row)
    return sorted(rows, key=lambda r: (r["cell_name"], str(r.get("host")), str(r.get("binary"))))


def _table(headers: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _s(value: Any) -> str:
    return "-" if value is None else str(value)


def render_instances(rows: list[dict[str, Any]]) -> str:
    def flavor(row: dict[str, Any]) -> str:
        f = row.get("flavor") or {}
        return _s(f.get("name") or f.get("flavorid")) if isinstance(f, dict) else _s(f)

    body = [
        [
            _s(r.get("uuid")),
            _s(r.get("display_name")),
            _s(r.get("vm_state")),
            _s(r.get("task_state")),
            _s(r.get("host")),
            flavor(r),
            _s(r.get("cell_name")),
        ]
        for r in rows
    ]
    headers = ["UUID", "NAME", "VM_STATE", "TASK_STATE", "HOST", "FLAVOR", "CELL"]
    return _table(headers, body) + f"\n{len(rows)} instance(s)"


def render_services(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            _s(r.get("cell_name")),
            _s(r.get("host")),
            _s(r.get("binary")),
            "disabled" if r.get("disabled") else "enabled",
            _s(r.get("last_seen_up")),
        ]
        for r in rows
    ]
    return _table(["CELL", "HOST", "BINARY", "STATUS", "LAST_SEEN_UP"], body)


async def run(
    api: CellsAPI,
    ctxt: RequestContext,
    args: argparse.Namespace,
    before_output: Callable[[], object] = lambda: None,
) -> int:
    if args.command == "instances":
        rows = await instance_list(api, ctxt, args.cell, args.deleted)
        before_output()
        print(json.dumps(rows, indent=2, sort_keys=True) if args.json else render_instances(rows))
    else:
        rows = await service_list(api, ctxt)
        before_output()
        print(json.dumps(rows, indent=2, sort_keys=True) if args.json else render_services(rows))
    return 0
