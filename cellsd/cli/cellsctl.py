"""``cellsctl``: talk to a cell through the client library.

    cellsctl -c cell.toml tree
    cellsctl -c cell.toml capacities            # this cell and each child
    cellsctl -c cell.toml capacities child-cell2 --json
    cellsctl -c cell.toml ping api-cell!child-cell1
    cellsctl --connect unix:var/api-cell/cellsd.sock ping --all --json
    cellsctl -c cell.toml call service_get_all '{"filters": {"disabled": false}}'
    cellsctl --version-cap kilo -c cell.toml call compute_node_stats
    cellsctl -c cell.toml instances --json      # the top's copy of each instance
    cellsctl -c cell.toml services              # every cell's services

``call METHOD '{json kwargs}'`` calls any CellsAPI method (see
:mod:`cellsd.cli.call_cmd`). ``--version-cap`` (a release alias such as
``kilo`` or a version such as ``1.34``) makes every command speak that
version, as a caller of an older release would.

Exit codes: 0 success; 1 a cell did not answer or a check failed; 2 usage or
configuration error (a bad METHOD or ARGUMENTS, a bad version cap, or a
method newer than the version cap: refused before sending); 3 cellsd could
not be reached; 4 cellsd answered with an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from cellsd.cli import call_cmd, views_cmd
from cellsd.cli.progress import Progress
from cellsd.context import RequestContext
from cellsd.errors import CellsError, ConfigError, NotConnected
from cellsd.rpc.api_backports import resolve_version_cap
from cellsd.rpc.errors import InvalidVersionCap, RPCVersionCapError

EXIT_OK, EXIT_CELL_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REMOTE = 0, 1, 2, 3, 4


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def render_ping(rows: list[dict[str, Any]]) -> str:
    width = max([len(r["cell"]) for r in rows] + [4])
    lines = [f"{'CELL':<{width}}  {'OK':<4}  {'MS':>9}  ERROR"]
    for r in rows:
        ok = "ok" if r["ok"] else "FAIL"
        lines.append(f"{r['cell']:<{width}}  {ok:<4}  {r['ms']:>9.3f}  {r['error'] or ''}")
    return "\n".join(lines)


def _child_view(rows: dict[str, Any], path: str) -> dict[str, Any] | None:
    """How the parent of ``path`` sees it (mute, last seen, capacities),
    from the status its parent reported."""
    parent, _, name = path.rpartition("!")
    status = (rows.get(parent) or {}).get("status") or {}
    view: dict[str, Any] | None = (status.get("children") or {}).get(name)
    return view


def _age(age: Any) -> str:
    return "never" if age is None else f"{age:.0f}s ago"


def render_tree(tree: dict[str, Any]) -> str:
    """The cells below the connected one as an indented tree, with each
    cell's state and, as its parent sees it, its link's health, its mute
    state and last-seen age."""
    neighbours = {n["name"]: n for n in tree.get("neighbours", [])}
    rows = {r["cell"]: r for r in tree["cells"]}
    root = tree["cell"]
    lines = []
    if tree.get("parents"):
        lines.append(f"parents: {', '.join(tree['parents'])}")

    def describe(path: str) -> str:
        row = rows[path]
        name = path.rsplit("!", 1)[-1]
        bits = ["ok" if row["ok"] else f"FAIL ({row.get('error')})"]
        n = neighbours.get(name) if path.count("!") == 1 else None
        view = _child_view(rows, path) if "!" in path else None
        if n is not None and not n["is_parent"]:
            view = n
        health = view or {}
        if health.get("health"):  # the link's health, as its parent sees it
            why = health.get("health_reason") if health["health"] != "up" else None
            bits.append(f"link {health['health']}" + (f": {why}" if why else ""))
        if view is not None:
            bits.append("mute" if view.get("mute") else "heard")
            bits.append("last seen " + _age(view.get("last_seen_age")))
        return f"{name}  [{', '.join(bits)}]"

    def walk(path: str, prefix: str) -> None:
        kids = sorted(p for p in rows if p.rsplit("!", 1)[0] == path and p != path)
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{describe(kid)}")
            walk(kid, prefix + ("    " if last else "│   "))

    lines.append(describe(root) if root in rows else root)
    walk(root, "")
    return "\n".join(lines)


def capacity_report(tree: dict[str, Any], cell: str | None) -> dict[str, Any]:
    """From a ``tree`` answer: a cell's aggregated and own capacities, and
    each of its children's (as last reported, less what was handed to it
    since) with its mute state and last-seen age."""
    root = tree["cell"]
    path = cell or root
    if path != root and not path.startswith(root + "!"):
        path = f"{root}!{path}"
    rows = {r["cell"]: r for r in tree["cells"]}
    row = rows.get(path)
    if row is None:
        raise ConfigError("capacities", f"no cell {path} below {root}")
    if not row["ok"]:
        return {"cell": path, "ok": False, "error": row.get("error")}
    status = row.get("status") or {}
    children = {
        name: {
            "capacities": view.get("capacities") or {},
            "mute": view.get("mute"),
            "last_seen_age": view.get("last_seen_age"),
        }
        for name, view in sorted((status.get("children") or {}).items())
    }
    return {
        "cell": path,
        "ok": True,
        "capacities": status.get("aggregate") or {},
        "own": status.get("capacities") or {},
        "children": children,
    }


def _less(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Take ``part`` out of ``total`` key by key (numbers at the leaves)."""
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(total.get(key), dict):
            _less(total[key], value)
        elif isinstance(value, int | float) and isinstance(total.get(key), int | float):
            total[key] -= value


