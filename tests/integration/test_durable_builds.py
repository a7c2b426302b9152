"""Build requests survive the owner being killed (issue 7 items 1 and 6:
"a daemon killed with SIGKILL with calls in flight"), between real
``cellsd run`` processes::

    api-cell
    ├── child-a     host a1: 8 GB
    └── child-b     host b1: 8 GB

Builds are driven as Nova's API cell drives them
(tests/integration/scheduler_client.py): each instance recorded in the top's
database, then one ``build_instances`` cast per instance through
``cellsd.client.connect``. Each cell's SQLite store is read directly
(read-only) to see where every instance is.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cellsd.config_write import render_config
from tests.integration.cluster import PYTHON, REPO, Cluster, short_tempdir

pytestmark = pytest.mark.integration

T = TypeVar("T")

TOP = "api-cell"
LEAVES = ("child-a", "child-b")
TREE = {TOP: list(LEAVES)}
EXTRA = {
    "cells": {
        "call_timeout": 5.0,
        "reconnect_max_delay": 0.5,
        "health_down_after": 3.0,
        "health_up_after": 0.5,
        "update_interval": 1.0,
        "coalesce_window": 0.1,
    },
    "scheduler": {"retries": 5, "retry_delay": 0.5},
}
TINY = {
    "id": 1,
    "flavorid": "1",
    "name": "m1.tiny",
    "memory_mb": 512,
    "vcpus": 1,
    "root_gb": 1,
    "ephemeral_gb": 0,
}
#: 30 of 512 MB: room for all (16 per host), so none may end in ERROR.
BUILDS = 30


def _give_hosts(cluster: Cluster) -> None:
    """Rewrite each leaf's config with one 8 GB host."""
    for name in LEAVES:
        path = cluster.cells[name].config
        data = tomllib.loads(path.read_text())
        host = {"name": f"{name[-1]}1", "vcpus": 16, "memory_mb": 8192, "disk_gb": 64}
        data["compute"] = {"hosts": [host]}
        path.write_text(render_config(data))


@pytest.fixture
def tree() -> Iterator[Cluster]:
    with short_tempdir() as base, Cluster(base, TREE, EXTRA) as cluster:
        _give_hosts(cluster)
        cluster.start_all()
        cluster.wait_until_tree_answers(TOP, 3)
        eventually(lambda: both_reported(cluster), 20, "both leaves' capacities at the top")
        yield cluster


def both_reported(cluster: Cluster) -> None:
    """The top knows each leaf's room for the flavor (so builds spread)."""
    result = cluster.cellsctl(TOP, "capacities", "--json")
    assert result.returncode == 0, result.stderr
    children = json.loads(result.stdout)["children"]
    for leaf in LEAVES:
        units = (children[leaf]["capacities"] or {}).get("ram_free", {}).get("units_by_mb", {})
        assert units.get("512", 0) > 0, children


def db(cluster: Cluster, cell: str) -> Path:
    return cluster.base / "var" / cell / "cell.sqlite"


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def eventually(check: Callable[[], T], timeout: float, what: str) -> T:
    """``check()`` until it stops raising AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, sqlite3.OperationalError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout} s: {e}") from e
            time.sleep(0.1)


def cast_builds(cluster: Cluster, count: int) -> dict[str, Any]:
    """Record ``count`` instances at the top and cast one build each; back
    once every cast was acknowledged (not waiting for any build)."""
    spec = {
        "action": "build",
        "endpoint": cluster.endpoint(TOP),
        "db": f"sqlite:///{db(cluster, TOP)}",
        "count": count,
        "flavor": TINY,
        "wait": 0,
    }
    result = subprocess.run(
        [PYTHON, "-m", "tests.integration.scheduler_client", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise AssertionError(f"client failed ({result.returncode}): {result.stderr}")
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_builds_accepted_before_a_sigkill_are_placed_exactly_once(tree: Cluster) -> None:
    """Injected: child-b is killed and child-a frozen (SIGSTOP: its link
    stays open, it answers nothing), so every build goes to child-a and
    hangs there; 30 builds are cast at the top and, as soon as every cast
    is acknowledged, the top is killed with SIGKILL. child-a is thawed: it
    takes the 30 hand-offs the dead top sent, builds the 16 it has room for
    and declines the rest to nobody. child-b and the top are restarted.

    The user sees: every accepted build placed (the 14 child-a declined in
    child-b), each instance in exactly one leaf, all active, the top's own
    copies active in the cell that holds them, nothing left pending at the
    top. (Before builds were durable, those 14 were lost for good.)"""
    log_before = len(tree.log_text(TOP))
    tree.kill("child-b")
    tree.wait_for_log(TOP, "link to child child-b is down", since=log_before)
    tree.pause("child-a")
    try:
        accepted = cast_builds(tree, BUILDS)
        tree.kill(TOP)
    finally:
        tree.resume("child-a")
    uuids = sorted(accepted["instances"])
    assert len(uuids) == BUILDS
    pending = query(db(tree, TOP), "SELECT id, route FROM pending_builds")
    assert len(pending) == BUILDS, pending
    log_before = len(tree.log_text(TOP))
    tree.start("child-b")
    tree.start(TOP)
    tree.wait_for_log(TOP, f"resuming {BUILDS} builds", since=log_before, timeout=20)

    def placed() -> dict[str, list[tuple[str, str]]]:
        where: dict[str, list[tuple[str, str]]] = {u: [] for u in uuids}
        marks = ",".join("?" * len(uuids))
        for leaf in LEAVES:
            sql = f"SELECT uuid, vm_state FROM instances WHERE uuid IN ({marks})"
            for uuid, vm_state in query(db(tree, leaf), sql, *uuids):
                where[uuid].append((leaf, vm_state))
        missing = [u for u, found in where.items() if len(found) != 1]
        assert not missing, {u: where[u] for u in missing}
        states = Counter(s for found in where.values() for _, s in found)
        assert states == {"active": BUILDS}, states
        return where

    where = eventually(placed, 30, "every build placed once and active")
    leaf_of = {u: found[0][0] for u, found in where.items()}
    assert Counter(leaf_of.values()) == {"child-a": 16, "child-b": 14}

    def top_agrees() -> None:
        assert query(db(tree, TOP), "SELECT id FROM pending_builds") == []
        marks = ",".join("?" * len(uuids))
        rows = query(
            db(tree, TOP),
            f"SELECT uuid, vm_state, cell_name FROM instances WHERE uuid IN ({marks})",
            *uuids,
        )
        seen = {u: (s, c) for u, s, c in rows}
        wrong = {u: seen.get(u) for u in uuids if seen.get(u) != ("active", f"{TOP}!{leaf_of[u]}")}
        assert not wrong, wrong

    eventually(top_agrees, 20, "the top's copies match and nothing is pending")
