"""``cellsctl``: talk to a cell through the client library.

    cellsctl -c cell.toml tree
    cellsctl -c cell.toml ping api-cell!child-cell1
    cellsctl --connect unix:var/api-cell/cellsd.sock ping --all --json
    cellsctl -c cell.toml call service_get_all '{"filters": {"disabled": false}}'
    cellsctl --version-cap kilo -c cell.toml call compute_node_stats

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

from cellsd.cli import call_cmd
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


def render_tree(tree: dict[str, Any]) -> str:
    """The cells below the connected one as an indented tree, with each
    neighbour's link state, mute state and last-seen age."""
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
        if n is not None and not n["is_parent"]:
            age = n.get("last_seen_age")
            bits.append("mute" if n.get("mute") else "heard")
            bits.append("last seen " + ("never" if age is None else f"{age:.0f}s ago"))
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


async def _run(reactor: Any, args: argparse.Namespace) -> int:
    from cellsd.client import connect

    endpoint = args.connect
    if endpoint is None:
        from cellsd.config import load_settings

        endpoint = load_settings(args.config).api.listen
    api = await connect(reactor, endpoint, version_cap=args.version_cap, call_timeout=args.timeout)
    ctxt = RequestContext(is_admin=True, roles=["admin"])
    try:
        if args.command == "ping":
            if args.all:
                rows = await api.ping_all(ctxt, up=args.up)
            elif args.cell:
                rows = [await api.ping(ctxt, args.cell)]
            else:
                raise ConfigError("ping", "name a CELL or use --all")
            print(json.dumps(rows) if args.json else render_ping(rows))
            return EXIT_OK if all(r["ok"] for r in rows) else EXIT_CELL_FAILED
        if args.command == "tree":
            tree = await api.tree(ctxt)
            if args.json:
                _print_json(tree)
            else:
                print(render_tree(tree))
            return EXIT_OK if all(r["ok"] for r in tree["cells"]) else EXIT_CELL_FAILED
        if args.command == "call":
            print(call_cmd.to_json(await call_cmd.run(api, ctxt, args.prepared)))
            return EXIT_OK
        raise ConfigError("command", f"unknown command {args.command!r}")
    finally:
        api.transport.close()


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
    ping.add_argument("--all", action="store_true", help="every cell below, this one included")
    ping.add_argument("--up", action="store_true", help="with --all: the cells above instead")
    call_cmd.add_parser(sub, [common])
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