async def _capacities(api: Any, ctxt: RequestContext, cell: str | None) -> dict[str, Any]:
    """The connected cell's report from its own state alone (so a silent
    child never delays it): the aggregate, each child's figures, mute state
    and age, and its own hosts' as the aggregate less the children that
    count in it (those not mute). A cell below comes from ``tree``."""
    name = await _my_name(api, ctxt)
    if cell and cell != name:
        return capacity_report(await api.tree(ctxt), cell)
    total = await api.get_capacities(ctxt)
    own = json.loads(json.dumps(total))
    children = {}
    for n in await api.get_cell_info_for_neighbors(ctxt):
        if n["is_parent"]:
            continue
        figures = await api.get_capacities(ctxt, n["name"])
        if not n["mute"]:
            _less(own, figures)
        children[n["name"]] = {
            "capacities": figures,
            "mute": n["mute"],
            "last_seen_age": n["last_seen_age"],
        }
    return {
        "cell": name,
        "ok": True,
        "capacities": total,
        "own": own if _any_number(own) else {},
        "children": dict(sorted(children.items())),
    }


def _any_number(figures: Any) -> bool:
    """Whether any figure is not zero (all zero: no own hosts, or full)."""
    if isinstance(figures, dict):
        return any(_any_number(v) for v in figures.values())
    return isinstance(figures, int | float) and figures != 0


async def _my_name(api: Any, ctxt: RequestContext) -> str:
    row = await api.ping(ctxt)
    return str(row["cell"])


def _units(capacities: dict[str, Any], key: str) -> str:
    units = (capacities.get(key) or {}).get("units_by_mb") or {}
    return " ".join(f"{mb}:{n}" for mb, n in sorted(units.items(), key=lambda i: int(i[0]))) or "-"


def _free(capacities: dict[str, Any], key: str) -> str:
    total = (capacities.get(key) or {}).get("total_mb")
    return "-" if total is None else f"{total:.0f}"


