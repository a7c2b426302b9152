"""The eight-cell tree as real ``cellsd run`` processes over TLS on loopback.

::

    api-cell
    ├── child-cell1
    ├── child-cell2
    │   ├── grandchild-cell1
    │   └── grandchild-cell2
    ├── child-cell3
    │   └── grandchild-cell3
    └── child-cell4

The tree is started once for this module (start-up costs seconds) and
every test talks to it with ``cellsctl`` as a user would. The tests run in
the order written: the last one SIGKILLs child-cell4.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster import Cluster, short_tempdir

pytestmark = pytest.mark.integration

TREE = {
    "api-cell": ["child-cell1", "child-cell2", "child-cell3", "child-cell4"],
    "child-cell2": ["grandchild-cell1", "grandchild-cell2"],
    "child-cell3": ["grandchild-cell3"],
}
#: Every cell's full path as seen from api-cell.
FROM_TOP = [
    "api-cell",
    "api-cell!child-cell1",
    "api-cell!child-cell2",
    "api-cell!child-cell2!grandchild-cell1",
    "api-cell!child-cell2!grandchild-cell2",
    "api-cell!child-cell3",
    "api-cell!child-cell3!grandchild-cell3",
    "api-cell!child-cell4",
]
#: Seconds a cell waits for an answer ([cells] call_timeout).
CALL_TIMEOUT = 5.0
#: What a cellsctl run may add to the deadline: interpreter start-up, import,
#: connecting, printing, on a busy two-core machine.
SLACK = 4.0


@pytest.fixture(scope="module")
def tree() -> Iterator[Cluster]:
    with (
        short_tempdir() as base,
        Cluster(base, TREE, {"cells": {"call_timeout": CALL_TIMEOUT}}) as cluster,
    ):
        cluster.start_all()
        cluster.wait_until_tree_answers("api-cell", len(FROM_TOP))
        yield cluster


def _json(result: Any) -> Any:
    assert result.stdout.strip(), f"no output (exit {result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def _assert_ok_row(row: dict[str, Any], cell: str) -> None:
    assert row == {"cell": cell, "ok": True, "outcome": "ok", "ms": row["ms"], "error": None}
    assert isinstance(row["ms"], float) and row["ms"] >= 0.0


def test_ping_a_grandchild_from_the_top(tree: Cluster) -> None:
    """``cellsctl ping api-cell!child-cell2!grandchild-cell1 --json`` from the
    top reaches the grandchild through child-cell2 and answers ok."""
    target = "api-cell!child-cell2!grandchild-cell1"
    result = tree.cellsctl("api-cell", "ping", target, "--json")
    assert result.returncode == 0, result.stderr
    (row,) = _json(result)
    _assert_ok_row(row, target)


def test_ping_all_from_the_top_answers_for_all_eight_cells(tree: Cluster) -> None:
    """``ping --all --json`` from api-cell gives one ok row per cell of the
    tree, api-cell itself included, each cell named by its full path from
    api-cell, and exits 0."""
    result = tree.cellsctl("api-cell", "ping", "--all", "--json")
    assert result.returncode == 0, result.stderr
    rows = _json(result)
    assert [r["cell"] for r in rows] == FROM_TOP
    for row in rows:
        _assert_ok_row(row, row["cell"])


def test_ping_all_up_from_a_grandchild_answers_for_its_ancestors(tree: Cluster) -> None:
    """``ping --all --up --json`` from grandchild-cell1 answers for itself,
    its parent and the top, as paths seen from grandchild-cell1."""
    result = tree.cellsctl("grandchild-cell1", "ping", "--all", "--up", "--json")
    assert result.returncode == 0, result.stderr
    rows = _json(result)
    assert [r["cell"] for r in rows] == [
        "grandchild-cell1",
        "grandchild-cell1!child-cell2",
        "grandchild-cell1!child-cell2!api-cell",
    ]
    for row in rows:
        _assert_ok_row(row, row["cell"])


def test_tree_text_shows_every_cell_in_place(tree: Cluster) -> None:
    """``cellsctl tree`` draws api-cell at the root, its four children below
    it and each grandchild under its own parent, every one ok."""
    result = tree.cellsctl("api-cell", "tree")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("api-cell  [ok")
    assert len(lines) == len(FROM_TOP)
    names = [line.lstrip("│├└─ ").split("  ")[0] for line in lines]
    assert sorted(names) == sorted(path.rsplit("!", 1)[-1] for path in FROM_TOP)
    for line in lines:
        assert "[ok" in line, line
    # A grandchild is drawn one level deeper than, and after, its parent.
    for parent, kids in TREE.items():
        depth = lines[names.index(parent)].index(parent)
        for kid in kids:
            assert names.index(kid) > names.index(parent)
            assert lines[names.index(kid)].index(kid) == depth + 4, (kid, result.stdout)


def test_tree_json_lists_every_cell_with_its_children(tree: Cluster) -> None:
    """``cellsctl tree --json`` lists the eight cells by full path, all ok,
    each with its own children, and the top's four children as neighbours."""
    result = tree.cellsctl("api-cell", "tree", "--json")
    assert result.returncode == 0, result.stderr
    view = _json(result)
    assert view["cell"] == "api-cell"
    assert view["parents"] == []
    rows = {r["cell"]: r for r in view["cells"]}
    assert sorted(rows) == FROM_TOP
    for path, row in rows.items():
        assert row["ok"] is True, row
        assert row["children"] == sorted(TREE.get(path.rsplit("!", 1)[-1], []))
        assert row["is_top"] is (path == "api-cell")
    neighbours = {n["name"]: n for n in view["neighbours"]}
    assert sorted(neighbours) == TREE["api-cell"]
    assert not any(n["is_parent"] for n in neighbours.values())


