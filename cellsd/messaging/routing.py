"""Path arithmetic for cell routing: pure functions, no state, no I/O.

A *path* is cell names joined with ``!``. A message's ``routing_path`` is the
path of the cells that have handled it, the current cell last. A target is a
path that starts at the cell that created the message.
"""

from __future__ import annotations

from collections.abc import Collection

from cellsd.errors import CellRoutingInconsistency

PATH_SEP = "!"
ITEM_SEP = "@"

UP = "up"
DOWN = "down"
DIRECTIONS = (UP, DOWN)


def split_path(path: str) -> list[str]:
    return path.split(PATH_SEP)


def join_path(*names: str) -> str:
    return PATH_SEP.join(names)


def reverse_path(path: str) -> str:
    """``a!b!c`` -> ``c!b!a``: the way back along a routing path."""
    return PATH_SEP.join(reversed(path.split(PATH_SEP)))


def opposite(direction: str) -> str:
    return DOWN if direction == UP else UP


def next_hop(
    target: str,
    routing_path: str,
    direction: str,
    neighbours: Collection[str],
) -> str | None:
    """The name of the next cell for a targeted message, or None when here.

    ``neighbours`` are the names of this cell's parents for ``up`` or its
    children for ``down``. Raises CellRoutingInconsistency when the target
    does not extend the routing path or names an unknown neighbour.
    """
    if target == routing_path:
        return None
    here = routing_path.split(PATH_SEP)
    there = target.split(PATH_SEP)
    if len(there) <= len(here) or there[: len(here)] != here:
        raise CellRoutingInconsistency(
            reason=f"destination is {target} but routing_path is {routing_path}"
        )
    name = there[len(here)]
    if name not in neighbours:
        kind = "parent" if direction == UP else "child"
        raise CellRoutingInconsistency(reason=f"Unknown {kind} when routing to {target}")
    return name


def response_cell_name(routing_path: str, broadcast: bool) -> str:
    """Where an answer goes: the whole path back for a targeted message, the
    previous hop only for a broadcast (which is answered hop by hop)."""
    back = reverse_path(routing_path)
    if not broadcast:
        return back
    parts = back.split(PATH_SEP)
    # Component count, not string length (cells v1 compared lengths).
    return PATH_SEP.join(parts[:2]) if len(parts) > 1 else back


def cell_with_item(cell: str | None, item: object) -> str:
    """``cell@item``; the item alone when there is no cell."""
    if cell is None:
        return str(item)
    return f"{cell}{ITEM_SEP}{item}"


def split_cell_and_item(value: str) -> tuple[str | None, str]:
    """Split ``cell@item`` at the last ``@``: ``(cell, item)``."""
    cell, sep, item = value.rpartition(ITEM_SEP)
    if not sep:
        return None, value
    return cell, item