def render_capacities(report: dict[str, Any]) -> str:
    """A table: the cell's aggregate, its own hosts, then each child."""
    if not report.get("ok", True):
        return f"{report['cell']}: FAIL ({report.get('error')})"
    rows = [
        (f"{report['cell']} (total)", "", "", report["capacities"]),
        ("  own hosts", "", "", report["own"]),
    ]
    for name, child in report["children"].items():
        mute = "mute" if child["mute"] else "no"
        rows.append((f"  {name}", mute, _age(child["last_seen_age"]), child["capacities"]))
    head = ("CELL", "MUTE", "LAST SEEN", "RAM FREE MB", "DISK FREE MB", "RAM UNITS", "DISK UNITS")
    table = [head] + [
        (
            n,
            m,
            a,
            _free(c, "ram_free"),
            _free(c, "disk_free"),
            _units(c, "ram_free"),
            _units(c, "disk_free"),
        )
        for n, m, a, c in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.append("(units: how many instances of each flavor size, in MB, still fit; own hosts")
    lines.append(" of the connected cell: the total less its children that are not mute)")
    return "\n".join(lines)


async def _run(reactor: Any, args: argparse.Namespace) -> int:
    from cellsd.client import connect

    endpoint = args.connect
    if endpoint is None:
        from cellsd.config import load_settings

        endpoint = load_settings(args.config).api.listen
    api = await connect(reactor, endpoint, version_cap=args.version_cap, call_timeout=args.timeout)
    ctxt = RequestContext(is_admin=True, roles=["admin"])
    progress = Progress(reactor, sys.stderr, f"cellsctl {args.command}", args.timeout)
    progress.start()
    try:
        return await _command(api, ctxt, args, progress)
    finally:
        progress.stop()
        api.transport.close()


async def _command(
    api: Any, ctxt: RequestContext, args: argparse.Namespace, progress: Progress
) -> int:
    """Run one command; the progress line is cleared before any output."""
    if args.command == "ping":
        if args.all:
            rows = await api.ping_all(ctxt, up=args.up)
        elif args.cell:
            rows = [await api.ping(ctxt, args.cell)]
        else:
            raise ConfigError("ping", "name a CELL or use --all")
        progress.stop()
        print(json.dumps(rows) if args.json else render_ping(rows))
        return EXIT_OK if all(r["ok"] for r in rows) else EXIT_CELL_FAILED
    if args.command == "tree":
        tree = await api.tree(ctxt)
        progress.stop()
        if args.json:
            _print_json(tree)
        else:
            print(render_tree(tree))
        return EXIT_OK if all(r["ok"] for r in tree["cells"]) else EXIT_CELL_FAILED
    if args.command == "capacities":
        report = await _capacities(api, ctxt, args.cell)
        progress.stop()
        if args.json:
            _print_json(report)
        else:
            print(render_capacities(report))
        return EXIT_OK if report["ok"] else EXIT_CELL_FAILED
    if args.command in views_cmd.COMMANDS:
        return await views_cmd.run(api, ctxt, args, before_output=progress.stop)
    if args.command == "call":
        result = await call_cmd.run(api, ctxt, args.prepared)
        progress.stop()
        print(call_cmd.to_json(result))
        rows = call_cmd.outcome_rows(result)
        summary = call_cmd.outcome_summary(rows) if rows else None
        if summary:
            print(summary, file=sys.stderr)
            return EXIT_CELL_FAILED
        return EXIT_OK
    raise ConfigError("command", f"unknown command {args.command!r}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser = argparse.ArgumentParser(
        prog="cellsctl",
        description="Talk to a cell through the cellsd client library.",
        epilog="example: cellsctl -c api-cell.toml ping --all",
    )
    parser.add_argument("--json", dest="json_top", action="store_true", help="print JSON")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="the cell's TOML file (finds [api] listen)")
    where.add_argument("--connect", help="an endpoint, e.g. unix:var/api-cell/cellsd.sock")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    parser.add_argument(
        "--version-cap",
        metavar="CAP",
        help="speak an older API version: a release alias (grizzly, havana, icehouse, "
        "juno, kilo, liberty) or X.Y; e.g. --version-cap kilo call compute_node_stats",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "tree",
        parents=[common],
        help="show the cells below this one",
        description="Show every cell below this one, with link and mute state.",
        epilog="example: cellsctl -c api-cell.toml tree --json",
    )
    ping = sub.add_parser(
        "ping",
        parents=[common],
        help="round trip to one cell or to all",
        description="Time a round trip to a cell (a path from this cell, "
        "e.g. api-cell!child-cell1, or relative: child-cell1) or to every cell.",
        epilog="example: cellsctl -c grandchild-cell1.toml ping --all --up --json",
    )
    ping.add_argument("cell", nargs="?", help="the cell's path")
    capacities = sub.add_parser(
        "capacities",
        parents=[common],
        help="free RAM, disk and units per flavor, in total and per child",
        description="Show a cell's aggregated capacities, its own hosts' and each child's "
        "(free RAM and disk in MB, and how many instances of each flavor size fit), with "
        "each child's mute state and last-seen age.",
        epilog="example: cellsctl -c api-cell.toml capacities child-cell2 --json",
    )
    capacities.add_argument("cell", nargs="?", help="the cell's path (default: the connected cell)")
    ping.add_argument("--all", action="store_true", help="every cell below, this one included")
    ping.add_argument("--up", action="store_true", help="with --all: the cells above instead")
    call_cmd.add_parser(sub, [common])
    views_cmd.add_parsers(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = args.json or args.json_top
    if args.command == "ping" and not args.all and not args.cell:
        parser.error("ping: name a CELL or use --all")
    try:
        resolve_version_cap(args.version_cap)
        if args.command == "call":
            args.prepared = call_cmd.prepare(args.method, args.arguments)
    except (InvalidVersionCap, ConfigError) as e:
        print(f"cellsctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    from twisted.internet import task

    result: dict[str, int] = {}

    async def go(reactor: Any) -> None:
        try:
            result["code"] = await _run(reactor, args)
        except NotConnected as e:
            print(f"cellsctl: cannot reach cellsd: {e}", file=sys.stderr)
            result["code"] = EXIT_UNREACHABLE
        except ConfigError as e:
            print(f"cellsctl: {e}", file=sys.stderr)
            result["code"] = EXIT_USAGE
        except RPCVersionCapError as e:
            print(f"cellsctl: {e}", file=sys.stderr)
            result["code"] = EXIT_USAGE
        except CellsError as e:
            # A rebuilt remote error: its own class name and message, without
            # the remote traceback its str() carries.
            name = getattr(type(e), "_remote_of", type(e)).__name__
            print(f"cellsctl: {name}: {e.message}", file=sys.stderr)
            result["code"] = EXIT_REMOTE

    def start(reactor: Any) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(go(reactor))

    try:
        task.react(start)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return result.get("code", EXIT_REMOTE)


if __name__ == "__main__":
    sys.exit(main())