def test_a_hung_child_times_out_within_the_deadline(tree: Cluster) -> None:
    """A child that stops answering (SIGSTOP: its link stays open) costs
    ``ping --all`` one call deadline, not more: the others answer ok, the
    hung one is a CellTimeout row naming it, exit 1. Once resumed, its late
    answers do no harm and the whole tree answers again."""
    tree.pause("child-cell1")
    try:
        start = time.monotonic()
        result = tree.cellsctl("api-cell", "ping", "--all", "--json")
        elapsed = time.monotonic() - start
    finally:
        tree.resume("child-cell1")
    assert result.returncode == 1, result.stderr
    assert elapsed < CALL_TIMEOUT + SLACK, elapsed
    rows = {r["cell"]: r for r in _json(result)}
    assert sorted(rows) == FROM_TOP
    hung = rows.pop("api-cell!child-cell1")
    assert hung["ok"] is False
    assert hung["error"].startswith("CellTimeout")
    assert hung["outcome"] == "unknown", hung  # sent, never answered
    assert "api-cell!child-cell1" in hung["error"]
    # api-cell gave up on it within its own deadline, before cellsctl's.
    assert hung["ms"] < CALL_TIMEOUT * 1000, hung
    for path, row in rows.items():
        _assert_ok_row(row, path)

    again = tree.cellsctl("api-cell", "ping", "--all", "--json")
    assert again.returncode == 0, again.stdout
    assert [r["cell"] for r in _json(again) if r["ok"]] == FROM_TOP


def test_sigkill_a_child_then_ping_all_reports_it_within_the_deadline(tree: Cluster) -> None:
    """After SIGKILL of child-cell4, ``ping --all --json`` from the top still
    answers within the call deadline: seven ok rows and one failure row
    naming child-cell4, exit 1; ``tree`` shows it failed too.

    Destructive: runs last on the module's tree."""
    tree.kill("child-cell4")
    start = time.monotonic()
    result = tree.cellsctl("api-cell", "ping", "--all", "--json")
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    assert elapsed < CALL_TIMEOUT + SLACK, elapsed
    rows = {r["cell"]: r for r in _json(result)}
    assert sorted(rows) == FROM_TOP
    dead = rows.pop("api-cell!child-cell4")
    assert dead["ok"] is False
    assert isinstance(dead["ms"], float) and dead["ms"] < CALL_TIMEOUT * 1000
    assert "child-cell4" in dead["error"], dead
    kind = dead["error"].split(":")[0]
    # Not sent (the top saw the link go first), or sent as it went.
    assert kind in ("CellUnreachable", "CellOutcomeUnknown", "CellTimeout"), dead
    assert dead["outcome"] == ("unreachable" if kind == "CellUnreachable" else "unknown"), dead
    for path, row in rows.items():
        _assert_ok_row(row, path)

    view = tree.cellsctl("api-cell", "tree", "--json")
    assert view.returncode == 1
    status = {r["cell"]: r["ok"] for r in _json(view)["cells"]}
    assert status.pop("api-cell!child-cell4") is False
    assert all(status.values()), status
