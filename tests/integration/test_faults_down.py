"""Neighbours down, between real ``cellsd run`` processes (issue 7, items 4
and 6)::

    api-cell
    ├── child-a
    │   └── gc-a      (one 4 GB host)
    └── child-b       (one 16 GB host: the scheduler's first choice)

Health thresholds are short (down 1 s after the link is lost, up 0.5 s
after it is back) so that each transition takes a second, not half a
minute. The in-memory versions are tests/unit/test_faults_child_down.py
and tests/unit/test_links_health.py.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

from cellsd.config_write import render_config
from tests.integration.cluster import PYTHON, REPO, Cluster, short_tempdir

pytestmark = pytest.mark.integration

TREE = {"api-cell": ["child-a", "child-b"], "child-a": ["gc-a"]}
HOSTS = {"gc-a": 4096, "child-b": 16384}
GC_A, CHILD_B = "api-cell!child-a!gc-a", "api-cell!child-b"
CALL_TIMEOUT = 5.0
#: Interpreter start-up, import and printing of one cellsctl run.
SLACK = 6.0
#: From ``cellsd run`` to its API answering a ping, its neighbours all down.
START_BOUND = 8.0
EXTRA = {
    "cells": {
        "call_timeout": CALL_TIMEOUT,
        "reconnect_max_delay": 0.5,
        "update_interval": 1.0,
        "health_down_after": 1.0,
        "health_up_after": 0.5,
    }
}
TINY = {"id": 1, "flavorid": "1", "name": "m1.tiny", "memory_mb": 512, "vcpus": 1, "root_gb": 1}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with short_tempdir() as base, Cluster(base, TREE, EXTRA) as cluster:
        for name, memory_mb in HOSTS.items():
            path = cluster.cells[name].config
            data = tomllib.loads(path.read_text())
            data["compute"] = {
                "hosts": [{"name": "h1", "vcpus": 8, "memory_mb": memory_mb, "disk_gb": 64}]
            }
            path.write_text(render_config(data))
        yield cluster


def cellsctl_json(cluster: Cluster, cell: str, *args: str) -> tuple[int, Any, float]:
    start = time.monotonic()
    result = cluster.cellsctl(cell, *args, "--json", timeout=CALL_TIMEOUT + SLACK)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout), time.monotonic() - start


def build(cluster: Cluster) -> str:
    """One instance built from the top as Nova's API would; its cell."""
    spec = {
        "action": "build",
        "endpoint": cluster.endpoint("api-cell"),
        "db": f"sqlite:///{cluster.base / 'var' / 'api-cell' / 'cell.sqlite'}",
        "count": 1,
        "flavor": TINY,
        "wait": 20,
    }
    result = subprocess.run(
        [PYTHON, "-m", "tests.integration.scheduler_client", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=40,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    [inst] = json.loads(result.stdout.strip().splitlines()[-1])["instances"].values()
    assert inst["vm_state"] == "active", inst
    return str(inst["cell_name"])


def health_at_top(cluster: Cluster, neighbour: str) -> str:
    _, tree, _ = cellsctl_json(cluster, "api-cell", "tree")
    return str({n["name"]: n for n in tree["neighbours"]}[neighbour].get("health"))


def test_start_with_every_neighbour_down(cluster: Cluster) -> None:
    """Injected: child-a starts while its parent (api-cell) and its child
    (gc-a) are not running. Seen: its API answers ``ping`` within a few
    seconds of the process starting (nothing waits for a neighbour), and
    ``tree`` shows both neighbours down with the reason (not connected
    yet) and gc-a's row unreachable. Then the rest of the tree starts and
    the whole tree answers."""
    start = time.monotonic()
    cluster.start("child-a")
    while True:
        result = cluster.cellsctl("child-a", "ping", "child-a", "--json", timeout=SLACK)
        if result.returncode == 0:
            break
        assert time.monotonic() - start < START_BOUND, result.stderr + cluster.logs()
        time.sleep(0.1)
    assert json.loads(result.stdout)[0]["cell"] == "child-a"
    answered = time.monotonic() - start
    assert answered < START_BOUND
    print(f"child-a answered {answered:.2f} s after cellsd run started, its neighbours down")

    code, tree, seconds = cellsctl_json(cluster, "child-a", "tree")
    assert code == 1 and seconds < SLACK, (code, seconds)
    neighbours = {n["name"]: n for n in tree["neighbours"]}
    assert neighbours["api-cell"]["is_parent"] and not neighbours["gc-a"]["is_parent"]
    for name in ("api-cell", "gc-a"):
        assert neighbours[name]["health"] == "down", neighbours[name]
        assert "not connected yet" in neighbours[name]["health_reason"], neighbours[name]
    rows = {r["cell"]: r for r in tree["cells"]}
    assert rows["child-a"]["ok"], rows
    assert rows["child-a!gc-a"]["outcome"] == "unreachable", rows

    start_the_rest(cluster)


def start_the_rest(cluster: Cluster) -> None:
    """Start every cell not running, until the whole tree answers."""
    for name in cluster.cells:
        proc = cluster.procs.get(name)
        if proc is None or proc.poll() is not None:
            cluster.start(name)
    cluster.wait_until_tree_answers("api-cell", 4, timeout=30)


def test_child_down_then_back(cluster: Cluster) -> None:
    """Injected: child-b, the scheduler's first choice, is killed (SIGKILL)
    and later restarted.

    Seen while it is down: once the top's health says down, ``ping
    child-b`` fails at once with CellUnreachable saying it is down;
    ``ping --all`` answers every other cell ok and child-b unreachable; a
    build goes to gc-a. Once restarted, child-b answers again, its health
    is up and the next build goes to it."""
    start_the_rest(cluster)
    deadline = time.monotonic() + 20
    while build(cluster) != CHILD_B:  # until the top has heard child-b's capacities
        assert time.monotonic() < deadline, "the top never preferred child-b"

    cluster.kill("child-b")
    deadline = time.monotonic() + 10
    while health_at_top(cluster, "child-b") != "down":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    code, [row], seconds = cellsctl_json(cluster, "api-cell", "ping", "child-b")
    assert code == 1 and seconds < SLACK, (code, seconds)
    assert row["outcome"] == "unreachable", row
    assert row["error"].startswith("CellUnreachable: "), row
    assert "child-b is down" in row["error"], row
    assert row["ms"] < 1000, row  # no waiting for a deadline
    code, rows, _ = cellsctl_json(cluster, "api-cell", "ping", "--all")
    outcomes = {r["cell"]: r["outcome"] for r in rows}
    assert outcomes.pop(CHILD_B) == "unreachable", rows
    assert set(outcomes.values()) == {"ok"} and len(outcomes) == 3, rows
    assert build(cluster) == GC_A

    cluster.start("child-b")
    cluster.wait_until_tree_answers("api-cell", 4, timeout=30)
    deadline = time.monotonic() + 10
    while health_at_top(cluster, "child-b") != "up":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert build(cluster) == CHILD_B
